"""Per-arch strategies: registry, table facts, validate, fill_defaults, argv hooks."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from qemud.qemu.arch import (
    PPC64,
    X86_64,
    AArch64,
    ArchStrategy,
    get_strategy,
    load_tables,
    register,
    registered_archs,
)
from qemud.qemu.errors import (
    ArchTableError,
    GuestConfigError,
    QemuError,
    UnknownArchError,
    UnsupportedForArch,
)
from tests.qemu.fakes import (
    FakeChar,
    FakeDisk,
    FakeDomain,
    FakeGraphics,
    FakeInterface,
    FakeMemballoon,
    FakeOS,
    FakeWatchdog,
)

ARCHS = ("aarch64", "ppc64", "x86_64")


def dom_for(arch: str, **kwargs: object) -> FakeDomain:
    machine = kwargs.pop("machine", None)
    return FakeDomain(os=FakeOS(arch=arch, machine=machine), **kwargs)  # type: ignore[arg-type]


def test_registry() -> None:
    assert registered_archs() == ARCHS
    assert isinstance(get_strategy("x86_64"), X86_64)
    assert isinstance(get_strategy("aarch64"), AArch64)
    assert isinstance(get_strategy("ppc64"), PPC64)
    assert get_strategy("x86_64") is get_strategy("x86_64")


def test_unknown_arch_is_a_clear_error() -> None:
    with pytest.raises(UnknownArchError) as info:
        get_strategy("mips")
    assert info.value.arch == "mips"
    assert info.value.known == ARCHS
    assert str(info.value) == (
        "unsupported guest architecture 'mips' (supported: aarch64, ppc64, x86_64)"
    )
    assert isinstance(info.value, QemuError)


def test_a_strategy_without_table_entry_cannot_register() -> None:
    class RiscV64(ArchStrategy):
        name = "riscv64"

    with pytest.raises(ArchTableError, match=r"no \[riscv64\] table"):
        register(RiscV64)
    assert "riscv64" not in registered_archs()


def test_adding_an_arch_is_a_table_entry_and_a_class() -> None:
    text = (Path(__file__).parents[2] / "qemud/qemu/arch/devices.toml").read_text()
    text += """
[riscv64]
binary = "qemu-system-riscv64"
wordsize = 64
kvm_host_archs = ["riscv64"]
default_machine = "virt"
tcg_cpu = "rv64"
kvm_cpu = "host"
memory_align_kib = 1024
default_disk_bus = "virtio"
default_nic_model = "virtio"
nic_models = { virtio = "virtio-net-pci" }
serial_model = "ns16550a"
max_serials = 1
acpi = false
powerdown = false
graphics = []
watchdog_models = {}
disk_buses = ["virtio"]
cdrom_bus = "virtio"

