"""Every procedure's payloads through a client and a server Connection.

Values come from strategies derived from the dataclass annotations (wire_helpers), so a
procedure or payload added to the table is exercised without editing this file.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import (
    FAST,
    ConnectionPair,
    drain,
    frame,
    referenced_classes,
    strategy_for,
    wire_equal,
)

import protocol
from protocol import errors
from protocol import payloads as p
from protocol.constants import MAX_LIST, MAX_STRING, MessageType, Status
from protocol.fields import Empty, Payload
from protocol.procedures import PROCEDURES, Kind, Procedure, ProcedureSpec

CALLS = [s for s in PROCEDURES.values() if s.kind is Kind.CALL]
EVENTS = [s for s in PROCEDURES.values() if s.kind is Kind.EVENT]


def _id(spec: ProcedureSpec) -> str:
    return spec.procedure.name


def test_table_covers_every_procedure() -> None:
    assert set(PROCEDURES) == {proc.value for proc in Procedure}
    assert len(CALLS) + len(EVENTS) == len(Procedure)
    for number, spec in PROCEDURES.items():
        assert spec.procedure == number


def test_every_payload_class_is_used() -> None:
    """Each payload dataclass is reachable from the table (or is the error/stream body)."""
    defined = {obj for obj in vars(p).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)
               and issubclass(obj, Payload)}
    used: set[type] = {p.ErrorPayload, p.StreamChunk}
    for spec in PROCEDURES.values():
        used |= referenced_classes(spec.args) | referenced_classes(spec.reply)
    # Known leftovers: defined and exported but no procedure uses them (DOMAIN_DEFINE_XML
    # and DOMAIN_CREATE_XML take XMLFlagsArgs). Kept because the names are public; the
    # assertion below fails once a procedure starts using one, so the list cannot go stale.
    unused_ok = {p.XMLArgs}
    assert unused_ok.isdisjoint(used), "remove it from unused_ok: it is used now"
    assert defined - used - unused_ok == set(), "payload classes nothing refers to"
    assert used - defined == set(), "table refers to classes protocol.payloads does not define"
    assert set(p.__all__) == {c.__name__ for c in defined}, "payloads.__all__ is out of step"


@pytest.mark.parametrize("spec", CALLS, ids=_id)
@FAST
@given(data=st.data())
def test_call_and_reply_round_trip(spec: ProcedureSpec, data: st.DataObject) -> None:
    pair = ConnectionPair()
    args = data.draw(strategy_for(spec.args), label="args")
    result = data.draw(strategy_for(spec.reply), label="result")
    serial = data.draw(st.integers(0, 2**32 - 1), label="serial")

    got = pair.send_to_server(protocol.Call(spec.procedure, serial, args))
    assert isinstance(got, protocol.Call)
    assert got.procedure is spec.procedure and got.serial == serial
    assert wire_equal(got.args, args)

    back = pair.send_to_client(protocol.Reply(spec.procedure, serial, result))
    assert isinstance(back, protocol.Reply)
    assert back.procedure is spec.procedure and back.serial == serial
    assert wire_equal(back.result, result)


@pytest.mark.parametrize("spec", EVENTS, ids=_id)
@FAST
@given(data=st.data())
def test_event_round_trip(spec: ProcedureSpec, data: st.DataObject) -> None:
    assert spec.reply is Empty
    pair = ConnectionPair()
    body = data.draw(strategy_for(spec.args))
    raw = pair.server.send(protocol.Event(spec.procedure, body))
    assert protocol.decode_header(raw)[6] == 0, "events carry serial 0"
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Event) and got.procedure is spec.procedure
    assert wire_equal(got.body, body)


@FAST
@given(error=strategy_for(p.ErrorPayload), procedure=st.integers(0, 2**32 - 1),
       serial=st.integers(0, 2**32 - 1))
def test_error_reply_round_trip(error: p.ErrorPayload, procedure: int, serial: int) -> None:
    """Error replies may name any procedure number, even one the client does not know."""
    pair = ConnectionPair()
    got = pair.send_to_client(protocol.ErrorReply(procedure, serial, error))
    assert got == protocol.ErrorReply(procedure, serial, error)


def test_event_procedures_cannot_be_called_and_calls_cannot_be_events() -> None:
    pair = ConnectionPair()
    body = p.LifecycleEventMsg(1, p.DomainRef("vm", bytes(16), 1), 0, 0)
    # the server refuses an event number arriving as a call
    pair.server.receive_data(frame(Procedure.EVENT_LIFECYCLE, b"", serial=3))
    with pytest.raises(errors.UnknownProcedure) as exc:
        pair.server.next_message()
    assert exc.value.serial == 3
    # and a server cannot send a call procedure as an event
    with pytest.raises(errors.LocalProtocolError):
        pair.server.send(protocol.Event(Procedure.NODE_INFO, body))


# --- bounds on send ---------------------------------------------------------------------

REF = p.DomainRef("vm", bytes(16), -1)


@pytest.mark.parametrize("message", [
    protocol.Reply(Procedure.DOMAIN_GET_INFO, 1, p.DomainInfoReply(256, 0, 0, 0, 0)),  # U8
    protocol.Reply(Procedure.DOMAIN_GET_INFO, 1, p.DomainInfoReply(1, -1, 0, 0, 0)),  # U64
    protocol.Reply(Procedure.DOMAIN_GET_INFO, 1, p.DomainInfoReply(1, 0, 0, 65536, 0)),  # U16
    protocol.Reply(Procedure.DOMAIN_GET_INFO, 1, p.DomainInfoReply(1, 0, 0, 0, 2**64)),
    protocol.Reply(Procedure.DOMAIN_LOOKUP_BY_NAME, 1,
                   p.DomainReply(p.DomainRef("vm", bytes(16), 2**31))),  # S32
    protocol.Reply(Procedure.DOMAIN_LOOKUP_BY_NAME, 1,
                   p.DomainReply(p.DomainRef("vm", bytes(15), 1))),  # uuid of 15 bytes
    protocol.Reply(Procedure.DOMAIN_LIST, 1, p.ListDomainsReply(
        [p.DomainSummary(REF, 1, 300, True, False)])),  # nested U8
    protocol.Reply(Procedure.GET_HOSTNAME, 1, p.StringReply("\ud800")),  # not UTF-8
    protocol.Reply(Procedure.GET_HOSTNAME, 1, p.NameArgs("wrong payload class")),
    protocol.Reply(Procedure.DOMAIN_STATS, 1, p.StatsReply([p.StatsRecord(REF, [
        p.TypedParam("x", 2, 2**63)])])),  # S64
], ids=lambda m: f"{m.procedure.name}")
def test_out_of_range_values_are_local_errors_on_send(message: protocol.Reply) -> None:
    pair = ConnectionPair()
    with pytest.raises(errors.LocalProtocolError):
        pair.server.send(message)
    # nothing was half-sent and the connection is still usable
    assert pair.send_to_client(protocol.Pong()) == protocol.Pong()


@pytest.mark.parametrize("message", [
    protocol.Call(Procedure.DOMAIN_LIST, 1, p.ListDomainsArgs(-1)),  # negative U32
    protocol.Call(Procedure.DOMAIN_LIST, 1, p.ListDomainsArgs(2**32)),
    protocol.Call(Procedure.DOMAIN_LOOKUP_BY_ID, 1, p.IdArgs(-(2**31) - 1)),
    protocol.Call(Procedure.DOMAIN_LOOKUP_BY_UUID, 1, p.UUIDArgs(b"short")),
    protocol.Call(Procedure.HELLO, 1, p.HelloArgs([1, 65536])),
    protocol.Call(Procedure.NODE_INFO, 1, p.NameArgs("NODE_INFO takes Empty")),
], ids=lambda m: f"{m.procedure.name}")
def test_out_of_range_values_are_local_errors_on_client_send(message: protocol.Call) -> None:
    pair = ConnectionPair()
    with pytest.raises(errors.LocalProtocolError):
        pair.client.send(message)


def test_oversized_message_is_a_local_error() -> None:
    pair = ConnectionPair(max_frame=1024)
    with pytest.raises(errors.LocalProtocolError, match="frame limit"):
        pair.server.send(protocol.Reply(Procedure.GET_HOSTNAME, 1, p.StringReply("x" * 1024)))
    reply = protocol.Reply(Procedure.GET_HOSTNAME, 2, p.StringReply("x" * 900))
    assert pair.send_to_client(reply) == reply


# --- bounds on receive (bytes crafted by hand) -------------------------------------------

def _negotiated_server() -> protocol.Connection:
    return ConnectionPair().server


@pytest.mark.parametrize(("procedure", "payload"), [
    (Procedure.DOMAIN_LOOKUP_BY_NAME, struct.pack(">I", MAX_STRING + 1) + b"vm"),
    (Procedure.DOMAIN_LOOKUP_BY_NAME, struct.pack(">I", 0xFFFFFFFF)),
    (Procedure.DOMAIN_DEFINE_XML, struct.pack(">I", MAX_STRING + 1) + b"<domain/>"),
    (Procedure.EVENT_REGISTER, struct.pack(">II", 0, MAX_STRING + 1)),  # blob
    (Procedure.HELLO, struct.pack(">I", MAX_LIST + 1) + b"\x00\x01"),
    (Procedure.DOMAIN_STATS, struct.pack(">I", 0xFFFFFFFF)),
], ids=["string", "string-u32-max", "xml", "blob", "list", "list-u32-max"])
def test_received_lengths_over_the_limits_are_bad_payloads(procedure: Procedure,
                                                           payload: bytes) -> None:
    server = _negotiated_server()
    server.receive_data(frame(procedure, payload, serial=42))
    with pytest.raises(errors.BadPayload) as exc:
        server.next_message()
    assert exc.value.serial == 42 and exc.value.procedure == procedure
    assert not exc.value.fatal
    assert "validation" in exc.value.message


def test_received_list_over_the_limit_in_a_reply() -> None:
    pair = ConnectionPair()
    pair.client.receive_data(frame(Procedure.DOMAIN_LIST, struct.pack(">I", MAX_LIST + 1),
                                   msg_type=MessageType.REPLY, serial=9))
    with pytest.raises(errors.BadPayload) as exc:
        pair.client.next_message()
    assert exc.value.serial == 9


@pytest.mark.parametrize(("procedure", "payload"), [
    (Procedure.DOMAIN_LOOKUP_BY_UUID, b"\x01" * 15),  # uuid one byte short
    (Procedure.DOMAIN_LOOKUP_BY_NAME, struct.pack(">I", 5) + b"vm"),  # string cut short
    (Procedure.EVENT_REGISTER, struct.pack(">II", 0, 16) + b"\x00" * 3),  # blob cut short
    (Procedure.DOMAIN_SET_AUTOSTART, struct.pack(">I", 2) + b"vm" + bytes(16) + b"\0\0\0\1"),
    (Procedure.DOMAIN_LOOKUP_BY_ID, b"\x00\x00\x01"),
    (Procedure.DOMAIN_GET_STATE, b""),
], ids=["uuid", "string", "blob", "missing-bool", "short-int", "empty"])
def test_truncated_payloads_are_bad_payloads(procedure: Procedure, payload: bytes) -> None:
    server = _negotiated_server()
    server.receive_data(frame(procedure, payload, serial=5))
    with pytest.raises(errors.BadPayload) as exc:
        server.next_message()
    assert exc.value.serial == 5


def test_a_truncated_bool_reply_is_not_true() -> None:
    pair = ConnectionPair()
    pair.client.receive_data(frame(Procedure.DOMAIN_GET_AUTOSTART, b"",
                                   msg_type=MessageType.REPLY, serial=3))
    with pytest.raises(errors.BadPayload):
        pair.client.next_message()


# --- forward compatibility ---------------------------------------------------------------

@pytest.mark.parametrize("spec", CALLS, ids=_id)
@FAST
@given(data=st.data())
def test_reply_with_trailing_bytes_from_a_newer_server_decodes(spec: ProcedureSpec,
                                                               data: st.DataObject) -> None:
    pair = ConnectionPair()
    result = data.draw(strategy_for(spec.reply))
    extra = data.draw(st.binary(min_size=1, max_size=64))
    raw = pair.server.send(protocol.Reply(spec.procedure, 11, result))
    newer = frame(spec.procedure, raw[protocol.HEADER_SIZE:] + extra,
                  msg_type=MessageType.REPLY, serial=11, version=pair.client.version or 1)
    pair.client.receive_data(newer)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and wire_equal(got.result, result)


def test_call_args_with_trailing_bytes_from_a_newer_client_decode() -> None:
    pair = ConnectionPair()
    raw = pair.client.send(protocol.Call(Procedure.DOMAIN_LIST, 4, p.ListDomainsArgs(1)))
    pair.server.receive_data(frame(Procedure.DOMAIN_LIST, raw[20:] + b"\x00\x00\x00\x07new",
                                   serial=4))
    assert pair.server.next_message() == protocol.Call(Procedure.DOMAIN_LIST, 4,
                                                       p.ListDomainsArgs(1))


def test_error_payload_with_trailing_bytes_decodes() -> None:
    pair = ConnectionPair()
    error = p.ErrorPayload(protocol.ErrorCode.NO_DOMAIN, protocol.ErrorDomain.QEMU,
                           protocol.ErrorLevel.ERROR, "no domain 'x'")
    body = protocol.codec_for(p.ErrorPayload).encode(error) + b"future"
    pair.client.receive_data(frame(Procedure.DOMAIN_LOOKUP_BY_NAME, body,
                                   msg_type=MessageType.REPLY, status=Status.ERROR, serial=8))
    assert drain(pair.client) == [
        protocol.ErrorReply(Procedure.DOMAIN_LOOKUP_BY_NAME, 8, error), protocol.NEED_DATA]
