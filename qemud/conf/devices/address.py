"""``<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>``.

Where a PCI device sits in the guest. libvirt assigns one to every PCI device when a
domain is defined and keeps it, so the guest's devices stay in their slots across
restarts, a device added later takes a free slot instead of moving the others, and a
saved guest is restored into a QEMU with the same layout (QEMU refuses a migration stream
whose devices sit elsewhere). Which devices are PCI devices, and which slots a machine
has, is the QEMU layer's business (:mod:`qemud.qemu.pci`); here is only the value and
its XML form.

As in libvirt, an address of type ``pci`` whose domain, bus and slot are all zero (also
``<address type='pci'/>`` alone) asks for an address to be assigned: slot 0 of the root
bus is the host bridge, never a device's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from lxml import etree

from ..errors import DefinitionError

__all__ = ["PciAddress", "c_int", "parse_pci_address", "pci_address_element"]

#: attribute -> largest value (libvirt's virPCIDeviceAddress limits)
_LIMITS: Final = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 0x7}


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI address; ``str()`` gives libvirt's ``0000:00:03.0`` spelling."""

    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: bool = False

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def wanted(self) -> bool:
        """Whether this only asks for an address (all zero: libvirt's "assign one")."""
        return self.domain == self.bus == self.slot == 0


def parse_pci_address(node: etree._Element, where: Callable[[], str]) -> PciAddress:
    """The address an ``<address type='pci'>`` element gives; numbers in C notation
    (``0x03``, ``3``, ``03``) as libvirt reads them. Raises :class:`DefinitionError`
    naming the attribute for a value that is not a number or out of range, at the
    element path ``where()`` gives (made only then: it costs more than the parse)."""
    values: dict[str, int] = {}
    for name, limit in _LIMITS.items():
        raw = node.get(name)
        if raw is None:
            values[name] = 0
            continue
        try:
            value = c_int(raw)
        except ValueError:
            raise DefinitionError(f"Cannot parse <address> '{name}' attribute: "
                                  f"'{raw}' is not a number", path=where()) from None
        if not 0 <= value <= limit:
            raise DefinitionError(f"Invalid PCI address {name} '{raw}', must be <= "
                                  f"{limit:#x}", path=where())
        values[name] = value
    multifunction = node.get("multifunction")
    if multifunction not in (None, "on", "off"):
        raise DefinitionError(f"Unknown value '{multifunction}' for <address> "
                              "'multifunction' attribute", path=where())
    return PciAddress(multifunction=multifunction == "on", **values)


def c_int(raw: str) -> int:
    """``strtoul(raw, 0)``'s reading: ``0x`` hex, a leading ``0`` octal, else decimal."""
    text = raw.strip()
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text[1:], 8)
    return int(text, 10)


def pci_address_element(address: PciAddress) -> etree._Element:
    """``address`` as libvirt writes it (fixed-width hex)."""
    node = etree.Element("address")
    node.set("type", "pci")
    node.set("domain", f"{address.domain:#06x}")
    node.set("bus", f"{address.bus:#04x}")
    node.set("slot", f"{address.slot:#04x}")
    node.set("function", f"{address.function:#x}")
    if address.multifunction:
        node.set("multifunction", "on")
    return node
