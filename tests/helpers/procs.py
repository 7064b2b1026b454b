"""Waiting for a process to end, by pidfd.

Polling ``/proc/PID`` for the end of a process races with it: during an ``exec`` its
command line briefly reads empty, a killed process has released its memory (so its
command line reads empty) before it has closed its files and locks, and a pid may be
reused. A pidfd, opened while the process is known to run, names that one process
through its ``exec``s and becomes readable only once it has fully exited (its files
closed), reaped or not.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterable

__all__ = ["wait_exited", "wait_pidfd"]


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
