"""A live detach still waiting for the guest when the daemon stops (killed, or stopped
cleanly) is remembered by the next daemon: it refuses a save and a second detach of the
device with the same words as the daemon that sent the unplug, and when the guest
releases the device it leaves the live XML (its block nodes or netdev closed), its PCI
slot is free for the next attach and a save goes through. One the guest released while
no daemon ran is finished when the daemon re-attaches. A status file of the format
before (no record of unplugs) still loads.

Real daemon processes and the test guest; the guest is paused so that it cannot release
the device until the test resumes it (by the daemon, or while no daemon runs on QEMU's
own monitor socket, which QEMU serves to the next client).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import client
from client.domain import MONITOR_COMMAND_HMP
from qemud.driver.devices import UNPLUG_TIMEOUT_ENV
from tests.appliance.snapshot_guests import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.pci_addresses import macs, nic, xml_slots
from tests.integration.serial import SerialPort
from tests.qemu.qmpclient import QMPTestClient

pytestmark = pytest.mark.integration

LIVE = client.AFFECT_LIVE
MAC = "52:54:00:4d:00:01"
NEW_MAC = "52:54:00:4d:00:02"
#: device_del -> ACPI unplug in the guest -> DEVICE_DELETED, under TCG
RELEASE_TIMEOUT = 60.0


class Unplug:
    """The test guest (a disk vdb and a NIC besides its balloon) on its own daemon, whose
    detach of ``device`` ("disk" or "interface") times out after 3 s: the guest is
    paused, so the unplug request stays pending."""

    def __init__(self, tmp: Path, name: str, device: str, timeout: str = "3") -> None:
        self.name = name
        self.daemon = DaemonProcess(tmp / "d", env={UNPLUG_TIMEOUT_ENV: timeout})
        self.image = make_image(tmp / "vdb.qcow2")
        self.serial = tmp / "s.sock"
        if device == "disk":
            self.xml, self.what, self.qdev = disk_xml(self.image, dev="vdb"), "disk vdb", \
                "disk-vdb"
        else:
            self.xml, self.what = nic(MAC), f"interface {MAC}"
            self.qdev = "net-" + MAC.replace(":", "")
        self.conn: client.Connection | None = None
        self.daemon.start()

    def start(self, test_guest: TestGuest) -> client.Domain:
        self.conn = self.daemon.connect()
        dom = self.conn.define_xml(guest_xml(
            self.name, test_guest, self.serial,
            extra=disk_xml(self.image, dev="vdb") + nic(MAC)))
        dom.create()
        SerialPort(self.serial).wait_for(READY)
        return dom

    def detach_pending(self, dom: client.Domain) -> dict[str, int]:
        """Pause the guest and detach the device: the call times out, the unplug stays
        requested. The live XML's PCI slots before."""
        slots = xml_slots(dom.xml())
        assert self.qdev in slots
        dom.suspend()  # the guest cannot release the device until resumed
        with pytest.raises(client.OperationTimeout, match="within 3 s"):
            dom.detach_device(self.xml, LIVE)
        return slots

    def restart(self, how: str, between: Any = None) -> client.Domain:
        """Stop the daemon (``kill``: SIGKILL, ``stop``: SIGTERM, the guests run on),
        call ``between()`` while none runs, start it again."""
        assert self.conn is not None
        self.conn.close()
        if how == "kill":
            self.daemon.kill()
        else:
            assert self.daemon.stop() == 0
        if between is not None:
            between()
        self.daemon.start()
        self.conn = self.daemon.connect()
        return self.conn.lookup_by_name(self.name)

    def busy(self) -> str:
        return (f"domain '{self.name}' is busy: detach of {self.what} in progress "
                "(waiting for the guest to release it)")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        stop_destroying_guests(self.daemon)


def qemu_pci(dom: client.Domain) -> dict[str, int]:
    """qdev id -> slot of the devices QEMU has on its root bus."""
    reply = json.loads(dom.qemu_monitor_command('{"execute": "query-pci"}'))
    [bus] = reply["return"]
    return {str(d["qdev_id"]): int(d["slot"]) for d in bus["devices"] if d["qdev_id"]}


def block_files(dom: client.Domain) -> set[str]:
    """The files QEMU's block nodes have open."""
    reply = json.loads(dom.qemu_monitor_command(
        '{"execute": "query-named-block-nodes"}'))
    return {str(n.get("file")) for n in reply["return"]}


