"""Domain definition -> QEMU command line (pure; no I/O, no clock, no env).

:func:`build_argv` is a function of its inputs only, so the argv of any
definition can be pinned by golden tests and reviewed as text, and building
it twice (start, then "what would you run?" from a client) agrees.

What is decided here versus in the strategy: everything that is the same on
every architecture (monitor, pidfile, memory, blockdev graph, netdevs,
chardev backends, VNC, actions) is here; *where* a device goes and what it
is called on this arch is asked of the :class:`ArchStrategy`.

Conventions, mostly libvirt's:

* QEMU starts paused (``-S``) with nothing implicit (``-nodefaults``,
  ``-no-user-config``); the daemon resumes it over QMP when it is wired up.
* ``-no-shutdown``: a guest power-off stops the vCPUs and emits SHUTDOWN
  instead of exiting, so the daemon learns *why* the guest went away.
* Disks are ``-blockdev`` pairs (storage + format node) named after the
  target dev, so QMP can later address them (see :mod:`qemud.qemu.naming`).
* Every user-supplied string that lands inside a ``key=value,...`` option
  is comma-escaped (QEMU reads ``,,`` as a literal comma); JSON options
  (``-blockdev``) need no escaping.
* ``<qemu:commandline>`` pass-through, as libvirt: its ``<qemu:arg>`` values
  are appended verbatim, last; its ``<qemu:env>`` variables are set with
  ``env(1)`` in front of the emulator (``/usr/bin/env NAME=VALUE... qemu``),
  so the argv stays the whole description of the launch.  Such a domain is
  what libvirt calls tainted (:func:`taints`; libvirt logs it at start).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from qemud.qemu import naming, pci
from qemud.qemu.arch import ACCELS, ArchStrategy
from qemud.qemu.arch.base import disk_path
from qemud.qemu.capabilities import Capabilities, EmulatorCaps
from qemud.qemu.chardevs import console_is_serial0
from qemud.qemu.domain import CharDeviceView, DiskView, DomainView, InterfaceView
from qemud.qemu.errors import AccelUnavailable, GuestConfigError
from qemud.qemu.firmware import machine_has_smm

__all__ = ["DISK_FORMATS", "ENV_PROGRAM", "STORAGE_DRIVERS", "GuestPaths", "argv_to_text",
           "blockdev_nodes", "build_argv", "netdev_arg", "qemu_opt_escape", "taints"]

_VNC_BASE_PORT: Final = 5900
_UNIX_PATH_MAX: Final = naming.UNIX_PATH_MAX
_BOOT_DEVS: Final = {"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}
#: the disk image formats the daemon opens
DISK_FORMATS: Final = frozenset({"raw", "qcow2"})
#: QEMU's storage (protocol) driver of a disk's image, by disk type
STORAGE_DRIVERS: Final = {"file": "file", "block": "host_device"}
# libvirt <watchdog action> -> QEMU -action watchdog=...  ('dump' is done by
# the daemon on the resulting pause, as libvirt does).
_WATCHDOG_ACTIONS: Final = {
    "reset": "reset",
    "shutdown": "shutdown",
    "poweroff": "poweroff",
    "pause": "pause",
    "none": "none",
    "inject-nmi": "inject-nmi",
    "dump": "pause",
}
_ACTION_OPTION_SINCE: Final = (6, 0, 0)
#: what sets ``<qemu:env>`` variables for QEMU (it execs QEMU: same pid)
ENV_PROGRAM: Final = "/usr/bin/env"


@dataclass(frozen=True)
class GuestPaths:
    """Host paths the daemon chose for one running guest.

    ``log_file`` is where the spawner sends QEMU's stdout/stderr; it is not
    part of the argv but belongs to the same per-guest layout.
    """

    qmp_socket: Path
    pidfile: Path
    run_dir: Path
    log_file: Path

    @classmethod
    def under(
        cls, run_root: str | os.PathLike[str], log_root: str | os.PathLike[str], name: str
    ) -> GuestPaths:
        """The standard layout: ``RUN/NAME/{monitor.sock,qemu.pid}``, ``LOG/NAME.log``.

        ``NAME`` in ``RUN`` is shortened when the sockets would not fit in a unix
        socket path (:func:`qemud.qemu.naming.guest_dir_name`).
        """
        run_dir = Path(run_root, naming.guest_dir_name(run_root, name))
        return cls(
            qmp_socket=run_dir / "monitor.sock",
            pidfile=run_dir / "qemu.pid",
            run_dir=run_dir,
            log_file=Path(log_root, f"{name}.log"),
        )

    def socket_for(self, chardev_id: str) -> Path:
        """Default socket of a unix chardev that names no path."""
        return self.run_dir / f"{chardev_id}.sock"


def qemu_opt_escape(value: str) -> str:
    """Escape ``value`` for use inside a QemuOpts ``key=value,...`` string."""
    return value.replace(",", ",,")


def build_argv(
    dom: DomainView, strategy: ArchStrategy, caps: Capabilities, paths: GuestPaths, *,
    pci_addresses: bool = True,
) -> list[str]:
    """The full QEMU argv for ``dom`` (``argv[0]`` is the emulator, or with
    ``<qemu:env>`` :data:`ENV_PROGRAM`, which execs it).

    Does not modify ``dom``: arch defaults are computed, not written (call
    :meth:`ArchStrategy.fill_defaults` at define time to persist them).
    Raises :class:`~qemud.qemu.errors.GuestConfigError` (and its subclasses)
    for anything QEMU would reject or that the host cannot do.

    Each PCI device gets its slot (``bus=...,addr=...``, :mod:`qemud.qemu.pci`); with
    ``pci_addresses`` false none does, and QEMU places them in command-line order: how
    qemud started guests before it kept addresses, for the restore of a save image of
    that time (whose devices sit where that order put them).
    """
    strategy.validate(dom)
    accel = _accel(dom, strategy, caps)
    emulator, emulator_caps = _emulator(dom, strategy, caps)
    _check_machine(dom, strategy, emulator_caps)
    slots = pci.plan(dom, strategy) if pci_addresses else None
    argv = _Builder(dom, strategy, paths, emulator_caps, slots).build(emulator, accel)
    return _env_prefix(dom, emulator) + argv


def taints(dom: DomainView) -> list[str]:
    """libvirt's taint flags (``virDomainTaintFlags`` names) this definition earns.

    ``custom-argv``: ``<qemu:commandline>`` passes arguments or environment to QEMU that
    the daemon does not understand, so what the guest does is no longer its guarantee.
    """
    return ["custom-argv"] if dom.qemu_args or dom.qemu_env else []


def _env_prefix(dom: DomainView, emulator: str) -> list[str]:
    if not dom.qemu_env:
        return []
    if "=" in emulator:  # env(1) would take it for one more variable
        raise GuestConfigError(
            "devices/emulator",
            f"emulator path {emulator!r} contains '=', which <qemu:env> cannot be combined"
            " with",
        )
    return [ENV_PROGRAM, *(f"{name}={value}" for name, value in dom.qemu_env)]


def _accel(dom: DomainView, strategy: ArchStrategy, caps: Capabilities) -> str:
    accel = ACCELS.get(dom.type)
    if accel is None:
        raise GuestConfigError("type", f"unsupported domain type {dom.type!r} (use qemu or kvm)")
    if accel == "kvm":
        if not caps.kvm_usable:
            raise AccelUnavailable("kvm", caps.kvm_reason)
        if not strategy.kvm_possible_on(caps.host_arch):
            raise AccelUnavailable(
                "kvm", f"a {caps.host_arch} host cannot run {strategy.name} guests under KVM"
            )
    return accel


def _emulator(
    dom: DomainView, strategy: ArchStrategy, caps: Capabilities
) -> tuple[str, EmulatorCaps | None]:
    probed = caps.emulator(strategy.name)
    if dom.emulator:
        same = probed is not None and os.path.abspath(dom.emulator) == probed.path
        return dom.emulator, probed if same else None
    if probed is None:
        raise GuestConfigError(
            "devices/emulator",
            f"no {strategy.binary} found on this host for {strategy.name} guests",
        )
    return probed.path, probed


def _check_machine(dom: DomainView, strategy: ArchStrategy, caps: EmulatorCaps | None) -> None:
    machine = strategy.machine_type(dom)
    if caps is not None and caps.find_machine(machine) is None:
        raise GuestConfigError(
            "os/type", f"machine type {machine!r} is not supported by {caps.path}"
        )


class _Builder:
    """One argv under construction; methods append in libvirt's order."""

    def __init__(
        self,
        dom: DomainView,
        strategy: ArchStrategy,
        paths: GuestPaths,
        emulator_caps: EmulatorCaps | None,
        slots: pci.PciPlan | None,
    ) -> None:
        self.dom = dom
        self.strategy = strategy
        self.paths = paths
        self.emulator_caps = emulator_caps
        self.slots = slots
        self.argv: list[str] = []

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def add_device(self, value: str, key: pci.DeviceKey) -> None:
        """``-device value``, in its PCI slot when ``key`` names a PCI device."""
        self.add("-device", value if self.slots is None else value + self.slots.props(key))

    def build(self, emulator: str, accel: str) -> list[str]:
        dom, strategy = self.dom, self.strategy
        if not dom.name:
            raise GuestConfigError("name", "the domain has no name")
        if not dom.uuid:
            raise GuestConfigError("uuid", "the domain has no UUID (call assign_missing_ids)")
        if dom.vcpus < 1:
            raise GuestConfigError("vcpu", f"need at least one vCPU, got {dom.vcpus}")
        if dom.vcpus > dom.max_vcpus:
            raise GuestConfigError(
                "vcpu",
                f"maxvcpus must not be less than current vcpus ({dom.max_vcpus} < {dom.vcpus})",
            )
        if dom.memory_kib < 1:
            raise GuestConfigError("memory", f"memory must be positive, got {dom.memory_kib} KiB")
        self.add(emulator)
        self.add("-name", f"guest={qemu_opt_escape(dom.name)},debug-threads=on")
        self.add("-S", "-no-user-config", "-nodefaults")
        monitor = _socket_path(self.paths.qmp_socket, "qmp socket")
        self.add(
            "-chardev",
            f"socket,id={naming.MONITOR_CHARDEV},path={qemu_opt_escape(monitor)},"
            "server=on,wait=off",
        )
        self.add("-mon", f"chardev={naming.MONITOR_CHARDEV},id={naming.MONITOR_ID},mode=control")
        self.add("-pidfile", str(self.paths.pidfile))
        machine, secure = _firmware(self, dom, strategy.machine_args(dom, accel))
        self.add(*machine)
        self.add(*strategy.cpu_args(dom, accel))
        self.add(*secure)
        self.add("-m", f"size={strategy.memory_kib(dom)}k")
        self._smp()
        self.add("-uuid", dom.uuid)
        self.add("-msg", "timestamp=on")
        self._display()
        self.add("-no-shutdown")
        self._actions()
        self._kernel()
        self._boot()
        if self.slots is not None:  # (a guest started without slots had no ports either)
            self.add(*pci.root_port_args(self.slots))
        self.add(*strategy.controller_args(dom, self.slots))
        if dom.channels or any(c.target_type == "virtio" for c in dom.consoles):
            self.add_device(strategy.virtio_serial_controller(), ("implicit", "virtio_serial"))
        self._disks()
        self._interfaces()
        self._graphics_devices()
        self._serials_and_consoles()
        self._channels()
        self._watchdog()
        self._memballoon()
        self._panics()
        self.add(*dom.qemu_args)
        return self.argv

    # -- machine-wide -----------------------------------------------------------

    def _smp(self) -> None:
        current, maximum = self.dom.vcpus, self.dom.max_vcpus
        if current == maximum:
            self.add("-smp", str(current))
            return
        # libvirt without <cpu><topology>: one socket per possible vCPU, so the
        # topology adds up to maxcpus and the offline ones can be plugged later
        self.add("-smp", f"{current},maxcpus={maximum},sockets={maximum},cores=1,threads=1")

    def _display(self) -> None:
        graphics = self.dom.graphics
        if not graphics:
            self.add("-display", "none")
            return
        if len(graphics) > 1:
            raise GuestConfigError("devices/graphics[2]", "only one graphics device is supported")
        vnc = graphics[0]
        port = vnc.port
        if port is None or port < _VNC_BASE_PORT:
            raise GuestConfigError(
                "devices/graphics[1]",
                f"VNC port must be assigned (>= {_VNC_BASE_PORT}) before building the command "
                f"line, got {port}",
            )
        listen = vnc.listen or "127.0.0.1"
        if ":" in listen and not listen.startswith("["):
            listen = f"[{listen}]"
        # with a password, VNC refuses every client until QMP set_password gives it one
        # (the daemon does that before the vCPUs start): never on the command line
        password = ",password=on" if vnc.passwd is not None else ""
        self.add("-vnc", f"{qemu_opt_escape(listen)}:{port - _VNC_BASE_PORT}{password}")

    def _actions(self) -> None:
        if self.dom.on_reboot == "destroy":
            # A guest reboot becomes a shutdown, which -no-shutdown turns
            # into a pause + SHUTDOWN event for the daemon to act on.
            self.add("-action", "reboot=shutdown")

    def _kernel(self) -> None:
        os_ = self.dom.os
        if os_.kernel:
            self.add("-kernel", os_.kernel)
        elif os_.initrd or os_.cmdline:
            raise GuestConfigError("os/kernel", "initrd/cmdline given without a kernel")
        if os_.initrd:
            self.add("-initrd", os_.initrd)
        if os_.cmdline:
            self.add("-append", os_.cmdline)

    def _boot(self) -> None:
        per_device = any(disk.boot_order is not None for disk in self.dom.disks)
        boot_devs = list(self.dom.os.boot_devs)
        if per_device:
            if boot_devs:
                raise GuestConfigError(
                    "os/boot", "per-device <boot order> and <os><boot dev> cannot be mixed"
                )
            self.add("-boot", "strict=on")
            return
        letters = []
        for position, dev in enumerate(boot_devs or ["hd"], start=1):
            letter = _BOOT_DEVS.get(dev)
            if letter is None:
                raise GuestConfigError(
                    f"os/boot[{position}]",
                    f"unsupported boot device {dev!r} (supported: {', '.join(_BOOT_DEVS)})",
                )
            letters.append(letter)
        self.add("-boot", f"order={''.join(letters)}")

    # -- disks ------------------------------------------------------------------

    def _disks(self) -> None:
        seen: set[str] = set()
        for position, disk in enumerate(self.dom.disks):
            target = disk.target_dev
            if not target:  # validate() rejects this first
                raise GuestConfigError(disk_path(position), "disk has no target dev")
            if target in seen:
                raise GuestConfigError(disk_path(position), f"duplicate target dev {target!r}")
            seen.add(target)
            try:
                storage, fmt = naming.disk_node_names(target)
            except ValueError as exc:
                raise GuestConfigError(disk_path(position), str(exc)) from None
            device_id = naming.disk_device_id(target)
            is_cdrom = disk.device == "cdrom"
            if disk.source is None:
                if not is_cdrom:
                    raise GuestConfigError(disk_path(position, "source"), "disk has no source")
                self.add("-device", self.strategy.cdrom_device(self.dom, disk, None, device_id))
                continue
            self._blockdev(position, disk, storage, fmt, readonly=disk.readonly or is_cdrom)
            make = self.strategy.cdrom_device if is_cdrom else self.strategy.disk_device
            self.add_device(make(self.dom, disk, fmt, device_id), ("disk", target))

    def _blockdev(
        self, position: int, disk: DiskView, storage: str, fmt: str, *, readonly: bool
    ) -> None:
        driver = STORAGE_DRIVERS.get(disk.type)
        if driver is None:
            raise GuestConfigError(
                f"devices/disk[{position + 1}]",
                f"unsupported disk type {disk.type!r} (supported: {', '.join(STORAGE_DRIVERS)})",
            )
        fmt_driver = disk.driver_type or "raw"
        if fmt_driver not in DISK_FORMATS:
            raise GuestConfigError(
                disk_path(position, "driver"),
                f"unsupported disk format {fmt_driver!r} (supported: "
                f"{', '.join(sorted(DISK_FORMATS))})",
            )
        assert disk.source is not None
        for node in blockdev_nodes(driver, disk.source, fmt_driver, storage, fmt,
                                   readonly=readonly):
            self.add("-blockdev", _json(node))

    # -- network ----------------------------------------------------------------

    def _interfaces(self) -> None:
        seen: set[str] = set()
        for position, iface in enumerate(self.dom.interfaces, start=1):
            where = f"devices/interface[{position}]"
            if not iface.mac:
                raise GuestConfigError(
                    f"{where}/mac", "no MAC address assigned (call assign_missing_ids)"
                )
            try:
                device_id, netdev_id = naming.nic_ids(iface.mac)
            except ValueError as exc:
                raise GuestConfigError(f"{where}/mac", str(exc)) from None
            if device_id in seen:
                raise GuestConfigError(f"{where}/mac", f"duplicate MAC address {iface.mac!r}")
            seen.add(device_id)
            self.add("-netdev", netdev_arg(iface, netdev_id, where))
            self.add_device(self.strategy.nic_device(iface, iface.mac, device_id, netdev_id),
                            ("interface", iface.mac))

    # -- graphics, char devices, watchdog ----------------------------------------

    def _graphics_devices(self) -> None:
        if self.dom.graphics:
            video = self.strategy.video_device()
            if video is not None:
                self.add_device(video, ("implicit", "video"))

    def _chardev(self, dev: CharDeviceView, chardev_id: str, where: str) -> None:
        backend = _CHARDEVS.get(dev.type)
        if backend is None:
            raise GuestConfigError(
                where,
                f"unsupported char device type {dev.type!r} (supported: {', '.join(_CHARDEVS)})",
            )
        self.add("-chardev", backend(dev, chardev_id, self.paths, where))

    def _serials_and_consoles(self) -> None:
        for index, serial in enumerate(self.dom.serials):
            chardev_id, device_id = naming.chardev_ids("serial", index)
            port = serial.target_port if serial.target_port is not None else index
            self._chardev(serial, chardev_id, f"devices/serial[{index + 1}]")
            self.add(*self.strategy.serial_args(chardev_id, device_id, port))
        # virtio-serial port numbers: channels take 1..N (see _channels); the
        # first virtio console takes 0 (it becomes hvc0), later ones follow N.
        virtio_nrs = iter(range(len(self.dom.channels) + 1, 1 << 16))
        next_virtio = 0
        for index, console in enumerate(self.dom.consoles):
            if console_is_serial0(self.dom, index):
                continue  # libvirt: the first console mirrors serial 0
            is_serial = console.target_type in (None, "serial")
            chardev_id, device_id = naming.chardev_ids("console", index)
            self._chardev(console, chardev_id, f"devices/console[{index + 1}]")
            if is_serial:
                port = console.target_port or 0
            else:
                port, next_virtio = next_virtio, next(virtio_nrs)
            self.add(*self.strategy.console_args(console, chardev_id, device_id, port))

    def _channels(self) -> None:
        for index, channel in enumerate(self.dom.channels):
            chardev_id, device_id = naming.chardev_ids("channel", index)
            self._chardev(channel, chardev_id, f"devices/channel[{index + 1}]")
            props = [
                "virtserialport",
                f"bus={naming.VIRTIO_SERIAL_ID}.0",
                f"nr={index + 1}",
                f"chardev={chardev_id}",
                f"id={device_id}",
            ]
            if channel.target_name:
                props.append(f"name={qemu_opt_escape(channel.target_name)}")
            self.add("-device", ",".join(props))

    def _watchdog(self) -> None:
        watchdog = self.dom.watchdog
        if watchdog is None:
            return
        action = watchdog.action or "reset"
        qemu_action = _WATCHDOG_ACTIONS.get(action)
        if qemu_action is None:
            raise GuestConfigError(
                "devices/watchdog",
                f"unsupported watchdog action {action!r} "
                f"(supported: {', '.join(sorted(_WATCHDOG_ACTIONS))})",
            )
        self.add_device(self.strategy.watchdog_device(watchdog.model), ("watchdog", ""))
        version = self.emulator_caps.version if self.emulator_caps else _ACTION_OPTION_SINCE
        if version >= _ACTION_OPTION_SINCE:
            self.add("-action", f"watchdog={qemu_action}")
        else:
            self.add("-watchdog-action", qemu_action)

    def _memballoon(self) -> None:
        # libvirt's order (qemuBuildMemballoonCommandLine follows the watchdog); the
        # stats polling period is not a device property: the daemon sets it over QMP
        # (qom-set guest-stats-polling-interval) before the vCPUs start, as libvirt does
        balloon = self.dom.memballoon
        device = None if balloon is None else self.strategy.balloon_device(balloon)
        if device is not None:
            self.add_device(device, ("memballoon", ""))

    def _panics(self) -> None:
        # near the end, as libvirt's qemuBuildPanicCommandLine; not on PCI (no slot: the
        # ISA pvpanic sits at its I/O port, pseries's is the firmware's, no -device)
        for panic in self.dom.panics:
            device = self.strategy.panic_device(self.dom, panic)
            if device is not None:
                self.add("-device", device)


