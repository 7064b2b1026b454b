"""Sans-IO QMP client protocol.

The daemon is single-threaded and owns its event loop, so the QMP client must
not own sockets, threads or timers.  This module is only the protocol state
machine (in the spirit of h11): feed it the bytes the socket produced with
:meth:`QMPProtocol.receive_data`, pull parsed messages with
:meth:`QMPProtocol.next_event`, and write whatever :meth:`QMPProtocol.command`
returns.  That keeps it trivially testable against byte strings and usable
from any I/O framework.

Layering follows QEMU's own python client (framing → message → protocol
state), but the code is written from the QMP specification
(docs/interop/qmp-spec), not copied.

The conversation is::

    CONNECTING --greeting--> NEGOTIATING --qmp_capabilities ok--> READY
         \\                      \\                                   \\
          `--------------------- EOF / protocol error -----------------`--> CLOSED
"""

from __future__ import annotations

import enum
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from qemud.qemu.errors import QMPBufferOverflow, QMPProtocolError, StateError

__all__ = [
    "DEFAULT_MAX_LINE",
    "QMPErrorReply",
    "QMPEvent",
    "QMPGreeting",
    "QMPMessage",
    "QMPProtocol",
    "QMPReturn",
    "QMPVersion",
    "RunState",
]

_log = logging.getLogger(__name__)

#: Cap on one unterminated line.  QMP replies can be big (query-qmp-schema is
#: a few hundred KiB) but never megabytes; a peer that streams without a
#: newline is broken or hostile and must not eat the daemon's memory.
DEFAULT_MAX_LINE: Final = 16 * 1024 * 1024

_CAPABILITIES: Final = "qmp_capabilities"


class RunState(enum.Enum):
    """Where the conversation with QEMU stands."""

    CONNECTING = "connecting"  # waiting for the greeting
    NEGOTIATING = "negotiating"  # greeting seen, only qmp_capabilities allowed
    READY = "ready"  # command mode
    CLOSED = "closed"  # EOF or protocol error; nothing more will happen


@dataclass(frozen=True)
class QMPVersion:
    """QEMU version from the greeting (``package`` is the distro suffix)."""

    major: int
    minor: int
    micro: int
    package: str

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.micro)


@dataclass(frozen=True)
class QMPGreeting:
    """The unsolicited banner QEMU sends on connect."""

    version: QMPVersion
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class QMPReturn:
    """Successful reply to command ``id`` (``command`` is its name, for logs)."""

    id: int
    command: str
    value: Any


@dataclass(frozen=True)
class QMPErrorReply:
    """Error reply to command ``id``; ``error_class`` is QMP's ``class``."""

    id: int
    command: str
    error_class: str
    desc: str


@dataclass(frozen=True)
class QMPEvent:
    """An asynchronous event; ``timestamp`` is QEMU's host time in seconds."""

    name: str
    data: Mapping[str, Any]
    timestamp: float


QMPMessage = QMPGreeting | QMPReturn | QMPErrorReply | QMPEvent