[riscv64.devices]
virtio_blk = "virtio-blk-pci"
virtio_scsi = "virtio-scsi-pci"
virtio_serial = "virtio-serial-pci"
virtio_balloon = "virtio-balloon-pci"
usb_controller = "qemu-xhci"
sata_controller = "ich9-ahci"
"""

    class RiscV64(ArchStrategy):
        name = "riscv64"

        def serial_args(self, chardev_id: str, device_id: str, port: int) -> list[str]:
            return ["-serial", f"chardev:{chardev_id}"]

    strategy = RiscV64(load_tables(text)["riscv64"])
    dom = dom_for("riscv64", disks=[FakeDisk()])
    strategy.validate(dom)
    assert strategy.machine_args(dom, "tcg") == ["-machine", "virt,accel=tcg"]


def test_strategy_refuses_another_archs_table() -> None:
    with pytest.raises(ValueError):
        X86_64(load_tables()["ppc64"])


# -- the device table ------------------------------------------------------------------


def test_table_facts() -> None:
    x86, arm, ppc = (get_strategy(a).table for a in ("x86_64", "aarch64", "ppc64"))
    assert (x86.default_machine, arm.default_machine, ppc.default_machine) == (
        "pc",
        "virt",
        "pseries",
    )
    assert {x86.binary, arm.binary, ppc.binary} == {
        "qemu-system-x86_64",
        "qemu-system-aarch64",
        "qemu-system-ppc64",
    }
    assert x86.wordsize == arm.wordsize == ppc.wordsize == 64
    assert x86.default_disk_bus == arm.default_disk_bus == ppc.default_disk_bus == "virtio"
    assert set(x86.profile("pc").disk_buses) == {"ide", "sata", "scsi", "usb", "virtio"}
    assert "ide" not in x86.profile("q35").disk_buses
    assert set(arm.profile("virt").disk_buses) == {"scsi", "usb", "virtio"}
    assert set(ppc.profile("pseries").disk_buses) == {"scsi", "usb", "virtio"}
    assert x86.profile("q35").cdrom_bus == "sata"
    assert x86.profile("pc-i440fx-7.2").cdrom_bus == "ide"
    assert arm.profile("virt").cdrom_bus == ppc.profile("pseries-7.2").cdrom_bus == "scsi"
    assert set(x86.nic_models) == {"virtio", "e1000", "rtl8139"}
    assert set(arm.nic_models) == set(ppc.nic_models) == {"virtio"}
    assert (x86.serial_model, arm.serial_model, ppc.serial_model) == (
        "isa-serial",
        "pl011",
        "spapr-vty",
    )
    assert set(x86.watchdog_models) == {"i6300esb", "ib700"}
    assert not arm.watchdog_models and not ppc.watchdog_models
    assert x86.acpi and not ppc.acpi and x86.powerdown and ppc.powerdown
    assert (x86.tcg_cpu, arm.tcg_cpu, ppc.tcg_cpu) == ("qemu64", "cortex-a57", "power9")
    assert "vnc" in x86.graphics


@pytest.mark.parametrize(
    ("snippet", "match"),
    [
        ("[x]\nbinary = 1\n", "missing keys"),
        ("x = 1\n", "expected a table"),
        ("[x]\nbogus = 1\n", "unknown keys"),
        ("this is not toml", "devices.toml"),
    ],
)
def test_malformed_tables_fail_loudly(snippet: str, match: str) -> None:
    with pytest.raises(ArchTableError, match=match):
        load_tables(snippet)


def _table_text(**replace: str) -> str:
    text = (Path(__file__).parents[2] / "qemud/qemu/arch/devices.toml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("wordsize = 64", 'wordsize = "64"', "wordsize: expected an integer"),
        ("acpi = true", "acpi = 1", "acpi: expected a boolean"),
        ('default_disk_bus = "virtio"', 'default_disk_bus = "ide"', "default_disk_bus"),
        ('default_nic_model = "virtio"', 'default_nic_model = "ne2k"', "default_nic_model"),
        ('virtio_blk = "virtio-blk-pci"', 'virtio_blk = ""', "non-empty string"),
        ('match = ["q35", "pc-q35-*"]', 'match = ["q35"]\nbogus = 1', "unknown keys"),
        ("memory_align_kib = 1024", "memory_align_kib = 0", "out of range"),
        ('graphics = ["vnc"]', 'graphics = "vnc"', "list of strings"),
    ],
)
def test_table_value_checks(old: str, new: str, match: str) -> None:
    with pytest.raises(ArchTableError, match=match):
        load_tables(_table_text(**{old: new}))


# -- validate --------------------------------------------------------------------------


def test_ide_on_ppc64_names_element_and_alternatives() -> None:
    dom = dom_for("ppc64", disks=[FakeDisk(target_dev="hda", target_bus="ide")])
    with pytest.raises(UnsupportedForArch) as info:
        get_strategy("ppc64").validate(dom)
    assert str(info.value) == (
        "devices/disk[1]/target: bus 'ide' is not supported on ppc64 (supported: scsi, usb, virtio)"
    )
    assert info.value.path == "devices/disk[1]/target"
    assert info.value.supported == ("scsi", "usb", "virtio")
    assert isinstance(info.value, GuestConfigError)


def test_ide_on_q35_names_the_machine() -> None:
    dom = dom_for(
        "x86_64",
        machine="q35",
        disks=[FakeDisk(), FakeDisk(target_dev="hdb", target_bus="ide")],
    )
    with pytest.raises(UnsupportedForArch, match=r"disk\[2\].*x86_64 machine 'q35'"):
        get_strategy("x86_64").validate(dom)
    get_strategy("x86_64").validate(dom_for("x86_64", machine="pc", disks=dom.disks))


@pytest.mark.parametrize("arch", ARCHS)
def test_minimal_domain_is_valid_everywhere(arch: str) -> None:
    get_strategy(arch).validate(dom_for(arch))
    get_strategy(arch).validate(FakeDomain(os=FakeOS(arch=None)))


INVALID = [
    ("x86_64", {"os": FakeOS(arch="aarch64")}, GuestConfigError, "os/type: arch 'aarch64'"),
    ("x86_64", {"os": FakeOS(type="xen")}, UnsupportedForArch, "OS type 'xen'"),
    (
        "x86_64",
        {"machine": "q35", "disks": [FakeDisk(device="cdrom", target_bus="virtio")]},
        UnsupportedForArch,
        r"disk\[1\]/target: cdrom bus 'virtio' .* machine 'q35' \(supported: sata, scsi\)",
    ),
    (
        "x86_64",
        {"disks": [FakeDisk(device="cdrom", target_bus="virtio")]},
        UnsupportedForArch,
        r"disk\[1\]/target: cdrom bus 'virtio' .* machine 'pc' \(supported: ide, sata, scsi\)",
    ),
    ("x86_64", {"disks": [FakeDisk(device="floppy")]}, GuestConfigError, "disk device 'floppy'"),
    ("x86_64", {"disks": [FakeDisk(target_dev=None)]}, GuestConfigError, "no target dev"),
    ("x86_64", {"disks": [FakeDisk(target_dev="vd1")]}, GuestConfigError, "invalid target"),
    (
        "x86_64",
        {"disks": [FakeDisk(target_dev="sda", target_bus="sata", readonly=True)]},
        GuestConfigError,
        "read-only disks are not supported on bus 'sata'",
    ),
    (
        "x86_64",
        {"machine": "pc", "disks": [FakeDisk(target_dev="hde")]},
        GuestConfigError,
        "'hde' is unit 4, but bus 'ide' has only 4 units",
    ),
    (
        "x86_64",
        {
            "disks": [
                FakeDisk(target_dev="sda", target_bus="sata"),
                FakeDisk(target_dev="vda", target_bus="sata"),
            ]
        },
        GuestConfigError,
        r"disk\[2\]/target: target dev 'vda' and 'sda' both map to sata unit 0",
    ),
    (
        "aarch64",
        {"interfaces": [FakeInterface(model="e1000")]},
        UnsupportedForArch,
        r"interface\[1\]/model: NIC model 'e1000' is not supported on aarch64 "
        r"\(supported: virtio\)",
    ),
    (
        "aarch64",
        {"serials": [FakeChar(), FakeChar()]},
        GuestConfigError,
        r"serial\[2\]/target: serial port 1 is out of range: aarch64 has 1 serial port",
    ),
    (
        "x86_64",
        {"serials": [FakeChar(target_port=1), FakeChar(target_port=1)]},
        GuestConfigError,
        "duplicate serial port 1",
    ),
    (
        "aarch64",
        {"watchdog": FakeWatchdog("i6300esb")},
        UnsupportedForArch,
        r"devices/watchdog: watchdog model 'i6300esb' is not supported on aarch64 "
        r"\(supported: none\)",
    ),
    (
        "x86_64",
        {"memballoon": FakeMemballoon("xen")},
        UnsupportedForArch,
        r"devices/memballoon: memballoon model 'xen' is not supported on x86_64",
    ),
    (
        "x86_64",
        {"graphics": [FakeGraphics(type="spice")]},
        UnsupportedForArch,
        "graphics type 'spice'",
    ),
    (
        "x86_64",
        {"consoles": [FakeChar(target_type="sclp")]},
        UnsupportedForArch,
        "console target type 'sclp'",
    ),
    (
        "x86_64",
        {"consoles": [FakeChar(target_type="virtio"), FakeChar(target_type="serial")]},
        GuestConfigError,
        r"console\[2\]/target: only the first console can be a serial console",
    ),
    (
        "x86_64",
        {"channels": [FakeChar(type="unix", target_type="guestfwd")]},
        UnsupportedForArch,
        r"channel\[1\]/target: channel target type 'guestfwd'",
    ),
]


@pytest.mark.parametrize(("arch", "kwargs", "error", "match"), INVALID)
def test_validate_rejects(
    arch: str, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    kwargs = dict(kwargs)
    if "os" not in kwargs:
        kwargs["os"] = FakeOS(arch=arch, machine=kwargs.pop("machine", None))  # type: ignore[arg-type]
    dom = FakeDomain(**kwargs)  # type: ignore[arg-type]
    before = copy.deepcopy(dom)
    with pytest.raises(error, match=match):
        get_strategy(arch).validate(dom)
    assert dom == before


# -- defaults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "given_machine", "machine", "cdrom_bus"),
    [
        ("x86_64", None, "pc", "ide"),
        ("x86_64", "q35", "q35", "sata"),
        ("aarch64", None, "virt", "scsi"),
        ("ppc64", None, "pseries", "scsi"),
    ],
)
def test_fill_defaults(arch: str, given_machine: str | None, machine: str, cdrom_bus: str) -> None:
    dom = FakeDomain(
        os=FakeOS(machine=given_machine),
        disks=[
            FakeDisk(target_dev="vda"),
            FakeDisk(target_dev="sdb"),
            FakeDisk(target_dev="hdc", device="cdrom", source=None),
            FakeDisk(target_dev="xvdd"),
            FakeDisk(target_dev="vde", target_bus="usb"),
        ],
        interfaces=[FakeInterface(), FakeInterface(mac="52:54:00:00:00:02", model="virtio")],
    )
    strategy = get_strategy(arch)
    strategy.fill_defaults(dom)
    assert (dom.os.arch, dom.os.machine) == (arch, machine)
    assert [d.target_bus for d in dom.disks] == ["virtio", "scsi", cdrom_bus, "virtio", "usb"]
    assert [i.model for i in dom.interfaces] == ["virtio", "virtio"]
    strategy.validate(dom)
    again = copy.deepcopy(dom)
    strategy.fill_defaults(again)
    assert again == dom


def test_fill_defaults_keeps_explicit_values_and_machine_decides_cdrom_bus() -> None:
    dom = FakeDomain(
        os=FakeOS(arch="x86_64", machine="pc"),
        disks=[
            FakeDisk(target_dev="hdc", device="cdrom"),
            FakeDisk(target_dev="sdd", device="cdrom"),
        ],
        interfaces=[FakeInterface(model="e1000")],
    )
    get_strategy("x86_64").fill_defaults(dom)
    assert dom.os.machine == "pc"
    assert [d.target_bus for d in dom.disks] == ["ide", "scsi"]
    assert dom.interfaces[0].model == "e1000"


@pytest.mark.parametrize(
    ("arch", "machine", "balloon"),
    [
        ("x86_64", None, True),
        ("x86_64", "q35", True),
        ("x86_64", "pc-i440fx-7.2", True),
        ("x86_64", "isapc", False),
        ("x86_64", "microvm", False),
        ("aarch64", None, False),
        ("ppc64", None, True),
        ("ppc64", "powernv", True),
    ],
)
def test_fill_defaults_adds_a_balloon_where_libvirt_does(
    arch: str, machine: str | None, balloon: bool
) -> None:
    """libvirt's qemuDomainDefAddDefaultDevices: x86 (not isapc/microvm), ppc64; no arm."""
    dom = dom_for(arch, machine=machine)
    get_strategy(arch).fill_defaults(dom)
    assert dom.memballoon == (FakeMemballoon("virtio") if balloon else None)


