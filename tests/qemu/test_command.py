"""build_argv on hand-made definitions: every rule, one test each."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from qemud.qemu.arch import get_strategy
from qemud.qemu.capabilities import EmulatorCaps
from qemud.qemu.command import (
    ENV_PROGRAM,
    GuestPaths,
    argv_to_text,
    build_argv,
    qemu_opt_escape,
    taints,
)
from qemud.qemu.errors import AccelUnavailable, GuestConfigError, UnsupportedForArch
from tests.qemu.fake_argv import PATHS, argv, option
from tests.qemu.fakes import (
    EMULATORS,
    FakeChar,
    FakeDisk,
    FakeDomain,
    FakeGraphics,
    FakeInterface,
    FakeMemballoon,
    FakeOS,
    FakeWatchdog,
    fake_caps,
)


def test_minimal_x86_64() -> None:
    assert argv(FakeDomain()) == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "guest=guest,debug-threads=on",
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-chardev", "socket,id=charmonitor,path=/run/qemud/guest/monitor.sock,server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control",
        "-pidfile", "/run/qemud/guest/qemu.pid",
        "-machine", "pc,accel=tcg",
        "-cpu", "qemu64",
        "-m", "size=131072k",
        "-smp", "1",
        "-uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "-msg", "timestamp=on",
        "-display", "none",
        "-no-shutdown",
        "-boot", "order=c",
    ]  # fmt: skip


def test_guest_paths_layout() -> None:
    assert PATHS == GuestPaths(
        qmp_socket=Path("/run/qemud/guest/monitor.sock"),
        pidfile=Path("/run/qemud/guest/qemu.pid"),
        run_dir=Path("/run/qemud/guest"),
        log_file=Path("/var/log/qemud/guest.log"),
    )
    assert PATHS.socket_for("charchannel0") == Path("/run/qemud/guest/charchannel0.sock")


def test_build_does_not_modify_the_definition_and_is_deterministic() -> None:
    dom = FakeDomain(
        disks=[FakeDisk(), FakeDisk("sdb", device="cdrom", source=None)],
        interfaces=[FakeInterface()],
        serials=[FakeChar()],
        channels=[FakeChar(type="unix", target_type="virtio", target_name="a.b")],
    )
    before = copy.deepcopy(dom)
    first = argv(dom, pci=True)
    assert dom == before  # (the PCI slots too are computed, not written)
    assert argv(dom, pci=True) == first


@pytest.mark.parametrize(
    ("arch", "balloon"),
    [("x86_64", ["-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x5"]),
     ("aarch64", []),
     ("ppc64", ["-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x4"])],
)
def test_fill_defaults_changes_the_argv_by_the_default_balloon_only(
    arch: str, balloon: list[str]
) -> None:
    """The written defaults are what the argv builder assumed, except the balloon, which
    libvirt adds (x86_64, ppc64) as a device of the definition at define time."""
    dom = FakeDomain(
        os=FakeOS(arch=arch),
        disks=[FakeDisk(), FakeDisk("sdb", device="cdrom", source=None)],
        interfaces=[FakeInterface()],
    )
    expected = argv(dom, arch, pci=True)
    get_strategy(arch).fill_defaults(dom)
    # the balloon is the last PCI device: the others keep the slots they had
    assert argv(dom, arch, pci=True) == expected + balloon


def test_argv_text_format() -> None:
    assert argv_to_text(["a", "b c"]) == "a\nb c\n"


# -- accelerator, emulator, machine ----------------------------------------------------


def test_x86_64_default_machine_is_pc_and_a_cdrom_without_bus_is_on_its_ide() -> None:
    assert get_strategy("x86_64").table.default_machine == "pc"
    dom = FakeDomain(
        disks=[
            # no bus and a name that implies none: the machine's cdrom bus
            FakeDisk("xvda", device="cdrom", source="/iso/a.iso"),
            FakeDisk("hdd", device="cdrom", source=None),
        ]
    )
    args = argv(dom)
    assert option(args, "-machine") == ["pc,accel=tcg"]
    # i440FX's built-in PIIX IDE (ide.0/ide.1, two units each): no controller is added
    assert option(args, "-device") == [
        "ide-cd,bus=ide.0,unit=0,drive=drive-xvda-format,id=disk-xvda",
        "ide-cd,bus=ide.1,unit=1,id=disk-hdd",
    ]
    get_strategy("x86_64").fill_defaults(dom)
    assert (dom.os.arch, dom.os.machine) == ("x86_64", "pc")
    assert [d.target_bus for d in dom.disks] == ["ide", "ide"]
    assert argv(dom) == [*args, "-device", "virtio-balloon-pci,id=balloon0"]  # the default


def test_kvm_requires_a_usable_kvm() -> None:
    with pytest.raises(AccelUnavailable) as info:
        argv(FakeDomain(type="kvm"))
    assert info.value.reason == "test says no"
    assert str(info.value) == "type: accelerator 'kvm' is not usable: test says no"


def test_kvm_when_usable() -> None:
    args = argv(FakeDomain(type="kvm"), kvm=True)
    assert option(args, "-machine") == ["pc,accel=kvm"]
    assert option(args, "-cpu") == ["host"]


def test_kvm_cannot_run_foreign_arch() -> None:
    with pytest.raises(AccelUnavailable, match="x86_64 host cannot run aarch64 guests"):
        argv(FakeDomain(type="kvm", os=FakeOS(arch="aarch64")), "aarch64", kvm=True)


def test_unknown_domain_type() -> None:
    with pytest.raises(GuestConfigError, match="type: unsupported domain type 'xen'"):
        argv(FakeDomain(type="xen"))


def test_emulator_from_definition_or_caps() -> None:
    assert argv(FakeDomain(emulator="/opt/qemu/bin/qemu-system-x86_64"))[0] == (
        "/opt/qemu/bin/qemu-system-x86_64"
    )
    caps = fake_caps()
    caps_without = type(caps)(caps.host_arch, caps.host_uuid, {}, caps.kvm)
    with pytest.raises(GuestConfigError, match="no qemu-system-x86_64 found"):
        build_argv(FakeDomain(), get_strategy("x86_64"), caps_without, PATHS)


def test_machine_must_be_known_to_the_emulator() -> None:
    with pytest.raises(GuestConfigError, match="os/type: machine type 'pc-q35-1.0' is not"):
        argv(FakeDomain(os=FakeOS(machine="pc-q35-1.0")))
    # an emulator we did not probe cannot be checked, so it is trusted
    argv(FakeDomain(os=FakeOS(machine="pc-q35-1.0"), emulator="/opt/qemu"))


def test_validation_runs_first() -> None:
    with pytest.raises(UnsupportedForArch):
        argv(FakeDomain(disks=[FakeDisk("hda", "ide")], os=FakeOS(arch="ppc64")), "ppc64")


@pytest.mark.parametrize(
    ("dom", "match"),
    [
        (FakeDomain(name=""), "name: the domain has no name"),
        (FakeDomain(uuid=""), "uuid: the domain has no UUID"),
        (FakeDomain(vcpus=0), "vcpu: need at least one vCPU"),
        (FakeDomain(memory_kib=0), "memory: memory must be positive"),
    ],
)
def test_header_checks(dom: FakeDomain, match: str) -> None:
    with pytest.raises(GuestConfigError, match=match):
        argv(dom)


# -- escaping, memory, actions, kernel, boot --------------------------------------------


def test_commas_are_escaped_in_option_values() -> None:
    assert qemu_opt_escape("a,b,,c") == "a,,b,,,,c"
    paths = GuestPaths.under("/run/q,d", "/log", "x,y")
    args = build_argv(FakeDomain(name="x,y"), get_strategy("x86_64"), fake_caps(), paths)
    assert option(args, "-name") == ["guest=x,,y,debug-threads=on"]
    assert option(args, "-chardev")[0] == (
        "socket,id=charmonitor,path=/run/q,,d/x,,y/monitor.sock,server=on,wait=off"
    )
    assert option(args, "-pidfile") == ["/run/q,d/x,y/qemu.pid"]  # not a QemuOpts value


def test_memory_is_aligned_per_arch() -> None:
    args = argv(FakeDomain(memory_kib=100 * 1024, os=FakeOS(arch="ppc64")), "ppc64")
    assert option(args, "-m") == ["size=262144k"]


def test_on_reboot_destroy() -> None:
    assert option(argv(FakeDomain(on_reboot="destroy")), "-action") == ["reboot=shutdown"]
    assert option(argv(FakeDomain()), "-action") == []


def test_direct_kernel_boot() -> None:
    args = argv(FakeDomain(os=FakeOS(kernel="/k", initrd="/i", cmdline="console=ttyS0 quiet")))
    assert option(args, "-kernel") == ["/k"]
    assert option(args, "-initrd") == ["/i"]
    assert option(args, "-append") == ["console=ttyS0 quiet"]
    with pytest.raises(GuestConfigError, match="os/kernel: initrd/cmdline given without"):
        argv(FakeDomain(os=FakeOS(initrd="/i")))


def test_boot_order() -> None:
    assert option(argv(FakeDomain(os=FakeOS(boot_devs=["cdrom", "hd", "network"]))), "-boot") == [
        "order=dcn"
    ]
    with pytest.raises(GuestConfigError, match=r"os/boot\[2\]: unsupported boot device 'usb'"):
        argv(FakeDomain(os=FakeOS(boot_devs=["hd", "usb"])))
    args = argv(FakeDomain(disks=[FakeDisk(boot_order=1)]))
    assert option(args, "-boot") == ["strict=on"]
    assert "bootindex=1" in option(args, "-device")[0]
    with pytest.raises(GuestConfigError, match="cannot be mixed"):
        argv(FakeDomain(disks=[FakeDisk(boot_order=1)], os=FakeOS(boot_devs=["hd"])))


# -- disks -------------------------------------------------------------------------------


def test_disk_is_a_blockdev_pair_named_after_the_target() -> None:
    args = argv(FakeDomain(disks=[FakeDisk("vdb", driver_type="qcow2", source="/img/a.qcow2")]))
    storage, fmt = (json.loads(v) for v in option(args, "-blockdev"))
    assert storage == {
        "driver": "file",
        "filename": "/img/a.qcow2",
        "node-name": "drive-vdb-storage",
        "auto-read-only": True,
        "discard": "unmap",
        "read-only": False,
    }
    assert fmt == {
        "node-name": "drive-vdb-format",
        "read-only": False,
        "driver": "qcow2",
        "file": "drive-vdb-storage",
    }
    assert option(args, "-device") == ["virtio-blk-pci,drive=drive-vdb-format,id=disk-vdb"]


def test_readonly_block_device_and_raw_default() -> None:
    args = argv(FakeDomain(disks=[FakeDisk(type="block", source="/dev/sdz", readonly=True)]))
    storage, fmt = (json.loads(v) for v in option(args, "-blockdev"))
    assert (storage["driver"], storage["read-only"]) == ("host_device", True)
    assert (fmt["driver"], fmt["read-only"]) == ("raw", True)


def test_cdroms() -> None:
    args = argv(
        FakeDomain(
            os=FakeOS(machine="q35"),
            disks=[
                FakeDisk("sda", device="cdrom", target_bus="sata", source="/iso/a.iso"),
                FakeDisk("sdb", device="cdrom", target_bus="sata", source=None),
            ],
        )
    )
    blockdevs = [json.loads(v) for v in option(args, "-blockdev")]
    assert [b["node-name"] for b in blockdevs] == ["drive-sda-storage", "drive-sda-format"]
    assert all(b["read-only"] for b in blockdevs)  # media is read-only
    assert option(args, "-device") == [
        "ide-cd,bus=ide.0,drive=drive-sda-format,id=disk-sda",
        "ide-cd,bus=ide.1,id=disk-sdb",
    ]


@pytest.mark.parametrize(
    ("disk", "match"),
    [
        (FakeDisk(source=None), r"devices/disk\[1\]/source: disk has no source"),
        (FakeDisk(type="network"), r"devices/disk\[1\]: unsupported disk type 'network'"),
        (FakeDisk(driver_type="vmdk"), r"devices/disk\[1\]/driver: unsupported disk format"),
    ],
)
def test_disk_errors(disk: FakeDisk, match: str) -> None:
    with pytest.raises(GuestConfigError, match=match):
        argv(FakeDomain(disks=[disk]))


def test_duplicate_target_dev() -> None:
    with pytest.raises(GuestConfigError, match=r"disk\[2\]/target: duplicate target dev 'vda'"):
        argv(FakeDomain(disks=[FakeDisk(), FakeDisk()]))


# -- network ------------------------------------------------------------------------------


def test_nics() -> None:
    args = argv(
        FakeDomain(
            interfaces=[
                FakeInterface(mac="52:54:00:AA:00:01"),
                FakeInterface("bridge", "52:54:00:aa:00:02", "e1000", source_bridge="br,0"),
                FakeInterface("ethernet", "52:54:00:aa:00:03", "rtl8139", target_dev="tap7"),
                FakeInterface("ethernet", "52:54:00:aa:00:04"),
            ]
        )
    )
    assert option(args, "-netdev") == [
        "user,id=hostnet-525400aa0001",
        "bridge,id=hostnet-525400aa0002,br=br,,0",
        "tap,id=hostnet-525400aa0003,ifname=tap7,script=no,downscript=no",
        "tap,id=hostnet-525400aa0004,script=no,downscript=no",
    ]
    assert option(args, "-device") == [
        "virtio-net-pci,netdev=hostnet-525400aa0001,id=net-525400aa0001,mac=52:54:00:AA:00:01",
        "e1000,netdev=hostnet-525400aa0002,id=net-525400aa0002,mac=52:54:00:aa:00:02",
        "rtl8139,netdev=hostnet-525400aa0003,id=net-525400aa0003,mac=52:54:00:aa:00:03",
        "virtio-net-pci,netdev=hostnet-525400aa0004,id=net-525400aa0004,mac=52:54:00:aa:00:04",
    ]


@pytest.mark.parametrize(
    ("ifaces", "match"),
    [
        ([FakeInterface(mac=None)], r"interface\[1\]/mac: no MAC address assigned"),
        ([FakeInterface(mac="52:54:00")], r"interface\[1\]/mac: invalid MAC"),
        ([FakeInterface(), FakeInterface()], r"interface\[2\]/mac: duplicate MAC"),
        ([FakeInterface("bridge")], r"interface\[1\]/source: bridge interface without"),
        ([FakeInterface("vhostuser")], r"interface\[1\]: unsupported interface type"),
    ],
)
def test_nic_errors(ifaces: list[FakeInterface], match: str) -> None:
    with pytest.raises(GuestConfigError, match=match):
        argv(FakeDomain(interfaces=ifaces))


# -- graphics ------------------------------------------------------------------------------


def test_vnc() -> None:
    args = argv(FakeDomain(graphics=[FakeGraphics(port=5907)]))
    assert option(args, "-vnc") == ["127.0.0.1:7"]
    assert "-display" not in args
    assert option(args, "-device") == ["VGA,id=video0"]
    args = argv(FakeDomain(graphics=[FakeGraphics(port=5900, listen="::1")]))
    assert option(args, "-vnc") == ["[::1]:0"]
    # a password: VNC asks for one, set through QMP, never on the command line
    args = argv(FakeDomain(graphics=[FakeGraphics(port=5901, passwd="s3cret")]))
    assert option(args, "-vnc") == ["127.0.0.1:1,password=on"]
    assert not any("s3cret" in arg for arg in args)


@pytest.mark.parametrize(
    ("graphics", "match"),
    [
        ([FakeGraphics(port=None)], r"graphics\[1\]: VNC port must be assigned"),
        ([FakeGraphics(port=-1, autoport=True)], "VNC port must be assigned"),
        ([FakeGraphics(), FakeGraphics()], r"graphics\[2\]: only one graphics device"),
    ],
)
def test_vnc_errors(graphics: list[FakeGraphics], match: str) -> None:
    with pytest.raises(GuestConfigError, match=match):
        argv(FakeDomain(graphics=graphics))


# -- char devices -----------------------------------------------------------------------------


def test_chardev_backends() -> None:
    args = argv(
        FakeDomain(
            serials=[
                FakeChar("pty"),
                FakeChar("file", source_path="/log/s,1"),
                FakeChar("unix", source_mode="connect", source_path="/s.sock"),
                FakeChar("null"),
            ]
        )
    )
    assert option(args, "-chardev")[1:] == [
        "pty,id=charserial0",
        "file,id=charserial1,path=/log/s,,1",
        "socket,id=charserial2,path=/s.sock,server=off",
        "null,id=charserial3",
    ]
    assert option(args, "-device")[-1] == "isa-serial,chardev=charserial3,id=serial3,index=3"


def test_unix_chardev_defaults_to_the_run_dir() -> None:
    args = argv(FakeDomain(serials=[FakeChar("unix")]))
    assert option(args, "-chardev")[1] == (
        "socket,id=charserial0,path=/run/qemud/guest/charserial0.sock,server=on,wait=off"
    )


@pytest.mark.parametrize(
    ("char", "match"),
    [
        (FakeChar("file"), r"serial\[1\]/source: file char device without a path"),
        (FakeChar("tcp"), r"serial\[1\]: unsupported char device type 'tcp'"),
        (FakeChar("unix", source_path="/" + "x" * 120), "longer than 107 bytes"),
        (FakeChar("unix", source_mode="listen"), "unsupported socket mode"),
    ],
)
def test_chardev_errors(char: FakeChar, match: str) -> None:
    with pytest.raises(GuestConfigError, match=match):
        argv(FakeDomain(serials=[char]))


def test_first_console_mirrors_the_first_serial() -> None:
    args = argv(FakeDomain(serials=[FakeChar()], consoles=[FakeChar(target_type="serial")]))
    assert option(args, "-chardev")[1:] == ["pty,id=charserial0"]


def test_console_without_serial_is_a_serial_port() -> None:
    args = argv(FakeDomain(consoles=[FakeChar()]), "x86_64")
    assert option(args, "-chardev")[1:] == ["pty,id=charconsole0"]
    assert option(args, "-device") == ["isa-serial,chardev=charconsole0,id=console0,index=0"]
    ppc = argv(FakeDomain(os=FakeOS(arch="ppc64"), consoles=[FakeChar()]), "ppc64")
    assert option(ppc, "-device") == ["spapr-vty,chardev=charconsole0,id=console0,reg=0x30000000"]


def test_virtio_consoles_and_channels_share_the_virtio_serial_bus() -> None:
    args = argv(
        FakeDomain(
            consoles=[FakeChar(target_type="virtio"), FakeChar(target_type="virtio")],
            channels=[
                FakeChar("unix", target_type="virtio", target_name="org.qemu.guest_agent.0"),
                FakeChar("pty", target_type="virtio", target_name="a,b"),
            ],
        )
    )
    assert option(args, "-device") == [
        "virtio-serial-pci,id=virtio-serial0",
        "virtconsole,bus=virtio-serial0.0,nr=0,chardev=charconsole0,id=console0",
        "virtconsole,bus=virtio-serial0.0,nr=3,chardev=charconsole1,id=console1",
        "virtserialport,bus=virtio-serial0.0,nr=1,chardev=charchannel0,id=channel0,"
        "name=org.qemu.guest_agent.0",
        "virtserialport,bus=virtio-serial0.0,nr=2,chardev=charchannel1,id=channel1,name=a,,b",
    ]
    assert "socket,id=charchannel0,path=/run/qemud/guest/charchannel0.sock,server=on,wait=off" in (
        option(args, "-chardev")
    )


def test_no_virtio_serial_controller_without_users() -> None:
    assert "virtio-serial-pci,id=virtio-serial0" not in option(
        argv(FakeDomain(serials=[FakeChar()], consoles=[FakeChar()])), "-device"
    )


# -- watchdog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "qemu_action"),
    [(None, "reset"), ("poweroff", "poweroff"), ("dump", "pause"), ("inject-nmi", "inject-nmi")],
)
def test_watchdog(action: str | None, qemu_action: str) -> None:
    args = argv(FakeDomain(watchdog=FakeWatchdog("i6300esb", action)))
    assert option(args, "-device") == ["i6300esb,id=watchdog0"]
    assert option(args, "-action") == [f"watchdog={qemu_action}"]


# -- memballoon -------------------------------------------------------------------------


def test_memballoon_follows_the_watchdog_and_precedes_pass_through_arguments() -> None:
    dom = FakeDomain(watchdog=FakeWatchdog("ib700"), memballoon=FakeMemballoon(stats_period=5),
                     qemu_args=["-no-reboot"])
    args = argv(dom)
    assert option(args, "-device") == ["ib700,id=watchdog0", "virtio-balloon-pci,id=balloon0"]
    assert args[-3:] == ["-device", "virtio-balloon-pci,id=balloon0", "-no-reboot"]
    # the stats period is set over QMP after launch, never on the command line
    assert not any("guest-stats-polling-interval" in a for a in args)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "ppc64"])
def test_memballoon_none_or_absent_means_no_balloon(arch: str) -> None:
    for balloon in (None, FakeMemballoon("none")):
        args = argv(FakeDomain(os=FakeOS(arch=arch), memballoon=balloon), arch)
        assert not any("balloon" in a for a in args)
    args = argv(FakeDomain(os=FakeOS(arch=arch), memballoon=FakeMemballoon()), arch)
    assert option(args, "-device")[-1] == "virtio-balloon-pci,id=balloon0"


def test_watchdog_on_old_qemu_and_bad_action() -> None:
    caps = fake_caps()
    old = EmulatorCaps("x86_64", EMULATORS["x86_64"].path, (5, 2, 0), "5.2.0",
                       EMULATORS["x86_64"].machines)  # fmt: skip
    caps = type(caps)(caps.host_arch, caps.host_uuid, {"x86_64": old}, caps.kvm)
    dom = FakeDomain(watchdog=FakeWatchdog("ib700", "shutdown"))
    args = build_argv(dom, get_strategy("x86_64"), caps, PATHS)
    assert option(args, "-watchdog-action") == ["shutdown"]
    with pytest.raises(GuestConfigError, match="devices/watchdog: unsupported watchdog action"):
        argv(FakeDomain(watchdog=FakeWatchdog("ib700", "explode")))


# -- <vcpu current> -------------------------------------------------------------------


def test_current_vcpus_below_the_maximum_start_with_maxcpus() -> None:
    """libvirt: -smp current,maxcpus=max with a topology that adds up to max."""
    args = argv(FakeDomain(vcpus=1, maximum_vcpus=2))
    assert option(args, "-smp") == ["1,maxcpus=2,sockets=2,cores=1,threads=1"]
    assert option(argv(FakeDomain(vcpus=3, maximum_vcpus=3)), "-smp") == ["3"]


def test_current_vcpus_above_the_maximum_are_refused() -> None:
    with pytest.raises(GuestConfigError, match=r"maxvcpus must not be less than current vcpus"
                                               r" \(2 < 3\)"):
        argv(FakeDomain(vcpus=3, maximum_vcpus=2))


# -- <qemu:commandline> pass-through ----------------------------------------------------


def test_qemu_args_are_appended_last_verbatim() -> None:
    plain = argv(FakeDomain(watchdog=FakeWatchdog()))
    args = argv(FakeDomain(watchdog=FakeWatchdog(), qemu_args=["-device", "pvpanic,a=b c"]))
    assert args == [*plain, "-device", "pvpanic,a=b c"]
    assert taints(FakeDomain(qemu_args=["-S"])) == ["custom-argv"]
    assert taints(FakeDomain()) == []


def test_qemu_env_is_set_through_env_in_front_of_the_emulator() -> None:
    dom = FakeDomain(qemu_env=[("QEMUD_A", "x y"), ("B_", "")])
    args = argv(dom)
    assert args[:4] == [ENV_PROGRAM, "QEMUD_A=x y", "B_=", "/usr/bin/qemu-system-x86_64"]
    assert args[3:] == argv(FakeDomain())
    assert taints(dom) == ["custom-argv"]


def test_qemu_env_with_an_emulator_path_env_would_misread_is_refused() -> None:
    dom = FakeDomain(qemu_env=[("A", "1")], emulator="/opt/q=1/qemu-system-x86_64")
    with pytest.raises(GuestConfigError, match="contains '='"):
        argv(dom)


# -- run directories of long names --------------------------------------------------------


def test_run_dir_of_a_name_that_fits_is_the_name() -> None:
    paths = GuestPaths.under("/run/qemud", "/log", "n" * 40)
    assert paths.run_dir == Path("/run/qemud", "n" * 40)
    assert paths.log_file == Path("/log", "n" * 40 + ".log")


@pytest.mark.parametrize("name", ["n" * 80, "é" * 120, "x" * 243, ".", ".."])
def test_run_dir_of_a_long_or_special_name_is_short_and_stable(name: str) -> None:
    root = "/run/user/1000/some/deep/test/dir/qemud/qemu"
    paths = GuestPaths.under(root, "/log", name)
    assert paths.run_dir.parent == Path(root)
    assert paths.run_dir.name not in (".", "..")
    assert len(str(paths.socket_for("charchannel12")).encode()) <= 107
    assert len(str(paths.qmp_socket).encode()) <= 107
    assert paths == GuestPaths.under(root, "/log", name)  # a restarted daemon agrees
    other = GuestPaths.under(root, "/log", name[:-1] + "y")
    assert other.run_dir != paths.run_dir
    dom = FakeDomain(name=name, serials=[FakeChar("unix")])
    build_argv(dom, get_strategy("x86_64"), fake_caps(), paths)  # every socket fits