def released_and_freed(unplug: Unplug, dom: client.Domain, slots: dict[str, int]) -> None:
    """The device is out of the live XML and of QEMU, its block nodes or netdev closed;
    the next attach takes its slot; a managed save and the restore go through."""
    wait_for(lambda: unplug.qdev not in xml_slots(dom.xml()), timeout=RELEASE_TIMEOUT,
             message=f"{unplug.what} removed from the live XML")
    assert unplug.qdev not in qemu_pci(dom)
    if unplug.qdev.startswith("disk-"):
        wait_for(lambda: str(unplug.image) not in block_files(dom),
                 message="block nodes of vdb closed")
    else:
        assert macs(dom.xml()) == []
        wait_for(lambda: "hostnet-" + MAC.replace(":", "") not in dom.qemu_monitor_command(
            "info network", MONITOR_COMMAND_HMP), message="netdev deleted")
    # the freed slot is the lowest free one (define numbers the slots from the first)
    dom.attach_device(nic(NEW_MAC), LIVE)
    now = xml_slots(dom.xml())
    new_qdev = "net-" + NEW_MAC.replace(":", "")
    assert now[new_qdev] == slots[unplug.qdev]
    assert qemu_pci(dom)[new_qdev] == slots[unplug.qdev]
    dom.managed_save()
    assert dom.has_managed_save() and not dom.is_active()
    dom.create()  # restored: as it was saved
    assert xml_slots(dom.xml()) == now
    assert unplug.qdev not in qemu_pci(dom)
    kept = str(unplug.image) if unplug.qdev == "disk-vdb" else MAC
    assert kept in dom.xml(client.XML_INACTIVE)  # a live-only detach
    dom.destroy()


@pytest.mark.parametrize("how", ["kill", "stop"])
@pytest.mark.parametrize("device", ["disk", "interface"])
def test_pending_unplug_survives_a_daemon_restart(test_guest: TestGuest, tmp_path: Path,
                                                  device: str, how: str) -> None:
    unplug = Unplug(tmp_path, f"unplug-kept-{device[:4]}-{how}", device)
    try:
        dom = unplug.start(test_guest)
        slots = unplug.detach_pending(dom)
        with pytest.raises(client.OperationInvalid) as refused:
            dom.managed_save()
        before = str(refused.value)
        assert unplug.busy() in before

        dom = unplug.restart(how)
        assert dom.is_active() and unplug.qdev in xml_slots(dom.xml())
        with pytest.raises(client.OperationInvalid) as refused:
            dom.managed_save()
        assert str(refused.value) == before
        assert not dom.has_managed_save()
        image = tmp_path / "saved.img"
        with pytest.raises(client.OperationInvalid) as refused:
            dom.save(str(image))
        assert unplug.busy() in str(refused.value)
        assert not image.exists()
        if device == "disk":  # a snapshot works on the block graph the unplug closes
            with pytest.raises(client.OperationInvalid) as refused:
                dom.snapshot_create("s1")
            assert unplug.busy() in str(refused.value)
        with pytest.raises(client.OperationInvalid, match="is already being detached: "
                           "the guest has not released it yet"):
            dom.detach_device(unplug.xml, LIVE)
        assert dom.is_active() and unplug.qdev in xml_slots(dom.xml())  # unchanged

        dom.resume()  # the guest releases the device now
        released_and_freed(unplug, dom, slots)
    finally:
        unplug.close()


def test_unplug_released_while_no_daemon_ran(test_guest: TestGuest, tmp_path: Path) -> None:
    """The guest releases the disk while no daemon runs (its DEVICE_DELETED is lost): the
    next daemon finds it gone from QEMU, closes it and takes it out of the live XML."""
    unplug = Unplug(tmp_path, "unplug-kept-gone", "disk")
    try:
        dom = unplug.start(test_guest)
        slots = unplug.detach_pending(dom)

        def release() -> None:
            qmp = QMPTestClient(unplug.daemon.guest_run_dir(unplug.name) / "monitor.sock")
            try:
                qmp.execute("qmp_capabilities")
                qmp.execute("cont")
                wait_for(lambda: unplug.qdev not in {
                    str(p["name"]) for p in qmp.execute(
                        "qom-list", {"path": "/machine/peripheral"})},
                    timeout=RELEASE_TIMEOUT, message="disk released")
            finally:
                qmp.close()

        dom = unplug.restart("kill", between=release)
        released_and_freed(unplug, dom, slots)
    finally:
        unplug.close()


def test_status_file_without_unplugs_loads(test_guest: TestGuest, tmp_path: Path) -> None:
    """A status file as the version before wrote it (no ``unplugs``): the guest is found
    again, a detach and a save work."""
    unplug = Unplug(tmp_path, "unplug-old-status", "interface", timeout="120")
    try:
        dom = unplug.start(test_guest)
        slots = xml_slots(dom.xml())

        def older() -> None:
            path = unplug.daemon.run_dir / "qemu" / f"{unplug.name}.status.json"
            record = json.loads(path.read_text())
            assert record.pop("unplugs") == []
            path.write_text(json.dumps(record))

        dom = unplug.restart("stop", between=older)
        assert dom.is_active() and unplug.qdev in xml_slots(dom.xml())
        dom.detach_device(unplug.xml, LIVE)
        released_and_freed(unplug, dom, slots)
    finally:
        unplug.close()
