"""Where each PCI device of a guest sits: libvirt's PCI address assignment, for the root
bus and the pcie-root-ports of a guest.

Why fixed addresses: QEMU, left to itself, puts each device in the first free slot in the
order of its command line. A device hot-plugged or unplugged while the guest runs then
leaves a layout no command line reproduces, and a saved guest cannot be restored (QEMU
refuses a migration stream whose devices sit elsewhere: "Unknown ramblock
0000:00:03.0/virtio-net-pci.rom"). So, as libvirt does, every PCI device of a definition
gets an ``<address type='pci'>`` when it is defined (:func:`assign_addresses`, from the
arch's ``fill_defaults``), the command line names each device's slot (``addr=``), a
device plugged in later takes a free slot (:func:`free_slot`) and the live XML keeps it.

Which devices: the pcie-root-ports of the definition (``<controller type='pci'
model='pcie-root-port'>``, on the root bus, packed eight to a slot as libvirt packs
them), then the modelled devices that sit on PCI (interfaces, virtio disks, the virtio
balloon, a PCI watchdog), in libvirt's order (interfaces first, so the first NIC of a
fresh i440FX guest is 00:03.0, as under libvirt). The devices qemud adds by itself (the
video card, the virtio-serial, SATA, SCSI and USB controllers) have no element in the
definition to hold an address, so each has a fixed slot per machine (``pci_slots`` in
devices.toml) that assignment never gives to another device: adding a channel or a SCSI
disk later never moves a device, and they too land where they were when a saved guest
is restored.

PCI Express machines (q35, aarch64 ``virt``): their root bus ``pcie.0`` takes no device
in or out while the guest runs; a pcie-root-port N makes bus N, whose one slot can. A
device without an address goes behind a free root port of the definition (the lowest
index first), else on the root bus, so a guest defined with spare ports (as virt-install
defines them) can have devices plugged in and taken out. The other PCI controllers
(bridges, expander buses) are not built: an address on a bus one of them would make is
refused, naming it, before QEMU runs; so are other domains, function > 0 (but for root
ports) and the machine's own slots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from qemud.qemu.domain import DomainView, PciAddressView, PciControllerView, PciDeviceView
from qemud.qemu.errors import GuestConfigError

if TYPE_CHECKING:
    from qemud.qemu.arch.base import ArchStrategy
    from qemud.qemu.arch.table import MachineProfile

__all__ = ["ROOT_PORT_MODELS", "DeviceKey", "PciPlan", "Slot", "assign_addresses",
           "express", "free_slot", "pci_devices", "plan", "root_port_args"]

#: QEMU watchdog devices that are PCI devices (ib700 is ISA)
_PCI_WATCHDOGS: Final = frozenset({"i6300esb"})
_SLOTS: Final = range(1, 32)
_FUNCTIONS: Final = range(8)
#: the root bus controller each kind of machine has (libvirt's models)
_ROOT_MODELS: Final = {"pcie.0": "pcie-root"}
_DEFAULT_ROOT_MODEL: Final = "pci-root"
#: ``<model name>`` of a pcie-root-port, which is also QEMU's device: QEMU's generic
#: port, Intel's
ROOT_PORT_MODELS: Final = ("pcie-root-port", "ioh3420")

#: (kind, key) naming one device in a plan: ("interface", mac), ("disk", target dev),
#: ("memballoon", ""), ("watchdog", ""), ("controller", index) or ("implicit", what
#: qemud adds)
DeviceKey = tuple[str, str]


@dataclass(frozen=True, order=True)
class Slot:
    """Where one device sits: ``bus`` 0 is the root bus, N the bus of pcie-root-port N."""

    bus: int
    slot: int
    function: int = 0
    multifunction: bool = False

    @property
    def addr(self) -> str:
        """QEMU's ``addr`` property: ``0x3``, or ``0x2.0x1`` for a function > 0."""
        return (f"{self.slot:#x}" if self.function == 0
                else f"{self.slot:#x}.{self.function:#x}")


