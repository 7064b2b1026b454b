"""SIGTERM/SIGINT stop the daemon cleanly; SIGHUP reloads the limits."""

from __future__ import annotations

import signal
import time

import pytest

import client
from protocol import ErrorCode, Procedure, Reply
from tests.helpers.daemon import wait_for
from tests.qemud.wire import RawClient, error_of


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_removes_sockets_and_exits_zero(daemon_factory, signum) -> None:
    d = daemon_factory()
    waiting = d.connect()
    idle = d.connect(readonly=True)
    pidfile = d.run_dir / "qemud.pid"
    assert pidfile.read_text().strip() == str(d.pid())
    d.signal(signum)
    started = time.monotonic()
    with pytest.raises(client.ConnectionLost):
        while True:  # a client blocked waiting for events learns at once
            waiting.next_event(timeout=0.05)
            assert time.monotonic() - started < 5
    assert d.proc.wait(10) == 0
    assert not d.rw_socket.exists() and not d.ro_socket.exists()
    assert not pidfile.exists()
    with pytest.raises(client.ConnectionLost):
        idle.node_info()
    with pytest.raises(client.ConnectFailed, match="does not exist"):
        d.connect()
    log = d.log_text()
    assert f"{signal.Signals(signum).name} received" in log and "qemud stopped" in log
    assert "Traceback" not in log


def test_sighup_reloads_limits(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"max_clients": 3, "keepalive_interval": 0}})
    held = [RawClient(d.rw_socket) for _ in range(3)]
    with RawClient(d.rw_socket, hello=False) as refused:
        assert "max_clients=3" in error_of(refused.recv())[1]

    d.config["limits"].update({"max_clients": 5, "keepalive_interval": 7})
    d.write_config()
    d.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: limits reloaded" in d.log_text(), timeout=5,
             message="reload logged")
    held += [RawClient(d.rw_socket) for _ in range(2)]  # 4th and 5th now admitted
    assert held[-1].hello_reply.keepalive_interval == 7  # new clients hear the new interval
    with RawClient(d.rw_socket, hello=False) as refused:
        code, message = error_of(refused.recv())
        assert code == ErrorCode.LIMIT_EXCEEDED and "max_clients=5" in message

    # a broken file on reload keeps the running limits and the daemon
    d.config_file.write_text(d.config_file.read_text() + "\n[limits2]\nx = 1\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "config not reloaded" in d.log_text(), timeout=5,
             message="failed reload logged")
    assert "unknown section [limits2]" in d.log_text()
    with RawClient(d.rw_socket, hello=False) as refused:
        assert "max_clients=5" in error_of(refused.recv())[1]
    held.pop().close()
    wait_for(lambda: _admits(d), timeout=5, message="admitted below the kept limit")
    for c in held:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
        c.close()
    assert d.proc.poll() is None


def _admits(d) -> bool:
    try:
        with RawClient(d.rw_socket, timeout=2) as c:
            return c.hello_reply is not None
    except (ConnectionError, AssertionError, TimeoutError):
        return False
