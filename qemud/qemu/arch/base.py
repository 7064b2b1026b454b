"""Base class of the per-architecture strategies.

Architectures differ in facts (kept in devices.toml and exposed here through
:class:`~qemud.qemu.arch.table.ArchTable`) and in a few behaviours (how a
serial port is wired, mostly).  The command builder never asks "which arch
is this?": it calls the hooks below, and each subclass overrides only what
is really different for it.  That is the point of the strategy objects: no
``if arch == ...`` chains anywhere, and a new arch is one class + one table.

Bus behaviour is arch-independent (an IDE bus is an IDE bus everywhere) and
lives in the small ``_BUSES`` table; *which* buses exist is per arch/machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from qemud.qemu import naming, pci
from qemud.qemu.arch.table import PANIC_BUILTIN, ArchTable, MachineProfile
from qemud.qemu.domain import (
    CharDeviceView,
    DiskView,
    DomainView,
    InterfaceView,
    MemballoonView,
    PanicView,
)
from qemud.qemu.errors import GuestConfigError, UnsupportedForArch

__all__ = ["ACCELS", "BALLOON_MODELS", "ArchStrategy", "DiskBus", "disk_path"]

#: Accelerators a strategy can build for, keyed by libvirt ``<domain type>``.
ACCELS: Final = {"qemu": "tcg", "kvm": "kvm"}

#: <memballoon model> values the QEMU driver builds ('none': no balloon at all).
BALLOON_MODELS: Final = ("virtio", "none")

# Target dev prefixes that imply a bus, as in libvirt.
_PREFIX_BUS: Final = {"hd": "ide", "sd": "scsi", "vd": "virtio"}

#: QEMU's own I/O port of the ISA pvpanic (libvirt writes it as iobase='0x505')
_PVPANIC_IOPORT: Final = 0x505
# Why qemud builds no such panic device where the table has none: said with the refusal.
_PANIC_WHY: Final = {
    "pvpanic": "QEMU's pvpanic-pci would need a PCI slot, and qemud gives panic devices "
               "none",
    "hyperv": "it is Hyper-V's crash notification (<features><hyperv><crash>), which qemud "
              "does not build",
    "s390": "it is the s390 machine's own, and qemud runs no s390 guests",
    "isa": "QEMU's ISA pvpanic exists on x86 only",
    # libvirt's words (qemuValidateDomainDeviceDefPanic)
    "pseries": "only pSeries guests support panic device of model 'pseries'",
}


def disk_path(position: int, leaf: str = "target") -> str:
    """Element path of the ``position``-th (0-based) disk, 1-based like XPath."""
    return f"devices/disk[{position + 1}]/{leaf}"


@dataclass(frozen=True)
class DiskBus:
    """What a disk bus can do; ``max_units`` is None when effectively unbounded."""

    name: str
    cdrom: bool
    readonly_disk: bool
    max_units: int | None
    # (strategy, profile, media 'hd'|'cd', unit index) -> -device props up to the drive
    placement: Callable[[ArchStrategy, MachineProfile, str, int], list[str]]


def _place_virtio(
    strategy: ArchStrategy, profile: MachineProfile, media: str, unit: int
) -> list[str]:
    return [strategy.table.devices.virtio_blk]


def _place_ide(strategy: ArchStrategy, profile: MachineProfile, media: str, unit: int) -> list[str]:
    return [f"ide-{media}", f"bus={profile.builtin_ide}.{unit // 2}", f"unit={unit % 2}"]


def _place_sata(
    strategy: ArchStrategy, profile: MachineProfile, media: str, unit: int
) -> list[str]:
    prefix = profile.builtin_sata or naming.SATA_ID
    return [f"ide-{media}", f"bus={prefix}.{unit}"]


def _place_scsi(
    strategy: ArchStrategy, profile: MachineProfile, media: str, unit: int
) -> list[str]:
    return [f"scsi-{media}", f"bus={naming.SCSI_ID}.0", "channel=0", f"scsi-id={unit}", "lun=0"]


def _place_usb(strategy: ArchStrategy, profile: MachineProfile, media: str, unit: int) -> list[str]:
    return ["usb-storage", f"bus={naming.USB_ID}.0"]


_BUSES: Final = {
    bus.name: bus
    for bus in (
        DiskBus("virtio", cdrom=False, readonly_disk=True, max_units=None, placement=_place_virtio),
        # ide-hd/ide-cd refuse read-only block nodes for hard disks.
        DiskBus("ide", cdrom=True, readonly_disk=False, max_units=4, placement=_place_ide),
        DiskBus("sata", cdrom=True, readonly_disk=False, max_units=6, placement=_place_sata),
        DiskBus("scsi", cdrom=True, readonly_disk=True, max_units=256, placement=_place_scsi),
        DiskBus("usb", cdrom=False, readonly_disk=True, max_units=None, placement=_place_usb),
    )
}


class ArchStrategy:
    """Everything the QEMU driver needs to know that depends on the guest arch.

    Subclasses set :attr:`name` (the libvirt arch name, which is also the
    devices.toml table name) and register with
    :func:`qemud.qemu.arch.register`.  Instances are stateless.
    """

    name: ClassVar[str]

    def __init__(self, table: ArchTable) -> None:
        if table.name != self.name:
            raise ValueError(f"{type(self).__name__} got the table of {table.name!r}")
        self.table = table

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- facts ----------------------------------------------------------------

    @property
    def binary(self) -> str:
        return self.table.binary

    @property
    def wordsize(self) -> int:
        return self.table.wordsize

    def kvm_possible_on(self, host_arch: str) -> bool:
        """Whether KVM on a ``host_arch`` host can run guests of this arch."""
        return host_arch in self.table.kvm_host_archs

    def machine_type(self, dom: DomainView) -> str:
        return dom.os.machine or self.table.default_machine

    def profile(self, dom: DomainView) -> MachineProfile:
        return self.table.profile(self.machine_type(dom))

    def memory_kib(self, dom: DomainView) -> int:
        """Guest RAM rounded up to what the machine accepts."""
        align = self.table.memory_align_kib
        return -(-dom.memory_kib // align) * align

    def disk_bus(self, dom: DomainView, disk: DiskView) -> str:
        """The bus ``disk`` sits on: explicit, else implied by its name, else default."""
        if disk.target_bus:
            return disk.target_bus
        profile = self.profile(dom)
        parsed = naming.split_target_dev(disk.target_dev or "")
        implied = _PREFIX_BUS.get(parsed[0]) if parsed else None
        if disk.device == "cdrom":
            if implied in profile.disk_buses and _BUSES[implied].cdrom:
                return implied
            return profile.cdrom_bus
        if implied in profile.disk_buses:
            return implied
        return self.table.default_disk_bus

    def nic_model(self, iface: InterfaceView) -> str:
        return iface.model or self.table.default_nic_model

    # -- definition-time hooks ----------------------------------------------

    def fill_defaults(self, dom: DomainView) -> None:
        """Write the arch defaults into ``dom`` (arch, machine, buses, NIC models, the
        default memory balloon, the PCI devices' addresses: :mod:`qemud.qemu.pci`).

        Done at define time, like libvirt's post-parse callbacks, so the
        persistent XML shows what the guest really gets and later changes of
        the defaults do not silently change existing guests.  The RAM size is
        not among them: libvirt keeps the user's KiB in the definition and
        aligns only the running guest's (:meth:`memory_kib`, at start).
        """
        if dom.os.arch is None:
            dom.os.arch = self.name
        if dom.os.machine is None:
            dom.os.machine = self.table.default_machine
        for disk in dom.disks:
            if disk.target_bus is None:
                disk.target_bus = self.disk_bus(dom, disk)
        for iface in dom.interfaces:
            if iface.model is None:
                iface.model = self.table.default_nic_model
        if dom.memballoon is None and self.profile(dom).default_memballoon:
            dom.set_default_memballoon("virtio")
        default_panic = self.table.default_panic_model
        for panic in dom.panics:
            if panic.model is None and default_panic is not None:
                panic.model = default_panic  # (libvirt's post-parse does too)
        pci.assign_addresses(dom, self)

    def validate(self, dom: DomainView) -> None:
        """Raise :class:`UnsupportedForArch` for anything this arch cannot run.

        Does not modify ``dom``; works on definitions with or without
        :meth:`fill_defaults` applied.
        """
        if dom.os.arch is not None and dom.os.arch != self.name:
            raise GuestConfigError(
                "os/type", f"arch {dom.os.arch!r} given to the {self.name} strategy"
            )
        if dom.os.type != "hvm":
            raise UnsupportedForArch("os/type", "OS type", dom.os.type, self.name, ["hvm"])
        self._validate_disks(dom)
        self._validate_interfaces(dom)
        self._validate_chardevs(dom)
        for position, graphics in enumerate(dom.graphics, start=1):
            if graphics.type not in self.table.graphics:
                raise UnsupportedForArch(
                    f"devices/graphics[{position}]",
                    "graphics type",
                    graphics.type,
                    self.name,
                    self.table.graphics,
                )
        watchdog = dom.watchdog
        if watchdog is not None and watchdog.model not in self.table.watchdog_models:
            raise UnsupportedForArch(
                "devices/watchdog",
                "watchdog model",
                watchdog.model,
                self.name,
                list(self.table.watchdog_models),
            )

        balloon = dom.memballoon
        if balloon is not None and balloon.model not in BALLOON_MODELS:
            raise UnsupportedForArch(
                "devices/memballoon", "memballoon model", balloon.model, self.name,
                list(BALLOON_MODELS),
            )
        self._validate_panics(dom)

    def panic_model(self, panic: PanicView) -> str | None:
        """The model of ``panic``: its own, else the arch's default (None: no default)."""
        return panic.model or self.table.default_panic_model

    def _validate_panics(self, dom: DomainView) -> None:
        """Models this machine has, one device per model, an address the model takes."""
        profile = self.profile(dom)
        seen: set[str] = set()
        for position, panic in enumerate(dom.panics, start=1):
            path = f"devices/panic[{position}]"
            model = self.panic_model(panic)
            if model is None:
                raise GuestConfigError(path, f"{self.name} has no default panic model: "
                                             "give <panic model=...>")
            if model in seen:
                # libvirt's words (virDomainDefRejectDuplicatePanics)
                raise GuestConfigError(path, f"Multiple panic devices with model '{model}'")
            seen.add(model)
            device = profile.panic_models.get(model)
            if device is None:
                where = self.name
                if any(model in self.table.profile(family.patterns[0]).panic_models
                       for family in self.table.families):
                    where = f"{self.name} machine '{self.machine_type(dom)}'"
                refusal = UnsupportedForArch(path, "panic model", model, where,
                                             list(profile.panic_models))
                why = _PANIC_WHY.get(model)
                if why is None:
                    raise refusal
                raise GuestConfigError(path, f"{refusal.detail}: {why}")
            if device == PANIC_BUILTIN:
                if panic.address_type is not None:
                    # libvirt's words (qemuValidateDomainDeviceDefPanic)
                    raise GuestConfigError(
                        path, "setting the panic device address is not supported for "
                              f"model '{model}'")
            elif panic.address_type not in (None, "isa"):
                raise GuestConfigError(path, "panic is supported only with ISA address type")

    def _validate_disks(self, dom: DomainView) -> None:
        profile = self.profile(dom)
        taken: dict[tuple[str, int], str] = {}
        for position, disk in enumerate(dom.disks):
            path = disk_path(position)
            if disk.device not in ("disk", "cdrom"):
                raise GuestConfigError(
                    f"devices/disk[{position + 1}]", f"unsupported disk device {disk.device!r}"
                )
            bus_name = self.disk_bus(dom, disk)
            where = self._where(dom, bus_name)
            if bus_name not in profile.disk_buses or bus_name not in _BUSES:
                supported = [b for b in profile.disk_buses if b in _BUSES]
                raise UnsupportedForArch(path, "bus", bus_name, where, supported)
            bus = _BUSES[bus_name]
            if not disk.target_dev:
                raise GuestConfigError(path, "disk has no target dev")
            unit = naming.disk_index(disk.target_dev)
            if unit is None:
                raise GuestConfigError(path, f"invalid target dev {disk.target_dev!r}")
            if disk.device == "cdrom" and not bus.cdrom:
                cd_buses = [b for b in profile.disk_buses if b in _BUSES and _BUSES[b].cdrom]
                raise UnsupportedForArch(path, "cdrom bus", bus_name, where, cd_buses)
            if disk.device == "disk" and disk.readonly and not bus.readonly_disk:
                raise GuestConfigError(
                    path, f"read-only disks are not supported on bus {bus_name!r}"
                )
            if bus.max_units is not None and unit >= bus.max_units:
                raise GuestConfigError(
                    path,
                    f"target dev {disk.target_dev!r} is unit {unit}, "
                    f"but bus {bus_name!r} has only {bus.max_units} units",
                )
            if bus.max_units is not None:
                other = taken.setdefault((bus_name, unit), disk.target_dev)
                if other != disk.target_dev:
                    raise GuestConfigError(
                        path,
                        f"target dev {disk.target_dev!r} and {other!r} "
                        f"both map to {bus_name} unit {unit}",
                    )

    def _where(self, dom: DomainView, bus: str) -> str:
        """Name the arch, or the arch's machine when some other machine has ``bus``."""
        profiles = [self.table.base_profile]
        profiles += [self.table.profile(family.patterns[0]) for family in self.table.families]
        if any(bus in profile.disk_buses for profile in profiles):
            return f"{self.name} machine '{self.machine_type(dom)}'"
        return self.name

    def _validate_interfaces(self, dom: DomainView) -> None:
        for position, iface in enumerate(dom.interfaces, start=1):
            model = self.nic_model(iface)
            if model not in self.table.nic_models:
                raise UnsupportedForArch(
                    f"devices/interface[{position}]/model",
                    "NIC model",
                    model,
                    self.name,
                    list(self.table.nic_models),
                )

    def _validate_chardevs(self, dom: DomainView) -> None:
        max_serials = self.table.max_serials
        ports: set[int] = set()
        for position, serial in enumerate(dom.serials, start=1):
            port = serial.target_port if serial.target_port is not None else position - 1
            if not 0 <= port < max_serials:
                raise GuestConfigError(
                    f"devices/serial[{position}]/target",
                    f"serial port {port} is out of range: {self.name} has "
                    f"{max_serials} serial port(s)",
                )
            if port in ports:
                raise GuestConfigError(
                    f"devices/serial[{position}]/target", f"duplicate serial port {port}"
                )
            ports.add(port)
        for position, console in enumerate(dom.consoles, start=1):
            where = f"devices/console[{position}]/target"
            if console.target_type not in (None, "serial", "virtio"):
                raise UnsupportedForArch(
                    where,
                    "console target type",
                    str(console.target_type),
                    self.name,
                    ["serial", "virtio"],
                )
            if console.target_type != "virtio" and position > 1:
                raise GuestConfigError(where, "only the first console can be a serial console")
            if console.target_type != "virtio" and max_serials < 1:
                raise UnsupportedForArch(
                    where, "console target type", "serial", self.name, ["virtio"]
                )
        for position, channel in enumerate(dom.channels, start=1):
            if channel.target_type != "virtio":
                raise UnsupportedForArch(
                    f"devices/channel[{position}]/target",
                    "channel target type",
                    str(channel.target_type),
                    self.name,
                    ["virtio"],
                )

    # -- argv hooks -----------------------------------------------------------

    def machine_args(self, dom: DomainView, accel: str) -> list[str]:
        """``-machine TYPE,accel=ACCEL[,props]``."""
        profile = self.profile(dom)
        props = [self.machine_type(dom), f"accel={accel}", *profile.machine_props]
        if accel == "tcg":
            props.extend(profile.tcg_machine_props)
        return ["-machine", ",".join(props)]

    def cpu_args(self, dom: DomainView, accel: str) -> list[str]:
        return ["-cpu", self.table.kvm_cpu if accel == "kvm" else self.table.tcg_cpu]

    def controller_args(self, dom: DomainView, slots: pci.PciPlan | None = None) -> list[str]:
        """Controllers the disks need that the machine does not have built in (each in
        its fixed slot of ``slots``, when given)."""
        profile = self.profile(dom)
        used = {self.disk_bus(dom, disk) for disk in dom.disks}
        devices = self.table.devices
        wanted = []
        if "sata" in used and profile.builtin_sata is None:
            wanted.append(("sata", f"{devices.sata_controller},id={naming.SATA_ID}"))
        if "scsi" in used:
            wanted.append(("scsi", f"{devices.virtio_scsi},id={naming.SCSI_ID}"))
        if "usb" in used:
            wanted.append(("usb", f"{devices.usb_controller},id={naming.USB_ID}"))
        argv: list[str] = []
        for kind, device in wanted:
            argv += ["-device", device + ("" if slots is None else
                                          slots.props(("implicit", kind)))]
        return argv

    def disk_device(self, dom: DomainView, disk: DiskView, drive: str, device_id: str) -> str:
        """``-device`` value for a hard disk backed by block node ``drive``."""
        return ",".join(
            [*self._placement(dom, disk, "hd"), f"drive={drive}", f"id={device_id}"]
            + _bootindex(disk)
        )

    def cdrom_device(
        self, dom: DomainView, disk: DiskView, drive: str | None, device_id: str
    ) -> str:
        """``-device`` value for a cdrom; ``drive`` is None for an empty tray."""
        props = self._placement(dom, disk, "cd")
        if drive is not None:
            props.append(f"drive={drive}")
        return ",".join([*props, f"id={device_id}", *_bootindex(disk)])

    def _placement(self, dom: DomainView, disk: DiskView, media: str) -> list[str]:
        bus = _BUSES[self.disk_bus(dom, disk)]
        unit = naming.disk_index(disk.target_dev or "")
        if unit is None:  # validate() rejects this first
            raise GuestConfigError("devices/disk/target", f"invalid target dev {disk.target_dev!r}")
        return bus.placement(self, self.profile(dom), media, unit)

    def nic_device(self, iface: InterfaceView, mac: str, device_id: str, netdev_id: str) -> str:
        model = self.table.nic_models[self.nic_model(iface)]
        return f"{model},netdev={netdev_id},id={device_id},mac={mac}"

    def serial_args(self, chardev_id: str, device_id: str, port: int) -> list[str]:
        """Wire serial port ``port`` to chardev ``chardev_id``; subclasses decide how."""
        raise NotImplementedError(f"{type(self).__name__} must implement serial_args")

    def console_args(
        self, console: CharDeviceView, chardev_id: str, device_id: str, port: int
    ) -> list[str]:
        """A ``<console>`` that is not a mirror of a ``<serial>``.

        ``port`` is the serial port for serial consoles and the
        virtio-serial port number for virtio ones.
        """
        if console.target_type == "virtio":
            bus = f"{naming.VIRTIO_SERIAL_ID}.0"
            return [
                "-device",
                f"virtconsole,bus={bus},nr={port},chardev={chardev_id},id={device_id}",
            ]
        return self.serial_args(chardev_id, device_id, port)

    def virtio_serial_controller(self) -> str:
        return f"{self.table.devices.virtio_serial},id={naming.VIRTIO_SERIAL_ID}"

    def video_device(self) -> str | None:
        model = self.table.video_model
        return None if model is None else f"{model},id={naming.VIDEO_ID}"

    def watchdog_device(self, model: str) -> str:
        return f"{self.table.watchdog_models[model]},id={naming.WATCHDOG_ID}"

    def panic_device(self, dom: DomainView, panic: PanicView) -> str | None:
        """``-device`` value of a panic device :meth:`validate` accepted; None for one the
        machine has itself (pseries). An ISA one at QEMU's own port 0x505 gets no
        ``ioport``."""
        device = self.profile(dom).panic_models.get(self.panic_model(panic) or "")
        if device is None:  # validate() refuses this first
            raise GuestConfigError("devices/panic", f"unsupported {panic.describe()}")
        if device == PANIC_BUILTIN:
            return None
        iobase = panic.iobase
        if iobase is not None and iobase != _PVPANIC_IOPORT:
            return f"{device},ioport={iobase}"
        return device

    def balloon_device(self, balloon: MemballoonView) -> str | None:
        """``-device`` value of the balloon; None for ``model='none'`` (no balloon)."""
        if balloon.model == "none":
            return None
        props = [self.table.devices.virtio_balloon, f"id={naming.BALLOON_ID}"]
        if balloon.autodeflate is not None:
            props.append(f"deflate-on-oom={balloon.autodeflate}")
        if balloon.free_page_reporting is not None:
            props.append(f"free-page-reporting={balloon.free_page_reporting}")
        return ",".join(props)


def _bootindex(disk: DiskView) -> list[str]:
    return [] if disk.boot_order is None else [f"bootindex={disk.boot_order}"]