def test_fill_defaults_keeps_the_balloon_written() -> None:
    for model in ("none", "virtio"):
        dom = dom_for("x86_64", memballoon=FakeMemballoon(model, stats_period=3))
        get_strategy("x86_64").fill_defaults(dom)
        assert dom.memballoon == FakeMemballoon(model, stats_period=3)


def test_balloon_device() -> None:
    for arch in ARCHS:
        strategy = get_strategy(arch)
        assert strategy.table.devices.virtio_balloon == "virtio-balloon-pci"
        assert strategy.balloon_device(FakeMemballoon()) == "virtio-balloon-pci,id=balloon0"
        assert strategy.balloon_device(FakeMemballoon("none")) is None
    switches = FakeMemballoon(autodeflate="on", free_page_reporting="off", stats_period=10)
    assert get_strategy("x86_64").balloon_device(switches) == (
        "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=off"
    )


# -- argv hooks --------------------------------------------------------------------------


def test_machine_and_cpu_args() -> None:
    ppc = get_strategy("ppc64")
    dom = dom_for("ppc64")
    assert ppc.machine_args(dom, "tcg") == [
        "-machine",
        "pseries,accel=tcg,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off",
    ]
    assert ppc.machine_args(dom, "kvm") == ["-machine", "pseries,accel=kvm"]
    assert ppc.cpu_args(dom, "tcg") == ["-cpu", "power9"]
    assert ppc.cpu_args(dom, "kvm") == ["-cpu", "host"]
    x86 = get_strategy("x86_64")
    assert x86.machine_args(dom_for("x86_64", machine="pc-i440fx-7.2"), "tcg") == [
        "-machine",
        "pc-i440fx-7.2,accel=tcg",
    ]


