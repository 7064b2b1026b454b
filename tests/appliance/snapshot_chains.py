"""A disk's chain of qcow2 images as qemu-img and the guest's QEMU see it, for the
snapshot deletion and unplug tests (test_snapshot_delete, test_snapshot_delete_shared,
test_snapshot_unplug, test_snapshot_reattach, test_detach_timeout): writing at an offset,
the backing chain, a flat copy, comparing and hashing, and the files QEMU has open.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from tests.helpers.daemon import DaemonProcess


def qemu_io_write_at(image: str, char: str, offset: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {ord(char)} {offset} 512",
                    image], check=True, capture_output=True)


def backing_chain(image: str) -> list[str]:
    """The files of ``image``'s chain as its headers say, top first (-U: a running
    QEMU holds the lock)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                          image], check=True, capture_output=True, text=True).stdout
    return [entry["filename"] for entry in json.loads(out)]


def flat_copy(image: str, target: Path) -> Path:
    """What the guest sees of ``image`` (its whole chain) as a raw file."""
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image,
                    str(target)], check=True)
    return target


def same_content(raw: Path, image: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2",
                           str(raw), image], capture_output=True).returncode == 0


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def qemu_files(qemud: DaemonProcess, name: str) -> list[str]:
    """The files the guest's QEMU process has open."""
    fds = Path("/proc") / (qemud.guest_run_dir(name) / "qemu.pid").read_text().strip() / "fd"
    files = []
    for fd in fds.iterdir():
        try:
            files.append(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return files
