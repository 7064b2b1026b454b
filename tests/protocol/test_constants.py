"""protocol.constants: values that are part of the wire format, and libvirt equivalence."""

from __future__ import annotations

import enum

import pytest

from protocol import constants as c
from protocol.doc import LIBVIRT_EQUIVALENTS


def test_fixed_numbers() -> None:
    assert c.PROGRAM.to_bytes(4, "big") == b"QEMD"
    assert c.HEADER_SIZE == 20
    assert c.DEFAULT_MAX_FRAME == 4 * 1024 * 1024
    assert c.ABSOLUTE_MAX_FRAME == 64 * 1024 * 1024
    assert c.MAX_STRING == 4 * 1024 * 1024
    assert c.MAX_LIST == 16384  # libvirt's REMOTE_DOMAIN_LIST_MAX
    assert c.SUPPORTED_VERSIONS == tuple(sorted(set(c.SUPPORTED_VERSIONS)))
    assert c.CURRENT_VERSION == max(c.SUPPORTED_VERSIONS)
    assert [m.value for m in c.MessageType] == [0, 1, 2, 3, 4]
    assert [m.value for m in c.Status] == [0, 1, 2]
    assert [m.value for m in c.KeepaliveProc] == [1, 2]


def test_every_wire_enum_is_documented() -> None:
    """doc.LIBVIRT_EQUIVALENTS (the generated constants tables) lists every enum."""
    enums = {obj for obj in vars(c).values()
             if isinstance(obj, type) and issubclass(obj, enum.Enum)
             and obj.__module__ == c.__name__}
    assert enums == {cls for cls, _, _ in LIBVIRT_EQUIVALENTS}


@pytest.mark.parametrize(("cls", "prefix", "own"),
                         [row for row in LIBVIRT_EQUIVALENTS if row[1] is not None],
                         ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_values_equal_libvirt(cls: type[enum.Enum], prefix: str,
                              own: object) -> None:
    libvirt = pytest.importorskip("libvirt")
    for member in cls:
        name = f"{prefix}{member.name}"
        if own(member):  # type: ignore[operator]
            assert getattr(libvirt, name, member.value + 1) != member.value, \
                f"{name} exists in libvirt now: drop it from qemud's own"
        else:
            assert getattr(libvirt, name) == member.value, name
