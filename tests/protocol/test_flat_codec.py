"""The struct fast path (fields._FlatCodec) agrees with construct, the reference codec."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fields import all_payload_classes
from wire_helpers import FAST, strategy_for, wire_equal

from protocol.fields import _PARSE_CONTEXT, Codec, _FlatCodec, codec_for

FLAT = [c for c in all_payload_classes() if _FlatCodec.build(c) is not None]


def construct_encode(codec: Codec[Any], value: Any) -> bytes:
    return bytes(codec.struct.build(codec._to_wire(value)))


def construct_decode(codec: Codec[Any], data: bytes) -> Any:
    return codec._from_wire(codec._parsefunc(io.BytesIO(data), _PARSE_CONTEXT))


def test_the_hot_small_payloads_take_the_fast_path() -> None:
    names = {c.__name__ for c in FLAT}
    assert {"NodeInfoReply", "DomainInfoReply", "DomainStateReply", "StringReply",
            "DomainArgs", "DomainFlagsArgs", "DomainReply", "HelloReply"} <= names
    assert "ListDomainsReply" not in names  # lists stay with construct


@pytest.mark.parametrize("cls", FLAT, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_same_bytes_and_values_as_construct(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(cls))
    codec = codec_for(cls)
    flat = _FlatCodec.build(cls)
    assert flat is not None
    encoded = flat.encode(value)
    assert encoded == construct_encode(codec, value) == codec.encode(value)
    assert wire_equal(flat.decode(encoded), construct_decode(codec, encoded))
    assert wire_equal(codec.decode(encoded), value)


@pytest.mark.parametrize("cls", FLAT, ids=lambda c: c.__name__)
@FAST
@given(raw=st.binary(max_size=96))
def test_whatever_the_fast_path_accepts_construct_decodes_the_same(cls: type,
                                                                  raw: bytes) -> None:
    codec = codec_for(cls)
    flat = _FlatCodec.build(cls)
    assert flat is not None
    try:
        fast = flat.decode(raw)
    except Exception:  # noqa: BLE001 - rejected: the construct path decides
        return
    assert wire_equal(fast, construct_decode(codec, raw))