class QMPProtocol:
    """QMP client state machine; no I/O, one instance per connection."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line <= 0:
            raise ValueError("max_line must be positive")
        self._max_line = max_line
        self._buffer = bytearray()
        # Bytes of _buffer already known to contain no newline, so a line that
        # arrives in many small chunks is scanned once, not quadratically.
        self._scanned = 0
        self._state = RunState.CONNECTING
        self._next_id = 1
        self._pending: dict[int, str] = {}
        self._events: deque[QMPMessage] = deque()
        self._greeting: QMPGreeting | None = None
        self._capabilities_id: int | None = None

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def greeting(self) -> QMPGreeting | None:
        return self._greeting

    @property
    def pending(self) -> Mapping[int, str]:
        """Commands sent but not answered yet (id -> name).

        After CLOSED these will never be answered; the caller fails them.
        """
        return dict(self._pending)

    # -- outgoing -------------------------------------------------------------

    def command(self, name: str, arguments: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """Encode command ``name``; return its id and the bytes to write.

        Raises :class:`StateError` when the run state forbids the command:
        nothing but ``qmp_capabilities`` before READY, and only once.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("command name must be a non-empty string")
        self._check_state(name)
        message: dict[str, Any] = {"execute": name}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        cmd_id = self._next_id
        message["id"] = cmd_id
        # Serialise before mutating state so a TypeError leaves us untouched.
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        self._next_id += 1
        self._pending[cmd_id] = name
        if name == _CAPABILITIES:
            self._capabilities_id = cmd_id
        return cmd_id, data

    def _check_state(self, name: str) -> None:
        state = self._state
        if state is RunState.CLOSED:
            raise StateError(name, state.name, "the connection is closed")
        if state is RunState.CONNECTING:
            raise StateError(name, state.name, "the QMP greeting has not been received yet")
        if state is RunState.NEGOTIATING:
            if name != _CAPABILITIES:
                raise StateError(name, state.name, "qmp_capabilities must be the first command")
            if self._capabilities_id is not None:
                raise StateError(name, state.name, "qmp_capabilities is already in flight")
        elif name == _CAPABILITIES:
            raise StateError(name, state.name, "capabilities were already negotiated")

    # -- incoming -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means EOF.

        Raises :class:`QMPProtocolError` (and moves to CLOSED) on anything
        that is not QMP.  Messages parsed before the error stay queued.
        """
        if self._state is RunState.CLOSED:
            if data:
                _log.debug("dropping %d bytes received after close", len(data))
            return
        if not data:
            if self._buffer.strip():
                _log.warning("QMP connection closed mid-message (%d bytes)", len(self._buffer))
            self.close()
            return
        self._buffer += data
        try:
            self._drain_lines()
        except QMPProtocolError:
            self.close()
            raise

    def _drain_lines(self) -> None:
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                if self._scanned > self._max_line:
                    raise QMPBufferOverflow(self._max_line)
                return
            if newline > self._max_line:
                raise QMPBufferOverflow(self._max_line)
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if line.strip():
                self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, ValueError) as exc:
            raise QMPProtocolError(f"invalid JSON: {exc}") from None
        if not isinstance(message, dict):
            raise QMPProtocolError(f"expected a JSON object, got {type(message).__name__}")
        if self._state is RunState.CONNECTING:
            self._handle_greeting(message)
        elif "event" in message:
            self._events.append(_parse_event(message))
        elif "return" in message or "error" in message:
            self._handle_reply(message)
        elif "QMP" in message:
            raise QMPProtocolError("unexpected second greeting")
        else:
            raise QMPProtocolError(f"unrecognised message with keys {sorted(message)}")

    def _handle_greeting(self, message: dict[str, Any]) -> None:
        body = message.get("QMP")
        if not isinstance(body, dict):
            raise QMPProtocolError("expected the QMP greeting first")
        try:
            qemu = body["version"]["qemu"]
            version = QMPVersion(
                major=_int(qemu["major"]),
                minor=_int(qemu["minor"]),
                micro=_int(qemu["micro"]),
                package=str(body["version"].get("package", "")),
            )
            caps = body["capabilities"]
        except (KeyError, TypeError) as exc:
            raise QMPProtocolError(f"malformed greeting: missing {exc}") from None
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise QMPProtocolError("malformed greeting: capabilities is not a list of strings")
        self._greeting = QMPGreeting(version=version, capabilities=tuple(caps))
        self._state = RunState.NEGOTIATING
        self._events.append(self._greeting)

    def _handle_reply(self, message: dict[str, Any]) -> None:
        cmd_id = message.get("id")
        name = self._pending.pop(cmd_id, None) if isinstance(cmd_id, int) else None
        if name is None:
            # QEMU answers without an id when it could not parse the request;
            # an id we never sent is a bug on one side.  Neither can be routed
            # to a waiter, and neither breaks the stream: log, drop, go on.
            _log.warning("dropping QMP reply with unknown id %r: %.200r", cmd_id, message)
            return
        assert isinstance(cmd_id, int)
        reply: QMPReturn | QMPErrorReply
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict):
                raise QMPProtocolError("malformed error reply")
            reply = QMPErrorReply(
                id=cmd_id,
                command=name,
                error_class=str(error.get("class", "GenericError")),
                desc=str(error.get("desc", "")),
            )
        else:
            reply = QMPReturn(id=cmd_id, command=name, value=message["return"])
        if cmd_id == self._capabilities_id:
            self._capabilities_id = None
            if isinstance(reply, QMPReturn):
                self._state = RunState.READY
        self._events.append(reply)

    def next_event(self) -> QMPMessage | None:
        """Pop the oldest parsed message, or ``None`` when none is queued."""
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Mark the connection closed (EOF, socket error or local shutdown)."""
        self._state = RunState.CLOSED
        self._buffer.clear()
        self._scanned = 0


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise QMPProtocolError(f"expected an integer, got {value!r}")
    return value


def _parse_event(message: dict[str, Any]) -> QMPEvent:
    name = message["event"]
    if not isinstance(name, str):
        raise QMPProtocolError("event name is not a string")
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise QMPProtocolError(f"event {name} data is not an object")
    stamp = message.get("timestamp")
    timestamp = 0.0
    if isinstance(stamp, dict):
        seconds = stamp.get("seconds", 0)
        micros = stamp.get("microseconds", 0)
        if isinstance(seconds, int) and isinstance(micros, int):
            timestamp = seconds + micros / 1_000_000
    return QMPEvent(name=name, data=data, timestamp=timestamp)
