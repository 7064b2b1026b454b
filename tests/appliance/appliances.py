"""Appliances built for the image tests (test_images, test_image_busy, test_image_switch,
test_update_pending_snapshots): descriptors, tarballs made of the test guest's
kernel/initrd with marked disks, reading a definition's disks and origin, and the
module-scoped fixtures ``work`` (a directory for tarballs) and ``stored`` (demo 1.0, 2.0
and 3.0 imported into the module's ``qemud``). Import the fixtures as ``work as work``:
each importing module gets its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from client import appliance_images as images
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

CMDLINE = "console=ttyS0 quiet"


def descriptor(version: str = "1.0", **overrides: Any) -> dict[str, Any]:
    desc: dict[str, Any] = {
        "name": "demo", "version": version, "arch": "x86_64", "features": ["virtio"],
        "memory": 256, "vcpus": 1,
        "boot": {"kernel": "boot/vmlinuz", "initrd": "boot/initramfs.img",
                 "cmdline": CMDLINE},
        "disks": [
            {"file": "system.qcow2", "class": "system", "format": "qcow2", "target": "vda"},
            {"file": "data.qcow2", "class": "data", "format": "qcow2", "target": "vdb"},
            {"class": "scratch", "size": "16M", "target": "vdc"},
        ],
        "heartbeat": {"interval": 1, "misses": 5, "action": "none", "grace": 60},
    }
    desc.update(overrides)
    return desc


def marked_qcow2(path: Path, marker: str, size: int = 16 * 1024 * 1024) -> Path:
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.write(marker.encode())
        f.truncate(size)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(path)], check=True)
    raw.unlink()
    return path


def build_appliance(work: Path, guest: TestGuest, desc: dict[str, Any], *,
                    marker: str = "", omit: tuple[str, ...] = (), gzip: bool = False,
                    extra: dict[str, bytes] | None = None, top_dir: bool = False,
                    modes: dict[str, int] | None = None) -> Path:
    """A tarball of ``desc`` with the test guest's kernel/initrd and marked disks;
    ``modes`` sets a member's mode (``tar`` stores it)."""
    label = f"{desc.get('name', 'x')}-{desc.get('version', 'x')}-{len(list(work.glob('*')))}"
    d = work / f"build-{label}"
    root = d / "demo" if top_dir else d
    (root / "boot").mkdir(parents=True)
    shutil.copyfile(guest.kernel, root / "boot" / "vmlinuz")
    shutil.copyfile(guest.initrd, root / "boot" / "initramfs.img")
    marked_qcow2(root / "system.qcow2", marker or f"SYSTEM-V{desc.get('version', '')}")
    marked_qcow2(root / "data.qcow2", "DATA-ORIGINAL")
    (root / "appliance.json").write_text(json.dumps(desc, indent=1))
    for name, content in (extra or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    for name in omit:
        (root / name).unlink()
    for name, mode in sorted((modes or {}).items(), key=lambda m: -len(m[0])):
        (root / name).chmod(mode)
    out = work / f"{label}.tar{'.gz' if gzip else ''}"
    subprocess.run(["tar", "-czf" if gzip else "-cf", str(out), "-C", str(d), "."],
                   check=True)
    subprocess.run(["chmod", "-R", "u+rwx", str(d)], check=True)
    shutil.rmtree(d)
    return out


def disk_sources(xml: str) -> dict[str, str]:
    root = etree.fromstring(xml.encode())
    return {d.find("target").get("dev"): d.find("source").get("file")
            for d in root.iter("disk")}


def origin(xml: str) -> tuple[str, str]:
    root = etree.fromstring(xml.encode())
    el = root.find(".//{http://qemud.org/xmlns/appliance/1}origin")
    assert el is not None, xml
    return el.get("appliance"), el.get("version")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("appliances")


@pytest.fixture(scope="module")
def stored(qemud: DaemonProcess, work: Path, test_guest: TestGuest) -> dict[str, Path]:
    """demo 1.0 (tar.gz), 2.0 (tar, in a top directory) and 3.0 (no heartbeat), imported."""
    tarballs = {
        "1.0": build_appliance(work, test_guest, descriptor("1.0"), gzip=True),
        "2.0": build_appliance(work, test_guest, descriptor("2.0"), top_dir=True),
        "3.0": build_appliance(work, test_guest, descriptor("3.0", boot={
            "kernel": "boot/vmlinuz", "initrd": "boot/initramfs.img",
            "cmdline": f"{CMDLINE} qemud.noheartbeat"})),
    }
    with qemud.connect() as c:
        for version, path in tarballs.items():
            assert images.import_appliance(c, str(path)) == f"demo:{version}"
    return tarballs
