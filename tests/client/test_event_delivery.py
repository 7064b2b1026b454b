"""Where the client library delivers events, against a stand-in daemon that sends them
exactly when a test needs them.

The stand-in speaks the real protocol (``protocol.Connection`` as server) over a unix
socket: it answers HELLO, EVENT_REGISTER (its reply and a lifecycle event for the new
registration in one write, as a busy daemon may send them), EVENT_DEREGISTER, and
closes the connection when told to.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
import protocol
from protocol import payloads as pl
from protocol.constants import EventId, LifecycleEvent, StartedDetail

P = protocol.Procedure
DOM = pl.DomainRef("ev", b"\x01" * 16, 1)


class StandIn:
    """The stand-in daemon (one client); :meth:`close_client` drops its connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.next_id = 1
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"qemud+unix:///session?socket={self.path}"

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        self.sock = sock
        conn = protocol.Connection(protocol.Role.SERVER)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                conn.receive_data(data)
                while isinstance(msg := conn.next_message(), protocol.Call):
                    sock.sendall(self._answer(conn, msg))
        except OSError:
            return

    def _answer(self, conn: protocol.Connection, call: protocol.Call) -> bytes:
        if call.procedure == P.HELLO:
            version = conn.accept_hello(call.args, call.serial)
            return conn.send(protocol.Reply(P.HELLO, call.serial,
                                            pl.HelloReply(version, "stand-in", False, 0)))
        if call.procedure == P.EVENT_REGISTER:
            callback_id, self.next_id = self.next_id, self.next_id + 1
            reply = conn.send(protocol.Reply(P.EVENT_REGISTER, call.serial,
                                             pl.CallbackReply(callback_id)))
            event = conn.send(protocol.Event(P.EVENT_LIFECYCLE, pl.LifecycleEventMsg(
                callback_id, DOM, int(LifecycleEvent.STARTED), int(StartedDetail.BOOTED))))
            return reply + event  # one write: the client reads both at once
        return conn.send(protocol.Reply(call.procedure, call.serial, protocol.Empty()))

    def close_client(self) -> None:
        assert self.sock is not None
        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        if self.sock is not None:
            self.sock.close()


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn(tmp_path / "sock")
    yield server
    server.close()


def test_an_event_that_comes_with_the_registration_reply_reaches_its_callback(
        stand_in: StandIn) -> None:
    got: list[client.EventRecord] = []
    arrived = threading.Event()

    def callback(record: client.EventRecord) -> None:
        got.append(record)
        arrived.set()
    with client.connect(stand_in.uri) as conn:
        for _ in range(20):  # (the race the reader could win is there every time)
            arrived.clear()
            callback_id = conn.register_event(EventId.LIFECYCLE, callback)
            assert arrived.wait(5), "the event never reached its callback"
            assert got[-1].callback_id == callback_id
            assert conn.next_event(0) is None  # not parked where next_event reads
    assert len(got) == 20


def test_a_deregistered_registrations_events_are_not_handed_to_a_later_reader(
        stand_in: StandIn) -> None:
    """qemush's one-shot ``event`` leaves the events it did not print: the next
    ``event`` command on the same connection printed them (another domain's too)."""
    with client.connect(stand_in.uri) as conn:
        first = conn.register_event(EventId.LIFECYCLE)
        second = conn.register_event(EventId.LIFECYCLE)
        conn.deregister_event(first)
        record = conn.next_event(5)
        assert record is not None and record.callback_id == second
        assert conn.next_event(0) is None


def test_next_event_without_a_timeout_ends_when_the_connection_does(
        stand_in: StandIn) -> None:
    with client.connect(stand_in.uri) as conn:
        callback_id = conn.register_event(EventId.LIFECYCLE)
        record = conn.next_event()  # (queued before: returned)
        assert record is not None and record.callback_id == callback_id
        outcome: list[BaseException | client.EventRecord | None] = []
        waiting = threading.Thread(target=lambda: _wait(conn, outcome), daemon=True)
        waiting.start()
        stand_in.close_client()
        waiting.join(10)
        assert not waiting.is_alive(), "next_event() still waits on a lost connection"
        [error] = outcome
        assert isinstance(error, client.ConnectionLost), error


def _wait(conn: client.Connection,
          outcome: list[BaseException | client.EventRecord | None]) -> None:
    try:
        outcome.append(conn.next_event())
    except BaseException as exc:
        outcome.append(exc)