@dataclass(frozen=True)
class PciPlan:
    """The place of every PCI device of one definition; ``bus`` is QEMU's id of the
    root bus."""

    bus: str
    slots: Mapping[DeviceKey, Slot]
    #: the pcie-root-ports with their indexes (a port without one: what it gets); None
    #: for one the plan adds (a PCIe device without an address found no free port)
    ports: tuple[tuple[int, PciControllerView | None], ...] = ()

    def bus_id(self, bus: int) -> str:
        """QEMU's id of PCI bus ``bus``: the root bus's, or the root port's (libvirt's
        alias ``pci.N`` for the controller with index N)."""
        return self.bus if bus == 0 else f"pci.{bus}"

    def props(self, key: DeviceKey) -> str:
        """``,bus=pci.0,addr=0x3`` for the device ``key``, to append to its ``-device``
        (empty for a device not on PCI)."""
        place = self.slots.get(key)
        if place is None:
            return ""
        multifunction = ",multifunction=on" if place.multifunction else ""
        return f",bus={self.bus_id(place.bus)}{multifunction},addr={place.addr}"


def pci_devices(dom: DomainView, strategy: ArchStrategy
                ) -> list[tuple[DeviceKey, PciDeviceView]]:
    """The modelled devices of ``dom`` that sit on PCI, in libvirt's assignment order.

    Raises :class:`GuestConfigError` for a PCI address on one that does not (a disk on
    an IDE, SATA, SCSI or USB bus, an ISA watchdog): it would be ignored; libvirt
    refuses it too."""
    return _scan(dom, strategy)[0]


def _scan(dom: DomainView, strategy: ArchStrategy
          ) -> tuple[list[tuple[DeviceKey, PciDeviceView]], list[str]]:
    """:func:`pci_devices`, and the PCI devices the argv builder adds for ``dom`` with no
    element of their own (the ``pci_slots`` kinds of devices.toml), in one pass over the
    definition (a define runs this: each device list is a walk of the XML)."""
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
    """Every PCI device's place: its own address, or for a device without one the place
    :func:`assign_addresses` would give it. None on a machine without a PCI bus.

    Raises :class:`GuestConfigError` naming the device for an address the guest cannot
    have (see :func:`_checked_address`), or a PCI controller it cannot have. Runs at
    every define: messages are made only when one is raised."""
    return _Planner(dom, strategy).plan()


def assign_addresses(dom: DomainView, strategy: ArchStrategy) -> None:
    """Give each PCI device of ``dom`` without an address the place :func:`plan` chose,
    as ``<address type='pci'>`` in the definition (libvirt does this at define), and
    each pcie-root-port its index and ``<target chassis port>`` (libvirt's: the chassis
    is the index, the port the root port's own slot * 8 + function)."""
    planner = _Planner(dom, strategy)
    chosen = planner.plan()
    if chosen is None:
        return
    for key, device in planner.devices:
        if device.address_type is None or device.pci_address is None:
            place = chosen.slots[key]
            device.assign_pci_slot(place.slot, place.bus, place.function,
                                   place.multifunction)
    for index, port in chosen.ports:
        place = chosen.slots[("controller", str(index))]
        if port is None:  # added, as libvirt adds one for a PCIe device
            port = dom.add_pcie_root_port(index)
            port.assign_pci_slot(place.slot, place.bus, place.function, place.multifunction)
        elif port.index is None:
            port.assign_index(index)
        if port.chassis is None or port.port is None:
            port.set_target(*_target(index, port, place))


