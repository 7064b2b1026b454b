"""Shared helpers for tests/protocol (imported by basename; tests/ has no __init__.py).

* :func:`strategy_for` derives a hypothesis strategy from a payload dataclass's
  annotations, so a payload or procedure added to the table is covered without editing
  any test. An annotation it does not know fails loudly: add the new wire type here.
* :func:`sample_for` is one fixed valid value of the same, for checks that run outside
  hypothesis (e.g. in a fresh interpreter).
* :class:`ConnectionPair` is a client and a server :class:`protocol.Connection` wired
  back to back, in the style of h11's test helper, with the hello already done.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import typing
from typing import Annotated, Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import protocol
from protocol import fields
from protocol.payloads import HelloArgs, HelloReply

#: default settings for property tests in this folder (the whole folder runs in seconds)
FAST = settings(max_examples=30, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_INT_RANGES: list[tuple[Any, int, int]] = [
    (fields.U8, 0, 2**8 - 1),
    (fields.U16, 0, 2**16 - 1),
    (fields.U32, 0, 2**32 - 1),
    (fields.U64, 0, 2**64 - 1),
    (fields.S32, -(2**31), 2**31 - 1),
    (fields.S64, -(2**63), 2**63 - 1),
]

#: (annotation, wire name, strategy) for every leaf wire type in protocol.fields
WIRE_TYPES: list[tuple[Any, str, st.SearchStrategy[Any]]] = [
    *[(alias, name, st.integers(lo, hi))
      for (alias, lo, hi), name in zip(_INT_RANGES, ["u8", "u16", "u32", "u64", "s32", "s64"],
                                       strict=True)],
    (fields.F64, "f64", st.floats(allow_nan=True, allow_infinity=True)),
    (fields.Bool, "bool", st.booleans()),
    (fields.Str, "string", st.text(st.characters(codec="utf-8"), max_size=24)),
    (fields.Blob, "blob", st.binary(max_size=32)),
    (fields.UUIDBytes, "uuid", st.binary(min_size=16, max_size=16)),
]

#: annotation -> (min, max) for the integer wire types
INT_RANGES: list[tuple[Any, int, int]] = _INT_RANGES

MAX_LIST_EXAMPLE = 4


def leaf_strategy(tp: Any) -> st.SearchStrategy[Any]:
    for alias, _name, strategy in WIRE_TYPES:
        if tp == alias:
            return strategy
    raise TypeError(f"no strategy for wire type {tp!r}: add it to tests/protocol/wire_helpers.py")


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy producing valid values of annotation or payload dataclass ``tp``."""
    if typing.get_origin(tp) is Annotated:
        return leaf_strategy(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return st.lists(strategy_for(item), max_size=MAX_LIST_EXAMPLE)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name])
                                for f in dataclasses.fields(tp)})
    raise TypeError(f"unsupported annotation {tp!r}")


#: wire name -> one valid value, at an edge of the range where there is one
_SAMPLES: dict[str, Any] = {
    "u8": 2**8 - 1, "u16": 2**16 - 1, "u32": 2**32 - 1, "u64": 2**64 - 1, "s32": -(2**31),
    "s64": -(2**63), "f64": -0.5, "bool": True, "string": "héllo", "blob": b"\x00\xff",
    "uuid": bytes(range(16)),
}


def sample_for(tp: Any) -> Any:
    """A valid value of annotation or payload dataclass ``tp``: every list has two items,
    so the generated list code runs both its "more items follow" and its last-item path."""
    if typing.get_origin(tp) is Annotated:
        for alias, name, _strategy in WIRE_TYPES:
            if tp == alias:
                return _SAMPLES[name]
        raise TypeError(f"no sample for wire type {tp!r}: add it to _SAMPLES")
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return [sample_for(item), sample_for(item)]
    hints = typing.get_type_hints(tp, include_extras=True)
    return tp(**{f.name: sample_for(hints[f.name]) for f in dataclasses.fields(tp)})


def referenced_classes(tp: Any) -> set[type]:
    """``tp`` (if a dataclass) and every dataclass its fields reach."""
    if typing.get_origin(tp) is Annotated:
        return set()
    if typing.get_origin(tp) is list:
        return referenced_classes(typing.get_args(tp)[0])
    found: set[type] = {tp}
    hints = typing.get_type_hints(tp, include_extras=True)
    for f in dataclasses.fields(tp):
        found |= referenced_classes(hints[f.name])
    return found


def wire_equal(a: Any, b: Any) -> bool:
    """Equality that compares floats bit for bit (NaN == NaN, 0.0 != -0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(wire_equal(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(wire_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


class ConnectionPair:
    """A client and a server Connection; :meth:`hello` negotiates like a real session."""

    def __init__(self, *, client_versions: tuple[int, ...] = protocol.SUPPORTED_VERSIONS,
                 server_versions: tuple[int, ...] = protocol.SUPPORTED_VERSIONS,
                 max_frame: int = protocol.DEFAULT_MAX_FRAME, hello: bool = True) -> None:
        self.client = protocol.Connection(protocol.Role.CLIENT, versions=client_versions,
                                          max_frame=max_frame)
        self.server = protocol.Connection(protocol.Role.SERVER, versions=server_versions,
                                          max_frame=max_frame)
        self.serial = 0
        if hello:
            self.hello()

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def hello(self) -> int:
        serial = self.next_serial()
        call = protocol.Call(protocol.Procedure.HELLO, serial,
                             HelloArgs(list(self.client.versions), "test-client"))
        got = self.send_to_server(call)
        assert isinstance(got, protocol.Call) and isinstance(got.args, HelloArgs)
        version = self.server.accept_hello(got.args, serial)
        reply = protocol.Reply(protocol.Procedure.HELLO, serial,
                               HelloReply(version, "test-server", False, 5))
        assert self.send_to_client(reply) == reply
        assert self.client.version == self.server.version == version
        return version

    @staticmethod
    def _transfer(sender: protocol.Connection, receiver: protocol.Connection,
                  message: protocol.Message) -> protocol.Message:
        data = sender.send(message)
        receiver.receive_data(data)
        got = receiver.next_message()
        assert receiver.next_message() is protocol.NEED_DATA
        assert receiver.buffered == 0
        assert not isinstance(got, protocol.messages.Sentinel)
        return got

    def send_to_server(self, message: protocol.Message) -> protocol.Message:
        return self._transfer(self.client, self.server, message)

    def send_to_client(self, message: protocol.Message) -> protocol.Message:
        return self._transfer(self.server, self.client, message)


def frame(procedure: int, payload: bytes = b"", *, msg_type: int = protocol.MessageType.CALL,
          status: int = protocol.Status.OK, serial: int = 7,
          version: int = protocol.CURRENT_VERSION, program: int = protocol.PROGRAM,
          length: int | None = None) -> bytes:
    """A frame written field by field with struct, independent of the code under test."""
    if length is None:
        length = protocol.HEADER_SIZE + len(payload)
    return struct.pack(">IIHBBII", length, program, version, msg_type, status, procedure,
                       serial) + payload


def drain(conn: protocol.Connection) -> list[object]:
    """Every message now available (stops at NEED_DATA/CLOSED, which is appended)."""
    out: list[object] = []
    while True:
        msg = conn.next_message()
        out.append(msg)
        if msg is protocol.NEED_DATA or msg is protocol.CLOSED:
            return out
