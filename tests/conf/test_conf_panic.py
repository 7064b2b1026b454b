"""``<panic>`` in the domain model: parsed, checked, kept as written, one per model.

Which models an architecture builds, and the default model, are the QEMU layer's
(tests/qemu/test_panic.py).
"""

from __future__ import annotations

import pytest

from qemud.conf import DefinitionError, parse_device_xml, parse_domain_xml
from qemud.conf.devices import DEVICE_CLASSES, Panic


def domain(devices: str) -> str:
    return f"""<domain type='qemu'>
  <name>p</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{devices}</devices>
</domain>"""


def test_panic_is_a_modelled_device() -> None:
    assert DEVICE_CLASSES["panic"] is Panic
    dev = parse_device_xml("<panic model='isa'><address type='isa' iobase='0x505'/></panic>")
    assert isinstance(dev, Panic)
    assert (dev.model, dev.address_type, dev.iobase) == ("isa", "isa", 0x505)
    assert dev.describe() == "panic 'isa'"


def test_panics_in_document_order_and_round_trip() -> None:
    text = domain("<panic model='hyperv'/><panic/><panic model='pseries'/>")
    dom = parse_domain_xml(text)
    assert [p.model for p in dom.panics] == ["hyperv", None, "pseries"]
    assert [d.tag for d in dom.devices] == ["panic"] * 3
    assert parse_domain_xml(dom.to_xml()).to_xml() == dom.to_xml()
    assert parse_domain_xml(domain("")).panics == []


@pytest.mark.parametrize("address", [
    "<address type='isa'/>",  # no iobase: QEMU's own port
    "<address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>",
])
def test_iobase_is_only_that_of_an_isa_address(address: str) -> None:
    dev = parse_device_xml(f"<panic model='isa'>{address}</panic>")
    assert isinstance(dev, Panic) and dev.iobase is None


@pytest.mark.parametrize(("xml", "message"), [
    ("<panic model='pvpanic-isa'/>",
     r"^devices/panic\[1\]: unsupported panic model 'pvpanic-isa' \(expected one of 'isa', "
     r"'pseries', 'hyperv', 's390', 'pvpanic'\)"),
    ("<panic model='isa'><address type='isa' iobase='1285'/></panic>",
     r"^devices/panic\[1\]/address: invalid iobase '1285' \(expected 0x and 1 to 4 hex"),
    ("<panic model='isa'><address type='isa' iobase='0x10000'/></panic>",
     r"invalid iobase '0x10000'"),
    ("<panic model='isa'/><panic model='hyperv'/><panic model='isa'/>",
     r"^devices/panic\[3\]: Multiple panic devices with model 'isa'$"),
])
def test_bad_panics_name_the_cause(xml: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_domain_xml(domain(xml), validate_schema=False)


def test_panics_without_model_are_left_to_the_qemu_layer() -> None:
    """Two ``<panic>`` without model may still be one model each: the arch decides."""
    dom = parse_domain_xml(domain("<panic/><panic model='isa'/>"))
    assert [p.model for p in dom.panics] == [None, "isa"]


def test_add_and_remove_a_panic_by_model() -> None:
    dom = parse_domain_xml(domain("<panic model='hyperv'/>"))
    dom.add_device(parse_device_xml("<panic model='isa'/>"))
    with pytest.raises(DefinitionError, match="Multiple panic devices with model 'isa'"):
        dom.add_device(parse_device_xml("<panic model='isa'/>"))
    assert [p.model for p in dom.panics] == ["hyperv", "isa"]
    removed = dom.remove_device(parse_device_xml("<panic model='isa'/>"))
    assert isinstance(removed, Panic) and removed.model == "isa"
    assert [p.model for p in dom.panics] == ["hyperv"]