# -- backends (dispatch tables, not if-chains) ---------------------------------------


def _netdev_user(iface: InterfaceView, netdev_id: str, where: str) -> str:
    return f"user,id={netdev_id}"


def _netdev_bridge(iface: InterfaceView, netdev_id: str, where: str) -> str:
    if not iface.source_bridge:
        raise GuestConfigError(f"{where}/source", "bridge interface without a bridge name")
    return f"bridge,id={netdev_id},br={qemu_opt_escape(iface.source_bridge)}"


def _netdev_tap(iface: InterfaceView, netdev_id: str, where: str) -> str:
    ifname = f",ifname={qemu_opt_escape(iface.target_dev)}" if iface.target_dev else ""
    return f"tap,id={netdev_id}{ifname},script=no,downscript=no"


_NETDEVS: Final[dict[str, Callable[[InterfaceView, str, str], str]]] = {
    "user": _netdev_user,
    "bridge": _netdev_bridge,
    "ethernet": _netdev_tap,
}


def netdev_arg(iface: InterfaceView, netdev_id: str, where: str) -> str:
    """The ``-netdev`` value of ``iface``: at start, and (as QMP ``netdev_add`` arguments,
    see :mod:`qemud.qemu.nicplug`) for a NIC plugged in later, so both get the same
    backend. ``where`` is the interface's path in the XML, for errors."""
    backend = _NETDEVS.get(iface.type)
    if backend is None:
        raise GuestConfigError(
            where,
            f"unsupported interface type {iface.type!r} (supported: {', '.join(_NETDEVS)})",
        )
    return backend(iface, netdev_id, where)


