"""Waiting for a process to end, by pidfd.

Polling ``/proc/PID`` for the end of a process races with it: during an ``exec`` its
command line briefly reads empty, a killed process has released its memory (so its
command line reads empty) before it has closed its files and locks, and a pid may be
reused. A pidfd, opened while the process is known to run, names that one process
through its ``exec``s and becomes readable only once it has fully exited (its files
closed), reaped or not.

Also finding the live QEMU processes of a test guest by their command line, and
killing them in clean-up (:func:`qemu_pids`, :func:`kill_qemus`), for the integration
tests that check or clean up the QEMUs a daemon started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from qemud.qemu.naming import guest_dir_name
from tests.helpers.daemon import DaemonProcess

__all__ = ["kill_left_qemus", "kill_qemus", "qemu_pids", "wait_exited", "wait_pidfd"]


def wait_pidfd(fd: int, timeout: float, what: str = "the process") -> None:
    """Wait until the process of pidfd ``fd`` has exited, then close ``fd``;
    AssertionError after ``timeout`` seconds."""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(max(0.0, timeout) * 1000), f"{what} still runs after {timeout} s"
    finally:
        os.close(fd)


def wait_exited(pids: Iterable[int], timeout: float) -> None:
    """Wait until every process in ``pids`` has exited (one already reaped counts as
    exited); AssertionError after ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        wait_pidfd(fd, deadline - time.monotonic(), f"process {pid}")


def qemu_pids(name: str, run_dir: Path | None = None) -> list[int]:
    """Live QEMU processes of guest ``name`` (of the daemon with ``run_dir``, if given).

    Scoped by run dir because other test runs on the machine may use the same guest
    names; zombies (exited, not yet reaped by their parent) do not count as running.
    """
    if run_dir is not None:
        root = run_dir / "qemu"
        pattern = f"{root / guest_dir_name(root, name)}/"  # as the daemon names it
    else:
        pattern = f"guest={name},"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    pids = []
    for pid in map(int, out.stdout.split()):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(pid)
    return pids


def kill_left_qemus(run_dir: Path) -> list[int]:
    """Clean-up: SIGKILL every QEMU whose files are under ``run_dir`` (a daemon's: its
    guests keep running when it stops, also those a failed test left); their pids."""
    out = subprocess.run(["pgrep", "-f", f"{run_dir}/"], capture_output=True, text=True)
    pids = []
    for word in out.stdout.split():
        pid = int(word)
        try:
            if Path(f"/proc/{pid}/exe").resolve().name.startswith("qemu-system"):
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
        except OSError:
            pass
    return pids


def kill_qemus(daemon: DaemonProcess, *names: str) -> None:
    """Clean-up: SIGKILL any QEMU of the guests ``names`` of ``daemon`` still running."""
    for name in names:
        for pid in qemu_pids(name, daemon.run_dir):
            os.kill(pid, signal.SIGKILL)