def free_slot(dom: DomainView, strategy: ArchStrategy, what: str) -> tuple[str, Slot]:
    """``(QEMU's bus id, slot)`` for ``what`` (a device about to be plugged into running
    ``dom``): on a PCI Express machine the lowest free pcie-root-port's slot, else the
    lowest root-bus slot no device of the live definition holds, nor one qemud keeps
    for its own devices. Raises :class:`GuestConfigError` in libvirt's words when none
    is left, or when the machine has no PCI bus."""
    planner = _Planner(dom, strategy)
    chosen = planner.plan()
    if chosen is None:
        raise GuestConfigError(
            "devices", f"cannot plug {what}: machine '{strategy.machine_type(dom)}' has "
            "no PCI bus")
    if planner.express:
        used = {place.bus for place in chosen.slots.values()}
        for index, port in planner.ports:
            if index not in used and port.hotplug != "off":
                return chosen.bus_id(index), Slot(index, 0)
        raise GuestConfigError(
            "devices", f"No more available PCI slots: cannot hot-plug {what}: machine "
            f"'{strategy.machine_type(dom)}' takes devices in and out while it runs only "
            "behind a pcie-root-port, and every one of this domain's is taken; define it "
            "with a spare <controller type='pci' model='pcie-root-port'/> (taken at its "
            "next start), or attach the device with --config")
    free = _free_slots(strategy.profile(dom), {p.slot for p in chosen.slots.values()
                                               if p.bus == 0})
    return chosen.bus, Slot(0, _next_free(free, dom, strategy, lambda: what))


def express(dom: DomainView, strategy: ArchStrategy) -> bool:
    """Whether ``dom``'s machine has a PCI Express root bus (q35, aarch64 ``virt``),
    which takes no device in or out while the guest runs: only a pcie-root-port does."""
    return strategy.profile(dom).pci_bus in _ROOT_MODELS


def root_port_args(chosen: PciPlan) -> list[str]:
    """``-device pcie-root-port,...`` for each pcie-root-port of ``chosen``, in its
    place, with libvirt's id (``pci.N``) and properties."""
    argv = []
    for index, port in chosen.ports:
        key = ("controller", str(index))
        chassis, number = _target(index, port, chosen.slots[key])
        model = (port.model_name if port is not None else None) or ROOT_PORT_MODELS[0]
        props = [model, f"port={number:#x}", f"chassis={chassis}",
                 f"id={chosen.bus_id(index)}"]
        if port is not None and port.hotplug == "off":
            props.append("hotplug=off")
        argv += ["-device", ",".join(props) + chosen.props(key)]
    return argv


def _target(index: int, port: PciControllerView | None, place: Slot) -> tuple[int, int]:
    """A root port's (chassis, port): its own, else libvirt's (the index; its slot * 8
    + function)."""
    chassis = None if port is None else port.chassis
    number = None if port is None else port.port
    return (index if chassis is None else chassis,
            place.slot * 8 + place.function if number is None else number)


