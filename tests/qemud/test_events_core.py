"""Event registration over the wire, and delivery/overflow in-process (no driver needed)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

import client
from protocol import EventId, Procedure, Reply
from protocol.payloads import DomainRef, EventRegisterArgs
from qemud.config import Config, Limits, Paths
from qemud.dispatch import Dispatcher, HelloPolicy
from qemud.events import EventBus
from qemud.loop import EventLoop
from qemud.server import Client, Server
from qemud.transport import UnixTransport
from tests.qemud.wire import RawClient, error_of

DOM_A = DomainRef("a", bytes(range(16)), 1)
DOM_B = DomainRef("b", bytes(range(1, 17)), 2)


# -- over the wire -------------------------------------------------------------------------

def test_register_and_deregister_on_ro_and_rw(shared_daemon) -> None:
    for readonly in (False, True):
        with shared_daemon.connect(readonly=readonly) as conn:
            ids = {conn.register_event(e) for e in EventId}
            assert len(ids) == len(EventId)  # distinct callback ids
            for callback_id in ids:
                conn.deregister_event(callback_id)
            with pytest.raises(client.InvalidArgError, match="no event callback"):
                conn.deregister_event(min(ids))


def test_register_errors(shared_daemon) -> None:
    with RawClient(shared_daemon.ro_socket) as c:
        code, message = error_of(c.call(Procedure.EVENT_REGISTER, EventRegisterArgs(77)))
        assert code == 8 and "unknown event id 77" in message and "LIFECYCLE=0" in message
        code, message = error_of(c.call(Procedure.EVENT_REGISTER,
                                        EventRegisterArgs(0, b"short")))
        assert code == 8 and "16 bytes" in message
        reply = c.call(Procedure.EVENT_REGISTER, EventRegisterArgs(0, bytes(16)))
        assert isinstance(reply, Reply)


def test_callbacks_belong_to_their_connection(shared_daemon) -> None:
    with shared_daemon.connect() as a, shared_daemon.connect() as b:
        cid = a.register_event(EventId.LIFECYCLE)
        with pytest.raises(client.InvalidArgError):
            b.deregister_event(cid)
        a.deregister_event(cid)


# -- delivery, in-process --------------------------------------------------------------------

class FakeServer:
    def __init__(self, clients) -> None:
        self.clients = {c.id: c for c in clients}
        self.config = SimpleNamespace(limits=Limits())
        self.sent: list[tuple[int, object]] = []

    def send_event(self, client, event) -> None:
        self.sent.append((client.id, event))


def _fake_client(cid: int) -> SimpleNamespace:
    return SimpleNamespace(id=cid, callbacks={})


def test_delivery_filters_by_event_and_domain() -> None:
    all_, only_b, reboot = _fake_client(1), _fake_client(2), _fake_client(3)
    server = FakeServer([all_, only_b, reboot])
    bus = EventBus(server)
    cb_all = bus.register(all_, EventRegisterArgs(EventId.LIFECYCLE)).callback_id
    cb_b = bus.register(only_b, EventRegisterArgs(EventId.LIFECYCLE, DOM_B.uuid)).callback_id
    cb_r = bus.register(reboot, EventRegisterArgs(EventId.REBOOT)).callback_id
    bus.lifecycle(DOM_A, 2, 0)
    bus.lifecycle(DOM_B, 5, 1)
    bus.reboot(DOM_A)
    got = [(cid, ev.procedure, ev.body.callback_id, ev.body.dom.name) for cid, ev in server.sent]
    assert got == [
        (1, Procedure.EVENT_LIFECYCLE, cb_all, "a"),
        (1, Procedure.EVENT_LIFECYCLE, cb_all, "b"),
        (2, Procedure.EVENT_LIFECYCLE, cb_b, "b"),
        (3, Procedure.EVENT_REBOOT, cb_r, "a"),
    ]


def test_failing_listener_does_not_stop_delivery() -> None:
    c = _fake_client(1)
    server = FakeServer([c])
    bus = EventBus(server)
    heard: list[object] = []

    def bad(*args) -> None:
        raise RuntimeError("listener bug")

    bus.add_listener(bad)
    bus.add_listener(lambda *args: heard.append(args))
    bus.register(c, EventRegisterArgs(EventId.APPLIANCE))
    bus.appliance(DOM_A, "heartbeat-missed", "no heartbeat for 30 s")
    bus.watchdog(DOM_A, 1)
    assert len(heard) == 2 and len(server.sent) == 1


def test_client_that_does_not_read_events_is_dropped_at_max_queued_bytes(tmp_path) -> None:
    """A real Server and loop in-process; the peer end of a socketpair never reads."""
    config = Config(mode="session", paths=Paths(tmp_path / "run", tmp_path / "etc",
                                                tmp_path / "lib", tmp_path / "log"))
    config.limits.max_queued_bytes = 64 * 1024
    loop = EventLoop()
    server = Server(loop, config, Dispatcher(HelloPolicy("test", 0)))
    bus = EventBus(server)
    mine, peer = socket.socketpair()
    reader_end, reader_peer = socket.socketpair()
    try:
        hog = Client(server, UnixTransport(mine), "unix", False, "pid=0 uid=0")
        good = Client(server, UnixTransport(reader_end), "unix", False, "pid=1 uid=0")
        for c in (hog, good):
            server.clients[c.id] = c
            bus.register(c, EventRegisterArgs(EventId.LIFECYCLE))
        closed: list[Client] = []
        hog.on_close.append(closed.append)
        reader_peer.setblocking(False)
        received = 0
        started = time.monotonic()
        while not closed:
            bus.lifecycle(DOM_A, 2, 0)
            loop.run_once(max_wait=0)
            try:
                while True:
                    received += len(reader_peer.recv(65536))  # the good client reads
            except BlockingIOError:
                pass
            assert time.monotonic() - started < 10, "the hog was never dropped"
        assert hog.closed and hog.id not in server.clients
        assert not good.closed and good.id in server.clients
        assert received > 64 * 1024  # the good one got more than the limit in total
    finally:
        for s in (peer, reader_peer):
            s.close()
        server.close_all("test over")
        loop.close()
