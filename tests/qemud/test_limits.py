"""Every limit in qemud/server.py, hit by a real client against a real daemon.

Each test checks both sides: the offending client gets what the docs promise, and the
other clients notice nothing.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import client
from protocol import Call, ErrorCode, Procedure, Reply
from protocol.payloads import HelloArgs
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.qemud.wire import RawClient, error_of, frame, hello_frame


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_count(daemon: DaemonProcess) -> int:
    with RawClient(daemon.rw_socket) as c:
        reply = c.call(Procedure.ADMIN_CLIENT_LIST)
        assert isinstance(reply, Reply)
        return len(reply.result.clients) - 1  # not counting this one


@pytest.fixture
def nofile() -> Iterator[None]:
    """Enough fds in this process for a thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1100:
        pytest.skip("RLIMIT_NOFILE hard limit too low for 1,000 connections")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- many clients -------------------------------------------------------------------------

def test_thousand_idle_connections_do_not_slow_others(quiet_daemon, nofile) -> None:
    d = quiet_daemon
    idle: list[RawClient] = []
    # (connected first: the library's reader uses select(), which cannot watch fds >= 1024)
    conn = d.connect()
    try:
        for _ in range(1000):
            idle.append(RawClient(d.rw_socket))
        rss = d.rss_kib()
        with conn:
            started = time.monotonic()
            for _ in range(200):
                assert conn.node_info().cpus >= 1
            elapsed = time.monotonic() - started
            listed = conn.client_list()
        assert len(listed) == 1001, len(listed)
        assert elapsed < 5.0, f"200 calls took {elapsed:.2f} s with 1,000 idle clients " \
                              f"(daemon RSS {rss} KiB)"
        # every idle client is still there and still served
        for c in idle[::100]:
            assert isinstance(c.call(Procedure.GET_URI), Reply)
        assert rss < 200 * 1024, f"daemon RSS {rss} KiB with 1,000 idle clients"
    finally:
        for c in idle:
            c.close()


def test_read_only_clients_leave_room_for_admins(daemon_factory) -> None:
    """The read-only socket is open to every local user: it may not take the last
    slots (min(16, max_clients // 2)), so root can still connect read-write."""
    d = daemon_factory(config={"limits": {"max_clients": 5}})
    readers = [RawClient(d.ro_socket) for _ in range(3)]  # 5 - 2 kept
    try:
        with RawClient(d.ro_socket, hello=False) as fourth:
            seen = fourth.expect_closed(timeout=5)
            code, message = error_of(seen[0])
            assert code == ErrorCode.LIMIT_EXCEEDED
            assert message == ("too many read-only clients (max_clients=5, of which 2 are "
                               "kept for the read-write socket and TLS)")
        admins = [RawClient(d.rw_socket) for _ in range(2)]  # the two kept slots
        for c in admins:
            assert isinstance(c.call(Procedure.NODE_INFO), Reply)
            c.close()
        readers.pop().close()  # a read-only slot comes free
        wait_for(lambda: _ro_admitted(d), timeout=10, message="a read-only client again")
    finally:
        for c in readers:
            c.close()


def _ro_admitted(d: DaemonProcess) -> bool:
    try:
        with RawClient(d.ro_socket, timeout=2) as c:
            return isinstance(c.call(Procedure.NODE_INFO), Reply)
    except (ConnectionError, AssertionError, TimeoutError):
        return False


def test_max_clients_refuses_with_error_frame(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"max_clients": 5}})
    admitted = [RawClient(d.rw_socket) for _ in range(5)]
    with RawClient(d.ro_socket, hello=False) as sixth:  # the limit covers both sockets
        seen = sixth.expect_closed(timeout=5)
        assert len(seen) == 1, seen
        code, message = error_of(seen[0])
        assert code == ErrorCode.LIMIT_EXCEEDED and seen[0].serial == 0
        assert "max_clients=5" in message
    with pytest.raises(client.LimitExceeded, match="max_clients=5"):
        d.connect()
    assert "too many clients (max_clients=5)" in d.log_text()
    # the five are unaffected
    for c in admitted:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    admitted.pop().close()

    def admitted_now() -> bool:
        try:
            with RawClient(d.rw_socket, timeout=2) as c:
                return isinstance(c.call(Procedure.NODE_INFO), Reply)
        except (ConnectionError, AssertionError, TimeoutError):
            return False
    wait_for(admitted_now, timeout=5, message="a new client admitted after one left")
    for c in admitted:
        c.close()


