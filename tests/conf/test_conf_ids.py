"""Generated and normalised identifiers: uuid and MAC addresses."""

from __future__ import annotations

import random
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemud.conf import (
    MAC_PREFIX,
    DefinitionError,
    DomainDef,
    Interface,
    generate_mac,
    normalise_mac,
    normalise_uuid,
    parse_domain_xml,
)

MAC_RE = re.compile(r"52:54:00(:[0-9a-f]{2}){3}")

NICS = """<domain type='kvm'><name>n</name><memory>1024</memory><os><type>hvm</type></os>
<devices>
  <interface type='user'/>
  <interface type='user'><mac address='52:54:00:AA:00:01'/></interface>
  <interface type='bridge'><source bridge='br0'/></interface>
</devices></domain>"""


def test_uuid_generated_when_absent() -> None:
    dom = parse_domain_xml(NICS)
    assert dom.uuid == ""
    dom.assign_missing_ids()
    parsed = uuid.UUID(dom.uuid)
    assert str(parsed) == dom.uuid and parsed.version == 4
    assert f"<uuid>{dom.uuid}</uuid>" in dom.to_xml()


def test_existing_ids_are_kept() -> None:
    dom = parse_domain_xml(NICS.replace("<name>n</name>",
                                        "<name>n</name><uuid>" + "ab" * 16 + "</uuid>"))
    dom.assign_missing_ids()
    assert dom.uuid == str(uuid.UUID("ab" * 16))
    assert dom.interfaces[1].mac == "52:54:00:aa:00:01"


def test_macs_generated_with_qemu_prefix_and_unique() -> None:
    dom = parse_domain_xml(NICS)
    dom.assign_missing_ids()
    macs = [nic.mac for nic in dom.interfaces]
    assert all(m is not None and MAC_RE.fullmatch(m) for m in macs)
    assert len(set(macs)) == 3
    assert macs[1] == "52:54:00:aa:00:01"  # normalised, not replaced
    assert dom.to_xml().count("<mac address=") == 3
    dom.validate()


def test_generation_is_reproducible_with_rng() -> None:
    a, b = parse_domain_xml(NICS), parse_domain_xml(NICS)
    a.assign_missing_ids(random.Random(5))
    b.assign_missing_ids(random.Random(5))
    assert a.to_xml() == b.to_xml()


def test_generate_mac_avoids_taken_addresses() -> None:
    class Fixed(random.Random):
        """Yields the same octets twice, then others."""

        def __init__(self) -> None:
            super().__init__(0)
            self.values = [1, 2, 3, 1, 2, 3, 4, 5, 6]

        def randrange(self, *args: object, **kwargs: object) -> int:
            return self.values.pop(0)

    assert generate_mac(Fixed(), taken=["52:54:00:01:02:03"]) == "52:54:00:04:05:06"
    assert generate_mac().startswith(MAC_PREFIX + ":")


@pytest.mark.parametrize(("text", "expected"), [
    ("52:54:00:AB:cd:EF", "52:54:00:ab:cd:ef"),
    (" 02:00:00:00:00:00 ", "02:00:00:00:00:00"),
    ("00:00:00:00:00:00", "00:00:00:00:00:00"),
])
def test_normalise_mac(text: str, expected: str) -> None:
    assert normalise_mac(text) == expected


@pytest.mark.parametrize("text", [
    "52:54:00:ab:cd", "52:54:00:ab:cd:ef:01", "52-54-00-ab-cd-ef", "5254.00ab.cdef",
    "52:54:00:ab:cd:eg", "1:2:3:4:5:6", "", "03:00:00:00:00:00", "ff:ff:ff:ff:ff:ff",
])
def test_normalise_mac_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        normalise_mac(text)


@given(octets=st.lists(st.integers(0, 255), min_size=6, max_size=6))
def test_mac_multicast_bit_decides(octets: list[int]) -> None:
    text = ":".join(f"{o:02X}" for o in octets)
    if octets[0] & 1:
        with pytest.raises(ValueError, match="multicast"):
            normalise_mac(text)
    else:
        assert normalise_mac(text) == text.lower()


def test_mac_setter_validates() -> None:
    nic = Interface()
    nic.mac = "52:54:00:0A:0B:0C"
    assert nic.mac == "52:54:00:0a:0b:0c"
    with pytest.raises(DefinitionError, match=r"^interface/mac: invalid MAC"):
        nic.mac = "nope"
    nic.mac = None
    assert nic.node.find("mac") is None


@given(value=st.uuids())
def test_uuid_spellings_normalise(value: uuid.UUID) -> None:
    canonical = str(value)
    assert normalise_uuid(value.hex) == canonical
    assert normalise_uuid(value.hex.upper()) == canonical
    assert normalise_uuid(canonical.upper()) == canonical


@pytest.mark.parametrize("text", [
    "", "xyz", "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0",
    "01234567-89ab-cdef-0123-456789abcdeg", "{01234567-89ab-cdef-0123-456789abcdef}",
    "0123-4567-89ab-cdef-0123-456789abcdef",
])
def test_uuid_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="malformed uuid"):
        normalise_uuid(text)


def test_uuid_setter_validates_and_normalises() -> None:
    dom = DomainDef.new("u")
    dom.uuid = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
    assert dom.uuid == "a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90"
    assert dom.node.findtext("uuid") == dom.uuid
    with pytest.raises(DefinitionError, match=r"^uuid: malformed uuid 'zz'"):
        dom.uuid = "zz"


def test_uuid_is_normalised_on_parse() -> None:
    dom = parse_domain_xml(NICS.replace("<name>n</name>",
                                        "<name>n</name><uuid>" + "AB" * 16 + "</uuid>"))
    assert dom.node.findtext("uuid") == str(uuid.UUID("ab" * 16))
