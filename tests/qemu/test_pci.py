"""PCI slots (qemud.qemu.pci): what define writes into a definition, what the argv
builder makes of it, and the addresses refused, through the real domain model."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemud.conf import DomainDef, parse_domain_xml
from qemud.qemu.arch import get_strategy
from qemud.qemu.command import GuestPaths, build_argv
from qemud.qemu.errors import GuestConfigError
from qemud.qemu.pci import Slot, assign_addresses, free_slot, plan
from tests.qemu.fakes import fake_caps

PATHS = GuestPaths.under("/run/qemud", "/var/log/qemud", "guest")
DISK = "<disk type='file' device='disk'><source file='/i/{0}.img'/><target dev='{0}'/>{1}</disk>"
NIC = "<interface type='user'><mac address='52:54:00:00:00:0{0}'/>{1}</interface>"


def address(slot: int, bus: int = 0, function: int = 0) -> str:
    return (f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='{slot:#04x}' "
            f"function='{function:#x}'/>")


def domain(devices: str, machine: str = "pc", arch: str = "x86_64") -> DomainDef:
    return parse_domain_xml(f"""<domain type='qemu'><name>guest</name>
      <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid><memory unit='MiB'>128</memory>
      <os><type arch='{arch}' machine='{machine}'>hvm</type></os>
      <devices>{devices}</devices></domain>""")


def defined(devices: str, machine: str = "pc", arch: str = "x86_64") -> DomainDef:
    """As define leaves it: the arch defaults (the balloon, the addresses) filled in."""
    dom = domain(devices, machine, arch)
    get_strategy(arch).fill_defaults(dom)
    return dom


def slots(dom: DomainDef) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for dev in [*dom.interfaces, *dom.disks, dom.memballoon, dom.watchdog]:
        if dev is not None:
            found[dev.describe()] = None if dev.pci_address is None else dev.pci_address.slot
    return found


def devices_of(dom: DomainDef, arch: str = "x86_64") -> list[str]:
    argv = build_argv(dom, get_strategy(arch), fake_caps(), PATHS)
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]


def test_define_gives_each_pci_device_libvirts_slot_nics_first() -> None:
    """i440FX: slot 1 is PIIX3's, slot 2 the video's (kept even with no video), so the
    first NIC is 00:03.0 as under libvirt; then the virtio disks, then the balloon."""
    dom = defined(DISK.format("vda", "") + DISK.format("vdb", "") + NIC.format(1, "")
                  + "<disk type='file' device='cdrom'><target dev='hdc'/></disk>")
    assert slots(dom) == {"interface '52:54:00:00:00:01'": 3, "disk 'vda'": 4,
                          "disk 'vdb'": 5, "disk 'hdc'": None, "memballoon 'virtio'": 6}
    assert ("<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>"
            in dom.interfaces[0].to_xml())
    assert "<address" not in dom.disks[2].to_xml()  # an IDE cdrom is not a PCI device


#: a NIC, a disk and the balloon, each behind a root port of its own (declared or added)
THREE_PORTS = {
    "controller 'pci' model 'pcie-root-port' index 1": "0000:00:02.0",
    "controller 'pci' model 'pcie-root-port' index 2": "0000:00:02.1",
    "controller 'pci' model 'pcie-root-port' index 3": "0000:00:02.2",
    "interface '52:54:00:00:00:01'": "0000:01:00.0", "disk 'vda'": "0000:02:00.0",
    "memballoon 'virtio'": "0000:03:00.0"}


@pytest.mark.parametrize(("machine", "arch"), [("q35", "x86_64"), ("virt", "aarch64")])
def test_pci_express_machines_put_each_device_behind_a_root_port_of_its_own(
        machine: str, arch: str) -> None:
    """As libvirt: a pcie-root-port is added for each PCIe device, packed from slot 2
    (slot 1 is the video's), so each can be unplugged while the guest runs."""
    dom = defined(NIC.format(1, "") + DISK.format("vda", "")
                  + "<memballoon model='virtio'/>", machine, arch)
    assert places(dom) == THREE_PORTS
    assert [(p.chassis, p.port) for p in dom.pci_controllers] == [
        (1, 0x10), (2, 0x11), (3, 0x12)]
    # defined again, nothing moves and nothing is added
    again = dom.copy()
    get_strategy(arch).fill_defaults(again)
    assert again.to_xml() == dom.to_xml()


def test_pseries_keeps_slot_1_for_the_video() -> None:
    dom = defined(NIC.format(1, ""), "pseries", "ppc64")
    assert slots(dom)["interface '52:54:00:00:00:01'"] == 2


def test_a_pinned_address_is_kept_and_the_others_fill_around_it() -> None:
    dom = defined(NIC.format(1, address(3)) + DISK.format("vda", address(9))
                  + NIC.format(2, ""))
    assert slots(dom) == {"interface '52:54:00:00:00:01'": 3,
                          "interface '52:54:00:00:00:02'": 4, "disk 'vda'": 9,
                          "memballoon 'virtio'": 5}
    assert devices_of(dom)[:2] == [
        "virtio-blk-pci,drive=drive-vda-format,id=disk-vda,bus=pci.0,addr=0x9",
        "virtio-net-pci,netdev=hostnet-525400000001,id=net-525400000001,"
        "mac=52:54:00:00:00:01,bus=pci.0,addr=0x3"]


def test_an_address_that_only_asks_for_one_gets_one() -> None:
    dom = defined(NIC.format(1, "<address type='pci'/>"))
    assert slots(dom)["interface '52:54:00:00:00:01'"] == 3


def test_the_devices_qemud_adds_have_fixed_slots_never_handed_out() -> None:
    """virtio-serial, SCSI, USB, SATA and video: a channel added later never finds its
    slot taken, and never moves a device."""
    channel = "<channel type='pty'><target type='virtio' name='a.b'/></channel>"
    graphics = "<graphics type='vnc' port='5901'/>"
    dom = defined(NIC.format(1, "") + channel + graphics
                  + DISK.format("sda", "").replace("dev='sda'", "dev='sda' bus='scsi'")
                  + DISK.format("sdb", "").replace("dev='sdb'", "dev='sdb' bus='usb'")
                  + DISK.format("sdc", "").replace("dev='sdc'", "dev='sdc' bus='sata'"))
    devices = devices_of(dom)
    assert "VGA,id=video0,bus=pci.0,addr=0x2" in devices
    assert "virtio-serial-pci,id=virtio-serial0,bus=pci.0,addr=0x1e" in devices
    assert "virtio-scsi-pci,id=scsi0,bus=pci.0,addr=0x1d" in devices
    assert "qemu-xhci,id=usb,bus=pci.0,addr=0x1c" in devices
    assert "ich9-ahci,id=sata0,bus=pci.0,addr=0x1b" in devices
    without = defined(NIC.format(1, ""))
    assert slots(without) == {"interface '52:54:00:00:00:01'": 3, "memballoon 'virtio'": 4}
    assert {d: s for d, s in slots(dom).items() if s is not None} == slots(without)


def test_a_device_may_take_the_fixed_slot_of_one_the_guest_does_not_have() -> None:
    dom = defined(NIC.format(1, address(0x1e)))
    assert devices_of(dom)[0].endswith(",bus=pci.0,addr=0x1e")
    channel = "<channel type='pty'><target type='virtio' name='a.b'/></channel>"
    with pytest.raises(GuestConfigError, match=r"Attempted double use of PCI Address "
                       r"0000:00:1e\.0 \(interface '52:54:00:00:00:01' and qemud's "
                       r"virtio-serial device\)"):
        defined(NIC.format(1, address(0x1e)) + channel)


@pytest.mark.parametrize(("devices", "message"), [
    (NIC.format(1, address(5)) + DISK.format("vda", address(5)),
     r"Attempted double use of PCI Address 0000:00:05\.0 \(disk 'vda' and interface"),
    (NIC.format(1, address(1)), r"0000:00:01\.0 of interface '52:54:00:00:00:01' is taken "
     r"by machine 'pc''s built-in devices"),
    (NIC.format(1, address(3, bus=1)), r"0000:01:03\.0 of interface '52:54:00:00:00:01' is "
     r"on bus 0x01, which no controller of the domain makes \(qemud adds no PCI bridges\)"),
    (NIC.format(1, address(3, function=1)), "multi-function devices are not supported"),
    (DISK.format("vda", "<address type='drive' controller='0' unit='0'/>"),
     "disk 'vda' is a PCI device: its <address> type must be 'pci', not 'drive'"),
    (DISK.format("sda", address(6)).replace("dev='sda'", "dev='sda' bus='sata'"),
     "disk 'sda' is on bus 'sata', not PCI: it cannot have a PCI address"),
    ("<watchdog model='ib700'>" + address(6) + "</watchdog>",
     "watchdog 'ib700' is not a PCI device: it cannot have a PCI address"),
])
def test_addresses_the_guest_cannot_have_are_refused_naming_the_device(
        devices: str, message: str) -> None:
    with pytest.raises(GuestConfigError, match=message):
        defined(devices)


def test_a_machine_without_pci_refuses_a_pci_address() -> None:
    with pytest.raises(GuestConfigError, match="has PCI address 0000:00:03.0, but machine "
                       "'isapc' has no PCI bus"):
        defined(NIC.format(1, address(3)), machine="isapc")
    assert plan(domain(NIC.format(1, "")), get_strategy("x86_64")) is not None
    assert plan(domain(NIC.format(1, ""), machine="isapc"), get_strategy("x86_64")) is None


def test_a_hot_plugged_device_takes_the_lowest_free_slot_and_none_when_all_are_taken(
        ) -> None:
    strategy = get_strategy("x86_64")
    dom = defined(NIC.format(1, address(3)) + DISK.format("vda", address(7)))
    assert slots(dom)["memballoon 'virtio'"] == 4
    assert free_slot(dom, strategy, "disk 'vdb'") == ("pci.0", Slot(0, 5))
    full = "".join(DISK.format(f"vd{chr(ord('a') + i)}", "") for i in range(23))
    dom = defined(full)
    # 3..25 the disks, 26 the balloon, 27..30 kept for qemud's own devices
    assert slots(dom)["memballoon 'virtio'"] == 26
    assert free_slot(dom, strategy, "disk 'vdz'") == ("pci.0", Slot(0, 31))
    dom.add_device(parse_domain_xml(
        "<domain type='qemu'><name>x</name><memory>1</memory><os><type>hvm</type></os>"
        f"<devices>{DISK.format('vdx', address(31))}</devices></domain>").disks[0].copy())
    with pytest.raises(GuestConfigError, match="No more available PCI slots: no free slot "
                       "for disk 'vdz' on bus pci.0 of machine 'pc'"):
        free_slot(dom, strategy, "disk 'vdz'")


def test_assignment_is_the_plan_and_the_argv_builder_writes_nothing() -> None:
    dom = domain(NIC.format(1, "") + DISK.format("vda", ""))
    before = dom.to_xml()
    first = devices_of(dom)
    assert dom.to_xml() == before
    assign_addresses(dom, get_strategy("x86_64"))
    assert devices_of(dom) == first
    assert dom.to_xml() != before


# -- pcie-root-ports (q35, virt) --------------------------------------------------------

PORT = "<controller type='pci' model='pcie-root-port'/>"


def places(dom: DomainDef) -> dict[str, str | None]:
    """Each PCI device's and port's address, as libvirt spells it."""
    return {dev.describe(): None if dev.pci_address is None else str(dev.pci_address)
            for dev in [*dom.pci_controllers, *dom.interfaces, *dom.disks, dom.memballoon]
            if dev is not None}


def test_devices_go_behind_free_root_ports_first_then_behind_added_ones() -> None:
    """The definition's ports first, packed into the functions of one slot (libvirt's
    layout, with its index, chassis and port); then NIC and disk behind them; the
    balloon, with no port left, behind one added for it; an i6300esb on pcie.0."""
    dom = defined(PORT * 2 + NIC.format(1, "") + DISK.format("vda", "")
                  + "<watchdog model='i6300esb'/>", machine="q35")
    assert places(dom) == THREE_PORTS
    assert str(dom.watchdog.pci_address) == "0000:00:03.0"  # type: ignore[union-attr]
    ports = dom.pci_controllers
    assert [(p.chassis, p.port) for p in ports] == [(1, 0x10), (2, 0x11), (3, 0x12)]
    assert ports[0].pci_address is not None and ports[0].pci_address.multifunction
    assert devices_of(dom)[:5] == [
        "pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,multifunction=on,addr=0x2",
        "pcie-root-port,port=0x11,chassis=2,id=pci.2,bus=pcie.0,addr=0x2.0x1",
        "pcie-root-port,port=0x12,chassis=3,id=pci.3,bus=pcie.0,addr=0x2.0x2",
        "virtio-blk-pci,drive=drive-vda-format,id=disk-vda,bus=pci.2,addr=0x0",
        "virtio-net-pci,netdev=hostnet-525400000001,id=net-525400000001,"
        "mac=52:54:00:00:00:01,bus=pci.1,addr=0x0"]


def test_the_argv_of_an_unassigned_definition_has_the_ports_assignment_would_add(
        ) -> None:
    dom = domain(NIC.format(1, ""), machine="q35")
    first = devices_of(dom)
    assert "<controller" not in dom.to_xml()  # (the builder writes nothing)
    assign_addresses(dom, get_strategy("x86_64"))
    assert devices_of(dom) == first
    assert first[0].startswith("pcie-root-port,port=0x10,chassis=1,id=pci.1,")


def test_libvirts_own_q35_layout_is_taken_as_written() -> None:
    """What libvirt writes for a q35 guest: ports with addresses, targets and model
    names, devices on their buses, a port with hotplug off."""
    xml = (Path(__file__).parent.parent / "conf" / "data" / "controllers-in.xml").read_text()
    dom = parse_domain_xml(xml)
    get_strategy("x86_64").fill_defaults(dom)
    assert places(dom)["interface '52:54:00:6b:3c:58'"] == "0000:01:00.0"
    devices = devices_of(dom)
    assert devices[1] == ("pcie-root-port,port=0x11,chassis=2,id=pci.2,hotplug=off,"
                          "bus=pcie.0,addr=0x2.0x1")
    # a spare port is what a hot-plugged device takes; one with hotplug='off' is not
    with pytest.raises(GuestConfigError, match="every one of this domain's is taken"):
        free_slot(dom, get_strategy("x86_64"), "interface 'x'")
    spare = defined(PORT * 3 + NIC.format(1, ""), machine="q35")
    # (the NIC behind port 1, the balloon behind port 2)
    assert free_slot(spare, get_strategy("x86_64"), "disk 'vdb'") == ("pci.3", Slot(3, 0))


@pytest.mark.parametrize(("devices", "machine", "message"), [
    (PORT, "pc", r"controller 'pci' model 'pcie-root-port': a pcie-root-port "
     r"needs a PCI Express machine \(q35, virt\), not 'pc'"),
    ("<controller type='pci' index='0' model='pci-root'/>", "q35",
     r"The PCI controller with index='0' must be model='pcie-root' for machine 'q35'"),
    ("<controller type='pci' index='0' model='pcie-root-port'/>", "q35",
     "index 0 is the root bus's"),
    (NIC.format(1, address(0, bus=3)), "q35",
     r"0000:03:00\.0 of interface '52:54:00:00:00:01' is on bus 0x03, which no controller "
     r"of the domain makes \(add <controller type='pci' index='3' "
     r"model='pcie-root-port'/>\)"),
    ("<controller type='pci' index='3' model='pcie-to-pci-bridge'/>"
     + NIC.format(1, address(1, bus=3)), "q35",
     r"is on the bus of controller 'pci' model 'pcie-to-pci-bridge' index 3, which qemud "
     r"does not build \(only pcie-root-port\)"),
    (PORT + NIC.format(1, address(1, bus=1)), "q35",
     "is not slot 0 function 0 of bus 0x01: a pcie-root-port has one slot"),
    (PORT + NIC.format(1, address(0, bus=1)) + NIC.format(2, address(0, bus=1)), "q35",
     r"Attempted double use of PCI Address 0000:01:00\.0"),
    ("<controller type='pci' index='1' model='pcie-root-port'>" + address(4, function=1)
     + "</controller>", "q35",
     r"0000:00:04\.1 of controller 'pci' model 'pcie-root-port' index 1 needs a device "
     r"at function 0 of slot 0x04 with multifunction='on'"),
])
def test_pci_controllers_and_buses_the_guest_cannot_have_are_refused(
        devices: str, machine: str, message: str) -> None:
    with pytest.raises(GuestConfigError, match=message):
        defined(devices, machine=machine)


def test_a_pci_bridge_nothing_sits_on_is_kept_and_not_built() -> None:
    """As before qemud read controllers: kept in the definition, no -device."""
    dom = defined("<controller type='pci' index='1' model='pci-bridge'/>" + NIC.format(1, ""))
    assert "pci-bridge" in dom.to_xml()
    assert not any("bridge" in d for d in devices_of(dom))
