"""libvirt memory units.

libvirt lets every size carry a ``unit`` attribute and interprets it case-insensitively:
``b``/``byte``/``bytes`` are bytes, a bare letter or ``<letter>iB`` is a power of 1024
(``k`` = ``KiB`` = 1024) and ``<letter>B`` is a power of 1000 (``KB`` = 1000).  Without a
unit, memory is in KiB.  We reproduce that exactly so a definition written for libvirt means
the same here, and we keep everything in integers: sizes in the model are KiB, rounded *up*
like libvirt does (``<memory unit='b'>1</memory>`` is 1 KiB, never 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "KIB",
    "MAX_BYTES",
    "UNITS",
    "from_kib",
    "parse_memory",
    "to_bytes",
    "to_kib",
    "unit_scale",
]

KIB = 1024
"""Bytes in a KiB, the model's unit for every memory size."""

MAX_BYTES = 2**64 - 1
"""Largest size libvirt accepts (an unsigned long long of bytes)."""

_PREFIXES = "kmgtpe"

UNITS: Mapping[str, int] = MappingProxyType(
    {
        "b": 1,
        "bytes": 1,
        "KB": 1000,
        "k": 1024,
        "KiB": 1024,
        "MB": 1000**2,
        "M": 1024**2,
        "MiB": 1024**2,
        "GB": 1000**3,
        "G": 1024**3,
        "GiB": 1024**3,
        "TB": 1000**4,
        "T": 1024**4,
        "TiB": 1024**4,
        "PB": 1000**5,
        "P": 1024**5,
        "PiB": 1024**5,
        "EB": 1000**6,
        "E": 1024**6,
        "EiB": 1024**6,
    }
)
"""The canonical spellings and their size in bytes (lookups are case-insensitive)."""

_DIGITS = re.compile(r"\s*\+?[0-9]+\s*")


def unit_scale(unit: str | None, *, default: int = KIB) -> int:
    """Bytes per ``unit``; ``default`` when the unit is absent or empty (KiB for memory).

    Follows libvirt's parser rather than a fixed table so that spellings libvirt accepts
    (``kib``, ``Byte``, ``mB``) are accepted here too.  Raises ``ValueError`` otherwise.
    """
    if unit is None or unit == "":
        return default
    low = unit.lower()
    if low in ("b", "byte", "bytes"):
        return 1
    if len(low) in (1, 2, 3) and low[0] in _PREFIXES:
        rest = low[1:]
        if rest in ("", "ib"):
            base = 1024
        elif rest == "b":
            base = 1000
        else:
            raise ValueError(f"unknown unit '{unit}'")
        return int(base ** (_PREFIXES.index(low[0]) + 1))
    raise ValueError(f"unknown unit '{unit}'")


def to_bytes(value: int, unit: str | None = None) -> int:
    """``value`` in ``unit`` as bytes; ``ValueError`` past :data:`MAX_BYTES` or if negative."""
    if value < 0:
        raise ValueError(f"must not be negative, got '{value}'")
    result = value * unit_scale(unit)
    if result > MAX_BYTES:
        raise ValueError(f"value too large: {value}{unit or ''}")
    return result


def to_kib(value: int, unit: str | None = None) -> int:
    """``value`` in ``unit`` as KiB, rounded up as libvirt does (no size silently becomes 0)."""
    return -(-to_bytes(value, unit) // KIB)


def from_kib(kib: int, unit: str) -> int:
    """``kib`` expressed in ``unit``; ``ValueError`` unless the conversion is exact.

    Used when writing a size back in the user's unit: a rounded value would silently change
    the definition.
    """
    scale = unit_scale(unit)
    quotient, remainder = divmod(kib * KIB, scale)
    if remainder:
        raise ValueError(f"{kib} KiB is not a whole number of {unit}")
    return quotient


def parse_memory(text: str | None, unit: str | None = None) -> int:
    """Parse the text and ``unit`` attribute of a memory element into KiB (> 0).

    Raises ``ValueError`` with a message meant to follow the element's path, e.g.
    ``must be a positive integer, got '-5'``.
    """
    raw = "" if text is None else text
    if not _DIGITS.fullmatch(raw):
        raise ValueError(f"must be a positive integer, got '{raw.strip()}'")
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got '{raw.strip()}'")
    return to_kib(value, unit)
