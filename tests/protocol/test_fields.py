"""protocol.fields: wire types and the dataclass -> construct codec, below the connection."""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
import typing
from typing import Any

import construct
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import FAST, INT_RANGES, WIRE_TYPES, strategy_for, wire_equal

from protocol import payloads as p
from protocol.constants import MAX_LIST, MAX_STRING
from protocol.fields import (
    F64,
    S32,
    S64,
    U8,
    U16,
    U32,
    U64,
    Blob,
    Bool,
    Codec,
    Empty,
    Payload,
    Str,
    UUIDBytes,
    codec_for,
)
from protocol.reference import describe


@dataclasses.dataclass(frozen=True, slots=True)
class Inner(Payload):
    a: U16
    s: Str


@dataclasses.dataclass(frozen=True, slots=True)
class Everything(Payload):
    u8: U8
    u16: U16
    u32: U32
    u64: U64
    s32: S32
    s64: S64
    f64: F64
    flag: Bool
    text: Str
    blob: Blob
    uuid: UUIDBytes
    numbers: list[U32]
    inner: Inner
    inners: list[Inner]


def one_field(tp: Any) -> type[Any]:
    return dataclasses.make_dataclass("One", [("value", tp)], bases=(Payload,), frozen=True)


def all_payload_classes() -> list[type]:
    return sorted({obj for obj in vars(p).values()
                   if isinstance(obj, type) and dataclasses.is_dataclass(obj)
                   and issubclass(obj, Payload)}, key=lambda c: c.__name__)


@FAST
@given(strategy_for(Everything))
def test_every_wire_type_round_trips(value: Everything) -> None:
    codec = codec_for(Everything)
    data = codec.encode(value)
    assert wire_equal(codec.decode(data), value)
    assert codec.encode(codec.decode(data)) == data


def test_every_wire_type_has_a_strategy() -> None:
    """A new alias in protocol.fields needs a strategy in wire_helpers.WIRE_TYPES."""
    import protocol.fields as f
    aliases = [getattr(f, n) for n in f.__all__
               if typing.get_origin(getattr(f, n)) is typing.Annotated]
    assert len(aliases) == 11
    for alias in aliases:
        assert any(alias == known for known, _, _ in WIRE_TYPES), alias


def test_encoding_is_big_endian_and_matches_the_spec() -> None:
    value = Everything(
        u8=1, u16=0x0203, u32=0x04050607, u64=0x08090A0B0C0D0E0F, s32=-2, s64=-3, f64=1.5,
        flag=True, text="hé", blob=b"\x00\xff", uuid=bytes(range(16)), numbers=[1, 2],
        inner=Inner(7, "x"), inners=[Inner(8, "")])
    expected = (
        b"\x01" + b"\x02\x03" + b"\x04\x05\x06\x07" + bytes.fromhex("08090a0b0c0d0e0f")
        + b"\xff\xff\xff\xfe" + b"\xff" * 7 + b"\xfd" + struct.pack(">d", 1.5)
        + b"\x01"
        + b"\x00\x00\x00\x03" + "hé".encode()  # string: u32 byte length + UTF-8
        + b"\x00\x00\x00\x02\x00\xff"  # blob: u32 length + bytes
        + bytes(range(16))  # uuid: 16 raw bytes, no length
        + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02"  # list: u32 count
        + b"\x00\x07" + b"\x00\x00\x00\x01x"  # nested struct: inline
        + b"\x00\x00\x00\x01" + b"\x00\x08" + b"\x00\x00\x00\x00")
    assert codec_for(Everything).encode(value) == expected
    assert codec_for(Everything).decode(expected) == value


def test_bool_is_one_byte_zero_or_one() -> None:
    codec = codec_for(p.BoolReply)
    assert codec.encode(p.BoolReply(False)) == b"\x00"
    assert codec.encode(p.BoolReply(True)) == b"\x01"
    assert codec.decode(b"\x00") == p.BoolReply(False)
    assert codec.decode(b"\x01") == p.BoolReply(True)


@pytest.mark.parametrize(("tp", "lo", "hi"), INT_RANGES,
                         ids=["u8", "u16", "u32", "u64", "s32", "s64"])
def test_integer_ranges(tp: Any, lo: int, hi: int) -> None:
    codec = codec_for(one_field(tp))
    cls = codec.cls
    for ok in (lo, hi, 0):
        assert codec.decode(codec.encode(cls(ok))).value == ok
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match="cannot encode"):
            codec.encode(cls(bad))
    with pytest.raises(ValueError):
        codec.encode(cls("1"))
    with pytest.raises(ValueError):
        codec.encode(cls(1.5))


@pytest.mark.parametrize("bad", [b"\x00" * 15, b"\x00" * 17, b"", "0" * 16, 16, None],
                         ids=["15-bytes", "17-bytes", "empty", "str", "int", "none"])
def test_uuid_must_be_16_bytes_on_send(bad: Any) -> None:
    with pytest.raises(ValueError):
        codec_for(p.UUIDArgs).encode(p.UUIDArgs(bad))


@pytest.mark.parametrize("obj", [
    p.NameArgs("\udc80"),  # lone surrogate: not UTF-8 encodable
    p.NameArgs(b"bytes"),  # type: ignore[arg-type]
    p.NameArgs(None),  # type: ignore[arg-type]
    p.EventRegisterArgs(1, "str-not-bytes"),  # type: ignore[arg-type]
    p.HelloArgs([1, 70000]),  # list item out of u16 range
    p.HelloArgs(None),  # type: ignore[arg-type]
    p.DomainInfoReply(1, 2, 3, 4, -5),
], ids=repr)
def test_wrong_python_values_are_refused(obj: Payload) -> None:
    with pytest.raises(ValueError):
        codec_for(type(obj)).encode(obj)


