"""The daemon's QMP monitor (qemud/driver/monitor.py) in a real loop against a real QEMU.

What these pin down: a command issued before the monitor has finished connecting and
negotiating (a re-attached guest is reported running before its monitor is) waits for
the negotiation instead of being refused, and fails with a clear reason when the
negotiation never completes; a file descriptor given with a command (a save's image,
``getfd``) reaches QEMU with that command, and the monitor's duplicate is closed once
sent or when the monitor goes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemud.dispatch import Deferred
from qemud.driver.monitor import Monitor
from qemud.errors import OperationFailed, OperationTimeout
from qemud.loop import EventLoop
from tests.qemu.qmpclient import stop_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 not installed"),
]


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    try:
        yield lp
    finally:
        lp.close()


def run_until(loop: EventLoop, *deferreds: Deferred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(d.done for d in deferreds):
        assert time.monotonic() < deadline, "the loop did not finish the commands in time"
        loop.run_once(0.05)


def start_qemu(sock: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def new_monitor(loop: EventLoop, path: Path, closed: list[str]) -> Monitor:
    return Monitor(loop, str(path), "guest", on_event=lambda ev: None,
                   on_close=closed.append)


def test_commands_issued_while_negotiating_are_sent_after_it_in_order(
        loop: EventLoop, tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    # issued before QEMU even exists: the monitor is connecting, then negotiating
    monitor = new_monitor(loop, sock, [])
    proc = start_qemu(sock)
    try:
        ready = monitor.connect(10.0, alive=lambda: proc.poll() is None)
        cont = monitor.execute("cont")
        status = monitor.execute("query-status")
        assert not ready.done and not cont.done
        run_until(loop, ready, cont, status)
        assert ready.error is None
        assert cont.error is None and cont.result == {}
        # sent after "cont", so it sees the guest running
        assert status.error is None and status.result["running"] is True
        # and once negotiated, commands go straight out as before
        stop = monitor.execute("stop")
        run_until(loop, stop)
        assert stop.error is None
    finally:
        monitor.close()
        stop_process(proc)


def test_queued_command_fails_with_the_reason_the_monitor_never_became_ready(
        loop: EventLoop, tmp_path: Path) -> None:
    monitor = new_monitor(loop, tmp_path / "never.sock", [])
    ready = monitor.connect(10.0, alive=lambda: False)  # the QEMU "died at start"
    # the first attempt already failed: a command now is refused at once
    late = monitor.execute("query-status")
    assert ready.done and late.done
    assert isinstance(late.error, OperationFailed)
    assert "not connected" in late.error.message

    monitor = new_monitor(loop, tmp_path / "slow.sock", [])
    alive = [True]
    ready = monitor.connect(10.0, alive=lambda: alive[0])
    queued = monitor.execute("query-status")
    loop.run_once(0.01)
    assert not queued.done  # still waiting for the socket
    alive[0] = False  # QEMU exits before creating its monitor
    run_until(loop, ready, queued)
    assert isinstance(queued.error, OperationFailed)
    assert queued.error.detail == "QEMU exited before its monitor was ready"


def test_queued_command_times_out_and_detaching_fails_the_rest(
        loop: EventLoop, tmp_path: Path) -> None:
    monitor = new_monitor(loop, tmp_path / "absent.sock", [])
    monitor.connect(30.0)
    timed = monitor.execute("query-status", timeout=0.1)
    waiting = monitor.execute("query-name")
    run_until(loop, timed)
    assert isinstance(timed.error, OperationTimeout)
    assert "query-status within 0.1 s" in timed.error.message
    assert not waiting.done
    monitor.close()  # detached while still connecting (daemon shutdown, guest stopped)
    assert isinstance(waiting.error, OperationFailed)
    assert waiting.error.detail == "query-name: monitor detached"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_file_descriptor_goes_to_qemu_with_its_command(
        loop: EventLoop, tmp_path: Path) -> None:
    """``getfd`` with a descriptor (SCM_RIGHTS), queued behind other commands while the
    monitor negotiates: QEMU has it under its name (``closefd`` finds it once, then not),
    the caller's own descriptor stays open, and the monitor's duplicate is closed once
    sent."""
    sock = tmp_path / "qmp.sock"
    monitor = new_monitor(loop, sock, [])
    proc = start_qemu(sock)
    fd = os.open(tmp_path / "image", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        before = open_fds()
        ready = monitor.connect(10.0, alive=lambda: proc.poll() is None)
        first = monitor.execute("query-status")
        passed = monitor.execute("getfd", {"fdname": "image"}, fds=[fd])
        # right behind it: each descriptor goes with its own command's bytes
        second = monitor.execute("getfd", {"fdname": "second"}, fds=[fd])
        closed = monitor.execute("closefd", {"fdname": "image"})
        closed_second = monitor.execute("closefd", {"fdname": "second"})
        again = monitor.execute("closefd", {"fdname": "image"})
        run_until(loop, ready, first, passed, second, closed, closed_second, again)
        assert first.error is None and passed.error is None and second.error is None
        assert closed.error is None and closed_second.error is None
        assert again.error is not None and "image" in again.error.message
        assert open_fds() == before + 1  # the monitor's socket; its duplicate is closed
        monitor.close()
        assert open_fds() == before
        os.fstat(fd)  # (still the caller's)
    finally:
        os.close(fd)
        monitor.close()
        stop_process(proc)


def test_a_descriptor_never_sent_is_closed_with_the_monitor(
        loop: EventLoop, tmp_path: Path) -> None:
    monitor = new_monitor(loop, tmp_path / "no-qemu.sock", [])
    fd = os.open(tmp_path / "image", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        before = open_fds()
        monitor.connect(10.0)  # (no QEMU: it keeps trying)
        passed = monitor.execute("getfd", {"fdname": "image"}, fds=[fd])
        assert open_fds() == before + 1  # the monitor's duplicate, queued
        monitor.close()
        assert passed.error is not None
        assert open_fds() == before
    finally:
        os.close(fd)