def _chardev_pty(dev: CharDeviceView, chardev_id: str, paths: GuestPaths, where: str) -> str:
    return f"pty,id={chardev_id}"


def _chardev_null(dev: CharDeviceView, chardev_id: str, paths: GuestPaths, where: str) -> str:
    return f"null,id={chardev_id}"


def _chardev_file(dev: CharDeviceView, chardev_id: str, paths: GuestPaths, where: str) -> str:
    if not dev.source_path:
        raise GuestConfigError(f"{where}/source", "file char device without a path")
    return f"file,id={chardev_id},path={qemu_opt_escape(dev.source_path)}"


def _chardev_unix(dev: CharDeviceView, chardev_id: str, paths: GuestPaths, where: str) -> str:
    path = _socket_path(dev.source_path or paths.socket_for(chardev_id), f"{where}/source")
    mode = dev.source_mode or "bind"
    if mode not in ("bind", "connect"):
        raise GuestConfigError(f"{where}/source", f"unsupported socket mode {mode!r}")
    server = "server=on,wait=off" if mode == "bind" else "server=off"
    return f"socket,id={chardev_id},path={qemu_opt_escape(path)},{server}"


_CHARDEVS: Final[dict[str, Callable[[CharDeviceView, str, GuestPaths, str], str]]] = {
    "pty": _chardev_pty,
    "file": _chardev_file,
    "unix": _chardev_unix,
    "null": _chardev_null,
}


