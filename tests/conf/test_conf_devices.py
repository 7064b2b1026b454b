"""Stand-alone device XML (attach/detach) and hotplug edits of a domain."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemud.conf import (
    CharDevice,
    DefinitionError,
    Device,
    Disk,
    DomainDef,
    Graphics,
    Interface,
    Memballoon,
    Watchdog,
    parse_device_xml,
    parse_domain_xml,
)

DATA = Path(__file__).parent / "data"


def _full() -> DomainDef:
    return parse_domain_xml((DATA / "full-in.xml").read_text())


@pytest.mark.parametrize(("text", "cls", "tag"), [
    ("<disk type='file'><source file='/a'/><target dev='vdz'/></disk>", Disk, "disk"),
    ("<interface type='user'/>", Interface, "interface"),
    ("<graphics type='vnc'/>", Graphics, "graphics"),
    ("<serial type='pty'/>", CharDevice, "serial"),
    ("<console type='pty'/>", CharDevice, "console"),
    ("<channel type='unix'><target type='virtio' name='x'/></channel>", CharDevice, "channel"),
    ("<watchdog model='ib700'/>", Watchdog, "watchdog"),
    ("<memballoon model='virtio'/>", Memballoon, "memballoon"),
])
def test_parse_device_xml_kinds(text: str, cls: type[Device], tag: str) -> None:
    dev = parse_device_xml(text)
    assert type(dev) is cls and dev.tag == tag


def test_device_properties() -> None:
    disk = parse_device_xml((DATA / "devices" / "disk-block-in.xml").read_text())
    assert isinstance(disk, Disk)
    assert (disk.type, disk.device, disk.driver_name, disk.driver_type) == (
        "block", "disk", "qemu", "raw")
    assert (disk.source, disk.target_dev, disk.target_bus) == (
        "/dev/mapper/vg0-scratch", "vdc", "virtio")
    assert (disk.readonly, disk.boot_order, disk.alias) == (False, 3, "virtio-disk2")
    nic = parse_device_xml((DATA / "devices" / "interface-bridge-in.xml").read_text())
    assert isinstance(nic, Interface)
    assert (nic.type, nic.mac, nic.model, nic.source_bridge, nic.target_dev) == (
        "bridge", "52:54:00:0a:0b:0c", "virtio", "br1", None)
    chan = parse_device_xml((DATA / "devices" / "channel-unix-in.xml").read_text())
    assert isinstance(chan, CharDevice)
    assert (chan.kind, chan.type, chan.source_path, chan.source_mode) == (
        "channel", "unix", "/run/qemud/hotplug.sock", "connect")
    assert (chan.target_type, chan.target_name, chan.target_port) == (
        "virtio", "org.example.hotplug", None)
    wd = parse_device_xml("<watchdog model='ib700'/>")
    assert isinstance(wd, Watchdog) and wd.action == "reset"


def test_add_device_inserts_a_checked_copy_in_order() -> None:
    dom = _full()
    dev = parse_device_xml("<disk type='file' device='disk'><source file='/new.img'/>"
                           "<target dev='vdc' bus='virtio'/></disk>")
    assert isinstance(dev, Disk)
    added = dom.add_device(dev)
    assert added == dom.disks[3] and added is not dev and added.node is not dev.node
    tags = [c.tag for c in dom.node.iterfind("devices/*")]
    assert tags.index("disk") == 1 and tags[5] == "interface"  # after the other disks
    dev.target_dev = "vdq"  # the domain holds a copy
    assert dom.disks[3].target_dev == "vdc"
    dom.validate()


def test_add_device_refuses_conflicts_and_changes_nothing() -> None:
    dom = _full()
    before = dom.to_xml()
    dup = parse_device_xml("<disk type='file'><source file='/x'/><target dev='vda'/></disk>")
    with pytest.raises(DefinitionError, match=r"^devices/disk\[4\]/target: duplicate target"):
        dom.add_device(dup)
    with pytest.raises(DefinitionError, match=r"devices/watchdog\[2\]: only one watchdog"):
        dom.add_device(parse_device_xml("<watchdog model='ib700'/>"))
    bad = Disk()  # built in code, never checked
    with pytest.raises(DefinitionError, match="needs <source"):
        dom.add_device(bad)
    with pytest.raises(TypeError):
        dom.add_device("<disk/>")  # type: ignore[arg-type]
    assert dom.to_xml() == before


def test_add_nic_generates_one_mac_for_live_and_config() -> None:
    persistent = _full()
    live = persistent.copy()
    nic = parse_device_xml("<interface type='user'><model type='virtio'/></interface>")
    assert isinstance(nic, Interface)
    a = persistent.add_device(nic)
    b = live.add_device(nic)
    assert isinstance(a, Interface) and isinstance(b, Interface)
    assert a.mac is not None and a.mac == b.mac == nic.mac
    assert a.mac.startswith("52:54:00:")


def test_add_device_to_domain_without_devices() -> None:
    dom = DomainDef.new("d")
    dom.add_device(parse_device_xml("<graphics type='vnc'/>"))
    assert [g.type for g in dom.graphics] == ["vnc"]
    assert dom.node[-1].tag == "devices"


@pytest.mark.parametrize(("text", "attr", "expected"), [
    ("<disk type='file' device='cdrom'><target dev='sda'/></disk>", "disks", 2),
    ("<disk type='file'><source file='/dev/vg0/data'/><target dev='vdb'/></disk>", "disks", 1),
    ("<interface type='bridge'><mac address='52:54:00:AB:CD:EF'/>"
     "<source bridge='br0'/></interface>", "interfaces", 0),
    ("<serial type='file'><source path='/x'/><target port='1'/></serial>", "serials", 1),
    ("<serial type='pty'/>", "serials", 0),
    ("<console type='pty'/>", "consoles", 0),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
     "channels", 0),
    ("<graphics type='vnc'/>", "graphics", 0),
])
def test_remove_device_by_libvirt_matching(text: str, attr: str, expected: int) -> None:
    dom = _full()
    target = getattr(dom, attr)[expected]
    removed = dom.remove_device(parse_device_xml(text))
    assert removed == target
    assert removed.node.getparent() is None
    assert target not in getattr(dom, attr)
    dom.validate()


def test_remove_watchdog_and_by_alias() -> None:
    dom = _full()
    dom.remove_device(parse_device_xml("<watchdog model='i6300esb'/>"))
    assert dom.watchdog is None
    removed = dom.remove_device(parse_device_xml(
        "<disk type='file'><source file='/x'/><target dev='vdzz'/><alias name='ua-data'/></disk>"))
    assert isinstance(removed, Disk) and removed.target_dev == "vdb"


def test_remove_device_with_own_view() -> None:
    dom = _full()
    disk = dom.disks[2]
    assert dom.find_device(disk) == disk
    assert dom.remove_device(disk) == disk
    assert len(dom.disks) == 2


def test_remove_device_errors() -> None:
    dom = _full()
    with pytest.raises(DefinitionError, match=r"^devices/disk: no matching disk 'vdx'"):
        dom.remove_device(parse_device_xml(
            "<disk type='file'><source file='/x'/><target dev='vdx'/></disk>"))
    with pytest.raises(DefinitionError, match=r"^devices/watchdog: no matching watchdog"):
        dom.remove_device(parse_device_xml("<watchdog model='ib700'/>"))
    two = parse_domain_xml((DATA / "generated-ids-in.xml").read_text())
    with pytest.raises(DefinitionError, match="matches 2 devices"):
        two.remove_device(parse_device_xml("<interface type='user'/>"))


def test_find_device_returns_none_when_absent() -> None:
    dom = DomainDef.new("d")
    assert dom.find_device(parse_device_xml("<graphics type='vnc'/>")) is None
    assert dom.devices == [] and dom.disks == [] and dom.watchdog is None


def test_edit_properties_write_the_tree() -> None:
    dom = _full()
    cdrom = dom.disks[2]
    cdrom.source = "/new.iso"
    assert dom.disks[2].source == "/new.iso"
    assert "<source file='/new.iso'/>" in dom.to_xml()
    cdrom.source = None
    assert dom.disks[2].node.find("source") is None
    cdrom.readonly = False
    assert dom.disks[2].node.find("readonly") is None
    block = dom.disks[1]
    block.source = "/dev/vg0/other"
    assert block.node.findall("source[@dev='/dev/vg0/other']")
    g = dom.graphics[0]
    g.port = 5901
    g.listen = "0.0.0.0"
    assert dom.graphics[0].port == 5901 and dom.graphics[0].listen == "0.0.0.0"
    dom.validate()


def test_graphics_listen_child_kept_in_agreement() -> None:
    g = parse_device_xml("<graphics type='vnc' port='5900' autoport='no'>"
                         "<listen type='address' address='10.0.0.1'/></graphics>")
    assert isinstance(g, Graphics)
    assert g.listen == "10.0.0.1"
    g.listen = "127.0.0.1"
    assert g.node.get("listen") == "127.0.0.1"
    assert g.node.findall("listen[@address='127.0.0.1']")


@pytest.mark.parametrize(("text", "port", "autoport"), [
    ("<graphics type='vnc'/>", -1, True),
    ("<graphics type='vnc' port='-1'/>", -1, True),
    ("<graphics type='vnc' port='5902'/>", 5902, False),
    ("<graphics type='vnc' port='5902' autoport='yes'/>", 5902, True),
])
def test_vnc_canonical_form(text: str, port: int, autoport: bool) -> None:
    g = parse_device_xml(text)
    assert isinstance(g, Graphics)
    assert (g.port, g.autoport) == (port, autoport)
    assert g.node.get("autoport") == ("yes" if autoport else "no")


def test_autoport_without_explicit_attribute() -> None:
    g = Graphics()
    g.type = "vnc"
    assert g.autoport is True
    g.port = 5900
    assert g.autoport is False


def test_live_runtime_state_stripped_from_inactive_device() -> None:
    serial = parse_device_xml("<serial type='pty'><source path='/dev/pts/3'/>"
                              "<alias name='serial0'/></serial>")
    assert "pts" not in serial.to_xml() and "alias" not in serial.to_xml()
    assert "/dev/pts/3" in serial.to_xml(live=True)
    unix = parse_device_xml("<serial type='unix'><source mode='bind' path='/s'/></serial>")
    assert "path='/s'" in unix.to_xml()  # only pty paths are runtime data
    nic = parse_device_xml("<interface type='ethernet'><target dev='vnet0'/></interface>")
    assert "vnet0" not in nic.to_xml() and "vnet0" in nic.to_xml(live=True)


def test_chardev_new_and_describe() -> None:
    chan = CharDevice.new("channel")
    chan.type = "unix"
    chan.target_type = "virtio"
    chan.target_name = "org.example"
    chan.check()
    assert chan.describe() == "channel 'org.example'"
    with pytest.raises(ValueError):
        CharDevice.new("parallel")
    serial = CharDevice.new()
    assert serial.kind == "serial" and serial.type == "pty"
    serial.target_port = 2
    assert serial.describe() == "serial 2"


def test_device_copy_is_detached() -> None:
    dom = _full()
    disk = dom.disks[0]
    dup = disk.copy()
    assert dup.node.getparent() is None and dup != disk
    dup.target_dev = "vdz"
    assert dom.disks[0].target_dev == "vda"


def test_memballoon_properties() -> None:
    balloon = parse_device_xml((DATA / "devices" / "memballoon-in.xml").read_text())
    assert isinstance(balloon, Memballoon)
    assert (balloon.model, balloon.stats_period, balloon.alias) == ("virtio", 10, "balloon0")
    assert (balloon.autodeflate, balloon.free_page_reporting) == ("on", "off")
    assert balloon.active
    none = parse_device_xml("<memballoon model='none'/>")
    assert isinstance(none, Memballoon) and not none.active and none.stats_period is None


def test_default_memballoon_goes_in_libvirt_order_and_never_replaces_one() -> None:
    dom = _full()
    assert dom.memballoon is None
    added = dom.set_default_memballoon()
    assert added.model == "virtio" and dom.memballoon == added
    tags = [c.tag for c in dom.node.iterfind("devices/*")]
    assert tags[-2:] == ["watchdog", "memballoon"]
    assert dom.set_default_memballoon("none") == added  # the one it has stays
    dom.validate()
    assert "<memballoon model='virtio'/>" in dom.to_xml()
    dom.remove_device(parse_device_xml("<memballoon model='virtio'/>"))
    dom.add_device(parse_device_xml("<memballoon model='none'/>"))
    assert dom.set_default_memballoon().model == "none"
    with pytest.raises(DefinitionError, match=r"devices/memballoon\[2\]: only one memballoon"):
        dom.add_device(parse_device_xml("<memballoon model='virtio'/>"))