# -- frames -------------------------------------------------------------------------------

def test_slow_drip_client_does_not_block_others_and_is_dropped(daemon_factory,
                                                               quiet_daemon) -> None:
    # -- others are served while a client holds a partial frame. Timed by order, not by
    # the clock: the drip's bytes go out between the other client's calls, on a daemon
    # whose frame_deadline no load can reach, so the drip is provably mid-frame during
    # every call; a daemon that waited for the rest of its frame would time them out.
    d = daemon_factory(config={"limits": {"keepalive_interval": 0, "frame_deadline": 600.0}})
    payload = frame(Procedure.NODE_INFO, 2)
    with RawClient(d.rw_socket) as drip, RawClient(d.rw_socket) as other:
        sent = 0
        calls_started = time.monotonic()
        for i in range(100):
            if i % 5 == 0 and sent < len(payload) - 1:  # never the last byte: mid-frame
                drip.send_bytes(payload[sent:sent + 1])
                sent += 1
            assert isinstance(other.call(Procedure.NODE_INFO, timeout=10), Reply)
        calls_took = time.monotonic() - calls_started
        assert sent == len(payload) - 1
        # nor slowed down much: a daemon waiting a while (not forever) for each drip
        # byte would add that wait 19 times (these calls take ~0.1 s; the bound is
        # generous so that only that, not a loaded machine, can fail it)
        assert calls_took < 5.0, f"100 calls took {calls_took:.2f} s next to a drip client"
        # the partial frame was kept intact all along: its last byte completes the call
        drip.send_bytes(payload[sent:])
        assert isinstance(drip.wait_reply(2, timeout=10), Reply)

    # -- frame_deadline (1 s on quiet_daemon) drops a client that keeps dripping: bytes
    # arriving do not restart the clock, only a completed frame does
    d = quiet_daemon
    log_start = len(d.log_text())
    drip = RawClient(d.rw_socket)
    # long enough that dripping it outlasts expect_closed's timeout below
    payload = frame(Procedure.NODE_INFO, 2, b"\0" * 200)
    result: dict[str, float] = {}
    stop = threading.Event()
    started = time.monotonic()

    def dripper() -> None:
        try:
            for byte in payload[:-1]:  # never completes the frame
                drip.send_bytes(bytes([byte]))
                if stop.wait(0.2):
                    return
            result["completed"] = time.monotonic() - started
        except OSError:
            result["dropped"] = time.monotonic() - started

    thread = threading.Thread(target=dripper, daemon=True)
    thread.start()
    try:
        assert drip.expect_closed(timeout=15) == []
        dropped_after = time.monotonic() - started
        # (the daemon's clock starts at its first read, after `started`: never early)
        assert dropped_after >= 1.0, f"dropped after {dropped_after:.2f} s"
        assert "completed" not in result
    finally:
        stop.set()
        thread.join(5)
        drip.close()
    wait_for(lambda: "frame_deadline" in d.log_text()[log_start:], timeout=10,
             message="a log line naming frame_deadline")


def test_steady_traffic_never_hits_frame_deadline(quiet_daemon) -> None:
    """Frames that each complete quickly are fine even if the buffer never empties."""
    d = quiet_daemon
    with RawClient(d.rw_socket) as c:
        calls = [frame(Procedure.NODE_INFO, serial) for serial in range(100, 112)]
        half = len(calls[0]) // 2
        c.send_bytes(calls[0] + calls[1][:half])
        assert c.recv(timeout=2).serial == 100
        for i in range(1, len(calls) - 1):  # ~2.75 s of traffic, 0.25 s per frame
            time.sleep(0.25)
            c.send_bytes(calls[i][half:] + calls[i + 1][:half])
            reply = c.recv(timeout=2)
            assert isinstance(reply, Reply) and reply.serial == 100 + i, reply
        c.send_bytes(calls[-1][half:])
        assert c.recv(timeout=2).serial == 111


