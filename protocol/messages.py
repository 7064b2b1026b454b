"""Typed messages: what :class:`protocol.Connection` yields and accepts.

Each is a frozen dataclass; the header fields that are implied (program, type, status,
version) are filled in by the connection, so a message says only what varies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .fields import Payload
from .payloads import ErrorPayload
from .procedures import Procedure

__all__ = ["Call", "Reply", "ErrorReply", "Event", "StreamData", "StreamEnd", "StreamAbort",
           "Ping", "Pong", "Message", "NEED_DATA", "CLOSED", "Sentinel"]


@dataclass(frozen=True, slots=True)
class Call:
    procedure: Procedure
    serial: int
    args: Payload


@dataclass(frozen=True, slots=True)
class Reply:
    procedure: Procedure
    serial: int
    result: Payload


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A failed call. ``procedure`` is an int: the peer may have named one we do not know."""

    procedure: int
    serial: int
    error: ErrorPayload


@dataclass(frozen=True, slots=True)
class Event:
    procedure: Procedure
    body: Payload


@dataclass(frozen=True, slots=True)
class StreamData:
    """A chunk of the stream opened by the call ``serial``."""

    procedure: Procedure
    serial: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The sender will send no more data on this stream."""

    procedure: Procedure
    serial: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """The stream failed; ``error`` says why."""

    procedure: Procedure
    serial: int
    error: ErrorPayload


@dataclass(frozen=True, slots=True)
class Ping:
    """Keepalive probe; the receiver answers :class:`Pong`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Keepalive answer."""


Message = Call | Reply | ErrorReply | Event | StreamData | StreamEnd | StreamAbort | Ping | Pong


class Sentinel:
    """NEED_DATA and CLOSED: what next_message returns when there is no message."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")
CLOSED: Final = Sentinel("CLOSED")
