"""Fixtures for integration tests that need a real bootable guest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.daemon import DaemonProcess, stop_destroying_guests

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "contrib" / "build-test-guest"
# First build downloads a ~27 MB kernel package; later runs take ~1 s.
BUILD_TIMEOUT = 900


@dataclass(frozen=True)
class TestGuest:
    """A tiny busybox guest built by contrib/build-test-guest.

    Boot it with ``-kernel kernel -initrd initrd -append "console=ttyS0 quiet"``;
    see the header of contrib/build-test-guest for the serial-line protocol.
    """

    __test__ = False  # not a test class, despite the name

    dir: Path
    kernel: Path
    initrd: Path
    version: str


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    """Build (or reuse) the test guest once per session.

    Output goes to $QEMUD_GUEST_DIR, else ~/.cache/qemud/test-guest (the
    script's default).  A failing build is a test error, not a skip.
    """
    try:
        proc = subprocess.run(
            [str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{BUILD_SCRIPT} did not finish within {BUILD_TIMEOUT} s: {exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(
            f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{BUILD_SCRIPT} printed no output directory; stderr:\n{proc.stderr}"
    guest_dir = Path(lines[-1])
    guest = TestGuest(
        dir=guest_dir,
        kernel=guest_dir / "vmlinuz",
        initrd=guest_dir / "initramfs.img",
        version=(guest_dir / "VERSION").read_text().strip(),
    )
    for path in (guest.kernel, guest.initrd):
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
    return guest


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of the test's own; at the end its guests are destroyed (and any QEMU a
    status file still names is killed), then it stops."""
    own = DaemonProcess(tmp_path / "d")
    own.start()
    yield own
    try:
        if own.proc is not None and own.proc.poll() is None:
            stop_destroying_guests(own)
    finally:
        for status in (own.run_dir / "qemu").glob("*.status.json"):
            try:
                os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
