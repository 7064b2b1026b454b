"""PCI devices in domain XML, for test_pci_slots and test_unplug_remembered: a NIC at a
chosen slot, the slot of each PCI device of a definition (by the qdev id qemud gives
it), and the MAC addresses an XML holds.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET


def address(slot: int) -> str:
    return (f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot:#04x}' "
            "function='0x0'/>")


def nic(mac: str = "", slot: int | None = None) -> str:
    return ("<interface type='user'>" + (f"<mac address='{mac}'/>" if mac else "")
            + "<model type='virtio'/>" + ("" if slot is None else address(slot))
            + "</interface>")


def qdev_id(device: ET.Element) -> str:
    """The id qemud gives the QEMU device of an XML ``device``."""
    if device.tag == "interface":
        return "net-" + str(device.find("mac").get("address")).replace(":", "")  # type: ignore[union-attr]
    if device.tag == "disk":
        return "disk-" + str(device.find("target").get("dev"))  # type: ignore[union-attr]
    assert device.tag == "memballoon", device.tag
    return "balloon0"


def xml_slots(xml: str) -> dict[str, int]:
    """qdev id -> slot of every PCI device of a domain XML; every one has an address on
    the root bus, function 0."""
    found = {}
    for device in ET.fromstring(xml).find("devices"):  # type: ignore[union-attr]
        if device.tag not in ("interface", "disk", "memballoon"):
            continue
        node = device.find("address")
        assert node is not None and node.get("type") == "pci", ET.tostring(device)
        assert (node.get("domain"), node.get("bus"), node.get("function")) == \
            ("0x0000", "0x00", "0x0"), ET.tostring(device)
        found[qdev_id(device)] = int(str(node.get("slot")), 16)
    return found


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)