def test_string_and_list_limits_on_encode() -> None:
    codec_for(p.NameArgs).encode(p.NameArgs("x" * MAX_STRING))
    with pytest.raises(ValueError):
        codec_for(p.NameArgs).encode(p.NameArgs("x" * (MAX_STRING + 1)))
    with pytest.raises(ValueError):
        codec_for(p.EventRegisterArgs).encode(p.EventRegisterArgs(0, b"x" * (MAX_STRING + 1)))
    codec_for(p.HelloArgs).encode(p.HelloArgs([1] * MAX_LIST))
    with pytest.raises(ValueError):
        codec_for(p.HelloArgs).encode(p.HelloArgs([1] * (MAX_LIST + 1)))


def _peak_during(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(("cls", "data"), [
    (p.NameArgs, struct.pack(">I", MAX_STRING + 1) + b"abc"),
    (p.NameArgs, struct.pack(">I", 0xFFFFFFFF) + b"abc"),
    (p.EventRegisterArgs, struct.pack(">II", 0, MAX_STRING + 1) + b"abc"),
    (p.HelloArgs, struct.pack(">I", MAX_LIST + 1) + b"\x00\x01"),
    (p.ListDomainsReply, struct.pack(">I", 0xFFFFFFFF)),
    (p.StatsReply, struct.pack(">I", 1) + struct.pack(">I", 1) + b"n" + bytes(16)
     + struct.pack(">iI", -1, MAX_LIST + 1)),  # nested list count
], ids=["str", "str-max-u32", "blob", "list", "list-max-u32", "nested-list"])
def test_length_over_limit_is_rejected_without_allocating(cls: type, data: bytes) -> None:
    codec: Codec[Any] = codec_for(cls)

    def decode() -> None:
        with pytest.raises(ValueError, match="validation"):
            codec.decode(data)

    assert _peak_during(decode) < 256 * 1024


@pytest.mark.parametrize(("cls", "data"), [
    (p.NameArgs, struct.pack(">I", MAX_STRING) + b"abc"),
    (p.HelloArgs, struct.pack(">I", MAX_LIST) + b"\x00\x01"),
], ids=["str", "list"])
def test_length_at_limit_but_truncated_is_rejected_without_allocating(
        cls: type, data: bytes) -> None:
    codec: Codec[Any] = codec_for(cls)

    def decode() -> None:
        with pytest.raises(ValueError):
            codec.decode(data)

    assert _peak_during(decode) < 256 * 1024


@pytest.mark.parametrize("cls", [c for c in all_payload_classes() if dataclasses.fields(c)],
                         ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_every_proper_prefix_of_a_payload_is_rejected(cls: type, data: st.DataObject) -> None:
    """Every field occupies at least one byte, so a cut must not decode, except exactly at
    the end of a field after which only defaulted fields follow: that is an older peer's
    payload (evolution rule 4a) and decodes with the absent fields at their defaults.

    (construct's compiled Flag/Bytes/PascalString used to return short reads silently:
    b"" decoded as BoolReply(True) and a 3-byte uuid was accepted.)
    """
    value = data.draw(strategy_for(cls))
    codec: Codec[Any] = codec_for(cls)
    encoded = codec.encode(value)
    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    wire = codec.reference.to_wire(value)
    ends = [len(construct.Struct(*[f.name / describe(hints[f.name])[0]
                                   for f in fields[:k + 1]]).build(wire))
            for k in range(len(fields))]
    required = [k for k, f in enumerate(fields) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    required_end = ends[required[-1]] if required else 0
    cuts: typing.Sequence[int] = range(len(encoded))
    if len(encoded) > 200:  # keep it linear: a spread of cuts plus the last 16 bytes
        cuts = sorted({*range(0, len(encoded), len(encoded) // 150), *cuts[-16:]})
    older_ends = {end for end in [0, *ends] if end >= required_end}
    for cut in cuts:
        if cut not in older_ends:
            with pytest.raises(ValueError):
                codec.decode(encoded[:cut])
            continue
        present = {f.name for f, end in zip(fields, ends, strict=True) if end <= cut}
        expected = dataclasses.replace(value, **{
            f.name: (f.default if f.default is not dataclasses.MISSING
                     else f.default_factory())  # type: ignore[misc]
            for f in fields if f.name not in present})
        assert wire_equal(codec.decode(encoded[:cut]), expected)


@pytest.mark.parametrize("cls", all_payload_classes(), ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_trailing_bytes_are_ignored(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(cls))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    codec: Codec[Any] = codec_for(cls)
    assert wire_equal(codec.decode(codec.encode(value) + extra), value)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(ValueError):
        codec_for(p.NameArgs).decode(b"\x00\x00\x00\x02\xff\xfe")


def test_empty_payload() -> None:
    codec = codec_for(Empty)
    assert codec.encode(Empty()) == b""
    assert codec.decode(b"") == Empty()
    assert codec.decode(b"anything a newer peer appended") == Empty()


def test_codecs_are_cached() -> None:
    assert codec_for(p.DomainRef) is codec_for(p.DomainRef)
    assert isinstance(codec_for(p.DomainRef), Codec)


def test_unsupported_annotation_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unsupported wire type"):
        codec_for(one_field(int))
    with pytest.raises(TypeError, match="unsupported wire type"):
        codec_for(one_field(dict[str, int]))