def test_serial_wiring_differs_per_arch() -> None:
    assert get_strategy("x86_64").serial_args("charserial1", "serial1", 1) == [
        "-device",
        "isa-serial,chardev=charserial1,id=serial1,index=1",
    ]
    assert get_strategy("aarch64").serial_args("charserial0", "serial0", 0) == [
        "-serial",
        "chardev:charserial0",
    ]
    assert get_strategy("ppc64").serial_args("charserial1", "serial1", 1) == [
        "-device",
        "spapr-vty,chardev=charserial1,id=serial1,reg=0x30001000",
    ]


def test_fill_defaults_keeps_the_memory_size() -> None:
    """libvirt keeps the user's KiB in the definition; only the running guest's is aligned."""
    dom = FakeDomain(memory_kib=300 * 1024)
    get_strategy("ppc64").fill_defaults(dom)
    assert dom.memory_kib == 300 * 1024


def test_memory_alignment() -> None:
    assert get_strategy("ppc64").memory_kib(FakeDomain(memory_kib=300 * 1024)) == 512 * 1024
    assert get_strategy("ppc64").memory_kib(FakeDomain(memory_kib=256 * 1024)) == 256 * 1024
    assert get_strategy("x86_64").memory_kib(FakeDomain(memory_kib=1000)) == 1024


