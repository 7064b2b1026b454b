"""A running guest's log is kept near ``qemu.log_max_bytes`` (qemud/driver/process.py).

QEMU holds its log open for as long as it runs, so the daemon copy-truncates it from a
timer: the content goes to ``<name>.log.1``, the file is emptied, and QEMU (like the
daemon) carries on at the new end, as both write ``O_APPEND``. Appending to the file
from a test with ``O_APPEND`` is exactly what QEMU's writes do, so the tests make the
log grow that way. In-process tests drive GuestLog/QemuProcess on their own loop with a
shell script in QEMU's place; the last test does it to a real guest (TCG) in a daemon,
before and after a restart (re-attached guest), and then crashes it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, LifecycleEvent, ShutoffReason, StoppedDetail
from qemud.driver import process as process_mod
from qemud.driver.lifecycle import last_words
from qemud.driver.process import GuestLog, QemuProcess
from qemud.loop import EventLoop
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.loop import run_until
from tests.helpers.procs import kill_qemus, qemu_pids
from tests.integration.domains import guest_xml

from .lifecycle import lifecycle_events

LIMIT = 4096


def append(path: Path, data: bytes) -> None:
    """Write to the log as QEMU does (its own O_APPEND file description)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def lines(prefix: str, size: int) -> bytes:
    """Numbered lines, a little more than ``size`` bytes, to tell what was kept where."""
    line = len(f"{prefix}-00000\n")
    return b"".join(f"{prefix}-{i:05d}\n".encode() for i in range(size // line + 1))


# -- GuestLog, in-process -----------------------------------------------------------------

def test_log_past_the_limit_is_copied_to_dot1_and_truncated(tmp_path: Path,
                                                            loop: EventLoop) -> None:
    path = tmp_path / "g.log"
    log = GuestLog(path)
    (tmp_path / "g.log.1").write_bytes(b"the run before\n")
    truncated: list[int] = []
    log.note("starting")
    assert not log.rotate_if_past(loop, LIMIT, truncated.append)  # small: kept
    old = b"starting\n" + lines("old", LIMIT)
    append(path, old[len(b"starting\n"):])
    assert log.rotate_if_past(loop, LIMIT, truncated.append)
    run_until(loop, lambda: truncated)
    assert (tmp_path / "g.log.1").read_bytes() == old  # the old .1 replaced, all kept
    note = path.read_bytes()
    assert note.endswith(b" log rotated past 4096 bytes, previous content in g.log.1\n")
    assert note.count(b"\n") == 1
    assert truncated == [len(note)]  # QEMU's output starts after the note
    assert not list(tmp_path.glob(".*.tmp"))
    # both writers carry on at the new end (no hole where the old content was)
    append(path, b"qemu again\n")
    log.note("daemon again")
    assert path.read_bytes() == note + b"qemu again\ndaemon again\n"
    # only the note and a little more: not past the limit, not rotated again
    assert not log.rotate_if_past(loop, LIMIT, truncated.append)
    log.close()


def test_huge_log_keeps_only_its_last_max_bytes(tmp_path: Path, loop: EventLoop) -> None:
    """A log far past the limit (a guest re-attached with a log from before these
    checks, a limit just lowered) is not copied whole: its tail, and a line saying so."""
    path = tmp_path / "g.log"
    data = lines("x", 5 * LIMIT)
    path.write_bytes(data)
    log = GuestLog(path)
    truncated: list[int] = []
    assert log.rotate_if_past(loop, LIMIT, truncated.append)
    run_until(loop, lambda: truncated)
    head, tail = (tmp_path / "g.log.1").read_bytes().split(b"\n", 1)
    assert tail == data[-LIMIT:]
    assert f"g.log had grown to {len(data)} bytes; its first {len(data) - LIMIT} bytes " \
           f"were dropped".encode() in head
    log.close()


def test_rotation_is_copied_a_chunk_per_loop_turn_and_loses_nothing(
        tmp_path: Path, loop: EventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_mod, "ROTATE_CHUNK", 1000)
    path = tmp_path / "g.log"
    first = lines("a", 3 * LIMIT // 2)
    path.write_bytes(first)
    log = GuestLog(path)
    truncated: list[int] = []
    turns = 0

    def tick() -> None:  # another user of the loop: it gets turns meanwhile
        nonlocal turns
        turns += 1
        append(path, f"meanwhile-{turns}\n".encode())  # QEMU writing during the copy
        if not truncated:
            loop.call_soon(tick)
    assert log.rotate_if_past(loop, LIMIT, truncated.append)
    assert log.rotating and not truncated  # one chunk done, not all of it
    loop.call_soon(tick)
    run_until(loop, lambda: truncated)
    assert turns >= len(first) // 1000 - 1
    rotated = (tmp_path / "g.log.1").read_bytes()
    after = path.read_bytes()
    assert rotated.startswith(first)
    # every line written meanwhile is in .1 or (past the truncation) in the log
    for turn in range(1, turns + 1):
        line = f"meanwhile-{turn}\n".encode()
        assert (line in rotated) != (line in after), line
    log.close()


def test_closing_the_log_cancels_a_rotation(tmp_path: Path, loop: EventLoop,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU exits (or the daemon detaches) while the copy runs: the file stays whole."""
    monkeypatch.setattr(process_mod, "ROTATE_CHUNK", 1000)
    path = tmp_path / "g.log"
    data = lines("a", 2 * LIMIT)
    path.write_bytes(data)
    log = GuestLog(path)
    truncated: list[int] = []
    assert log.rotate_if_past(loop, LIMIT, truncated.append)
    assert list(tmp_path.glob(".g.log.1.tmp"))
    log.close()
    for _ in range(20):
        loop.run_once(max_wait=0.01)
    assert not truncated
    assert path.read_bytes() == data
    assert not (tmp_path / "g.log.1").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_limit_of_0_rotates_only_at_a_launch(tmp_path: Path, loop: EventLoop) -> None:
    path = tmp_path / "g.log"
    path.write_bytes(b"x" * 100)
    log = GuestLog(path, rotate_past=0)  # as before a launch: a fresh log
    assert (tmp_path / "g.log.1").read_bytes() == b"x" * 100
    log.write(b"y" * 100)
    assert not log.rotate_if_past(loop, 0, lambda start: None)  # never while it runs
    assert path.read_bytes() == b"y" * 100
    log.close()


def test_a_launch_removes_a_copy_left_by_a_killed_daemon(tmp_path: Path) -> None:
    leftover = tmp_path / ".g.log.1.tmp"
    leftover.write_bytes(b"half a copy")
    GuestLog(tmp_path / "g.log").close()  # a re-attach: the next rotation replaces it
    assert leftover.exists()
    GuestLog(tmp_path / "g.log", rotate_past=LIMIT).close()
    assert not leftover.exists()


# -- QemuProcess, in-process, a shell script as QEMU --------------------------------------

def test_failed_start_error_is_read_after_a_rotation(
        tmp_path: Path, loop: EventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offsets into the log where QEMU's output starts move with the truncation:
    the error read back at the exit is what QEMU printed since, without our note."""
    monkeypatch.setattr(process_mod, "LOG_CHECK_INTERVAL", 0.05)
    spammed, go = tmp_path / "spammed", tmp_path / "go"
    script = (f"i=0; while [ $i -lt 500 ]; do echo spam-line-$i; i=$((i+1)); done; "
              f"touch {spammed}; while [ ! -e {go} ]; do sleep 0.02; done; "
              f"echo 'qemu: fatal: the real error'; exit 1")
    log = GuestLog(tmp_path / "g.log", rotate_past=LIMIT)
    proc = QemuProcess.launch(loop, ["sh", "-c", script], "g", log, log_max_bytes=LIMIT)
    wait_for(spammed.exists, message="spam printed")  # (the loop, and its checks, wait)
    run_until(loop, lambda: log.rotated_path.exists())
    assert b"spam-line-499\n" in log.rotated_path.read_bytes()
    go.touch()
    run_until(loop, lambda: proc.exited)
    assert proc.output_text() == "qemu: fatal: the real error"
    text = log.path.read_text()
    assert text.startswith(f"{text[:19]} log rotated past {LIMIT} bytes")
    assert "QEMU exited (exit code 1)" in text
    log.close()


def test_no_checks_after_the_exit_or_a_detach(tmp_path: Path, loop: EventLoop,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Once QEMU has exited its offsets are final: a rotation under way is cancelled
    and no other starts (the log is closed soon after, with its fd)."""
    monkeypatch.setattr(process_mod, "LOG_CHECK_INTERVAL", 0.02)
    monkeypatch.setattr(process_mod, "ROTATE_CHUNK", 100)
    log = GuestLog(tmp_path / "g.log")
    child = QemuProcess.launch(loop, ["sleep", "30"], "g", log, log_max_bytes=LIMIT)
    # not our child (a re-attach): checked all the same
    other_log = GuestLog(tmp_path / "h.log")
    other = QemuProcess(loop, child.pid, "h", other_log, log_max_bytes=LIMIT)
    append(other_log.path, lines("h", 2 * LIMIT))
    run_until(loop, lambda: other_log.rotated_path.exists())
    assert other.output_text() == ""
    other.detach()

    append(log.path, lines("late", 2 * LIMIT))
    assert log.rotate_if_past(loop, LIMIT, lambda start: None)  # as the timer would
    assert log.rotating
    child.kill()
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1]
             .split()[0] == "Z", message="child dead")  # (the loop, and the copy, wait)
    run_until(loop, lambda: child.exited)
    assert not log.rotating
    size = log.size()
    assert size > 2 * LIMIT
    for _ in range(10):
        loop.run_once(max_wait=0.02)
    assert log.size() == size  # not rotated: the offsets read at the exit hold
    assert not log.rotated_path.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    log.close()


# -- a real guest in a daemon -------------------------------------------------------------

@pytest.mark.integration
def test_running_guest_log_is_rotated_also_after_a_restart_and_a_crash_still_logged(
        tmp_path: Path, test_guest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(process_mod.LOG_CHECK_ENV, "0.2")  # inherited by the daemon
    daemon = DaemonProcess(tmp_path / "d", {"qemu": {"log_max_bytes": LIMIT}})
    log_file = daemon.log_dir / "qemu" / "rotlog.log"
    rotated = log_file.with_name("rotlog.log.1")
    daemon.start()
    try:
        with daemon.connect() as conn:
            dom = conn.define_xml(guest_xml("rotlog", test_guest, tmp_path / "s.sock"))
            dom.create()
            first = lines("first", LIMIT)
            append(log_file, first)
            wait_for(lambda: rotated.exists() and first in rotated.read_bytes(),
                     message="log rotated")
            assert "starting: " in rotated.read_text()  # the whole log, from its top
            assert log_file.stat().st_size < LIMIT
            assert "rotated past 4096 bytes, previous content in rotlog.log.1" in \
                log_file.read_text()
            assert "log of rotlog passed 4096 bytes: rotated" in daemon.log_text()

        daemon.kill()  # kill -9; the next daemon re-attaches to the running QEMU
        daemon.start()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("rotlog")
            assert dom.state()[0] == DomainState.RUNNING
            second = lines("second", LIMIT)
            append(log_file, second)
            wait_for(lambda: rotated.exists() and second in rotated.read_bytes(),
                     message="re-attached guest's log rotated")
            assert first not in rotated.read_bytes()  # the older .1 replaced
            assert "qemud re-attached" in rotated.read_text()

            # QEMU still writes the emptied log: its last words at an unexpected exit
            conn.register_event(client.EventId.LIFECYCLE, domain=dom)
            (pid,) = qemu_pids("rotlog", daemon.run_dir)
            os.kill(pid, signal.SIGTERM)  # not from the daemon: a crash to it
            assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STOPPED,
                                                      StoppedDetail.FAILED)]
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.CRASHED)
        data = log_file.read_bytes()
        assert b"\0" not in data  # no hole: QEMU went on at the new end
        text = data.decode()
        assert text.index("log rotated past") < text.index(
            f"terminating on signal 15 from pid {os.getpid()}") < text.index("QEMU exited")
        # and the daemon's warning quotes them, also for a guest it re-attached to
        warning = next(line for line in daemon.log_text().splitlines()
                       if "domain rotlog: QEMU exited unexpectedly" in line)
        assert f"terminating on signal 15 from pid {os.getpid()}" in warning
    finally:
        kill_qemus(daemon, "rotlog")
        daemon.stop()


def test_last_words_are_the_last_lines_qemu_printed_on_one_line() -> None:
    output = "warning: a\n\nqemu: b\n  qemu: c  \nqemu: terminating on signal 15\n"
    assert last_words(output) == "qemu: b | qemu: c | qemu: terminating on signal 15"
    assert last_words("") == ""
