"""Slow, non-reading and flooding clients must not slow down a well-behaved one.

During each hostile load a well-behaved client (connected first) makes 100 NODE_INFO
calls, each of which must be answered within 0.5 s:

* 500 connections dripping a HELLO frame one byte per 0.5 s (``frame_deadline`` then
  drops every one of them);
* a client that registered many event callbacks and never reads, while another client
  makes the daemon emit events (``max_queued_bytes`` then drops it);
* a flood of connections past ``max_clients`` from another process (each refused with a
  LIMIT_EXCEEDED error frame; the admitted clients are unaffected);
* a client pipelining thousands of calls per write and reading the replies (the server
  handles at most ``MESSAGES_PER_TURN`` of one client's messages before serving others).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from protocol import ErrorCode, Procedure, Reply
from protocol.payloads import EventRegisterArgs
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.qemud.wire import RawClient, error_of, hello_frame

from .conftest import (
    NO_GUEST_EMULATOR,
    assert_log_clean,
    assert_prompt,
    bare_domain_xml,
    guest_name,
    prompt_call,
)

DRIPPERS = 500
DRIP_INTERVAL = 0.5
FRAME_DEADLINE = 3.0
MAX_QUEUED = 16 * 1024
MAX_CLIENTS = 20


@pytest.fixture
def busy_daemon(nofile: int, daemon_factory) -> DaemonProcess:
    return daemon_factory(config={"limits": {
        "keepalive_interval": 0, "max_clients": 2000, "frame_deadline": FRAME_DEADLINE,
        "max_queued_bytes": MAX_QUEUED}})


def _client_count(good: RawClient) -> int:
    reply = good.call(Procedure.ADMIN_CLIENT_LIST)
    assert isinstance(reply, Reply)
    return len(reply.result.clients)


# -- slow drip ---------------------------------------------------------------------------

def test_500_slow_drip_connections(busy_daemon: DaemonProcess) -> None:
    d = busy_daemon
    good = RawClient(d.rw_socket, timeout=5)
    payload = hello_frame()
    drippers: list[socket.socket] = []
    stop = threading.Event()
    dripping = threading.Event()  # every dripper has sent its first byte
    dropped: set[int] = set()

    def drip() -> None:
        for i in range(len(payload) - 1):  # never completes the frame
            for n, s in enumerate(drippers):
                if n in dropped:
                    continue
                try:
                    s.send(payload[i:i + 1])
                except OSError:  # EPIPE/ECONNRESET once the daemon dropped it
                    dropped.add(n)
            dripping.set()
            if stop.wait(DRIP_INTERVAL):
                return

    try:
        for _ in range(DRIPPERS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.rw_socket))
            s.setblocking(False)
            drippers.append(s)
        thread = threading.Thread(target=drip, daemon=True)
        started = time.monotonic()
        thread.start()
        # every dripper mid-frame, and accepted (connect() returns once a connection is in
        # the backlog, before the daemon accepted it)
        assert dripping.wait(FRAME_DEADLINE), "the drippers never sent a byte"
        wait_for(lambda: _client_count(good) == DRIPPERS + 1, timeout=FRAME_DEADLINE,
                 interval=0.1, message="every dripper accepted")
        worst = assert_prompt(good, calls=100, each=0.5)
        # the calls ran while every dripper was connected and mid-frame (the daemon's
        # own count, not a clock: none had been dropped yet)
        assert _client_count(good) == DRIPPERS + 1, \
            f"the calls (worst {worst:.3f} s) must run while all drippers are connected"

        # frame_deadline drops every dripper (the daemon closes: we read EOF)
        def all_closed() -> bool:
            for s in drippers:
                try:
                    if s.recv(4096) != b"":
                        continue
                except BlockingIOError:
                    return False
                except OSError:
                    pass
            return True
        wait_for(all_closed, timeout=FRAME_DEADLINE + 10, interval=0.2,
                 message="every dripper dropped by frame_deadline")
        assert time.monotonic() - started >= FRAME_DEADLINE * 0.9
        assert _client_count(good) == 1
        assert d.log_text().count("(frame_deadline); dropping") >= DRIPPERS
        assert_prompt(good, calls=20, each=0.5)
    finally:
        stop.set()
        for s in drippers:
            s.close()
        good.close()
    assert_log_clean(d)


# -- a client that never reads ---------------------------------------------------------------

def test_client_that_never_reads_its_events_is_dropped(busy_daemon: DaemonProcess) -> None:
    d = busy_daemon
    good = RawClient(d.rw_socket, timeout=5)
    hog = RawClient(d.rw_socket, timeout=5)
    for _ in range(200):  # every event is sent once per registration
        reply = hog.call(Procedure.EVENT_REGISTER, EventRegisterArgs(0))
        assert isinstance(reply, Reply)
    # from now on the hog reads nothing
    name = guest_name("events")
    xml = bare_domain_xml(name, emulator=NO_GUEST_EMULATOR)
    stop = threading.Event()
    emitted = [0]
    errors: list[BaseException] = []

    def emit_events() -> None:
        try:
            with d.connect() as conn:
                while not stop.is_set():
                    conn.define_xml(xml).undefine()  # DEFINED + UNDEFINED events
                    emitted[0] += 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    emitter = threading.Thread(target=emit_events, daemon=True)
    emitter.start()
    try:
        # calls all the while the hog's queue fills, until it is dropped, and after
        worst, calls, deadline = 0.0, 0, time.monotonic() + 30
        while calls < 100 or f"over max_queued_bytes={MAX_QUEUED}" not in d.log_text():
            worst = max(worst, prompt_call(good, 0.5, calls))
            calls += 1
            assert time.monotonic() < deadline, "the non-reading client was never dropped"
        assert_prompt(good, calls=20, each=0.5)
    finally:
        stop.set()
        emitter.join(10)
    assert not errors, errors
    # the hog finds what the kernel buffered, then EOF
    seen = hog.expect_closed(timeout=10)
    assert seen and len(seen) < emitted[0] * 200, (len(seen), emitted[0])
    hog.close()
    assert _client_count(good) == 1
    good.close()
    print(f"{calls} calls, worst latency {worst:.3f} s; {emitted[0]} events emitted")
    assert_log_clean(d)


# -- a flood past max_clients ------------------------------------------------------------

FLOOD_SCRIPT = r"""
import json, socket, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
refused = other = errors = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        refused += b"max_clients" in data
        other += b"max_clients" not in data
    except OSError:
        errors += 1
    finally:
        s.close()
