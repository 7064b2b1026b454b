"""``<address type='pci'>`` on a device: read as libvirt reads it (C number notation),
written as libvirt writes it, and a value out of range refused naming the attribute."""

from __future__ import annotations

import pytest

from qemud.conf import DefinitionError, parse_device_xml
from qemud.conf.devices.address import PciAddress

NIC = "<interface type='user'><mac address='52:54:00:00:00:01'/>{}</interface>"


def nic_address(attrs: str) -> PciAddress | None:
    return parse_device_xml(NIC.format(f"<address type='pci' {attrs}/>")).pci_address


@pytest.mark.parametrize(("attrs", "slot"), [
    ("domain='0x0000' bus='0x00' slot='0x1f' function='0x0'", 31),
    ("slot='10'", 10),
    ("slot='010'", 8),  # (strtoul base 0: octal, as in libvirt)
    ("slot='0xa'", 10),
])
def test_numbers_are_read_in_c_notation(attrs: str, slot: int) -> None:
    assert nic_address(attrs) == PciAddress(slot=slot)


def test_an_all_zero_address_asks_for_one_and_other_types_are_not_pci() -> None:
    assert nic_address("") is None
    assert nic_address("domain='0' bus='0' slot='0' function='0'") is None
    dev = parse_device_xml(NIC.format("<address type='ccw' cssid='0xfe'/>"),
                           validate_schema=False)
    assert (dev.pci_address, dev.address_type) == (None, "ccw")
    assert parse_device_xml(NIC.format("")).address_type is None


@pytest.mark.parametrize(("attrs", "message"), [
    ("slot='0x20'", "Invalid PCI address slot '0x20', must be <= 0x1f"),
    ("function='8'", "Invalid PCI address function '8', must be <= 0x7"),
    ("bus='0x100'", "Invalid PCI address bus '0x100', must be <= 0xff"),
    ("slot='-1'", "Invalid PCI address slot '-1'"),
    ("slot='three'", "Cannot parse <address> 'slot' attribute: 'three' is not a number"),
    ("slot='3' multifunction='yes'",
     "Unknown value 'yes' for <address> 'multifunction' attribute"),
])
def test_bad_numbers_are_refused_naming_the_attribute(attrs: str, message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as info:
        parse_device_xml(NIC.format(f"<address type='pci' {attrs}/>"))
    assert info.value.path == "interface/address"


def test_an_assigned_slot_is_written_as_libvirt_writes_it_in_place() -> None:
    dev = parse_device_xml(NIC.format("<address type='pci'/><acpi index='1'/>"))
    dev.assign_pci_slot(5)
    assert dev.to_xml() == (
        "<interface type='user'>\n  <mac address='52:54:00:00:00:01'/>\n"
        "  <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>\n"
        "  <acpi index='1'/>\n</interface>\n")
    assert dev.pci_address == PciAddress(slot=5)
    assert str(dev.pci_address) == "0000:00:05.0"
    fresh = parse_device_xml(NIC.format("<model type='virtio'/>"))
    fresh.assign_pci_slot(0x1e)
    assert fresh.to_xml().index("<model") < fresh.to_xml().index("slot='0x1e'")
    fresh.pci_address = None
    assert "<address" not in fresh.to_xml()
