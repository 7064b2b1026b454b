"""``<controller type='pci' index='1' model='pcie-root-port'>``: controllers.

Why qemud models them: on a PCI Express machine (q35, aarch64 ``virt``) a device can be
plugged in or taken out while the guest runs only behind a pcie-root-port, never on the
root bus ``pcie.0``; libvirt gives each PCIe device a root port of its own (and adds
spare ones on request), and the XML libvirt writes for such a guest puts the devices on
the buses those ports make (``<address type='pci' bus='0x01' .../>``). So the PCI
controllers are read here: the root bus (``pci-root`` or ``pcie-root``, index 0, which
only says which kind the machine has) and ``pcie-root-port`` (index N makes bus N; its
``<target chassis port>`` are QEMU's properties of the same names; its own ``<address>``
is on the root bus, function 0..7 of a slot, as libvirt packs eight ports into one).

Every other controller (USB, SATA, SCSI, virtio-serial, IDE, and the PCI bridges qemud
does not build) is kept as written and not acted on: a device addressed on a bus that
only such a bridge would make is refused by the QEMU layer, naming the bridge.
"""

from __future__ import annotations

from typing import ClassVar, Final

from ..xmlmodel import XMLProperty
from .address import c_int
from .base import Device

__all__ = ["Controller"]

_MAX_INDEX: Final = 255  # a PCI bus number
_MAX_CHASSIS: Final = 255
_MAX_PORT: Final = 255


class Controller(Device):
    """A ``<controller>``; only ``type='pci'`` ones mean anything to qemud."""

    __slots__ = ()

    XML_TAG = "controller"
    XML_TAGS = ("controller",)
    XML_CHILD_ORDER: ClassVar = {".": ("model", "driver", "target", "alias", "address")}

    type = XMLProperty("./@type", doc="'pci', 'usb', 'sata', 'scsi', 'virtio-serial', ...")
    raw_index = XMLProperty("./@index", doc="The controller's number among its type; for "
                            "PCI controllers the bus number it makes.")
    model = XMLProperty("./@model", doc="For PCI: 'pci-root', 'pcie-root', "
                        "'pcie-root-port', ...")
    model_name = XMLProperty("./model/@name", doc="QEMU's device for a PCI controller "
                             "('pcie-root-port' or 'ioh3420' for a root port).")
    raw_chassis = XMLProperty("./target/@chassis", doc="A root port's chassis number "
                              "(QEMU's ``chassis``).")
    raw_port = XMLProperty("./target/@port", doc="A root port's port number (QEMU's "
                           "``port``), hex as libvirt writes it.")
    hotplug = XMLProperty("./target/@hotplug", doc="'off': the port takes no device in or "
                          "out while the guest runs.")

    @property
    def is_pci(self) -> bool:
        return self.type == "pci"

    @property
    def is_root_port(self) -> bool:
        return self.type == "pci" and self.model == "pcie-root-port"

    @property
    def index(self) -> int | None:
        """The index, None when it is to be assigned (checked by :meth:`check`)."""
        raw = self.raw_index
        return None if raw is None else _number(raw)

    def assign_index(self, value: int) -> None:
        """Set the index, written after ``type`` as libvirt writes it (an assigned
        index would otherwise come last)."""
        attrib = self.node.attrib
        rest = {k: v for k, v in attrib.items() if k not in ("type", "index")}
        kind = attrib.get("type")
        attrib.clear()
        if kind is not None:
            attrib["type"] = kind
        attrib["index"] = str(value)
        attrib.update(rest)

    @property
    def chassis(self) -> int | None:
        raw = self.raw_chassis
        return None if raw is None else _number(raw)

    @property
    def port(self) -> int | None:
        raw = self.raw_port
        return None if raw is None else _number(raw)

    def set_target(self, chassis: int, port: int) -> None:
        """Write ``<target chassis port>`` (libvirt's spelling: decimal, hex)."""
        self.raw_chassis = str(chassis)
        self.raw_port = f"{port:#x}"

    def describe(self) -> str:
        index = self.raw_index
        what = f"controller '{self.type}'" if self.type else "controller"
        if self.model:
            what += f" model '{self.model}'"
        return what if index is None else f"{what} index {index}"

    def check(self) -> None:
        """A type; numbers where numbers go. The rules on which PCI controller models
        and indexes a machine can have are the QEMU layer's (:mod:`qemud.qemu.pci`),
        checked at define and start: a stored definition that breaks one stays
        defined, and its start says why."""
        super().check()
        if not self.type:
            raise self._error("missing type attribute")
        if self.raw_index is not None:
            _checked(self.raw_index, "index", _MAX_INDEX, self)
        if not self.is_pci:
            return
        for raw_value, what, limit in ((self.raw_chassis, "chassis", _MAX_CHASSIS),
                                       (self.raw_port, "port", _MAX_PORT)):
            if raw_value is not None:
                _checked(raw_value, what, limit, self, "target")
        if self.hotplug is not None:
            self._check_choice(self.hotplug, ("on", "off"), "hotplug value", "target")

    def matches(self, other: Device) -> bool:
        """The same type and, when given, index."""
        if not super().matches(other):
            return False
        assert isinstance(other, Controller)
        if other.alias is not None:
            return True
        return other.type == self.type and (other.raw_index is None
                                            or other.raw_index == self.raw_index)


def _number(raw: str) -> int | None:
    """``raw`` read as libvirt reads numbers (C notation); None when it is none (the
    check reports it)."""
    try:
        return c_int(raw)
    except ValueError:
        return None


def _checked(raw: str, what: str, limit: int, controller: Controller,
             sub: str | None = None) -> int:
    value = _number(raw)
    if value is None or not 0 <= value <= limit:
        raise controller._error(f"Invalid {what} '{raw}' (expected a number 0 to {limit})",
                                sub)
    return value
