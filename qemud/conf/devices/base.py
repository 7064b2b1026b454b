"""What every modelled device shares: alias, semantic checks, matching for detach, output.

Why a common base: the QEMU layer handles devices generically for hotplug
(``dom.add_device(dev)`` / ``dom.remove_device(dev)``) and needs each kind to answer the same
questions — is it valid on its own, which device of a domain does a detach request mean,
what is runtime-only state that must not leak into the persistent definition.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Self

from ..xmlmodel import XMLModel, XMLProperty, insert_ordered, serialize
from .address import PciAddress, parse_pci_address, pci_address_element

__all__ = ["USER_ALIAS_PREFIX", "Device"]

USER_ALIAS_PREFIX = "ua-"
"""libvirt keeps aliases starting with this in persistent XML; others are runtime-assigned."""

# libvirt's allowed characters for a user alias (virDomainDeviceAliasIsUserAlias + schema).
_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class Device(XMLModel):
    """Base class of the devices the model understands (disk, interface, graphics, ...).

    Devices the model does not know (controllers, video, ...) are not wrapped at all; they
    simply stay in the tree.
    """

    __slots__ = ()

    XML_TAGS: ClassVar[tuple[str, ...]] = ()
    """Element names this class models (several for character devices)."""

    alias = XMLProperty(
        "./alias/@name",
        doc="Device alias (``<alias name>``): QEMU's device id, assigned at start-up or "
        "given by the user with a 'ua-' prefix.",
    )

    address_type = XMLProperty(
        "./address/@type",
        doc="``<address type>``: 'pci' for a device on a PCI bus ('drive' for a disk on an "
        "IDE/SATA/SCSI controller, ...); None when the device has no address.",
    )

    @property
    def pci_address(self) -> PciAddress | None:
        """The device's PCI address (``<address type='pci'>``), None when it has none or
        asks for one to be assigned (all zero, see :class:`PciAddress`)."""
        node = self.node.find("address")
        if node is None or node.get("type") != "pci":
            return None
        address = parse_pci_address(node, lambda: f"{self.path}/address")
        return None if address.wanted else address

    @pci_address.setter
    def pci_address(self, address: PciAddress | None) -> None:
        old = self.node.find("address")
        if address is None:
            if old is not None:
                self.node.remove(old)
        elif old is not None:
            self.node.replace(old, pci_address_element(address))
        else:
            insert_ordered(self.node, pci_address_element(address), self._child_ranks("."))

    def assign_pci_slot(self, slot: int, bus: int = 0, function: int = 0,
                        multifunction: bool = False) -> None:
        """Put this device in ``slot`` (and ``function``) of PCI bus ``bus``: 0 the root
        bus, N the bus of pcie-root-port N (the QEMU layer's choice)."""
        self.pci_address = PciAddress(bus=bus, slot=slot, function=function,
                                      multifunction=multifunction)

    @property
    def tag(self) -> str:
        """Element name (``disk``, ``serial``, ``channel``, ...)."""
        tag: str = self.node.tag
        return tag

    def describe(self) -> str:
        """Short human description used in messages (``disk 'vda'``)."""
        return self.tag

    def check(self) -> None:
        """Semantic checks of this device on its own; raise :class:`DefinitionError`.

        Cross-device checks (duplicates) belong to the domain.  Architecture-specific
        checks (which bus exists) belong to the QEMU layer's per-arch strategy, not here.
        """
        alias = self.alias
        if alias is not None and (not alias or not set(alias) <= _ALIAS_CHARS):
            raise self._error(f"invalid alias '{alias}'", "alias")
        _ = self.pci_address  # parsed here: a bad number is an error at define

    def matches(self, other: Device) -> bool:
        """Whether ``other`` (typically parsed from a detach request) designates ``self``.

        Subclasses refine this with libvirt's matching rules (disk by target dev, NIC by
        MAC, ...).  The alias, when given, always decides.
        """
        if type(other) is not type(self) or other.tag != self.tag:
            return False
        if other.alias is not None:
            return other.alias == self.alias
        return True

    def strip_runtime(self) -> None:
        """Remove runtime-only state, for the inactive (persistent) form of the XML.

        Called on a copy by ``to_xml(live=False)``.  Runtime aliases go; user aliases
        ('ua-' prefix) stay, as in libvirt.
        """
        alias = self.alias
        if alias is not None and not alias.startswith(USER_ALIAS_PREFIX):
            self.alias = None

    def normalise(self) -> None:
        """Bring values to canonical spelling after a successful parse (no-op by default)."""

    def copy(self) -> Self:
        """A detached deep copy (for adding the same device to live and persistent defs)."""
        node = copy.deepcopy(self.node)
        node.tail = None
        return type(self)(node)

    def to_xml(self, live: bool = False) -> str:
        """Canonical text of this device; ``live=False`` drops runtime-only state."""
        dup = self.copy()
        if not live:
            dup.strip_runtime()
        return serialize(dup.node)

    def _check_choice(
        self, value: str | None, allowed: tuple[str, ...], what: str, sub: str | None = None
    ) -> None:
        if value not in allowed:
            choices = ", ".join(f"'{a}'" for a in allowed)
            shown = "missing" if value is None else f"'{value}'"
            raise self._error(f"unsupported {what} {shown} (expected one of {choices})", sub)

    def _check_positive(self, value: int | None, what: str, sub: str) -> None:
        if value is not None and value < 1:
            raise self._error(f"{what} must be a positive integer, got '{value}'", sub)

