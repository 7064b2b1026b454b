"""Connecting never hangs and never crashes: a daemon that accepts the connection but does
not answer (a listener nobody serves, a real daemon stopped with SIGSTOP), malformed URIs,
a daemon without its read-only socket, and an explicit ``socket=`` used as given."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import client
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.sockets import wait_listening


@contextmanager
def stopped(daemon: DaemonProcess) -> Iterator[None]:
    """``daemon`` stopped (SIGSTOP) for the block, and continued after it whatever happens.

    Not before both its sockets listen: the read-only one comes just after the read-write
    one that ``start`` waits for, and a daemon stopped in between would never make it."""
    wait_listening(daemon.rw_socket, daemon.ro_socket)
    daemon.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.signal(signal.SIGCONT)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


# -- a daemon that accepts the connection but never answers ------------------------------


def test_unanswered_hello_is_connect_failed_within_the_timeout(tmp_path: Path) -> None:
    """The kernel completes connect() on a listening socket nobody accepts from, so only
    the HELLO's deadline can notice; every try cleans up its threads and fds."""
    path = tmp_path / "qemud-sock"
    uri = f"qemud+unix:///session?socket={path}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(16)
        with pytest.raises(client.ConnectFailed):  # warm-up: lazy imports open files
            client.connect(uri, timeout=0.2)
        threads, fds = threading.active_count(), _open_fds()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(client.ConnectFailed) as info:
                client.connect(uri, timeout=0.5)
            took = time.monotonic() - started
            assert 0.4 < took < 2.5, took
            message = info.value.message
            assert message.startswith(f"cannot connect to {uri}: the daemon accepted the "
                                      "connection but did not answer within 0.5 s"), message
        # without the clean-up each try would leave a reader thread, an event thread and
        # a wake pipe behind: an exporter scraping a stopped daemon would run out of fds
        wait_for(lambda: threading.active_count() <= threads, timeout=5,
                 message="the failed connections' threads end")
        assert _open_fds() <= fds


def test_stopped_daemon_connect_fails_in_time_then_works_again(daemon: DaemonProcess
                                                                ) -> None:
    with stopped(daemon):
        started = time.monotonic()
        with pytest.raises(client.ConnectFailed, match=r"did not answer within 1 s \(is it "
                                                       r"stopped or hung"):
            daemon.connect(timeout=1.0)
        assert time.monotonic() - started < 3.5
        with pytest.raises(client.ConnectFailed, match="did not answer within 1 s"):
            daemon.connect(readonly=True, timeout=1.0)
    with daemon.connect(timeout=5) as conn:  # continued: served as usual
        assert conn.node_info().cpus >= 1


def test_qemush_against_a_stopped_daemon_fails_instead_of_hanging(
        daemon: DaemonProcess, qemush: Qemush) -> None:
    with stopped(daemon):
        started = time.monotonic()
        proc = qemush("-c", daemon.uri, "list", timeout=60)
        took = time.monotonic() - started
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines()[0] == "error: failed to connect to the hypervisor"
    assert "did not answer within 10 s (is it stopped or hung?" in proc.stderr
    assert took < 30, took
    _no_traceback(proc)


# -- malformed URIs ------------------------------------------------------------------------


@pytest.mark.parametrize("uri, words", [
    ("qemud+tls://[::1/system", ["malformed host part", "Invalid IPv6 URL"]),
    ("qemud+tls://a..b/system", ["bad host name 'a..b'"]),
    ("qemud+unix:///system?socket=/tmp/a%00b", ["socket= contains a NUL byte"]),
    ("bogus:///", ["unknown scheme 'bogus'"]),
])
def test_qemush_malformed_uri_is_an_error_line(qemush: Qemush, uri: str,
                                               words: list[str]) -> None:
    proc = qemush("-c", uri, "list")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == "error: failed to connect to the hypervisor", lines
    assert lines[1].startswith(f"error: invalid URI {uri!r}: "), lines
    for word in words:
        assert word in lines[1]


# -- read-only: the derived -ro socket, an explicit socket= ------------------------------


def test_explicit_socket_is_used_for_readonly_with_a_readonly_hello(
        daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as admin, \
            client.connect(daemon.uri, readonly=True, client_name="ro") as ro:
        assert ro.readonly
        with pytest.raises(client.ReadOnlyError):
            ro.client_list()
        # both on the socket given (transport unix, not unix-ro); one of them read-only
        assert sorted((c.transport, c.readonly) for c in admin.client_list()) == [
            ("unix", False), ("unix", True)]
    proc = qemush("-c", daemon.uri, "-r", "client-list")
    assert proc.returncode == 1 and READONLY_REFUSAL in proc.stderr
    ro_uri = f"qemud+unix:///session?socket={daemon.ro_socket}"
    wait_for(daemon.ro_socket.exists, message="the read-only socket")  # just after rw's
    with daemon.connect() as admin, client.connect(ro_uri, readonly=True) as ro:
        assert ro.readonly
        assert "unix-ro" in {c.transport for c in admin.client_list()}


def _session_runtime(shell_env: dict[str, str], daemon: DaemonProcess) -> None:
    """Make ``qemud:///session`` in ``shell_env`` derive ``daemon``'s sockets."""
    runtime = Path(shell_env["XDG_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    (runtime / "qemud").symlink_to(daemon.run_dir)


def test_no_readonly_socket_is_named_as_such(daemon_factory: DaemonFactory,
                                             shell_env: dict[str, str],
                                             qemush: Qemush) -> None:
    d = daemon_factory(config={"listen": {"unix_ro": False}})
    assert d.rw_socket.exists() and not d.ro_socket.exists()
    _session_runtime(shell_env, d)
    proc = qemush("-c", "qemud:///session", "-r", "list")
    assert proc.returncode == 1
    message = proc.stderr.splitlines()[1]
    assert "the daemon has no read-only socket" in message, message
    derived = Path(shell_env["XDG_RUNTIME_DIR"]) / "qemud"
    assert f"{derived}/qemud-sock-ro does not exist" in message, message
    assert "listen.unix_ro is off" in message
    assert "is qemud running" not in proc.stderr
    _no_traceback(proc)
    # the way out it suggests: the rw socket given explicitly, read-only asked in the HELLO
    assert f"socket={derived}/qemud-sock" in message
    ok(qemush("-c", f"qemud+unix:///session?socket={derived}/qemud-sock", "-r", "list",
              "--all"))
    ok(qemush("-c", "qemud:///session", "list", "--all"))  # read-write works as before


def test_no_daemon_at_all_still_asks_if_it_runs(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    for readonly in (False, True):
        with pytest.raises(client.ConnectFailed, match=r"does not exist \(is qemud running"):
            client.connect("qemud:///session", readonly=readonly)
