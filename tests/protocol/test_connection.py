"""protocol.connection: framing, the header, hello/version rules, roles, errors, keepalive,
streams. Frames under test are written by hand (wire_helpers.frame uses struct directly).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import FAST, ConnectionPair, drain, frame

import protocol
from protocol import HEADER, errors
from protocol import payloads as p
from protocol.connection import decode_header, encode_header
from protocol.constants import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    PROGRAM,
    KeepaliveProc,
    MessageType,
    Status,
)
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

CLIENT, SERVER = protocol.Role.CLIENT, protocol.Role.SERVER
REF = p.DomainRef("vm1", bytes(range(16)), 3)
ERR = p.ErrorPayload(protocol.ErrorCode.OPERATION_FAILED, protocol.ErrorDomain.QEMU,
                     protocol.ErrorLevel.ERROR, "console went away")


# --- header ------------------------------------------------------------------------------

header_fields = st.fixed_dictionaries({
    "length": st.integers(0, 2**32 - 1), "program": st.just(PROGRAM),
    "version": st.integers(0, 2**16 - 1), "type": st.integers(0, 255),
    "status": st.integers(0, 255), "procedure": st.integers(0, 2**32 - 1),
    "serial": st.integers(0, 2**32 - 1)})


@FAST
@given(header_fields)
def test_header_matches_the_construct_definition(h: dict[str, int]) -> None:
    built = HEADER.build(h)
    assert len(built) == HEADER_SIZE == HEADER.sizeof()
    assert encode_header(h["length"], h["version"], h["type"], h["status"], h["procedure"],
                         h["serial"]) == built
    assert decode_header(built) == (h["length"], h["program"], h["version"], h["type"],
                                    h["status"], h["procedure"], h["serial"])
    parsed = HEADER.parse(built)
    assert {k: parsed[k] for k in h} == h


def test_header_is_big_endian_with_fixed_offsets() -> None:
    raw = encode_header(0x01020304, 0x0506, 0x07, 0x08, 0x090A0B0C, 0x0D0E0F10)
    assert raw == bytes.fromhex(
        "01020304"  # 0  length (whole frame, header included)
        "51454d44"  # 4  program "QEMD"
        "0506"  # 8  version
        "07"  # 10 type
        "08"  # 11 status
        "090a0b0c"  # 12 procedure
        "0d0e0f10")  # 16 serial
    assert raw[4:8] == b"QEMD"
    assert decode_header(b"xx" + raw, 2)[0] == 0x01020304


def test_a_ping_frame_byte_for_byte() -> None:
    conn = protocol.Connection(CLIENT)
    assert conn.send(Ping()) == bytes.fromhex("00000014 51454d44 0001 04 00 00000001 00000000")
    assert conn.send(Pong()) == bytes.fromhex("00000014 51454d44 0001 04 00 00000002 00000000")


def test_a_hello_call_byte_for_byte() -> None:
    conn = protocol.Connection(CLIENT, versions=(1, 3, 2))
    raw = conn.send(Call(Procedure.HELLO, 1, p.HelloArgs([1, 2, 3], "me")))
    assert raw == (bytes.fromhex("00000028 51454d44 0003 00 00 00000001 00000001")
                   + bytes.fromhex("00000003 0001 0002 0003") + b"\x00\x00\x00\x02me"
                   + bytes.fromhex("00000000"))
    assert len(raw) == 0x28 == 20 + 4 + 3 * 2 + 4 + 2 + 4


def test_a_hello_from_before_the_flags_field_still_decodes() -> None:
    """Rule 4a: a payload may end before trailing fields that have defaults."""
    body = bytes.fromhex("00000001 0001") + b"\x00\x00\x00\x04oldc"
    old_hello = ((20 + len(body)).to_bytes(4, "big")
                 + bytes.fromhex("51454d44 0001 00 00 00000001 00000001") + body)
    server = protocol.Connection(SERVER)
    server.receive_data(old_hello)
    msg = server.next_message()
    assert isinstance(msg, Call)
    assert msg.args == p.HelloArgs([1], "oldc", 0)


def test_a_payload_missing_a_field_without_default_is_malformed() -> None:
    server = protocol.Connection(SERVER)
    server.version = 1
    body = b""  # DomainArgs needs its DomainRef: no default
    header = bytes.fromhex("00000014 51454d44 0001 00 00") + \
        int(Procedure.DOMAIN_GET_INFO).to_bytes(4, "big") + (7).to_bytes(4, "big")
    server.receive_data(header + body)
    with pytest.raises(errors.BadPayload):
        server.next_message()


def test_max_frame_bounds() -> None:
    protocol.Connection(SERVER, max_frame=ABSOLUTE_MAX_FRAME)
    protocol.Connection(SERVER, max_frame=HEADER_SIZE + 1)
    for bad in (HEADER_SIZE, ABSOLUTE_MAX_FRAME + 1, 0):
        with pytest.raises(ValueError):
            protocol.Connection(SERVER, max_frame=bad)


# --- fatal framing errors ----------------------------------------------------------------

def assert_broken(conn: protocol.Connection, exc_type: type[errors.ProtocolError]) -> None:
    """The connection keeps refusing work after a fatal error."""
    for _ in range(2):
        with pytest.raises(exc_type):
            conn.next_message()
    with pytest.raises(errors.LocalProtocolError):
        conn.send(Ping())


@pytest.mark.parametrize("max_frame", [64, DEFAULT_MAX_FRAME, ABSOLUTE_MAX_FRAME])
def test_frame_too_large_is_refused_on_the_length_field_alone(max_frame: int) -> None:
    conn = protocol.Connection(SERVER, max_frame=max_frame)
    conn.receive_data(struct.pack(">I", max_frame + 1)[:3])
    assert conn.next_message() is NEED_DATA
    conn.receive_data(struct.pack(">I", max_frame + 1)[3:])  # nothing else has arrived
    with pytest.raises(errors.FrameTooLarge) as exc:
        conn.next_message()
    assert exc.value.fatal
    assert str(max_frame) in exc.value.message
    assert_broken(conn, errors.FrameTooLarge)


def test_frame_at_the_limit_is_accepted() -> None:
    pair = ConnectionPair(max_frame=64)
    body = "x" * (64 - HEADER_SIZE - 4)
    got = pair.send_to_client(Reply(Procedure.GET_HOSTNAME, 2, p.StringReply(body)))
    assert got == Reply(Procedure.GET_HOSTNAME, 2, p.StringReply(body))


@pytest.mark.parametrize("length", [0, 1, 4, HEADER_SIZE - 1])
def test_length_below_the_header_is_a_bad_frame(length: int) -> None:
    conn = protocol.Connection(SERVER)
    conn.receive_data(struct.pack(">I", length))
    with pytest.raises(errors.BadFrame) as exc:
        conn.next_message()
    assert exc.value.fatal
    assert_broken(conn, errors.BadFrame)


@pytest.mark.parametrize("cut", [1, 3, 4, 19, 20, 25])
def test_eof_inside_a_frame_is_truncated(cut: int) -> None:
    raw = frame(Procedure.DOMAIN_LOOKUP_BY_NAME, b"\x00\x00\x00\x06domain")
    conn = protocol.Connection(SERVER)
    conn.receive_data(raw[:cut])
    assert conn.next_message() is NEED_DATA
    assert conn.has_partial_frame and conn.buffered == cut
    conn.receive_data(b"")
    with pytest.raises(errors.TruncatedFrame) as exc:
        conn.next_message()
    assert exc.value.fatal
    assert_broken(conn, errors.TruncatedFrame)


def test_clean_eof_is_closed_after_the_buffered_frames() -> None:
    pair = ConnectionPair()
    pair.client.receive_data(pair.server.send(Ping()) + pair.server.send(Pong()))
    pair.client.receive_data(b"")
    assert drain(pair.client) == [Ping(), Pong(), CLOSED]
    assert pair.client.next_message() is CLOSED
    assert not pair.client.has_partial_frame
    with pytest.raises(errors.LocalProtocolError):
        pair.client.receive_data(b"more")


def test_clean_eof_on_a_fresh_connection() -> None:
    conn = protocol.Connection(SERVER)
    assert conn.next_message() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_message() is CLOSED


# --- non-fatal errors: the right serial, and the next frame still decodes ----------------

def _good_call(serial: int = 100) -> bytes:
    return frame(Procedure.DOMAIN_LIST, b"\x00\x00\x00\x00", serial=serial)


@pytest.mark.parametrize(("bad", "exc_type"), [
    (frame(Procedure.NODE_INFO, program=0xDEADBEEF, serial=77), errors.UnknownProgram),
    (frame(Procedure.NODE_INFO, msg_type=9, serial=77), errors.UnknownMessageType),
    (frame(Procedure.NODE_INFO, msg_type=MessageType.REPLY, serial=77),
     errors.UnknownMessageType),  # a client may not send replies
    (frame(Procedure.EVENT_LIFECYCLE, msg_type=MessageType.EVENT, serial=77),
     errors.UnknownMessageType),  # nor events
    (frame(Procedure.NODE_INFO, status=Status.ERROR, serial=77),
     errors.UnknownMessageType),  # calls are status OK
    (frame(Procedure.NODE_INFO, status=Status.CONTINUE, serial=77), errors.UnknownMessageType),
    (frame(Procedure.NODE_INFO, status=9, serial=77), errors.UnknownMessageType),
    (frame(Procedure.DOMAIN_OPEN_CONSOLE, msg_type=MessageType.STREAM, status=9, serial=77),
     errors.UnknownMessageType),
    (frame(KeepaliveProc.PING, msg_type=MessageType.KEEPALIVE, status=Status.ERROR,
           serial=77), errors.UnknownMessageType),
    (frame(9999, serial=77), errors.UnknownProcedure),
    (frame(0, serial=77), errors.UnknownProcedure),
    (frame(Procedure.EVENT_REBOOT, serial=77), errors.UnknownProcedure),  # event as a call
    (frame(9999, msg_type=MessageType.STREAM, status=Status.CONTINUE, serial=77),
     errors.UnknownProcedure),
    (frame(7, msg_type=MessageType.KEEPALIVE, serial=77), errors.UnknownProcedure),
    (frame(Procedure.DOMAIN_LOOKUP_BY_ID, b"\x00", serial=77), errors.BadPayload),
    (frame(Procedure.DOMAIN_LOOKUP_BY_NAME, b"\x00\x00\x00\x02\xff\xff", serial=77),
     errors.BadPayload),  # invalid UTF-8
    (frame(Procedure.NODE_INFO, version=2, serial=77), errors.VersionMismatch),
    (frame(Procedure.HELLO, b"\x00\x00\x00\x01\x00\x02", version=2, serial=77),
     errors.VersionMismatch),
    (frame(Procedure.DOMAIN_OPEN_CONSOLE, b"x", msg_type=MessageType.STREAM,
           status=Status.CONTINUE, version=0, serial=77), errors.VersionMismatch),
    (frame(KeepaliveProc.PING, msg_type=MessageType.KEEPALIVE, version=7, serial=77),
     errors.VersionMismatch),
], ids=[
    "program", "type-9", "client-sends-reply", "client-sends-event", "call-status-error",
    "call-status-continue", "call-status-9", "stream-status-9", "keepalive-status-error",
    "procedure-9999", "procedure-0", "event-as-call", "stream-procedure-9999",
    "keepalive-procedure-7", "short-payload", "bad-utf8", "version-call",
    "version-hello-again", "version-stream", "version-keepalive",
])
def test_non_fatal_errors_on_the_server(bad: bytes, exc_type: type[errors.ProtocolError]) -> None:
    server = ConnectionPair().server
    server.receive_data(bad + _good_call())
    with pytest.raises(exc_type) as exc:
        server.next_message()
    assert isinstance(exc.value, errors.RemoteProtocolError)
    assert not exc.value.fatal
    assert exc.value.serial == 77
    assert exc.value.procedure == decode_header(bad)[5]
    assert exc.value.msg_type == decode_header(bad)[3]
    assert drain(server) == [Call(Procedure.DOMAIN_LIST, 100, p.ListDomainsArgs(0)), NEED_DATA]


@pytest.mark.parametrize(("bad", "exc_type"), [
    (frame(Procedure.NODE_INFO, msg_type=MessageType.CALL, serial=77),
     errors.UnknownMessageType),  # a server may not send calls
    (frame(Procedure.NODE_INFO, msg_type=MessageType.REPLY, status=Status.CONTINUE,
           serial=77), errors.UnknownMessageType),
    (frame(Procedure.EVENT_LIFECYCLE, msg_type=MessageType.EVENT, status=Status.ERROR,
           serial=77), errors.UnknownMessageType),
    (frame(9999, msg_type=MessageType.REPLY, serial=77), errors.UnknownProcedure),
    (frame(Procedure.EVENT_LIFECYCLE, msg_type=MessageType.REPLY, serial=77),
     errors.UnknownProcedure),
    (frame(Procedure.NODE_INFO, msg_type=MessageType.EVENT, serial=77),
     errors.UnknownProcedure),  # a call number as an event
    (frame(Procedure.DOMAIN_GET_STATE, b"\x01", msg_type=MessageType.REPLY, serial=77),
     errors.BadPayload),
    (frame(Procedure.DOMAIN_GET_STATE, b"\x00\x00", msg_type=MessageType.REPLY,
           status=Status.ERROR, serial=77), errors.BadPayload),  # error payload too short
    (frame(Procedure.DOMAIN_OPEN_CONSOLE, b"\x00", msg_type=MessageType.STREAM,
           status=Status.ERROR, serial=77), errors.BadPayload),
], ids=[
    "server-sends-call", "reply-status-continue", "event-status-error",
    "reply-procedure-9999", "reply-for-an-event", "call-number-as-event", "short-reply",
    "short-error-payload", "short-stream-abort",
])
def test_non_fatal_errors_on_the_client(bad: bytes, exc_type: type[errors.ProtocolError]) -> None:
    client = ConnectionPair().client
    good = frame(Procedure.DOMAIN_GET_STATE, b"\x01\x02", msg_type=MessageType.REPLY,
                 serial=100)
    client.receive_data(bad + good)
    with pytest.raises(exc_type) as exc:
        client.next_message()
    assert not exc.value.fatal and exc.value.serial == 77
    assert drain(client) == [Reply(Procedure.DOMAIN_GET_STATE, 100, p.DomainStateReply(1, 2)),
                             NEED_DATA]


def test_error_hierarchy() -> None:
    fatal = {errors.FrameTooLarge, errors.BadFrame, errors.TruncatedFrame}
    for cls in (errors.FrameTooLarge, errors.BadFrame, errors.TruncatedFrame,
                errors.UnknownProgram, errors.UnknownMessageType, errors.UnknownProcedure,
                errors.VersionMismatch, errors.HelloRequired, errors.BadPayload,
                errors.UnsupportedVersion):
        assert issubclass(cls, errors.RemoteProtocolError)
        assert cls.fatal is (cls in fatal)
    assert not issubclass(errors.LocalProtocolError, errors.RemoteProtocolError)
    assert issubclass(errors.LocalProtocolError, protocol.ProtocolError)


# --- hello and versions ------------------------------------------------------------------

def test_calls_before_hello_are_refused_then_hello_works() -> None:
    pair = ConnectionPair(hello=False)
    pair.server.receive_data(frame(Procedure.NODE_INFO, serial=5))
    with pytest.raises(errors.HelloRequired) as exc:
        pair.server.next_message()
    assert exc.value.serial == 5 and exc.value.procedure == Procedure.NODE_INFO
    assert not exc.value.fatal
    assert pair.server.version is None
    # keepalive is allowed before the hello
    assert pair.send_to_server(Ping()) == Ping()
    assert pair.hello() == 1
    call = Call(Procedure.NODE_INFO, 6, protocol.Empty())
    assert pair.send_to_server(call) == call


def test_the_client_cannot_call_before_hello() -> None:
    client = protocol.Connection(CLIENT)
    with pytest.raises(errors.LocalProtocolError):
        client.send(Call(Procedure.NODE_INFO, 1, protocol.Empty()))
    client.send(Call(Procedure.HELLO, 1, p.HelloArgs([1])))


def test_hello_frame_carries_the_clients_highest_version() -> None:
    client = protocol.Connection(CLIENT, versions=(2, 5, 3))
    assert client.versions == (2, 3, 5)
    raw = client.send(Call(Procedure.HELLO, 1, p.HelloArgs([2, 3, 5])))
    assert decode_header(raw)[2] == 5


def test_hello_frame_of_any_version_is_accepted_before_negotiation() -> None:
    server = protocol.Connection(SERVER, versions=(1,))
    server.receive_data(frame(Procedure.HELLO, b"\x00\x00\x00\x01\x00\x09" + bytes(4),
                              version=9, serial=1))
    msg = server.next_message()
    assert msg == Call(Procedure.HELLO, 1, p.HelloArgs([9], ""))


@pytest.mark.parametrize(("client", "server", "picked"), [
    ((1,), (1,), 1),
    ((1, 2, 3), (2, 3, 4), 3),
    ((3, 1), (1, 2, 3), 3),
    ((1, 2), (2, 7), 2),
])
def test_accept_hello_picks_the_highest_common_version(client: tuple[int, ...],
                                                       server: tuple[int, ...],
                                                       picked: int) -> None:
    pair = ConnectionPair(client_versions=client, server_versions=server)
    assert pair.client.version == pair.server.version == picked
    # every later frame carries the negotiated version, both ways
    assert decode_header(pair.client.send(Call(Procedure.NODE_INFO, 9, protocol.Empty())))[2] \
        == picked
    assert decode_header(pair.server.send(Pong()))[2] == picked


def test_unsupported_version_names_both_sides_and_keeps_waiting() -> None:
    pair = ConnectionPair(client_versions=(5, 6), server_versions=(1, 2), hello=False)
    hello = pair.send_to_server(Call(Procedure.HELLO, 1, p.HelloArgs([5, 6], "new")))
    assert isinstance(hello, Call) and isinstance(hello.args, p.HelloArgs)
    with pytest.raises(errors.UnsupportedVersion) as exc:
        pair.server.accept_hello(hello.args, hello.serial)
    e = exc.value
    assert e.offered == (5, 6) and e.supported == (1, 2)
    assert "[5, 6]" in e.message and "[1, 2]" in e.message
    assert e.serial == 1 and e.procedure == Procedure.HELLO
    assert pair.server.version is None
    # the server answers with an error reply and keeps waiting for a hello
    error = p.ErrorPayload(protocol.ErrorCode.UNSUPPORTED_VERSION, protocol.ErrorDomain.RPC,
                           protocol.ErrorLevel.ERROR, e.message)
    assert pair.send_to_client(ErrorReply(Procedure.HELLO, 1, error)) == \
        ErrorReply(Procedure.HELLO, 1, error)
    assert pair.client.version is None
    pair.server.receive_data(frame(Procedure.NODE_INFO, serial=2))
    with pytest.raises(errors.HelloRequired):
        pair.server.next_message()
    # a second hello with a version the server knows succeeds
    retry = pair.send_to_server(Call(Procedure.HELLO, 3, p.HelloArgs([2])))
    assert isinstance(retry, Call) and isinstance(retry.args, p.HelloArgs)
    assert pair.server.accept_hello(retry.args, 3) == 2


def test_the_client_learns_the_version_from_the_hello_reply() -> None:
    pair = ConnectionPair(client_versions=(1, 2, 3), server_versions=(1, 2), hello=False)
    assert pair.client.version is None
    pair.send_to_server(Call(Procedure.HELLO, 1, p.HelloArgs([1, 2, 3])))
    pair.server.accept_hello(p.HelloArgs([1, 2, 3]))
    reply = Reply(Procedure.HELLO, 1, p.HelloReply(2, "qemud", True, 5))
    assert pair.send_to_client(reply) == reply
    assert pair.client.version == 2


def test_version_mismatch_after_hello_keeps_the_connection() -> None:
    pair = ConnectionPair(client_versions=(1, 2), server_versions=(1, 2))
    assert pair.server.version == 2
    pair.server.receive_data(frame(Procedure.NODE_INFO, version=1, serial=8) +
                             frame(Procedure.NODE_INFO, version=2, serial=9))
    with pytest.raises(errors.VersionMismatch) as exc:
        pair.server.next_message()
    assert exc.value.serial == 8 and not exc.value.fatal
    assert drain(pair.server) == [Call(Procedure.NODE_INFO, 9, protocol.Empty()), NEED_DATA]


# --- roles -------------------------------------------------------------------------------

@pytest.mark.parametrize("message", [
    Reply(Procedure.NODE_INFO, 1, p.NodeInfoReply("x86_64", 1, 1, 1, 1, 1, 1, 1)),
    ErrorReply(Procedure.NODE_INFO, 1, ERR),
    Event(Procedure.EVENT_REBOOT, p.RebootEventMsg(1, REF)),
], ids=lambda m: type(m).__name__)
def test_a_client_may_not_send_server_messages(message: protocol.Message) -> None:
    pair = ConnectionPair()
    with pytest.raises(errors.LocalProtocolError):
        pair.client.send(message)


def test_a_server_may_not_send_calls() -> None:
    pair = ConnectionPair()
    with pytest.raises(errors.LocalProtocolError):
        pair.server.send(Call(Procedure.NODE_INFO, 1, protocol.Empty()))


def test_send_refuses_non_messages() -> None:
    conn = protocol.Connection(SERVER)
    with pytest.raises(errors.LocalProtocolError):
        conn.send("hello")  # type: ignore[arg-type]


# --- keepalive and streams ---------------------------------------------------------------

def test_keepalive_both_ways() -> None:
    pair = ConnectionPair()
    assert pair.send_to_client(Ping()) == Ping()
    assert pair.send_to_server(Pong()) == Pong()
    assert pair.send_to_server(Ping()) == Ping()
    assert pair.send_to_client(Pong()) == Pong()


def test_console_stream_both_ways() -> None:
    pair = ConnectionPair()
    console = Procedure.DOMAIN_OPEN_CONSOLE
    call = Call(console, 42, p.ConsoleArgs(REF, "serial0"))
    assert pair.send_to_server(call) == call
    assert pair.send_to_client(Reply(console, 42, protocol.Empty())) == \
        Reply(console, 42, protocol.Empty())
    for msg in (StreamData(console, 42, b"login: "), StreamData(console, 42, b""),
                StreamEnd(console, 42), StreamAbort(console, 42, ERR)):
        assert pair.send_to_client(msg) == msg
    for msg in (StreamData(console, 42, b"root\n" * 1000), StreamEnd(console, 42),
                StreamAbort(console, 42, ERR)):
        assert pair.send_to_server(msg) == msg


def test_stream_frames_on_the_wire() -> None:
    pair = ConnectionPair()
    console = Procedure.DOMAIN_OPEN_CONSOLE
    raw = pair.server.send(StreamData(console, 42, b"abc"))
    assert decode_header(raw) == (23, PROGRAM, 1, MessageType.STREAM, Status.CONTINUE,
                                  console, 42)
    assert raw[HEADER_SIZE:] == b"abc"  # raw bytes, no length prefix
    raw = pair.client.send(StreamEnd(console, 42))
    assert decode_header(raw)[3:] == (MessageType.STREAM, Status.OK, console, 42)
    assert len(raw) == HEADER_SIZE
    raw = pair.server.send(StreamAbort(console, 42, ERR))
    assert decode_header(raw)[3:5] == (MessageType.STREAM, Status.ERROR)
    assert raw[HEADER_SIZE:] == protocol.codec_for(p.ErrorPayload).encode(ERR)


def test_error_reply_on_the_wire() -> None:
    pair = ConnectionPair()
    raw = pair.server.send(ErrorReply(Procedure.DOMAIN_CREATE, 12, ERR))
    assert decode_header(raw)[3:] == (MessageType.REPLY, Status.ERROR, Procedure.DOMAIN_CREATE,
                                      12)
    message = ERR.message.encode()
    assert raw[HEADER_SIZE:] == struct.pack(">IIHI", 9, 10, 2, len(message)) + message
