"""Keepalive both ways: the daemon drops silent clients, the library notices a dead daemon."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

import client
from protocol import Ping, Pong, Procedure, Reply
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.qemud.wire import RawClient, frame

INTERVAL, COUNT = 1, 2
KEEPALIVE = {"limits": {"keepalive_interval": INTERVAL, "keepalive_count": COUNT}}


@pytest.fixture(scope="module")
def ka_daemon(tmp_path_factory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("keepalive"), KEEPALIVE).start()
    yield d
    d.stop()


def test_silent_client_is_dropped_while_answering_clients_stay(ka_daemon) -> None:
    d = ka_daemon
    lib = d.connect(keepalive_count=COUNT)  # its reader thread answers pings
    assert lib.keepalive_interval == INTERVAL
    answering = RawClient(d.rw_socket)
    silent = RawClient(d.rw_socket)
    assert silent.hello_reply.keepalive_interval == INTERVAL
    answered: list[int] = []

    def answer_pings() -> None:
        deadline = time.monotonic() + INTERVAL * (COUNT + 2)
        while time.monotonic() < deadline:
            try:
                msg = answering.recv(timeout=0.2)
            except TimeoutError:
                continue
            if not isinstance(msg, Ping):  # None would mean it was dropped
                answered.append(-1)
                return
            answering.send(Pong())
            answered.append(1)

    thread = threading.Thread(target=answer_pings, daemon=True)
    thread.start()
    started = time.monotonic()
    seen = silent.expect_closed(timeout=10)  # never answers
    dropped_after = time.monotonic() - started
    pings = [m for m in seen if isinstance(m, Ping)]
    assert len(pings) == COUNT and len(seen) == COUNT, seen
    expected = INTERVAL * (COUNT + 1)
    assert expected - 0.5 <= dropped_after <= expected + 1.5, f"dropped after {dropped_after:.2f}"
    wait_for(lambda: f"no answer to {COUNT} keepalive pings" in d.log_text(), timeout=5,
             message="keepalive drop logged")
    thread.join(10)
    # the clients that answer lived through the same period and beyond
    assert -1 not in answered and len(answered) >= COUNT + 1, answered
    assert isinstance(answering.call(Procedure.NODE_INFO), Reply)
    assert lib.is_alive
    assert lib.node_info().cpus >= 1
    lib.close()
    silent.close()
    answering.close()


def test_client_that_stops_reading_is_dropped_and_others_carry_on(ka_daemon) -> None:
    """The daemon stops reading a client whose replies are not taken (so the queue stays
    small); keepalive then drops it, since it answers no pings either."""
    d = ka_daemon
    log_start = len(d.log_text())
    hog = RawClient(d.rw_socket)
    hog.sock.setblocking(False)
    burst = frame(Procedure.NODE_INFO, 2) * 50_000  # ~1 MB of calls, replies never read
    sent = 0
    started = time.monotonic()

    def dropped() -> bool:
        log = d.log_text()[log_start:]
        return "keepalive timeout" in log or "over max_queued_bytes" in log

    with RawClient(d.rw_socket) as other:
        while not dropped():
            try:
                sent += hog.sock.send(burst[sent:sent + 65536] or frame(Procedure.NODE_INFO, 3))
            except BlockingIOError:
                pass
            except OSError:  # reset: the daemon dropped it
                break
            reply = other.call(Procedure.NODE_INFO, timeout=1)
            assert isinstance(reply, Reply)
            assert time.monotonic() - started < INTERVAL * (COUNT + 1) + 4, \
                "a client that never reads was never dropped"
            time.sleep(0.05)
        assert isinstance(other.call(Procedure.NODE_INFO, timeout=1), Reply)
    wait_for(dropped, timeout=5, message="the non-reading client dropped")
    hog.close()
    assert sent > 200_000  # it really did pile calls up


def test_stopped_daemon_is_seen_as_connection_lost_by_keepalive(daemon_factory) -> None:
    """SIGSTOP: the socket stays open, only the library's keepalive can tell.
    (SIGKILL, seen at once by EOF, is in test_lock.py, which restarts the daemon.)"""
    d = daemon_factory(config=KEEPALIVE)
    conn = d.connect(keepalive_count=COUNT)
    d.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        limit = INTERVAL * (COUNT + 1) + 2.0
        with pytest.raises(client.ConnectionLost, match="keepalive"):
            while True:
                conn.next_event(timeout=0.1)
                assert time.monotonic() - started < limit, "stopped daemon not noticed"
        assert time.monotonic() - started >= INTERVAL * COUNT  # not before it had a chance
        with pytest.raises(client.ConnectionLost):
            conn.node_info()
    finally:
        d.signal(signal.SIGCONT)
    # resumed, the daemon is fine for new clients
    with d.connect(keepalive_count=COUNT) as again:
        assert again.node_info().cpus >= 1


def test_keepalive_zero_never_pings(quiet_daemon) -> None:
    with RawClient(quiet_daemon.rw_socket) as c:
        assert c.hello_reply.keepalive_interval == 0
        with pytest.raises(TimeoutError):
            c.recv(timeout=1.5)  # no ping, no drop
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