def test_oversized_frame_gets_error_then_close(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"max_frame": 4096, "max_queued_bytes": 2048,
                                          "keepalive_interval": 0}})
    with RawClient(d.rw_socket, hello=False) as c:
        # exactly max_frame is fine (HELLO's client_name pads it)
        base = len(c.proto.send(Call(Procedure.HELLO, 50, HelloArgs([1], ""))))
        big_hello = c.proto.send(Call(Procedure.HELLO, 50, HelloArgs([1], "x" * (4096 - base))))
        assert len(big_hello) == 4096
        c.send_bytes(big_hello)
        assert isinstance(c.recv(), Reply)
        c.send_bytes(frame(Procedure.NODE_INFO, 51, b"\0" * (4097 - 20)))
        seen = c.expect_closed(timeout=5)
        assert len(seen) == 1 and "exceeds the limit of 4096 bytes" in error_of(seen[0])[1]
    with RawClient(d.rw_socket) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)

    # -- max_queued_bytes: a reply bigger than the limit is fine for a client that reads
    idle = [RawClient(d.rw_socket) for _ in range(60)]
    try:
        with RawClient(d.rw_socket) as reader:
            for _ in range(5):
                reply = reader.call(Procedure.ADMIN_CLIENT_LIST)
                assert isinstance(reply, Reply), reply
                assert len(reply.result.clients) == 61
        # ... but a client that does not read them is dropped once they pile up
        hog = socket.socket(socket.AF_UNIX)
        hog.connect(str(d.rw_socket))
        hog.sendall(hello_frame())
        hog.setblocking(False)
        burst = b"".join(frame(Procedure.ADMIN_CLIENT_LIST, s) for s in range(2, 3000))
        sent = 0
        deadline = time.monotonic() + 10
        while "over max_queued_bytes=2048" not in d.log_text():
            try:
                sent += hog.send(burst[sent:] or frame(Procedure.NODE_INFO, 1))
            except BlockingIOError:
                time.sleep(0.02)
            except OSError:
                break
            assert time.monotonic() < deadline, "non-reading client never dropped"
        wait_for(lambda: "over max_queued_bytes=2048" in d.log_text(), timeout=5,
                 message="drop logged")
        hog.close()
        # -- a reply over max_frame is an error reply, not a broken connection
        more = [RawClient(d.rw_socket) for _ in range(30)]
        with RawClient(d.rw_socket) as c:
            reply = c.call(Procedure.ADMIN_CLIENT_LIST)
            code, message = error_of(reply)
            assert code == ErrorCode.LIMIT_EXCEEDED and "too large" in message
            assert isinstance(c.call(Procedure.NODE_INFO), Reply)
        for m in more:
            m.close()
    finally:
        for c in idle:
            c.close()


# -- resources ----------------------------------------------------------------------------

def test_out_of_fds_does_not_spin_the_loop(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"keepalive_interval": 0}}, start=False)
    d.start(nofile=64)  # the daemon's limit only: the test process keeps its own
    socks = []
    try:
        for _ in range(100):  # more than the daemon can accept; the rest wait in the backlog
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(d.rw_socket))
            socks.append(s)
        wait_for(lambda: "Too many open files" in d.log_text(), timeout=5,
                 message="EMFILE logged")
        before = _cpu_seconds(d.pid())
        time.sleep(1.0)  # measuring idle CPU needs a wall-clock window
        busy = _cpu_seconds(d.pid()) - before
        warnings = d.log_text().count("Too many open files")
        assert busy < 0.3, f"daemon used {busy:.2f} s CPU in 1 s while out of fds"
        assert warnings < 20, f"{warnings} accept warnings: the loop is spinning"
    finally:
        for s in socks:
            s.close()
    # with fds free again, clients are served
    def served() -> bool:
        try:
            with RawClient(d.rw_socket, timeout=2) as c:
                return isinstance(c.call(Procedure.NODE_INFO), Reply)
        except (OSError, TimeoutError):
            return False
    wait_for(served, timeout=10, message="served after fds were freed")


def test_connection_churn_does_not_grow_memory(shared_daemon) -> None:
    def churn(n: int) -> None:
        for _ in range(n):
            with RawClient(shared_daemon.rw_socket):
                pass
    churn(1000)  # warm up allocator pools
    wait_for(lambda: _client_count(shared_daemon) == 0, timeout=5, message="churn done")
    before = shared_daemon.rss_kib()
    churn(3000)
    wait_for(lambda: _client_count(shared_daemon) == 0, timeout=5, message="churn done")
    grown = shared_daemon.rss_kib() - before
    # (a leak of one logger per connection, ~750 bytes, would be over 2 MiB here)
    assert grown < 1024, f"RSS grew {grown} KiB over 3,000 connections ({before} KiB before)"
