"""PCI addresses kept, as libvirt keeps them, on a real daemon and the test guest.

A definition's PCI devices get ``<address type='pci'>`` at define, QEMU puts each where
its address says (asked of QEMU itself: ``query-pci`` through ``qemu-monitor-command``;
the qdev id of a NIC is ``net-<mac without colons>``, of a disk ``disk-<target>``), a
device plugged into the running guest takes a free slot (or the one its XML asks for)
and the live XML keeps it. So a guest whose devices changed while it ran is saved and
restored with every device where it was: before qemud kept addresses such a save was
refused (a restore's QEMU placed the devices in command-line order and refused the
saved state; the guard stays for guests an older qemud started:
test_save_after_hotplug.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client
from client.domain import MONITOR_COMMAND_HMP
from protocol.constants import DomainState, RunningReason
from tests.appliance.snapshot_guests import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY
from tests.integration.guest import BootedGuest
from tests.integration.pci_addresses import address, macs, nic, xml_slots

pytestmark = pytest.mark.integration

LIVE, CONFIG = client.AFFECT_LIVE, client.AFFECT_CONFIG


class Guest(BootedGuest):
    """A booted test guest, and where QEMU and its live XML have its PCI devices."""

    def __init__(self, daemon: DaemonProcess, conn: client.Connection,
                 test_guest: TestGuest, name: str, tmp: Path, extra: str = "") -> None:
        self.daemon = daemon
        super().__init__(conn, test_guest, name, tmp, extra=extra)

    def qemu_slots(self) -> dict[str, int]:
        """qdev id -> slot of each device with an id on QEMU's root bus."""
        reply: Any = json.loads(self.dom.qemu_monitor_command('{"execute": "query-pci"}'))
        [bus] = reply["return"]
        return {str(d["qdev_id"]): int(d["slot"]) for d in bus["devices"] if d["qdev_id"]}

    def netdevs(self) -> str:
        return self.dom.qemu_monitor_command("info network", MONITOR_COMMAND_HMP)

    def placed(self) -> dict[str, int]:
        """The live XML's slots, checked to be where QEMU has the devices."""
        slots = xml_slots(self.dom.xml())
        assert {k: v for k, v in self.qemu_slots().items() if k in slots} == slots
        return slots


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-pci"))) as daemon:
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


# -- addresses at define and at start ------------------------------------------------------


def test_define_gives_every_pci_device_an_address(qemud: DaemonProcess,
                                                  conn: client.Connection,
                                                  test_guest: TestGuest,
                                                  tmp_path: Path) -> None:
    """libvirt's order on i440FX: slot 1 is the PIIX3's, 2 the video's; interfaces first,
    then virtio disks, the balloon last."""
    vda = make_image(tmp_path / "vda.qcow2")
    guest = Guest(qemud, conn, test_guest, "pci-define", tmp_path,
                  extra=disk_xml(vda) + nic())
    try:
        [mac] = macs(guest.dom.xml())
        expected = {"net-" + mac.replace(":", ""): 3, "disk-vda": 4, "balloon0": 5}
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == expected
        assert guest.placed() == expected  # (and QEMU has them there)
        proc = qemush(qemud, "dumpxml", guest.dom.name, "--inactive")
        assert proc.returncode == 0, proc.stderr
        assert xml_slots(proc.stdout) == expected
    finally:
        guest.close()


def test_pinned_address_is_where_qemu_puts_the_device(qemud: DaemonProcess,
                                                      conn: client.Connection,
                                                      test_guest: TestGuest,
                                                      tmp_path: Path) -> None:
    mac = "52:54:00:3c:00:07"
    guest = Guest(qemud, conn, test_guest, "pci-pinned", tmp_path, extra=nic(mac, 7))
    try:
        # the others take the lowest free slots around it
        assert guest.placed() == {"net-5254003c0007": 7, "balloon0": 3}
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == guest.placed()
    finally:
        guest.close()


# -- live attach and detach, then save and restore ------------------------------------------


