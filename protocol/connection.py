"""The sans-IO connection: bytes in, typed messages out, and back.

Three verbs, as in h11: :meth:`Connection.receive_data` (bytes from the peer, ``b""`` for
EOF), :meth:`Connection.next_message` (a message, :data:`NEED_DATA` or :data:`CLOSED`) and
:meth:`Connection.send` (a message to bytes). The connection owns the rules that do not
depend on what the daemon does with a call:

* a frame is parsed only once all of it is buffered, and a length field over the limit is
  refused before anything is buffered for it;
* a server refuses every call before HELLO, and every frame whose version is not the
  negotiated one;
* a client learns the negotiated version from the HELLO reply.

Errors are :mod:`protocol.errors` exceptions carrying the serial/procedure when known;
after a *fatal* one the connection refuses further work.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from typing import Any

from . import errors
from .constants import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    PROGRAM,
    SUPPORTED_VERSIONS,
    KeepaliveProc,
    MessageType,
    Status,
)
from .fields import codec_for
from .messages import (
    CLOSED,
    NEED_DATA,
    Call,
    ErrorReply,
    Event,
    Message,
    Ping,
    Pong,
    Reply,
    Sentinel,
    StreamAbort,
    StreamData,
    StreamEnd,
)
from .payloads import ErrorPayload, HelloArgs, HelloReply
from .procedures import Kind, Procedure, spec_for

__all__ = ["Role", "Connection", "encode_header", "decode_header"]

# The frame header; tests/protocol checks it against construct's description,
# protocol.HEADER (protocol/reference.py).
_HEADER = struct.Struct(">IIHBBII")
assert _HEADER.size == HEADER_SIZE

_ERROR_CODEC = codec_for(ErrorPayload)


def encode_header(length: int, version: int, msg_type: int, status: int, procedure: int,
                  serial: int) -> bytes:
    return _HEADER.pack(length, PROGRAM, version, msg_type, status, procedure, serial)


def decode_header(data: bytes | bytearray | memoryview,
                  offset: int = 0) -> tuple[int, int, int, int, int, int, int]:
    """(length, program, version, type, status, procedure, serial)."""
    return _HEADER.unpack_from(data, offset)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Connection:
    """One side of one qemud connection, with no I/O."""

    def __init__(self, role: Role, *, max_frame: int = DEFAULT_MAX_FRAME,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 reply_types: Mapping[Procedure, type[Any]] | None = None) -> None:
        """``reply_types``: a client's own payload class for a procedure's reply, with the
        same wire layout as the procedure's reply type, decoded into instead of it (a
        listing straight into the client's handle objects, one object per record)."""
        if not HEADER_SIZE < max_frame <= ABSOLUTE_MAX_FRAME:
            raise ValueError(f"max_frame must be in ({HEADER_SIZE}, {ABSOLUTE_MAX_FRAME}]")
        self.role = role
        self._reply_types: dict[Procedure, type[Any]] = dict(reply_types or {})
        self.max_frame = max_frame
        self.versions = tuple(sorted(versions))
        #: negotiated protocol version; None until the hello completed
        self.version: int | None = None
        self._buf = bytearray()
        self._eof = False
        self._broken: errors.ProtocolError | None = None

    # -- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            if self._eof:
                raise errors.LocalProtocolError("receive_data after EOF")
            self._buf += data
        else:
            self._eof = True

    @property
    def has_partial_frame(self) -> bool:
        """True while some bytes of an incomplete frame are buffered (for drip deadlines)."""
        return bool(self._buf)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> Message | Sentinel:
        """The next complete message, NEED_DATA, or CLOSED after a clean EOF."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if len(buf) < 4:
            return self._starved()
        (length,) = struct.unpack_from(">I", buf)
        if length > self.max_frame:
            self._fail(errors.FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes"))
        if length < HEADER_SIZE:
            self._fail(errors.BadFrame(
                f"frame length {length} is smaller than the {HEADER_SIZE}-byte header"))
        if len(buf) < length:
            return self._starved()
        _, program, version, msg_type, status, procedure, serial = _HEADER.unpack_from(buf)
        payload = bytes(buf[HEADER_SIZE:length])
        del buf[:length]
        return self._interpret(program, version, msg_type, status, procedure, serial, payload)

    def _starved(self) -> Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._buf:
            self._fail(errors.TruncatedFrame(
                f"connection closed inside a frame ({len(self._buf)} bytes buffered)"))
        return CLOSED

    def _fail(self, exc: errors.ProtocolError) -> None:
        self._broken = exc
        raise exc

    def _interpret(self, program: int, version: int, msg_type: int, status: int,
                   procedure: int, serial: int, payload: bytes) -> Message:
        where = {"serial": serial, "procedure": procedure, "msg_type": msg_type}
        if program != PROGRAM:
            raise errors.UnknownProgram(f"unknown program 0x{program:08x}", **where)
        if status != Status.OK and not (
                msg_type == MessageType.STREAM and status in (Status.CONTINUE, Status.ERROR)
                or msg_type == MessageType.REPLY and status == Status.ERROR):
            raise errors.UnknownMessageType(
                f"status {status} is not valid with message type {msg_type}", **where)
        if self.role is Role.SERVER and self.version is not None and version != self.version:
            raise errors.VersionMismatch(
                f"frame version {version} differs from negotiated version {self.version}",
                **where)
        if msg_type == MessageType.KEEPALIVE:
            if procedure == KeepaliveProc.PING:
                return Ping()
            if procedure == KeepaliveProc.PONG:
                return Pong()
            raise errors.UnknownProcedure(f"unknown keepalive procedure {procedure}", **where)
        spec = spec_for(procedure)
        if msg_type == MessageType.CALL and self.role is Role.SERVER:
            if spec is None or spec.kind is not Kind.CALL:
                raise errors.UnknownProcedure(f"unknown procedure {procedure}", **where)
            if self.version is None and spec.procedure is not Procedure.HELLO:
                raise errors.HelloRequired(
                    f"{spec.procedure.name} before HELLO: the first call must be HELLO",
                    **where)
            return Call(spec.procedure, serial, self._decode(spec.args, payload, where))
        if msg_type == MessageType.REPLY and self.role is Role.CLIENT:
            if status == Status.ERROR:
                return ErrorReply(procedure, serial, self._decode(ErrorPayload, payload, where))
            if spec is None or spec.kind is not Kind.CALL:
                raise errors.UnknownProcedure(f"reply for unknown procedure {procedure}",
                                              **where)
            result = self._decode(self._reply_types.get(spec.procedure, spec.reply),
                                  payload, where)
            if spec.procedure is Procedure.HELLO and isinstance(result, HelloReply):
                self.version = result.version
            return Reply(spec.procedure, serial, result)
        if msg_type == MessageType.EVENT and self.role is Role.CLIENT:
            if spec is None or spec.kind is not Kind.EVENT:
                raise errors.UnknownProcedure(f"unknown event {procedure}", **where)
            return Event(spec.procedure, self._decode(spec.args, payload, where))
        if msg_type == MessageType.STREAM:
            if spec is None:
                raise errors.UnknownProcedure(f"stream for unknown procedure {procedure}",
                                              **where)
            if status == Status.CONTINUE:
                return StreamData(spec.procedure, serial, payload)
            if status == Status.OK:
                return StreamEnd(spec.procedure, serial)
            if status == Status.ERROR:
                return StreamAbort(spec.procedure, serial,
                                   self._decode(ErrorPayload, payload, where))
            raise errors.UnknownMessageType(f"unknown stream status {status}", **where)
        raise errors.UnknownMessageType(
            f"message type {msg_type} is not valid from a {self._peer_name()}", **where)

    def _peer_name(self) -> str:
        return "server" if self.role is Role.CLIENT else "client"

    @staticmethod
    def _decode(cls: type[Any], payload: bytes, where: dict[str, int]) -> Any:
        try:
            return codec_for(cls).decode(payload)
        except ValueError as exc:
            raise errors.BadPayload(f"malformed payload: {exc}", **where) from None

    # -- version negotiation (server side) -----------------------------------------------

    def accept_hello(self, args: HelloArgs, serial: int = 0) -> int:
        """Pick the highest common version, or raise UnsupportedVersion (state unchanged)."""
        common = set(args.versions) & set(self.versions)
        if not common:
            raise errors.UnsupportedVersion(
                f"unsupported protocol version: client speaks {sorted(args.versions)}, "
                f"server speaks {list(self.versions)}",
                offered=tuple(args.versions), supported=self.versions, serial=serial)
        self.version = max(common)
        return self.version

    # -- sending -------------------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """The bytes that carry ``message``."""
        if self._broken is not None:
            raise errors.LocalProtocolError("connection is broken") from self._broken
        version = self.version if self.version is not None else self.versions[-1]
        if isinstance(message, Call):
            self._require(Role.CLIENT, message)
            spec = spec_for(message.procedure)
            assert spec is not None
            if self.version is None and message.procedure is not Procedure.HELLO:
                raise errors.LocalProtocolError(
                    f"{message.procedure.name} before HELLO", procedure=message.procedure,
                    serial=message.serial)
            body = self._encode(spec.args, message.args, message)
            return self._frame(version, MessageType.CALL, Status.OK, message.procedure,
                               message.serial, body)
        if isinstance(message, Reply):
            self._require(Role.SERVER, message)
            spec = spec_for(message.procedure)
            assert spec is not None
            body = self._encode(spec.reply, message.result, message)
            return self._frame(version, MessageType.REPLY, Status.OK, message.procedure,
                               message.serial, body)
        if isinstance(message, ErrorReply):
            self._require(Role.SERVER, message)
            return self._frame(version, MessageType.REPLY, Status.ERROR, message.procedure,
                               message.serial, _ERROR_CODEC.encode(message.error))
        if isinstance(message, Event):
            self._require(Role.SERVER, message)
            spec = spec_for(message.procedure)
            assert spec is not None
            if spec.kind is not Kind.EVENT:
                raise errors.LocalProtocolError(f"{message.procedure.name} is not an event")
            return self._frame(version, MessageType.EVENT, Status.OK, message.procedure, 0,
                               self._encode(spec.args, message.body, message))
        if isinstance(message, StreamData):
            return self._frame(version, MessageType.STREAM, Status.CONTINUE, message.procedure,
                               message.serial, message.data)
        if isinstance(message, StreamEnd):
            return self._frame(version, MessageType.STREAM, Status.OK, message.procedure,
                               message.serial, b"")
        if isinstance(message, StreamAbort):
            return self._frame(version, MessageType.STREAM, Status.ERROR, message.procedure,
                               message.serial, _ERROR_CODEC.encode(message.error))
        if isinstance(message, Ping):
            return self._frame(version, MessageType.KEEPALIVE, Status.OK, KeepaliveProc.PING,
                               0, b"")
        if isinstance(message, Pong):
            return self._frame(version, MessageType.KEEPALIVE, Status.OK, KeepaliveProc.PONG,
                               0, b"")
        raise errors.LocalProtocolError(f"not a message: {message!r}")

    def _require(self, role: Role, message: Message) -> None:
        if self.role is not role:
            raise errors.LocalProtocolError(
                f"a {self.role.value} cannot send {type(message).__name__}")

    @staticmethod
    def _encode(cls: type[Any], payload: object, message: Message) -> bytes:
        if not isinstance(payload, cls):
            raise errors.LocalProtocolError(
                f"{message!r}: payload must be {cls.__name__}, not {type(payload).__name__}")
        try:
            return codec_for(cls).encode(payload)
        except ValueError as exc:
            raise errors.LocalProtocolError(str(exc)) from None

    def _frame(self, version: int, msg_type: int, status: int, procedure: int, serial: int,
               body: bytes) -> bytes:
        length = HEADER_SIZE + len(body)
        if length > self.max_frame:
            raise errors.LocalProtocolError(
                f"message of {length} bytes exceeds the frame limit of {self.max_frame}",
                procedure=procedure, serial=serial)
        return _HEADER.pack(length, PROGRAM, version, msg_type, status, procedure,
                            serial) + body
