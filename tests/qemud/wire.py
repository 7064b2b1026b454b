"""A small blocking protocol client over a raw unix socket, for poking the daemon.

Unlike the client library it has no reader thread and hides nothing: it can skip the
HELLO, send any bytes, leave pings unanswered, stop reading, and see exactly which frames
arrive and when the daemon closes the socket.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import time
import typing
from pathlib import Path
from typing import Annotated, Any

from protocol import (
    CLOSED,
    CURRENT_VERSION,
    NEED_DATA,
    PROGRAM,
    Call,
    Connection,
    Empty,
    ErrorReply,
    Message,
    MessageType,
    Ping,
    Pong,
    Procedure,
    ProtocolError,
    Reply,
    Role,
    Status,
    encode_header,
)
from protocol.fields import UUIDBytes
from protocol.payloads import HelloArgs

__all__ = ["RawClient", "minimal_instance", "frame", "hello_frame"]

_UUID_META = typing.get_args(UUIDBytes)[1]
_SCALARS: dict[type, Any] = {int: 0, float: 0.0, str: "", bytes: b"", bool: False}


def _default_for(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, meta = typing.get_args(hint)[:2]
        if meta is _UUID_META:
            return bytes(16)  # fixed width on the wire
        return _SCALARS[base]
    if origin is list:
        return []
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return minimal_instance(hint)
    raise TypeError(f"no default for {hint!r}")


def minimal_instance(cls: type[Any]) -> Any:
    """A valid instance of payload dataclass ``cls`` with zero/empty required fields."""
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {f.name: _default_for(hints[f.name]) for f in dataclasses.fields(cls)
              if f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING}
    return cls(**kwargs)


def frame(procedure: int, serial: int, payload: bytes = b"", *,
          version: int = CURRENT_VERSION, msg_type: int = MessageType.CALL,
          status: int = Status.OK, length: int | None = None) -> bytes:
    """A raw frame; ``length`` overrides the length field (for lying headers)."""
    real = 20 + len(payload)
    return encode_header(real if length is None else length, version, msg_type, status,
                         procedure, serial) + payload


def hello_frame(serial: int = 1, versions: tuple[int, ...] = (CURRENT_VERSION,)) -> bytes:
    return Connection(Role.CLIENT).send(Call(Procedure.HELLO, serial, HelloArgs(list(versions),
                                                                                "raw")))


assert PROGRAM  # (re-exported for tests that craft headers by hand)


class RawClient:
    """One connection; every method blocks with a timeout."""

    def __init__(self, path: Path | str | None, *, hello: bool = True,
                 timeout: float = 10.0, name: str = "raw-test",
                 sock: socket.socket | None = None) -> None:
        """Connects to the unix socket ``path``, or talks over ``sock`` (connected: a
        TLS socket, say)."""
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(str(path))
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.proto = Connection(Role.CLIENT)
        self._serials = itertools.count(1)
        self.eof = False
        self.pings = 0
        self.other: list[Message] = []  # messages skipped while waiting for a reply
        self.hello_reply: Any = None
        if hello:
            reply = self.call(Procedure.HELLO, HelloArgs([CURRENT_VERSION], name))
            assert isinstance(reply, Reply), reply
            self.hello_reply = reply.result

    def serial(self) -> int:
        return next(self._serials)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.proto.send(msg))

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message; None once the daemon closed the connection.

        Raises TimeoutError if nothing complete arrives within ``timeout``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                msg = self.proto.next_message()
            except ProtocolError:
                if self.eof:  # EOF inside a frame
                    return None
                raise
            if msg is CLOSED:
                return None
            if msg is not NEED_DATA:
                return msg  # type: ignore[return-value]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete message from the daemon")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except TimeoutError:
                raise TimeoutError("no complete message from the daemon") from None
            if not data:
                self.eof = True
            self.proto.receive_data(data)

    def call(self, procedure: Procedure, args: Any = None, *, timeout: float | None = None,
             answer_pings: bool = True) -> Reply | ErrorReply:
        """Send one call and return its reply (pings answered, events kept in .other)."""
        serial = self.serial()
        self.send(Call(procedure, serial, Empty() if args is None else args))
        return self.wait_reply(serial, timeout=timeout, answer_pings=answer_pings)

    def wait_reply(self, serial: int, *, timeout: float | None = None,
                   answer_pings: bool = True) -> Reply | ErrorReply:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError("daemon closed the connection")
            if isinstance(msg, Reply | ErrorReply) and msg.serial == serial:
                return msg
            if isinstance(msg, Ping):
                self.pings += 1
                if answer_pings:
                    self.send(Pong())
                continue
            self.other.append(msg)

    def expect_closed(self, timeout: float = 5.0) -> list[Message]:
        """Read until the daemon closes; returns the messages seen before EOF."""
        seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return seen
            if isinstance(msg, Ping):
                self.pings += 1
            seen.append(msg)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_of(reply: Reply | ErrorReply) -> tuple[int, str]:
    assert isinstance(reply, ErrorReply), f"expected an error reply, got {reply!r}"
    return reply.error.code, reply.error.message
