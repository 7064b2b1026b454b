"""However the bytes are cut, a Connection yields exactly the same messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import FAST, ConnectionPair

import protocol
from protocol import payloads as p
from protocol.messages import (
    CLOSED,
    NEED_DATA,
    Call,
    ErrorReply,
    Event,
    Ping,
    Pong,
    Reply,
    StreamAbort,
    StreamData,
    StreamEnd,
)
from protocol.procedures import Procedure

REF = p.DomainRef("vm-ü", bytes(range(16)), 7)
ERR = p.ErrorPayload(42, 10, 2, "domain not found: no domain with matching name 'x'")
CONSOLE = Procedure.DOMAIN_OPEN_CONSOLE

SERVER_MESSAGES: list[protocol.Message] = [
    Reply(Procedure.DOMAIN_LIST, 2, p.ListDomainsReply(
        [p.DomainSummary(REF, 1, 1, True, False)] * 3)),
    Event(Procedure.EVENT_LIFECYCLE, p.LifecycleEventMsg(1, REF, 2, 0)),
    Ping(),
    Reply(Procedure.GET_HOSTNAME, 3, p.StringReply("")),
    ErrorReply(Procedure.DOMAIN_LOOKUP_BY_NAME, 4, ERR),
    StreamData(CONSOLE, 5, b"\x00\x01boot: "),
    Reply(Procedure.CLOSE, 6, protocol.Empty()),  # an empty payload: header only
    StreamEnd(CONSOLE, 5),
    Reply(Procedure.DOMAIN_STATS, 7, p.StatsReply([p.StatsRecord(REF, [
        p.TypedParam("cpu.time", 1, 123), p.TypedParam("balloon", 2, 0, 1.5)])])),
    StreamAbort(CONSOLE, 5, ERR),
    Pong(),
]

CLIENT_MESSAGES: list[protocol.Message] = [
    Call(Procedure.DOMAIN_LIST, 2, p.ListDomainsArgs(1)),
    Call(Procedure.NODE_INFO, 3, protocol.Empty()),
    Pong(),
    Call(Procedure.DOMAIN_DEFINE_XML, 4, p.XMLFlagsArgs("<domain type='kvm'/>", 0)),
    StreamData(CONSOLE, 5, b"root\n"),
    Ping(),
    Call(Procedure.DOMAIN_STATS, 6, p.StatsArgs([REF, REF], 3)),
    StreamEnd(CONSOLE, 5),
]


def _stream(to_client: bool) -> tuple[protocol.Connection, protocol.Connection, bytes,
                                      list[protocol.Message]]:
    pair = ConnectionPair()
    sender, receiver = (pair.server, pair.client) if to_client else (pair.client, pair.server)
    messages = SERVER_MESSAGES if to_client else CLIENT_MESSAGES
    return sender, receiver, b"".join(sender.send(m) for m in messages), messages


def feed(receiver: protocol.Connection, chunks: list[bytes]) -> list[object]:
    """Feed chunks one by one, draining after each; then EOF."""
    out: list[object] = []
    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean EOF
        receiver.receive_data(chunk)
        while (msg := receiver.next_message()) is not NEED_DATA:
            assert msg is not CLOSED
            out.append(msg)
    receiver.receive_data(b"")
    out.append(receiver.next_message())
    return out


@pytest.mark.parametrize("to_client", [True, False], ids=["server->client", "client->server"])
def test_all_at_once(to_client: bool) -> None:
    _, receiver, data, messages = _stream(to_client)
    assert feed(receiver, [data]) == [*messages, CLOSED]


@pytest.mark.parametrize("to_client", [True, False], ids=["server->client", "client->server"])
def test_every_split_point(to_client: bool) -> None:
    _, _, data, messages = _stream(to_client)
    for cut in range(len(data) + 1):
        _, receiver, _, _ = _stream(to_client)
        assert feed(receiver, [data[:cut], data[cut:]]) == [*messages, CLOSED], cut


@pytest.mark.parametrize("to_client", [True, False], ids=["server->client", "client->server"])
def test_one_byte_at_a_time(to_client: bool) -> None:
    _, receiver, data, messages = _stream(to_client)
    assert feed(receiver, [data[i:i + 1] for i in range(len(data))]) == [*messages, CLOSED]


@pytest.mark.parametrize("to_client", [True, False], ids=["server->client", "client->server"])
def test_buffered_before_draining(to_client: bool) -> None:
    """Several receive_data calls before any next_message give the same result."""
    _, receiver, data, messages = _stream(to_client)
    for i in range(0, len(data), 7):
        receiver.receive_data(data[i:i + 7])
    receiver.receive_data(b"")
    out = []
    while (msg := receiver.next_message()) is not CLOSED:
        out.append(msg)
    assert out == messages


@FAST
@given(data=st.data(), to_client=st.booleans())
def test_random_chunking(data: st.DataObject, to_client: bool) -> None:
    _, receiver, raw, messages = _stream(to_client)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert feed(receiver, chunks) == [*messages, CLOSED]
