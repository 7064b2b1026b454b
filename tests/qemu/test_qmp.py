"""QMPProtocol against byte strings: framing, state guard, id matching, limits."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemud.qemu.errors import QMPBufferOverflow, QMPError, QMPProtocolError, StateError
from qemud.qemu.qmp import (
    QMPErrorReply,
    QMPEvent,
    QMPGreeting,
    QMPMessage,
    QMPProtocol,
    QMPReturn,
    QMPVersion,
    RunState,
)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
    b'"package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}\r\n'
)


def state(proto: QMPProtocol) -> RunState:
    """Read the state without mypy narrowing it across calls that change it."""
    return proto.state


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


def drain(proto: QMPProtocol) -> list[QMPMessage]:
    out = []
    while (msg := proto.next_event()) is not None:
        out.append(msg)
    return out


def ready() -> QMPProtocol:
    proto = QMPProtocol()
    proto.receive_data(GREETING)
    cmd_id, _ = proto.command("qmp_capabilities")
    proto.receive_data(line({"return": {}, "id": cmd_id}))
    drain(proto)
    assert state(proto) is RunState.READY
    return proto


def test_greeting_is_parsed_and_moves_to_negotiating() -> None:
    proto = QMPProtocol()
    assert state(proto) is RunState.CONNECTING
    assert proto.next_event() is None
    proto.receive_data(GREETING)
    greeting = proto.next_event()
    assert greeting == QMPGreeting(QMPVersion(7, 2, 22, "Debian 1:7.2+dfsg-7"), ("oob",))
    assert isinstance(greeting, QMPGreeting) and greeting.version.as_tuple() == (7, 2, 22)
    assert proto.greeting == greeting
    assert state(proto) is RunState.NEGOTIATING


def test_no_command_before_greeting() -> None:
    proto = QMPProtocol()
    with pytest.raises(StateError, match="greeting"):
        proto.command("qmp_capabilities")


def test_only_capabilities_while_negotiating() -> None:
    proto = QMPProtocol()
    proto.receive_data(GREETING)
    with pytest.raises(StateError) as info:
        proto.command("query-status")
    assert info.value.command == "query-status"
    assert info.value.state == "NEGOTIATING"
    assert "qmp_capabilities must be the first command" in str(info.value)


def test_capabilities_handshake_encodes_and_reaches_ready() -> None:
    proto = QMPProtocol()
    proto.receive_data(GREETING)
    drain(proto)
    cmd_id, data = proto.command("qmp_capabilities", {"enable": []})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": 1}
    with pytest.raises(StateError, match="in flight"):
        proto.command("qmp_capabilities")
    proto.receive_data(line({"return": {}, "id": cmd_id}))
    assert proto.next_event() == QMPReturn(cmd_id, "qmp_capabilities", {})
    assert state(proto) is RunState.READY
    with pytest.raises(StateError, match="already negotiated"):
        proto.command("qmp_capabilities")


def test_failed_capabilities_can_be_retried() -> None:
    proto = QMPProtocol()
    proto.receive_data(GREETING)
    cmd_id, _ = proto.command("qmp_capabilities", {"enable": ["bogus"]})
    proto.receive_data(line({"error": {"class": "GenericError", "desc": "nope"}, "id": cmd_id}))
    drain(proto)
    assert state(proto) is RunState.NEGOTIATING
    retry_id, _ = proto.command("qmp_capabilities")
    assert retry_id == cmd_id + 1


def test_ids_increase_and_replies_match_out_of_order() -> None:
    proto = ready()
    first, data1 = proto.command("query-status")
    second, data2 = proto.command("stop")
    assert second == first + 1
    assert json.loads(data1) == {"execute": "query-status", "id": first}
    assert proto.pending == {first: "query-status", second: "stop"}
    proto.receive_data(line({"return": {}, "id": second}) + line({"return": {"x": 1}, "id": first}))
    assert drain(proto) == [
        QMPReturn(second, "stop", {}),
        QMPReturn(first, "query-status", {"x": 1}),
    ]
    assert proto.pending == {}


def test_error_reply() -> None:
    proto = ready()
    cmd_id, _ = proto.command("device_del", {"id": "nope"})
    proto.receive_data(
        line(
            {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}, "id": cmd_id}
        )
    )
    assert proto.next_event() == QMPErrorReply(
        cmd_id, "device_del", "DeviceNotFound", "Device 'nope' not found"
    )


def test_reply_with_unknown_id_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    proto = ready()
    with caplog.at_level(logging.WARNING, logger="qemud.qemu.qmp"):
        proto.receive_data(line({"return": {}, "id": 99}))
        proto.receive_data(line({"error": {"class": "GenericError", "desc": "JSON parse"}}))
    assert proto.next_event() is None
    assert state(proto) is RunState.READY
    assert sum("unknown id" in r.getMessage() for r in caplog.records) == 2


def test_event_is_parsed_with_float_timestamp() -> None:
    proto = ready()
    proto.receive_data(
        line(
            {
                "timestamp": {"seconds": 1700000000, "microseconds": 250000},
                "event": "STOP",
            }
        )
        + line(
            {
                "timestamp": {"seconds": 1, "microseconds": 5},
                "event": "SHUTDOWN",
                "data": {"guest": True, "reason": "guest-shutdown"},
            }
        )
    )
    stop, shutdown = drain(proto)
    assert stop == QMPEvent("STOP", {}, 1700000000.25)
    assert isinstance(shutdown, QMPEvent)
    assert shutdown.data == {"guest": True, "reason": "guest-shutdown"}
    assert shutdown.timestamp == pytest.approx(1.000005)


def test_events_interleave_with_replies_in_order() -> None:
    proto = ready()
    cmd_id, _ = proto.command("stop")
    ev = {"event": "STOP", "timestamp": {"seconds": 0, "microseconds": 0}}
    proto.receive_data(line(ev) + line({"return": {}, "id": cmd_id}))
    assert [type(m) for m in drain(proto)] == [QMPEvent, QMPReturn]


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        QMPEvent("STOP", {}, 0.0).name = "RESUME"  # type: ignore[misc]


def test_partial_lines_are_buffered() -> None:
    proto = QMPProtocol()
    proto.receive_data(GREETING[:10])
    assert proto.next_event() is None and state(proto) is RunState.CONNECTING
    proto.receive_data(GREETING[10:])
    assert isinstance(proto.next_event(), QMPGreeting)


def _replies() -> bytes:
    return (
        line({"return": {}, "id": 3})
        + line({"event": "RESUME", "timestamp": {"seconds": 2, "microseconds": 0}})
        + b"\n"  # blank lines are ignored
        + line({"return": {"status": "running", "running": True}, "id": 2})
        + line({"error": {"class": "GenericError", "desc": "no, \u00e9"}, "id": 4})
    )


def _feed(chunks: list[bytes]) -> list[QMPMessage]:
    proto = ready()
    for name in ("query-status", "cont", "bogus"):
        proto.command(name)
    seen: list[QMPMessage] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        seen += drain(proto)
    return seen


@settings(deadline=None)  # shared 2-core CI box: wall time is noisy
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_chunking_does_not_change_the_result(cuts: list[int]) -> None:
    data = _replies()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    whole = _feed([data])
    assert len(whole) == 4
    assert _feed(chunks) == whole


def test_byte_at_a_time() -> None:
    proto = QMPProtocol()
    for byte in GREETING:
        proto.receive_data(bytes([byte]))
    assert isinstance(proto.next_event(), QMPGreeting)


def test_overflow_is_a_protocol_error_and_closes() -> None:
    proto = QMPProtocol(max_line=64)
    proto.receive_data(b"{" + b" " * 40)
    with pytest.raises(QMPBufferOverflow) as info:
        proto.receive_data(b" " * 40)
    assert info.value.limit == 64
    assert isinstance(info.value, QMPProtocolError) and isinstance(info.value, QMPError)
    assert state(proto) is RunState.CLOSED
    with pytest.raises(StateError, match="closed"):
        proto.command("query-status")


def test_overflow_of_a_complete_long_line() -> None:
    proto = QMPProtocol(max_line=32)
    with pytest.raises(QMPBufferOverflow):
        proto.receive_data(line({"QMP": {"padding": "x" * 100}}))


def test_default_cap_is_16_mib() -> None:
    proto = QMPProtocol()
    proto.receive_data(GREETING)
    chunk = b"x" * (1 << 20)
    with pytest.raises(QMPBufferOverflow):
        for _ in range(17):
            proto.receive_data(chunk)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json\n", "invalid JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"return": {}}\n', "QMP greeting first"),
        (b'{"QMP": {"version": {}}}\n', "malformed greeting"),
        (
            b'{"QMP": {"version": {"qemu": {"major": "7", "minor": 2, "micro": 0}},'
            b' "capabilities": []}}\n',
            "integer",
        ),
        (b"\xff\xfe\n", "invalid JSON"),
    ],
)
def test_garbage_before_greeting(data: bytes, match: str) -> None:
    proto = QMPProtocol()
    with pytest.raises(QMPProtocolError, match=match):
        proto.receive_data(data)
    assert state(proto) is RunState.CLOSED


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (GREETING, "second greeting"),
        (b'{"hello": 1}\n', "unrecognised"),
        (b'{"event": 5}\n', "event name"),
        (b'{"event": "X", "data": []}\n', "not an object"),
    ],
)
def test_garbage_after_greeting(data: bytes, match: str) -> None:
    proto = ready()
    with pytest.raises(QMPProtocolError, match=match):
        proto.receive_data(data)
    assert state(proto) is RunState.CLOSED


def test_messages_before_an_error_stay_queued() -> None:
    proto = ready()
    ev = line({"event": "STOP", "timestamp": {"seconds": 0, "microseconds": 0}})
    with pytest.raises(QMPProtocolError):
        proto.receive_data(ev + b"garbage\n")
    assert isinstance(proto.next_event(), QMPEvent)


def test_eof_closes_and_keeps_pending_for_the_caller() -> None:
    proto = ready()
    cmd_id, _ = proto.command("quit")
    proto.receive_data(b"")
    assert state(proto) is RunState.CLOSED
    assert proto.pending == {cmd_id: "quit"}
    proto.receive_data(b"late bytes\n")  # ignored after close
    assert proto.next_event() is None


def test_unserialisable_arguments_leave_state_untouched() -> None:
    proto = ready()
    with pytest.raises(TypeError):
        proto.command("x", {"bad": object()})
    cmd_id, _ = proto.command("query-status")
    assert cmd_id == 2 and proto.pending == {2: "query-status"}


def test_bad_command_name_and_cap() -> None:
    with pytest.raises(ValueError):
        QMPProtocol(max_line=0)
    with pytest.raises(ValueError):
        ready().command("")