def _firmware(builder: _Builder, dom: DomainView, machine: list[str]
              ) -> tuple[list[str], list[str]]:
    """The ``<loader>``/``<nvram>`` of ``dom``, as libvirt 9 gives them to QEMU: a pflash
    loader is a read-only ``-blockdev`` pair and the NVRAM a read-write one, named by the
    ``-machine`` properties ``pflash0``/``pflash1`` (the blockdevs are added before
    ``-machine``, which is returned with them); ``type='rom'`` is ``-bios PATH``. Secure
    Boot (``secure='yes'``) also gets ``smm=on`` and the flash locked to SMM: the second
    list, for after ``-cpu``. The firmware files must exist at start (QEMU says so)."""
    os_ = dom.os
    loader = os_.loader
    if not loader:
        if os_.firmware == "efi":
            raise GuestConfigError("os", "firmware='efi' has no <loader> yet (the daemon "
                                   "selects one at define or start)")
        if os_.nvram:
            raise GuestConfigError("os/nvram", "<nvram> without a <loader> (firmware='efi' "
                                   "fills it in at define)")
        return machine, []
    if os_.loader_type == "rom" or (os_.loader_type is None and not os_.nvram
                                    and os_.firmware != "efi"):
        # a bare <loader>PATH</loader>: QEMU's BIOS file, as libvirt documents it
        return [*machine, "-bios", loader], []
    props: list[str] = []
    readonly = os_.loader_readonly is True
    for index, path in enumerate((loader, os_.nvram)):
        if path is None:
            continue
        storage, fmt = f"pflash{index}-storage", f"pflash{index}-format"
        builder.add("-blockdev", _json({"driver": "file", "filename": path,
                                        "node-name": storage, "auto-read-only": True,
                                        "discard": "unmap"}))
        builder.add("-blockdev", _json({"node-name": fmt, "read-only": readonly and index == 0,
                                        "driver": "raw", "file": storage}))
        props.append(f"pflash{index}={fmt}")
    secure: list[str] = []
    machine_type = machine[1].split(",", 1)[0]
    if os_.loader_secure and not machine_has_smm(builder.strategy.name, [machine_type]):
        # libvirt's words (qemuValidateDomainDefBoot), then why
        raise GuestConfigError("os/loader", "Secure boot is supported with q35 machine "
                               f"types only (secure='yes' needs SMM; machine "
                               f"'{machine_type}' has none)")
    if os_.loader_secure:
        props.insert(0, "smm=on")
        secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return [machine[0], ",".join([machine[1], *props])], secure


def _socket_path(path: str | os.PathLike[str], where: str) -> str:
    text = os.fspath(path)
    if len(os.fsencode(text)) > _UNIX_PATH_MAX:
        raise GuestConfigError(where, f"unix socket path is longer than {_UNIX_PATH_MAX} bytes")
    return text


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def argv_to_text(argv: Sequence[str]) -> str:
    """One argument per line: the golden-file format, and readable in logs."""
    return "".join(f"{arg}\n" for arg in argv)


def blockdev_nodes(driver: str, source: str, fmt_driver: str, storage: str, fmt: str, *,
                   readonly: bool) -> list[dict[str, object]]:
    """The two block nodes of a disk's image, storage then format, as ``-blockdev`` at
    start and ``blockdev-add`` for a hot-plugged disk or a CD-ROM's new medium take
    them: a disk added later looks like one the guest started with (discards reach the
    image; a file QEMU may only read is opened read-only)."""
    return [{"driver": driver, "filename": source, "node-name": storage,
             "auto-read-only": True, "discard": "unmap", "read-only": readonly},
            {"node-name": fmt, "read-only": readonly, "driver": fmt_driver,
             "file": storage}]