print(json.dumps({"refused": refused, "other": other, "errors": errors}))
"""


def test_connection_flood_past_max_clients(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"keepalive_interval": 0,
                                          "max_clients": MAX_CLIENTS}})
    good = RawClient(d.rw_socket, timeout=5)
    admitted = [RawClient(d.rw_socket) for _ in range(MAX_CLIENTS - 1)]
    floods = [subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, str(d.rw_socket), "4"],
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        wait_for(lambda: f"too many clients (max_clients={MAX_CLIENTS})" in d.log_text(),
                 timeout=30, message="the flood under way (a connection refused)")
        assert_prompt(good, calls=100, each=0.5)
        for c in admitted[::5]:  # the admitted clients are served too
            assert isinstance(c.call(Procedure.NODE_INFO, timeout=2), Reply)
        results = [json.loads(f.communicate(timeout=30)[0]) for f in floods]
    finally:
        for f in floods:
            if f.poll() is None:
                f.kill()
                f.wait()
    refused = sum(r["refused"] for r in results)
    assert refused >= 100, results
    assert sum(r["other"] for r in results) == 0, results  # each one got the error frame
    assert d.proc is not None and d.proc.poll() is None
    assert f"too many clients (max_clients={MAX_CLIENTS})" in d.log_text()
    with RawClient(d.rw_socket, hello=False) as extra:  # still at the limit
        seen = extra.expect_closed(timeout=5)
        assert len(seen) == 1 and error_of(seen[0])[0] == ErrorCode.LIMIT_EXCEEDED
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
    good.close()
    assert_log_clean(d)


# -- a client pipelining thousands of calls ------------------------------------------------

PIPELINE_SCRIPT = r"""
import socket, sys, threading, time
sys.path.insert(0, sys.argv[3])
from protocol import Procedure
from tests.qemud.wire import frame, hello_frame
path, seconds = sys.argv[1], float(sys.argv[2])
burst = b"".join(frame(Procedure.GET_URI, n) for n in range(2, 2 + 13000))  # ~256 KiB
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(hello_frame())
received = [0]
def drain():
    while True:
        try:
            data = s.recv(1 << 20)
        except OSError:
            return
        if not data:
            return
        received[0] += len(data)
threading.Thread(target=drain, daemon=True).start()
deadline = time.monotonic() + seconds
sent = 0
while time.monotonic() < deadline:
    s.sendall(burst)
    sent += 13000
print(sent, received[0])
"""


def test_pipelining_client_does_not_starve_others(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"keepalive_interval": 0}})
    good = RawClient(d.rw_socket, timeout=5)
    repo = str(Path(__file__).resolve().parents[2])
    hog = subprocess.Popen([sys.executable, "-c", PIPELINE_SCRIPT, str(d.rw_socket), "3",
                            repo], stdout=subprocess.PIPE, text=True)
    try:
        def pipelining() -> bool:  # the hog is connected and its calls are being served
            reply = good.call(Procedure.ADMIN_CLIENT_LIST)
            assert isinstance(reply, Reply)
            return any(c.calls > 1000 for c in reply.result.clients)
        wait_for(pipelining, timeout=30, interval=0.05, message="the pipelining under way")
        worst, calls = 0.0, 0
        while hog.poll() is None:
            worst = max(worst, prompt_call(good, 0.5, calls))
            calls += 1
        sent, received = map(int, hog.communicate(timeout=10)[0].split())
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
    assert sent >= 13000 and received > 0, (sent, received)
    assert calls >= 20, f"only {calls} calls answered in 3 s next to a pipelining client"
    print(f"{calls} calls next to {sent} pipelined ones; worst latency {worst:.3f} s")
    good.close()
    assert_log_clean(d)
