"""The generated fast path (protocol/fastpath.py) agrees with construct, the reference."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fields import Everything, all_payload_classes
from wire_helpers import FAST, strategy_for, wire_equal

from protocol import payloads as p
from protocol.constants import MAX_LIST
from protocol.fastpath import FastCodec
from protocol.fields import Codec, codec_for, encoded

CLASSES = [*all_payload_classes(), Everything]
FASTPATH = [c for c in CLASSES if FastCodec.build(c) is not None]


def fast(cls: type) -> FastCodec:
    codec = FastCodec.build(cls)
    assert codec is not None
    return codec


def construct_encode(codec: Codec[Any], value: Any) -> bytes:
    """construct's (uncompiled) Struct builds ``value``: the reference, independently of
    the compiled functions the fallback uses."""
    reference = codec.reference
    return bytes(reference.struct.build(reference.to_wire(value)))


def construct_decode(codec: Codec[Any], data: bytes) -> Any:
    return codec.reference.decode(data)


def test_every_payload_with_fields_takes_the_fast_path() -> None:
    with_fields = {c for c in CLASSES if codec_for(c).reference.struct.subcons}
    assert set(FASTPATH) == with_fields
    assert {"ListDomainsReply", "NodeInfoReply", "HelloArgs", "StatsReply"} <= {
        c.__name__ for c in FASTPATH}


@pytest.mark.parametrize("cls", FASTPATH, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_same_bytes_and_values_as_construct(cls: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(cls))
    codec = codec_for(cls)
    encoded = fast(cls).encode(value)
    assert encoded == construct_encode(codec, value) == codec.reference.encode(value)
    assert encoded == codec.encode(value)
    assert wire_equal(fast(cls).decode(encoded), construct_decode(codec, encoded))
    assert wire_equal(codec.decode(encoded), value)


@pytest.mark.parametrize("cls", FASTPATH, ids=lambda c: c.__name__)
@FAST
@given(raw=st.binary(max_size=96))
def test_whatever_the_fast_path_accepts_construct_decodes_the_same(cls: type,
                                                                  raw: bytes) -> None:
    try:
        decoded = fast(cls).decode(raw)
    except Exception:  # noqa: BLE001 - rejected: the construct path decides
        return
    assert wire_equal(decoded, construct_decode(codec_for(cls), raw))


def _summaries(n: int) -> p.ListDomainsReply:
    return p.ListDomainsReply([
        p.DomainSummary(p.DomainRef(f"guest-{i}", uuid.UUID(int=i).bytes, i - 1), 1, 2,
                        bool(i % 2), False) for i in range(n)])


def test_a_long_list_round_trips_and_matches_construct() -> None:
    reply = _summaries(1000)
    codec = codec_for(p.ListDomainsReply)
    data = fast(p.ListDomainsReply).encode(reply)
    assert data == construct_encode(codec, reply)
    assert fast(p.ListDomainsReply).decode(data) == reply


def test_a_list_count_over_the_limit_is_refused_before_reading_it() -> None:
    data = struct.pack(">I", MAX_LIST + 1)
    with pytest.raises(ValueError, match="list too long"):
        fast(p.ListDomainsReply).decode(data)
    with pytest.raises(ValueError, match="ListDomainsReply"):
        codec_for(p.ListDomainsReply).decode(data)


def test_a_truncated_record_is_an_error_not_a_short_list() -> None:
    data = fast(p.ListDomainsReply).encode(_summaries(3))
    for cut in (1, 5, 20, len(data) - 1):
        with pytest.raises(ValueError):
            codec_for(p.ListDomainsReply).decode(data[:-cut])


@pytest.mark.parametrize("bad, error", [
    (p.DomainRef("x", b"short", 1), "uuid"),
    (p.DomainRef("x", uuid.UUID(int=1).bytes, 2**31), "format requires"),
    (p.DomainRef(b"bytes", uuid.UUID(int=1).bytes, 1),  # type: ignore[arg-type]
     "expected unicode string"),
])
def test_a_bad_record_in_a_list_is_reported_by_the_reference_codec(bad: p.DomainRef,
                                                                  error: str) -> None:
    reply = p.ListDomainsReply([p.DomainSummary(bad, 1, 1, True, False)])
    with pytest.raises((ValueError, TypeError, AttributeError, struct.error)):
        fast(p.ListDomainsReply).encode(reply)
    with pytest.raises(ValueError, match=f"(?s)cannot encode ListDomainsReply.*{error}"):
        codec_for(p.ListDomainsReply).encode(reply)


def test_decoded_frozen_records_behave_like_constructed_ones() -> None:
    """The decoder fills slots directly instead of calling __init__: the objects must
    still be equal, hashable, immutable and printable like any other."""
    reply = _summaries(2)
    decoded = fast(p.ListDomainsReply).decode(fast(p.ListDomainsReply).encode(reply))
    first = decoded.domains[0]
    assert first == reply.domains[0] and hash(first) == hash(reply.domains[0])
    assert repr(first) == repr(reply.domains[0])
    with pytest.raises(AttributeError):
        first.state = 3  # type: ignore[misc]


def test_encoded_items_give_the_same_bytes_on_both_paths() -> None:
    """A sender may hand over records it encoded earlier (the daemon's listing does);
    the fast path copies their bytes, construct encodes their value: same result."""
    reply = _summaries(5)
    mixed = p.ListDomainsReply([encoded(s) if i % 2 else s
                                for i, s in enumerate(reply.domains)])
    codec = codec_for(p.ListDomainsReply)
    expected = construct_encode(codec, reply)
    assert fast(p.ListDomainsReply).encode(mixed) == expected
    assert construct_encode(codec, mixed) == expected
    assert codec.encode(mixed) == expected
    assert codec.decode(expected) == reply  # the receiver sees plain records


def test_an_encoded_item_carries_exactly_its_value_bytes() -> None:
    record = _summaries(2).domains[1]
    item = encoded(record)
    assert item.value is record
    assert item.data == codec_for(p.DomainSummary).encode(record)
