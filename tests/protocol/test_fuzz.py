"""Hostile bytes: a Connection raises only protocol errors and never buffers unboundedly.

Random bytes, and valid frames with bytes flipped, cut, inserted or header fields
replaced, are fed in random chunks to a server (before and after the hello) and a client.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from wire_helpers import FAST, ConnectionPair, strategy_for

import protocol
from protocol import errors
from protocol.messages import CLOSED, NEED_DATA, Sentinel
from protocol.procedures import PROCEDURES, Kind

SMALL_FRAME = 512


def _connection(kind: str, max_frame: int) -> protocol.Connection:
    if kind == "fresh-server":
        return protocol.Connection(protocol.Role.SERVER, max_frame=max_frame)
    pair = ConnectionPair(max_frame=max_frame)
    return pair.server if kind == "server" else pair.client


def feed_hostile(conn: protocol.Connection, chunks: list[bytes]) -> list[object]:
    """Feed chunks and drain; assert only protocol errors and a bounded buffer."""
    seen: list[object] = []
    for chunk in [*[c for c in chunks if c], b""]:
        conn.receive_data(chunk)
        assert conn.buffered <= conn.max_frame + len(chunk)
        while True:
            try:
                msg = conn.next_message()
            except errors.RemoteProtocolError as exc:
                assert isinstance(exc, protocol.ProtocolError)
                seen.append(type(exc))
                if exc.fatal:
                    # a fatal error sticks: the same error again, and no sending
                    try:
                        conn.next_message()
                    except errors.RemoteProtocolError as again:
                        assert again is exc
                    else:
                        raise AssertionError("a broken connection went on") from None
                    return seen
                assert exc.serial is not None and exc.procedure is not None
                continue
            assert conn.buffered < conn.max_frame
            if isinstance(msg, Sentinel):
                assert msg is NEED_DATA or (msg is CLOSED and not chunk)
                break
            seen.append(msg)
    return seen


def chunked(data: st.DataObject, raw: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12), label="cuts"))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


KINDS = st.sampled_from(["fresh-server", "server", "client"])
MAX_FRAMES = st.sampled_from([SMALL_FRAME, protocol.DEFAULT_MAX_FRAME])


@settings(FAST, max_examples=300)
@given(data=st.data(), raw=st.binary(max_size=2048), kind=KINDS, max_frame=MAX_FRAMES)
def test_random_bytes(data: st.DataObject, raw: bytes, kind: str, max_frame: int) -> None:
    feed_hostile(_connection(kind, max_frame), chunked(data, raw))


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    """A few well-formed frames of any direction (the receiver may still refuse them)."""
    pair = ConnectionPair()
    out = []
    for _ in range(draw(st.integers(1, 4))):
        spec = draw(st.sampled_from(list(PROCEDURES.values())))
        serial = draw(st.integers(0, 2**32 - 1))
        choice = draw(st.integers(0, 4))
        if spec.kind is Kind.EVENT:
            out.append(pair.server.send(protocol.Event(spec.procedure,
                                                       draw(strategy_for(spec.args)))))
        elif choice == 0:
            out.append(pair.client.send(protocol.Call(spec.procedure, serial,
                                                      draw(strategy_for(spec.args)))))
        elif choice == 1:
            out.append(pair.server.send(protocol.Reply(spec.procedure, serial,
                                                       draw(strategy_for(spec.reply)))))
        elif choice == 2:
            out.append(pair.server.send(protocol.ErrorReply(
                spec.procedure, serial, draw(strategy_for(protocol.payloads.ErrorPayload)))))
        elif choice == 3:
            out.append(pair.client.send(protocol.StreamData(spec.procedure, serial,
                                                            draw(st.binary(max_size=40)))))
        else:
            keepalive: list[protocol.Message] = [protocol.Ping(), protocol.Pong()]
            out.append(pair.server.send(draw(st.sampled_from(keepalive))))
    return b"".join(out)


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "field", "delete"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos:pos + draw(st.integers(1, 8))]
        elif op == "field" and len(buf) >= 20:
            # overwrite one header field of the first frame with an interesting value
            offset, fmt = draw(st.sampled_from([(0, ">I"), (4, ">I"), (8, ">H"), (10, ">B"),
                                                (11, ">B"), (12, ">I"), (16, ">I")]))
            size = struct.calcsize(fmt)
            top = 2 ** (8 * size) - 1
            value = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 19, 20, 21, top, top - 1])
                         | st.integers(0, top))
            struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@settings(FAST, max_examples=400)
@given(data=st.data(), kind=KINDS, max_frame=MAX_FRAMES)
def test_mutated_valid_frames(data: st.DataObject, kind: str, max_frame: int) -> None:
    raw = data.draw(valid_frames(), label="frames")
    bad = data.draw(mutated(raw), label="mutated")
    feed_hostile(_connection(kind, max_frame), chunked(data, bad))


@settings(FAST, max_examples=100)
@given(data=st.data(), kind=KINDS)
def test_valid_frames_then_garbage(data: st.DataObject, kind: str) -> None:
    raw = data.draw(valid_frames()) + data.draw(st.binary(min_size=1, max_size=64))
    feed_hostile(_connection(kind, SMALL_FRAME * 8), chunked(data, raw))
