"""libvirt memory units: conversion table, rounding, errors, property-based round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemud.conf import DomainDef, parse_domain_xml
from qemud.conf.units import (
    KIB,
    MAX_BYTES,
    UNITS,
    from_kib,
    parse_memory,
    to_bytes,
    to_kib,
    unit_scale,
)

TABLE = {
    "b": 1, "bytes": 1,
    "KB": 1000, "k": 1024, "KiB": 1024,
    "MB": 1000**2, "M": 1024**2, "MiB": 1024**2,
    "GB": 1000**3, "G": 1024**3, "GiB": 1024**3,
    "TB": 1000**4, "T": 1024**4, "TiB": 1024**4,
}


@pytest.mark.parametrize(("unit", "scale"), TABLE.items())
def test_required_units(unit: str, scale: int) -> None:
    assert unit_scale(unit) == scale
    assert UNITS[unit] == scale


@pytest.mark.parametrize("unit", UNITS)
def test_table_agrees_with_parser(unit: str) -> None:
    assert unit_scale(unit) == UNITS[unit]
    assert unit_scale(unit.upper()) == UNITS[unit]
    assert unit_scale(unit.lower()) == UNITS[unit]


def test_default_unit_is_kib() -> None:
    assert unit_scale(None) == KIB
    assert unit_scale("") == KIB
    assert to_kib(7) == 7
    assert parse_memory("7") == 7


@pytest.mark.parametrize(("value", "unit", "kib"), [
    (1, "b", 1),            # rounded up, never 0
    (1024, "bytes", 1),
    (1025, "b", 2),
    (1, "KB", 1),           # 1000 bytes -> 1 KiB (rounded up)
    (1024, "KB", 1000),
    (1, "MB", 977),         # 1e6 / 1024 = 976.56
    (1, "MiB", 1024),
    (4, "GB", 3906250),
    (2, "G", 2097152),
    (1, "TB", 976562500),
    (1, "TiB", 1024**3),
    (1, "byte", 1),
])
def test_conversions(value: int, unit: str, kib: int) -> None:
    assert to_kib(value, unit) == kib


@pytest.mark.parametrize("unit", ["XB", "KiBB", "kibibytes", "iB", "Ki", "x"])
def test_unknown_units(unit: str) -> None:
    with pytest.raises(ValueError, match=f"unknown unit '{unit}'"):
        unit_scale(unit)


@pytest.mark.parametrize("text", ["-5", "0", "", "1.5", "1e3", "0x10", "1_000", "five"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="must be a positive integer"):
        parse_memory(text)


def test_limits() -> None:
    assert to_bytes(MAX_BYTES, "b") == MAX_BYTES
    with pytest.raises(ValueError, match="value too large"):
        to_bytes(16, "EiB")
    with pytest.raises(ValueError, match="negative"):
        to_bytes(-1)
    assert parse_memory(" 42 ", "MiB") == 42 * 1024


def test_from_kib_is_exact_or_refuses() -> None:
    assert from_kib(1048576, "GiB") == 1
    assert from_kib(3906250, "GB") == 4
    with pytest.raises(ValueError, match="not a whole number"):
        from_kib(1000, "MiB")


UNIT_NAMES = st.sampled_from(sorted(UNITS))


@given(kib=st.integers(min_value=1, max_value=2**40), unit=UNIT_NAMES)
def test_kib_round_trip_through_any_exact_unit(kib: int, unit: str) -> None:
    try:
        value = from_kib(kib, unit)
    except ValueError:
        assert (kib * KIB) % UNITS[unit] != 0
        return
    assert to_kib(value, unit) == kib


@given(value=st.integers(min_value=1, max_value=2**34), unit=UNIT_NAMES)
def test_to_kib_rounds_up_like_libvirt(value: int, unit: str) -> None:
    nbytes = value * UNITS[unit]
    if nbytes > MAX_BYTES:
        with pytest.raises(ValueError):
            to_kib(value, unit)
        return
    kib = to_kib(value, unit)
    assert (kib - 1) * KIB < nbytes <= kib * KIB


@given(value=st.integers(min_value=1, max_value=2**20), unit=UNIT_NAMES,
       cur_percent=st.integers(min_value=1, max_value=100))
def test_memory_units_round_trip_through_domain_xml(
    value: int, unit: str, cur_percent: int
) -> None:
    nbytes = value * UNITS[unit]
    if nbytes > MAX_BYTES:
        return
    expected = -(-nbytes // KIB)
    current = max(1, expected * cur_percent // 100)
    text = (
        f"<domain type='kvm'><name>u</name><memory unit='{unit}'>{value}</memory>"
        f"<currentMemory>{current}</currentMemory><os><type>hvm</type></os></domain>"
    )
    dom = parse_domain_xml(text, validate_schema=False)
    assert dom.memory_kib == expected
    assert dom.current_memory_kib == current
    again = parse_domain_xml(dom.to_xml(), validate_schema=False)
    assert (again.memory_kib, again.current_memory_kib) == (expected, current)
    assert "unit='KiB'" in dom.to_xml()


def test_setting_memory_writes_kib() -> None:
    dom = DomainDef.new("m", memory_kib=4096)
    dom.memory_kib = 8192
    dom.current_memory_kib = 2048
    assert dom.to_xml().count("unit='KiB'") == 2
    assert (dom.memory_kib, dom.current_memory_kib) == (8192, 2048)
    with pytest.raises(ValueError, match="^memory: must be a positive integer, got '0'$"):
        dom.memory_kib = 0


def test_current_memory_defaults_to_memory() -> None:
    dom = DomainDef.new("m", memory_kib=4096)
    assert dom.current_memory_kib == 4096
    assert dom.node.find("currentMemory") is None