def test_hotplugged_devices_keep_their_slots_across_save_and_restore(
        qemud: DaemonProcess, conn: client.Connection, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """The guest starts with the balloon only (slot 3); a NIC and a disk plugged in take
    the next free slots. A restore's command line puts each where the live XML says, so
    QEMU takes the saved state (it used to refuse it: the NIC would have come first)."""
    guest = Guest(qemud, conn, test_guest, "pci-save", tmp_path)
    try:
        assert guest.placed() == {"balloon0": 3}
        proc = qemush(qemud, "attach-interface", guest.dom.name, "user", "--model", "virtio")
        assert proc.returncode == 0, proc.stderr
        [mac] = macs(guest.dom.xml())
        net = "net-" + mac.replace(":", "")
        vdb = make_image(tmp_path / "vdb.qcow2")
        mark = guest.serial.mark()
        guest.dom.attach_device(disk_xml(vdb, dev="vdb"), LIVE)
        guest.serial.wait_for("QEMUD-BLOCK: vda", timeout=30, start=mark)  # (its 1st disk)
        before = guest.placed()
        assert before == {"balloon0": 3, net: 4, "disk-vdb": 5}
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == {"balloon0": 3}
        mark = guest.serial.mark()
        guest.serial.send("write-disk vda kept-in-slot-5")
        guest.serial.wait_for("QEMUD-WROTE vda", timeout=30, start=mark)

        image = tmp_path / "saved.img"
        proc = qemush(qemud, "save", guest.dom.name, str(image))
        assert proc.returncode == 0, proc.stderr
        assert not guest.dom.is_active()
        proc = qemush(qemud, "restore", str(image))
        assert proc.returncode == 0, proc.stderr
        assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
        assert guest.placed() == before
        guest.resumed()
        mark = guest.serial.mark()
        guest.serial.send("read-disk vda 14")
        guest.serial.wait_for("QEMUD-READ vda kept-in-slot-5", timeout=30, start=mark)

        # and a managed save, restored by the next start
        guest.dom.managed_save()
        assert guest.dom.has_managed_save() and not guest.dom.is_active()
        guest.dom.create()
        assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
        assert not guest.dom.has_managed_save()
        assert guest.placed() == before
        guest.resumed()
    finally:
        guest.close()


def test_unplug_leaves_a_hole_that_save_keeps_and_attach_reuses(
        qemud: DaemonProcess, conn: client.Connection, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """A NIC the guest started with, the balloon after it: once the NIC is unplugged no
    device moves, the save is restored as it is (it used to be refused: the balloon
    would have taken the NIC's slot), and the next device plugged in takes the hole."""
    mac = "52:54:00:3c:00:01"
    guest = Guest(qemud, conn, test_guest, "pci-hole", tmp_path, extra=nic(mac))
    try:
        assert guest.placed() == {"net-5254003c0001": 3, "balloon0": 4}
        guest.dom.detach_device(nic(mac), LIVE)
        assert guest.placed() == {"balloon0": 4}
        guest.dom.managed_save()
        guest.dom.create()
        assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
        assert guest.placed() == {"balloon0": 4}
        guest.resumed()

        vdb = make_image(tmp_path / "vdb.qcow2")
        guest.dom.attach_device(disk_xml(vdb, dev="vdb"), LIVE)
        assert guest.placed() == {"balloon0": 4, "disk-vdb": 3}
        guest.dom.attach_device(nic("52:54:00:3c:00:02"), LIVE)
        assert guest.placed() == {"balloon0": 4, "disk-vdb": 3, "net-5254003c0002": 5}

        image = tmp_path / "saved.img"
        guest.dom.save(str(image))
        conn.restore(str(image))
        assert guest.placed() == {"balloon0": 4, "disk-vdb": 3, "net-5254003c0002": 5}
        guest.resumed()
    finally:
        guest.close()


def test_attaches_at_once_take_slots_of_their_own(qemud: DaemonProcess,
                                                 conn: client.Connection,
                                                 test_guest: TestGuest,
                                                 tmp_path: Path) -> None:
    """Two clients attach at the same time: each device gets a free slot of its own
    (the second choice is made while the first device is still being plugged in)."""
    guest = Guest(qemud, conn, test_guest, "pci-at-once", tmp_path)
    vdb = make_image(tmp_path / "vdb.qcow2")
    failed: list[BaseException] = []
    start = threading.Barrier(2)

    def attach(xml: str) -> None:
        try:
            with qemud.connect() as own:
                dom = own.lookup_by_name(guest.dom.name)
                start.wait(timeout=30)
                dom.attach_device(xml, LIVE)
        except BaseException as exc:  # (reported by the test's thread)
            failed.append(exc)

    try:
        threads = [threading.Thread(target=attach, args=(xml,)) for xml in
                   (disk_xml(vdb, dev="vdb"), nic("52:54:00:3c:00:0d"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert failed == []
        slots = guest.placed()
        assert slots.keys() == {"balloon0", "disk-vdb", "net-5254003c000d"}
        assert sorted(slots.values()) == [3, 4, 5]
    finally:
        guest.close()


def test_attach_at_a_chosen_address(qemud: DaemonProcess, conn: client.Connection,
                                    test_guest: TestGuest, tmp_path: Path) -> None:
    guest = Guest(qemud, conn, test_guest, "pci-chosen", tmp_path)
    try:
        guest.dom.attach_device(nic("52:54:00:3c:00:09", 9), LIVE)
        vdb = make_image(tmp_path / "vdb.qcow2")
        guest.dom.attach_device(disk_xml(vdb, dev="vdb").replace(
            "</disk>", address(0x11) + "</disk>"), LIVE)
        assert guest.placed() == {"balloon0": 3, "net-5254003c0009": 9, "disk-vdb": 0x11}
    finally:
        guest.close()


def test_attach_at_a_taken_address_changes_nothing(qemud: DaemonProcess,
                                                   conn: client.Connection,
                                                   test_guest: TestGuest,
                                                   tmp_path: Path) -> None:
    guest = Guest(qemud, conn, test_guest, "pci-taken", tmp_path, extra=nic())
    try:
        live, inactive = guest.dom.xml(), guest.dom.xml(client.XML_INACTIVE)
        [mac] = macs(live)
        in_qemu, netdevs = guest.qemu_slots(), guest.netdevs()
        assert xml_slots(live)["balloon0"] == 4

        mac2 = "52:54:00:3c:00:04"
        with pytest.raises(client.ConfigUnsupportedError) as info:
            guest.dom.attach_device(nic(mac2, 4), LIVE | CONFIG)
        assert "Attempted double use of PCI Address 0000:00:04.0" in str(info.value)
        proc = qemush(qemud, "attach-device", guest.dom.name, "--live",
                      str(_write(tmp_path / "nic.xml", nic(mac2, 3))))
        assert proc.returncode == 1
        assert "Attempted double use of PCI Address 0000:00:03.0" in proc.stderr, proc.stderr
        vdb = make_image(tmp_path / "vdb.qcow2")
        with pytest.raises(client.ConfigUnsupportedError) as info:
            guest.dom.attach_device(disk_xml(vdb, dev="vdb").replace(
                "</disk>", address(3) + "</disk>"), LIVE)
        assert "Attempted double use of PCI Address 0000:00:03.0" in str(info.value)

        assert guest.dom.xml() == live and guest.dom.xml(client.XML_INACTIVE) == inactive
        assert guest.qemu_slots() == in_qemu and guest.netdevs() == netdevs
        blocks: Any = json.loads(guest.dom.qemu_monitor_command(
            '{"execute": "query-named-block-nodes"}'))
        assert blocks["return"] == []  # (no node of vdb was opened)
        assert macs(guest.dom.xml()) == [mac]
    finally:
        guest.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the persistent definition -----------------------------------------------------------------


def test_config_attach_gets_an_address_the_next_start_uses(qemud: DaemonProcess,
                                                           conn: client.Connection,
                                                           test_guest: TestGuest,
                                                           tmp_path: Path) -> None:
    guest = Guest(qemud, conn, test_guest, "pci-config", tmp_path)
    try:
        # --live --config: the live slot in both XMLs, when it is free in both
        guest.dom.attach_device(nic("52:54:00:3c:00:0a"), LIVE | CONFIG)
        assert guest.placed() == {"balloon0": 3, "net-5254003c000a": 4}
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == guest.placed()

        # --config: the lowest free slot of the persistent definition
        vdb = make_image(tmp_path / "vdb.qcow2")
        guest.dom.attach_device(disk_xml(vdb, dev="vdb"), CONFIG)
        proc = qemush(qemud, "attach-interface", guest.dom.name, "user", "--model",
                      "virtio", "--mac", "52:54:00:3c:00:0b", "--config")
        assert proc.returncode == 0, proc.stderr
        assert guest.placed() == {"balloon0": 3, "net-5254003c000a": 4}  # not changed
        config = {"balloon0": 3, "net-5254003c000a": 4, "disk-vdb": 5,
                  "net-5254003c000b": 6}
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == config

        # --live --config, the live slot taken in the persistent definition: each takes
        # a free slot of its own
        guest.dom.attach_device(nic("52:54:00:3c:00:0c"), LIVE | CONFIG)
        assert guest.placed() == {"balloon0": 3, "net-5254003c000a": 4,
                                  "net-5254003c000c": 5}
        config["net-5254003c000c"] = 7
        assert xml_slots(guest.dom.xml(client.XML_INACTIVE)) == config
        proc = qemush(qemud, "dumpxml", guest.dom.name, "--inactive")
        assert proc.returncode == 0 and xml_slots(proc.stdout) == config, proc.stderr

        guest.dom.destroy()
        guest.dom.create()
        guest.reconnect()
        guest.serial.wait_for(READY)
        assert guest.placed() == config
    finally:
        guest.close()
