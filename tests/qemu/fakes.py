"""Plain-dataclass stand-ins for the domain model (qemud.conf).

Unit tests of the strategies and the argv builder use these so they can
describe definitions the real parser would refuse (that is the point of the
driver's own checks) and stay independent of the conf layer's progress.
Golden tests use the real parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qemud.qemu.capabilities import Capabilities, EmulatorCaps, KvmStatus, MachineType


@dataclass
class FakeOS:
    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: list[str] = field(default_factory=list)
    firmware: str | None = None
    loader: str | None = None
    loader_type: str | None = None
    loader_readonly: bool | None = None
    loader_secure: bool | None = None
    nvram: str | None = None


@dataclass(frozen=True)
class FakePciAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: bool = False


class FakePciDevice:
    """What every PCI-capable fake has: an optional PCI address (see qemud.qemu.pci)."""

    address_type: str | None = None
    pci_address: FakePciAddress | None = None

    def assign_pci_slot(self, slot: int, bus: int = 0, function: int = 0,
                        multifunction: bool = False) -> None:
        self.address_type = "pci"
        self.pci_address = FakePciAddress(bus=bus, slot=slot, function=function,
                                          multifunction=multifunction)

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class FakeController(FakePciDevice):
    """A pcie-root-port (the real model's controllers: tests/qemu/test_pci.py)."""

    index: int | None = None
    model: str | None = "pcie-root-port"
    model_name: str | None = "pcie-root-port"
    chassis: int | None = None
    port: int | None = None
    hotplug: str | None = None

    def assign_index(self, value: int) -> None:
        self.index = value

    def set_target(self, chassis: int, port: int) -> None:
        self.chassis, self.port = chassis, port


@dataclass
class FakeDisk(FakePciDevice):
    target_dev: str | None = "vda"
    target_bus: str | None = None
    type: str = "file"
    device: str = "disk"
    driver_type: str | None = None
    source: str | None = "/images/disk.img"
    readonly: bool = False
    boot_order: int | None = None
    alias: str | None = None


@dataclass
class FakeInterface(FakePciDevice):
    type: str = "user"
    mac: str | None = "52:54:00:00:00:01"
    model: str | None = None
    source_bridge: str | None = None
    target_dev: str | None = None


@dataclass
class FakeGraphics:
    type: str = "vnc"
    port: int | None = 5900
    autoport: bool = False
    listen: str | None = None
    passwd: str | None = None


@dataclass
class FakeChar:
    type: str = "pty"
    source_path: str | None = None
    source_mode: str | None = None
    target_type: str | None = None
    target_port: int | None = None
    target_name: str | None = None


@dataclass
class FakeWatchdog(FakePciDevice):
    model: str = "i6300esb"
    action: str | None = None


@dataclass
class FakeMemballoon(FakePciDevice):
    model: str = "virtio"
    stats_period: int | None = None
    autodeflate: str | None = None
    free_page_reporting: str | None = None


@dataclass
class FakePanic:
    """Not a FakePciDevice: no panic device sits on PCI."""

    model: str | None = "isa"
    address_type: str | None = None
    iobase: int | None = None

    def describe(self) -> str:
        return f"panic '{self.model}'" if self.model else "panic"


@dataclass
class FakeDomain:
    type: str = "qemu"
    name: str = "guest"
    uuid: str = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
    memory_kib: int = 131072
    vcpus: int = 1
    os: FakeOS = field(default_factory=FakeOS)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    disks: list[FakeDisk] = field(default_factory=list)
    interfaces: list[FakeInterface] = field(default_factory=list)
    graphics: list[FakeGraphics] = field(default_factory=list)
    serials: list[FakeChar] = field(default_factory=list)
    consoles: list[FakeChar] = field(default_factory=list)
    channels: list[FakeChar] = field(default_factory=list)
    watchdog: FakeWatchdog | None = None
    memballoon: FakeMemballoon | None = None
    panics: list[FakePanic] = field(default_factory=list)
    pci_controllers: list[FakeController] = field(default_factory=list)
    maximum_vcpus: int | None = None  # <vcpu> when <vcpu current> is set; None: vcpus
    qemu_args: list[str] = field(default_factory=list)
    qemu_env: list[tuple[str, str]] = field(default_factory=list)

    @property
    def max_vcpus(self) -> int:
        return self.vcpus if self.maximum_vcpus is None else self.maximum_vcpus

    def add_pcie_root_port(self, index: int) -> FakeController:
        port = FakeController(index=index)
        self.pci_controllers.append(port)
        return port

    def set_default_memballoon(self, model: str = "virtio") -> FakeMemballoon:
        if self.memballoon is None:
            self.memballoon = FakeMemballoon(model)
        return self.memballoon


def _machines(*names: str, default: str | None = None) -> tuple[MachineType, ...]:
    return tuple(MachineType(n, f"{n} machine", is_default=n == default) for n in names)


EMULATORS = {
    "x86_64": EmulatorCaps(
        "x86_64",
        "/usr/bin/qemu-system-x86_64",
        (7, 2, 0),
        "7.2.0",
        _machines("pc", "pc-i440fx-7.2", "q35", "pc-q35-7.2", "isapc", default="pc-i440fx-7.2"),
    ),
    "aarch64": EmulatorCaps(
        "aarch64", "/usr/bin/qemu-system-aarch64", (7, 2, 0), "7.2.0", _machines("virt", "virt-7.2")
    ),
    "ppc64": EmulatorCaps(
        "ppc64",
        "/usr/bin/qemu-system-ppc64",
        (7, 2, 0),
        "7.2.0",
        _machines("pseries", "pseries-7.2", "powernv", default="pseries-7.2"),
    ),
}


def fake_caps(kvm: bool = False, host_arch: str = "x86_64") -> Capabilities:
    """Deterministic capabilities: all three emulators, KVM as requested."""
    reason = "test says yes" if kvm else "test says no"
    return Capabilities(
        host_arch=host_arch,
        host_uuid="00000000-0000-4000-8000-000000000001",
        emulators=dict(EMULATORS),
        kvm=KvmStatus(kvm, reason),
    )
