"""qemud's wire protocol, sans-IO.

Bytes in, typed messages out, and back; no sockets, threads or daemon imports
(a test checks that). See docs/PROTOCOL.md for the format.
"""

from typing import Any

from . import constants, errors, payloads
from .connection import Connection, Role, decode_header, encode_header
from .constants import (
    CURRENT_VERSION,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    PROGRAM,
    SUPPORTED_VERSIONS,
    DomainState,
    ErrorCode,
    ErrorDomain,
    ErrorLevel,
    EventId,
    LifecycleEvent,
    ListFlags,
    MessageType,
    Status,
)
from .errors import ProtocolError
from .fields import Codec, Empty, Payload, codec_for
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
    StreamAbort,
    StreamData,
    StreamEnd,
)
from .procedures import PROCEDURES, Kind, Procedure, ProcedureSpec, spec_for

__all__ = [
    "constants", "errors", "payloads", "HEADER", "Connection", "Role", "decode_header",
    "encode_header", "CURRENT_VERSION", "DEFAULT_MAX_FRAME", "HEADER_SIZE", "PROGRAM",
    "SUPPORTED_VERSIONS", "DomainState", "ErrorCode", "ErrorDomain", "ErrorLevel", "EventId",
    "LifecycleEvent", "ListFlags", "MessageType", "Status", "ProtocolError", "Codec", "Empty",
    "Payload", "codec_for", "CLOSED", "NEED_DATA", "Call", "ErrorReply", "Event", "Message",
    "Ping", "Pong", "Reply", "StreamAbort", "StreamData", "StreamEnd", "PROCEDURES", "Kind",
    "Procedure", "ProcedureSpec", "spec_for",
]


def __getattr__(name: str) -> Any:
    """``HEADER`` (construct's description of the frame header), imported on first access
    so that ``import protocol`` does not import construct (see protocol/reference.py)."""
    if name == "HEADER":
        from .reference import HEADER
        return HEADER
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