def test_disk_placement_per_bus() -> None:
    x86 = get_strategy("x86_64")
    pc = dom_for("x86_64", machine="pc")
    q35 = dom_for("x86_64", machine="q35")
    disk = FakeDisk
    assert x86.disk_device(pc, disk("hdd", "ide"), "n", "d") == (
        "ide-hd,bus=ide.1,unit=1,drive=n,id=d"
    )
    assert x86.disk_device(q35, disk("sdc", "sata"), "n", "d") == "ide-hd,bus=ide.2,drive=n,id=d"
    assert x86.disk_device(pc, disk("sdc", "sata"), "n", "d") == "ide-hd,bus=sata0.2,drive=n,id=d"
    assert x86.disk_device(q35, disk("sdb", "scsi"), "n", "d") == (
        "scsi-hd,bus=scsi0.0,channel=0,scsi-id=1,lun=0,drive=n,id=d"
    )
    assert x86.disk_device(q35, disk("sda", "usb"), "n", "d") == (
        "usb-storage,bus=usb.0,drive=n,id=d"
    )
    assert x86.disk_device(q35, FakeDisk("vdb", boot_order=2), "n", "d") == (
        "virtio-blk-pci,drive=n,id=d,bootindex=2"
    )
    assert x86.cdrom_device(q35, disk("hda", device="cdrom"), None, "d") == (
        "ide-cd,bus=ide.0,id=d"
    )
    assert get_strategy("ppc64").cdrom_device(
        dom_for("ppc64"), disk("sdb", device="cdrom"), "n", "d"
    ) == ("scsi-cd,bus=scsi0.0,channel=0,scsi-id=1,lun=0,drive=n,id=d")


