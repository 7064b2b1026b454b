"""Where each PCI device of a guest sits: libvirt's PCI address assignment, for the one
root bus qemud gives a guest.

Why fixed addresses: QEMU, left to itself, puts each device in the first free slot in the
order of its command line. A device hot-plugged or unplugged while the guest runs then
leaves a layout no command line reproduces, and a saved guest cannot be restored (QEMU
refuses a migration stream whose devices sit elsewhere: "Unknown ramblock
0000:00:03.0/virtio-net-pci.rom"). So, as libvirt does, every PCI device of a definition
gets an ``<address type='pci'>`` when it is defined (:func:`assign_addresses`, from the
arch's ``fill_defaults``), the command line names each device's slot (``addr=``), a
device plugged in later takes a free slot (:func:`free_slot`) and the live XML keeps it.

Which devices: the modelled ones that sit on PCI (interfaces, virtio disks, the virtio
balloon, a PCI watchdog), assigned in libvirt's order (interfaces first, so the first NIC
of a fresh i440FX guest is 00:03.0, as under libvirt). The devices qemud adds by itself
(the video card, the virtio-serial, SATA, SCSI and USB controllers) have no element in
the definition to hold an address, so each has a fixed slot per machine
(``pci_slots`` in devices.toml) that assignment never gives to another device: adding a
channel or a SCSI disk later never moves a device, and they too land where they were
when a saved guest is restored.

One root bus, no bridges, function 0 only: an address elsewhere is refused with the
reason, before QEMU runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from qemud.qemu.domain import DomainView, PciAddressView, PciDeviceView
from qemud.qemu.errors import GuestConfigError

if TYPE_CHECKING:
    from qemud.qemu.arch.base import ArchStrategy
    from qemud.qemu.arch.table import MachineProfile

__all__ = ["DeviceKey", "PciPlan", "assign_addresses", "free_slot", "pci_devices", "plan"]

#: QEMU watchdog devices that are PCI devices (ib700 is ISA)
_PCI_WATCHDOGS: Final = frozenset({"i6300esb"})
_SLOTS: Final = range(1, 32)

#: (kind, key) naming one device in a plan: ("interface", mac), ("disk", target dev),
#: ("memballoon", ""), ("watchdog", ""), or ("implicit", what qemud adds)
DeviceKey = tuple[str, str]


@dataclass(frozen=True)
class PciPlan:
    """The slot of every PCI device of one definition on root bus ``bus``."""

    bus: str
    slots: Mapping[DeviceKey, int]

    def props(self, key: DeviceKey) -> str:
        """``,bus=pci.0,addr=0x3`` for the device ``key``, to append to its ``-device``
        (empty for a device not on PCI)."""
        slot = self.slots.get(key)
        return "" if slot is None else f",bus={self.bus},addr={slot:#x}"


def pci_devices(dom: DomainView, strategy: ArchStrategy
                ) -> list[tuple[DeviceKey, PciDeviceView]]:
    """The modelled devices of ``dom`` that sit on PCI, in libvirt's assignment order.

    Raises :class:`GuestConfigError` for a PCI address on one that does not (a disk on
    an IDE, SATA, SCSI or USB bus, an ISA watchdog): it would be ignored; libvirt
    refuses it too."""
    return _scan(dom, strategy)[0]


def implicit_devices(dom: DomainView, strategy: ArchStrategy) -> list[str]:
    """The PCI devices the argv builder adds for ``dom`` with no element of their own
    (the ``pci_slots`` kinds of devices.toml)."""
    return _scan(dom, strategy)[1]


def _scan(dom: DomainView, strategy: ArchStrategy
          ) -> tuple[list[tuple[DeviceKey, PciDeviceView]], list[str]]:
    """:func:`pci_devices` and :func:`implicit_devices` in one pass over the definition
    (a define runs this: each device list is a walk of the XML)."""
    found: list[tuple[DeviceKey, PciDeviceView]] = []
    for iface in dom.interfaces:
        found.append((("interface", iface.mac or ""), iface))
    buses = set()
    for disk in dom.disks:
        bus = strategy.disk_bus(dom, disk)
        buses.add(bus)
        if disk.device == "disk" and bus == "virtio":
            found.append((("disk", disk.target_dev or ""), disk))
        elif disk.address_type == "pci":
            raise GuestConfigError(
                "devices", f"{disk.describe()} is on bus '{bus}', not PCI: it cannot have a "
                "PCI address")
    balloon = dom.memballoon
    if balloon is not None and balloon.model != "none":
        found.append((("memballoon", ""), balloon))
    watchdog = dom.watchdog
    if watchdog is not None:
        if strategy.table.watchdog_models.get(watchdog.model) in _PCI_WATCHDOGS:
            found.append((("watchdog", ""), watchdog))
        elif watchdog.address_type == "pci":
            raise GuestConfigError(
                "devices", f"{watchdog.describe()} is not a PCI device: it cannot have a "
                "PCI address")
    kinds = []
    if dom.graphics and strategy.video_device() is not None:
        kinds.append("video")
    if dom.channels or any(c.target_type == "virtio" for c in dom.consoles):
        kinds.append("virtio_serial")
    if "sata" in buses and strategy.profile(dom).builtin_sata is None:
        kinds.append("sata")
    kinds += [bus for bus in ("scsi", "usb") if bus in buses]
    return found, kinds


def plan(dom: DomainView, strategy: ArchStrategy) -> PciPlan | None:
    """Every PCI device's slot: its own address, or for a device without one the slot
    :func:`assign_addresses` would give it. None on a machine without a PCI bus.

    Raises :class:`GuestConfigError` naming the device for an address the guest cannot
    have (see :func:`_checked_address`). Runs at every define: messages are made only
    when one is raised."""
    return _plan(dom, strategy, *_scan(dom, strategy))


def _plan(dom: DomainView, strategy: ArchStrategy,
          devices: list[tuple[DeviceKey, PciDeviceView]], implicit: list[str]
          ) -> PciPlan | None:
    profile = strategy.profile(dom)
    if profile.pci_bus is None:
        for _, device in devices:
            address = device.pci_address
            if address is not None:
                raise GuestConfigError(
                    "devices", f"{device.describe()} has PCI address {_text(address)}, "
                    f"but machine '{strategy.machine_type(dom)}' has no PCI bus")
        return None
    slots: dict[DeviceKey, int] = {("implicit", kind): profile.pci_slots[kind]
                                   for kind in implicit}
    holders: dict[int, PciDeviceView | str] = {
        slot: f"qemud's {kind.replace('_', '-')} device" for (_, kind), slot in slots.items()}
    unplaced = []
    for key, device in devices:
        address = _checked_address(dom, strategy, profile, device, holders)
        if address is None:
            unplaced.append((key, device))
        else:
            holders[address.slot] = device
            slots[key] = address.slot
    if unplaced:
        free = _free_slots(profile, set(slots.values()))
        for key, device in unplaced:
            slots[key] = _next_free(free, dom, strategy, device.describe)
    return PciPlan(profile.pci_bus, slots)


def assign_addresses(dom: DomainView, strategy: ArchStrategy) -> None:
    """Give each PCI device of ``dom`` without an address the slot :func:`plan` chose,
    as ``<address type='pci'>`` in the definition (libvirt does this at define)."""
    devices, implicit = _scan(dom, strategy)
    chosen = _plan(dom, strategy, devices, implicit)
    if chosen is None:
        return
    for key, device in devices:
        if device.address_type is None or device.pci_address is None:
            device.assign_pci_slot(chosen.slots[key])


def free_slot(dom: DomainView, strategy: ArchStrategy, what: str) -> tuple[str, int]:
    """``(bus, slot)`` for ``what`` (a device about to be plugged into running ``dom``):
    the lowest slot no device of the live definition holds, nor one qemud keeps for its
    own devices. Raises :class:`GuestConfigError` in libvirt's words when none is left,
    or when the machine has no PCI bus."""
    chosen = plan(dom, strategy)
    if chosen is None:
        raise GuestConfigError(
            "devices", f"cannot plug {what}: machine '{strategy.machine_type(dom)}' has "
            "no PCI bus")
    free = _free_slots(strategy.profile(dom), set(chosen.slots.values()))
    return chosen.bus, _next_free(free, dom, strategy, lambda: what)


def _free_slots(profile: MachineProfile, used: set[int]) -> Iterator[int]:
    """The slots a device without an address may get, lowest first: every fixed slot
    is kept free, its device present or not, so adding one later never finds its slot
    taken."""
    reserved = {*profile.pci_builtin_slots, *profile.pci_slots.values(), *used}
    return (slot for slot in _SLOTS if slot not in reserved)


def _next_free(free: Iterator[int], dom: DomainView, strategy: ArchStrategy,
               what: Callable[[], str]) -> int:
    slot = next(free, None)
    if slot is None:
        raise GuestConfigError(
            "devices", f"No more available PCI slots: no free slot for {what()} on bus "
            f"{strategy.profile(dom).pci_bus} of machine '{strategy.machine_type(dom)}' "
            "(qemud adds no PCI bridges)")
    return slot


def _checked_address(dom: DomainView, strategy: ArchStrategy, profile: MachineProfile,
                     device: PciDeviceView, holders: dict[int, PciDeviceView | str]
                     ) -> PciAddressView | None:
    """``device``'s address, refused if the device cannot have it: another type, another
    domain or bus (qemud adds no bridges), a function other than 0, the machine's own
    slots, one another device holds (libvirt's "Attempted double use")."""
    kind = device.address_type
    if kind is None:
        return None
    if kind != "pci":
        raise GuestConfigError(
            "devices", f"{device.describe()} is a PCI device: its <address> type must be "
            f"'pci', not '{kind}'")
    address = device.pci_address
    if address is None:
        return None
    if address.domain != 0 or address.bus != 0:
        problem = (f"is not on the root bus 0000:00 of machine "
                   f"'{strategy.machine_type(dom)}' (qemud adds no PCI bridges or root "
                   "ports)")
    elif address.function != 0 or address.multifunction:
        problem = ": multi-function devices are not supported (use function 0)"
    elif address.slot in profile.pci_builtin_slots:
        problem = f"is taken by machine '{strategy.machine_type(dom)}''s built-in devices"
    elif address.slot in holders:
        other = holders[address.slot]
        raise GuestConfigError(
            "devices", f"Attempted double use of PCI Address {_text(address)} "
            f"({device.describe()} and "
            f"{other if isinstance(other, str) else other.describe()})")
    else:
        return address
    space = "" if problem.startswith(":") else " "
    raise GuestConfigError(
        "devices", f"PCI address {_text(address)} of {device.describe()}{space}{problem}")


def _text(address: PciAddressView) -> str:
    """libvirt's spelling of a PCI address: ``0000:00:03.0``."""
    return f"{address.domain:04x}:{address.bus:02x}:{address.slot:02x}.{address.function:x}"
