"""One daemon per run, config and state directory, enforced by flock'd files."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time

import pytest

import client
import qemud.lockfile as lockfile
from protocol import Procedure, Reply
from qemud.errors import AlreadyRunning
from tests.helpers.daemon import DaemonProcess
from tests.qemud.wire import RawClient


def test_second_daemon_on_same_run_dir_refuses(shared_daemon, tmp_path) -> None:
    first = shared_daemon
    second = DaemonProcess(tmp_path / "second", {"paths": {"run_dir": str(first.run_dir)}})
    second.start(wait=False)
    assert second.proc.wait(30) != 0
    err = second.stderr_text()
    pidfile = first.run_dir / "qemud.pid"
    assert "another qemud" in err and "already running" in err, err
    assert str(pidfile) in err and f"pid {first.pid()}" in err, err
    # the first daemon's sockets are untouched and it still serves
    with RawClient(first.rw_socket) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    assert pidfile.read_text().strip() == str(first.pid())


@pytest.mark.parametrize("shared", ["config_dir", "state_dir"])
def test_second_daemon_on_same_config_or_state_dir_refuses(shared_daemon, tmp_path,
                                                           shared: str) -> None:
    """Another run directory is not enough: a daemon sharing the first one's config
    directory would manage the same guests (start them again, autostart them), one
    sharing its state directory the same snapshots and images."""
    first = shared_daemon
    directory = getattr(first, shared)
    second = DaemonProcess(tmp_path / "second", {"paths": {shared: str(directory)}})
    second.start(wait=False)
    assert second.proc.wait(30) != 0
    err = second.stderr_text()
    kind = shared.replace("_dir", "")
    assert f"another qemud (pid {first.pid()}) is already running with {kind} directory " \
           f"{directory} (lock {directory / '.qemud.lock'} is held)" in err, err
    assert not second.rw_socket.exists()  # it stopped before listening
    with RawClient(first.rw_socket) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    assert (first.run_dir / "qemud.pid").read_text().strip() == str(first.pid())


def test_killed_daemon_is_noticed_and_leaves_nothing_that_blocks_a_restart(
        daemon_factory) -> None:
    d = daemon_factory()
    conn = d.connect()
    old_pid = d.pid()
    d.kill()  # pidfile and sockets stay behind, the flock dies with the process
    # EOF: the library notices at once, not after its keepalive gives up (that would
    # say "no keepalive" and take keepalive_interval * (keepalive_count + 1) = 30 s); the
    # 10 s bound only keeps a broken library from hanging the test
    started = time.monotonic()
    with pytest.raises(client.ConnectionLost) as lost:
        while True:
            conn.next_event(timeout=0.05)
            assert time.monotonic() - started < 10.0, "SIGKILL not noticed within 10 s"
    assert "keepalive" not in str(lost.value), lost.value  # (EOF or a reset)
    with pytest.raises(client.ConnectionLost):
        conn.node_info()
    assert (d.run_dir / "qemud.pid").exists() and d.rw_socket.exists()
    d.start()
    assert d.pid() != old_pid
    with RawClient(d.rw_socket) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    assert (d.run_dir / "qemud.pid").read_text().strip() == str(d.pid())


def test_lock_in_process(tmp_path) -> None:
    path = tmp_path / "run" / "qemud.pid"
    a = lockfile.PidfileLock(path)
    a.acquire()
    with pytest.raises(AlreadyRunning, match="is already running"):
        lockfile.PidfileLock(path).acquire()
    a.release()
    assert not path.exists()
    b = lockfile.PidfileLock(path)
    b.acquire()
    b.release()


def test_release_racing_acquire_cannot_yield_two_holders(tmp_path, monkeypatch) -> None:
    """A holder releasing between another's open() and flock() must not let that other
    one lock the unlinked file while a third locks the new one."""
    path = tmp_path / "qemud.pid"
    first = lockfile.PidfileLock(path)
    first.acquire()
    real_flock = fcntl.flock
    raced = []

    def flock_after_release(fd: int, op: int) -> None:
        if not raced:
            raced.append(fd)
            first.release()  # unlink + unlock right between open() and flock()
        real_flock(fd, op)

    monkeypatch.setattr(lockfile.fcntl, "flock", flock_after_release)
    second = lockfile.PidfileLock(path)
    second.acquire()
    monkeypatch.setattr(lockfile.fcntl, "flock", real_flock)
    assert raced
    third = lockfile.PidfileLock(path)
    with pytest.raises(AlreadyRunning):
        third.acquire()
    second.release()


def test_cli_reports_lock_holder(tmp_path) -> None:
    path = tmp_path / "run" / "qemud.pid"
    holder = lockfile.PidfileLock(path)
    holder.acquire()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "qemud", "--session",
             "--run-dir", str(tmp_path / "run"), "--config-dir", str(tmp_path / "c"),
             "--state-dir", str(tmp_path / "s"), "--log-dir", str(tmp_path / "l"),
             "--log-file", str(tmp_path / "qemud.log")],
            capture_output=True, text=True, timeout=60)
    finally:
        holder.release()
    assert proc.returncode == 1
    assert "another qemud" in proc.stderr and str(path) in proc.stderr
    assert f"already running with run directory {path.parent} " in proc.stderr