def test_controllers_only_for_buses_in_use() -> None:
    x86 = get_strategy("x86_64")
    q35 = dom_for("x86_64", machine="q35", disks=[FakeDisk("sda", "sata"), FakeDisk("sdb", "scsi")])
    assert x86.controller_args(q35) == ["-device", "virtio-scsi-pci,id=scsi0"]
    pc = dom_for("x86_64", machine="pc", disks=[FakeDisk("sda", "sata"), FakeDisk("sdb", "usb")])
    assert x86.controller_args(pc) == [
        "-device",
        "ich9-ahci,id=sata0",
        "-device",
        "qemu-xhci,id=usb",
    ]
    assert x86.controller_args(dom_for("x86_64")) == []


def test_other_hooks() -> None:
    x86 = get_strategy("x86_64")
    assert x86.nic_device(FakeInterface(model="e1000"), "52:54:00:00:00:01", "n", "h") == (
        "e1000,netdev=h,id=n,mac=52:54:00:00:00:01"
    )
    assert x86.video_device() == "VGA,id=video0"
    assert get_strategy("aarch64").video_device() == "virtio-gpu-pci,id=video0"
    assert x86.watchdog_device("ib700") == "ib700,id=watchdog0"
    assert x86.virtio_serial_controller() == "virtio-serial-pci,id=virtio-serial0"
    assert x86.console_args(FakeChar(target_type="virtio"), "c", "d", 0) == [
        "-device",
        "virtconsole,bus=virtio-serial0.0,nr=0,chardev=c,id=d",
    ]
    assert get_strategy("ppc64").console_args(FakeChar(target_type="serial"), "c", "d", 0) == [
        "-device",
        "spapr-vty,chardev=c,id=d,reg=0x30000000",
    ]
    assert x86.kvm_possible_on("x86_64") and not x86.kvm_possible_on("aarch64")
    assert get_strategy("ppc64").kvm_possible_on("ppc64le")
    assert repr(x86) == "<X86_64 x86_64>"


def test_no_arch_if_chains_in_the_driver() -> None:
    """Arch differences go through strategies and the table, never `if arch == ...`."""
    root = Path(__file__).parents[2] / "qemud" / "qemu"
    pattern = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["'](x86_64|aarch64|ppc64|i686|s390x)["']""")
    offenders = [
        f"{path.relative_to(root)}:{number}: {text.strip()}"
        for path in root.rglob("*.py")
        for number, text in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(text)
    ]
    assert offenders == []