class _Planner:
    """One pass of the assignment over one definition: its devices and ports, their
    own addresses checked, the others placed."""

    def __init__(self, dom: DomainView, strategy: ArchStrategy) -> None:
        self.dom = dom
        self.strategy = strategy
        self.profile = strategy.profile(dom)
        self.express = express(dom, strategy)
        found, self.implicit = _scan(dom, strategy)
        controllers = dom.pci_controllers
        #: the controller indexes taken (a port without one gets the lowest free)
        self.taken = {c.index for c in controllers if c.index is not None}
        self.ports = self._ports(controllers)
        self.devices: list[tuple[DeviceKey, PciDeviceView]] = [
            *((("controller", str(i)), p) for i, p in self.ports), *found]
        #: index -> what a bus other than the root bus is made by (qemud builds only
        #: root ports)
        self.others = {c.index: c for c in controllers
                       if c.model != "pcie-root-port" and c.index}

    def _ports(self, controllers: Sequence[PciControllerView]
               ) -> list[tuple[int, PciControllerView]]:
        """The pcie-root-ports with their indexes (libvirt gives a port without one the
        lowest free; :func:`assign_addresses` writes it), after the machine checks on
        PCI controllers."""
        machine = self.strategy.machine_type(self.dom)
        root_model = _ROOT_MODELS.get(self.profile.pci_bus or "", _DEFAULT_ROOT_MODEL)
        ports = []
        for controller in controllers:
            model = controller.model
            if model in ("pci-root", "pcie-root") and self.profile.pci_bus is not None \
                    and (model != root_model or controller.index not in (None, 0)):
                # libvirt's words (qemuDomainDeviceDefValidateControllerPCI)
                raise GuestConfigError(
                    "devices", f"The PCI controller with index='0' must be "
                    f"model='{root_model}' for machine '{machine}' ({controller.describe()})")
            if model != "pcie-root-port":
                continue
            if not self.express:
                raise GuestConfigError(
                    "devices", f"{controller.describe()}: a pcie-root-port needs a PCI "
                    f"Express machine (q35, virt), not '{machine}'")
            if controller.index == 0:
                raise GuestConfigError(
                    "devices", f"{controller.describe()}: index 0 is the root bus's")
            if controller.model_name not in (None, *ROOT_PORT_MODELS):
                raise GuestConfigError(
                    "devices", f"{controller.describe()}: unsupported <model "
                    f"name='{controller.model_name}'> (expected one of "
                    f"{', '.join(ROOT_PORT_MODELS)})")
            ports.append(controller)
        indexed = []
        for port in ports:
            index = port.index
            indexed.append((self._free_index(port.describe) if index is None else index,
                            port))
        return indexed

    def _free_index(self, what: Callable[[], str]) -> int:
        """The lowest controller index no controller has (now taken)."""
        index = next((i for i in range(1, 256) if i not in self.taken), None)
        if index is None:
            raise GuestConfigError(
                "devices", f"No more available PCI slots: no PCI controller index is left "
                f"for a pcie-root-port for {what()}")
        self.taken.add(index)
        return index

    def plan(self) -> PciPlan | None:
        profile = self.profile
        if profile.pci_bus is None:
            for _, device in self.devices:
                address = device.pci_address
                if address is not None:
                    raise GuestConfigError(
                        "devices", f"{device.describe()} has PCI address {_text(address)}, "
                        f"but machine '{self.strategy.machine_type(self.dom)}' has no PCI "
                        "bus")
            return None
        slots: dict[DeviceKey, Slot] = {("implicit", kind): Slot(0, profile.pci_slots[kind])
                                        for kind in self.implicit}
        holders: dict[tuple[int, int, int], PciDeviceView | str] = {
            (0, place.slot, 0): f"qemud's {kind.replace('_', '-')} device"
            for (_, kind), place in slots.items()}
        unplaced = []
        for key, device in self.devices:
            address = self._checked_address(device, key[0] == "controller", holders)
            if address is None:
                unplaced.append((key, device))
            else:
                holders[(address.bus, address.slot, address.function)] = device
                slots[key] = Slot(address.bus, address.slot, address.function,
                                  address.multifunction)
        self._check_functions(slots, holders)
        ports: list[tuple[int, PciControllerView | None]] = list(self.ports)
        if unplaced:
            ports += self._place(unplaced, slots)
        return PciPlan(profile.pci_bus, slots, tuple(ports))

    def _place(self, unplaced: list[tuple[DeviceKey, PciDeviceView]],
               slots: dict[DeviceKey, Slot]) -> list[tuple[int, None]]:
        """Places for the devices without an address: root ports packed into the
        functions of root-bus slots (eight to a slot, function 0 multi-function, as
        libvirt packs them); then on a PCI Express machine each other device behind a
        free root port, or one added for it as libvirt adds one (returned: index, None);
        else, and for an i6300esb (not a PCIe device), the lowest free root-bus slot."""
        used = {p.slot for p in slots.values() if p.bus == 0}
        free = _free_slots(self.profile, used)
        packing: tuple[int, int] | None = None  # (slot, next function)

        def port_place(what: Callable[[], str]) -> Slot:
            nonlocal packing
            if packing is None or packing[1] == len(_FUNCTIONS):
                packing = (_next_free(free, self.dom, self.strategy, what), 0)
            slot, function = packing
            packing = (slot, function + 1)
            return Slot(0, slot, function, multifunction=function == 0)

        ports_used = {p.bus for p in slots.values() if p.bus != 0}
        free_ports = [i for i, _ in self.ports if i not in ports_used]
        added: list[tuple[int, None]] = []
        for key, device in unplaced:
            if key[0] == "controller":
                slots[key] = port_place(device.describe)
            elif self.express and key[0] != "watchdog":
                if not free_ports:
                    index = self._free_index(device.describe)
                    slots[("controller", str(index))] = port_place(device.describe)
                    added.append((index, None))
                    free_ports.append(index)
                slots[key] = Slot(free_ports.pop(0), 0)
            else:
                slots[key] = Slot(0, _next_free(free, self.dom, self.strategy,
                                                device.describe))
        return added

    def _checked_address(self, device: PciDeviceView, is_port: bool,
                         holders: dict[tuple[int, int, int], PciDeviceView | str]
                         ) -> PciAddressView | None:
        """``device``'s address, refused if the device cannot have it: another type,
        another domain, a bus no root port makes, a function other than 0 (but for a
        root port), the machine's own slots, one another device holds (libvirt's
        "Attempted double use")."""
        kind = device.address_type
        if kind is None:
            return None
        if kind != "pci":
            raise GuestConfigError(
                "devices", f"{device.describe()} is a PCI device: its <address> type must "
                f"be 'pci', not '{kind}'")
        address = device.pci_address
        if address is None:
            return None
        machine = self.strategy.machine_type(self.dom)
        problem = ""
        if address.domain != 0:
            problem = f"is not in PCI domain 0000 of machine '{machine}'"
        elif address.bus != 0:
            problem = self._bus_problem(address, is_port)
        elif (address.function != 0 or address.multifunction) and not is_port:
            problem = ": multi-function devices are not supported (use function 0)"
        elif address.slot in self.profile.pci_builtin_slots:
            problem = f"is taken by machine '{machine}''s built-in devices"
        if not problem:
            other = holders.get((address.bus, address.slot, address.function))
            if other is None:
                return address
            raise GuestConfigError(
                "devices", f"Attempted double use of PCI Address {_text(address)} "
                f"({device.describe()} and "
                f"{other if isinstance(other, str) else other.describe()})")
        space = "" if problem.startswith(":") else " "
        raise GuestConfigError(
            "devices", f"PCI address {_text(address)} of {device.describe()}{space}{problem}")

    def _bus_problem(self, address: PciAddressView, is_port: bool) -> str:
        """Why ``address`` (bus > 0) cannot be had; empty when it can."""
        bus = address.bus
        if is_port:
            return "is not on the root bus (qemud puts pcie-root-ports only there)"
        if any(i == bus for i, _ in self.ports):
            if address.slot != 0 or address.function != 0 or address.multifunction:
                return (f"is not slot 0 function 0 of bus {bus:#04x}: a pcie-root-port has "
                        "one slot")
            return ""
        other = self.others.get(bus)
        if other is not None:
            return (f"is on the bus of {other.describe()}, which qemud does not build "
                    "(only pcie-root-port)")
        hint = (f" (add <controller type='pci' index='{bus}' model='pcie-root-port'/>)"
                if self.express else " (qemud adds no PCI bridges)")
        return f"is on bus {bus:#04x}, which no controller of the domain makes{hint}"

    def _check_functions(self, slots: dict[DeviceKey, Slot],
                         holders: dict[tuple[int, int, int], PciDeviceView | str]) -> None:
        """A root-bus slot with devices at functions other than 0 needs one at function
        0 with ``multifunction='on'`` (QEMU's rule; libvirt writes its ports so)."""
        for (bus, slot, function), device in holders.items():
            if function == 0 or bus != 0:
                continue
            first = next((p for p in slots.values()
                          if p.bus == 0 and p.slot == slot and p.function == 0), None)
            if first is None or not first.multifunction:
                what = device if isinstance(device, str) else device.describe()
                raise GuestConfigError(
                    "devices", f"PCI address 0000:00:{slot:02x}.{function:x} of {what} "
                    f"needs a device at function 0 of slot {slot:#04x} with "
                    "multifunction='on'")


def _free_slots(profile: MachineProfile, used: set[int]) -> Iterator[int]:
    """The root-bus slots a device without an address may get, lowest first: every
    fixed slot is kept free, its device present or not, so adding one later never finds
    its slot taken."""
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


def _text(address: PciAddressView) -> str:
    """libvirt's spelling of a PCI address: ``0000:00:03.0``."""
    return f"{address.domain:04x}:{address.bus:02x}:{address.slot:02x}.{address.function:x}"
