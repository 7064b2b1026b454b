"""A deployed VM's appliance state against the driver's own calls: an undefine while an
A/B update waits for its confirmation; the restore of a memory state saved before an
update or factory reset replaced the disks; a guest on the previous slot's disks whose
heartbeat must not confirm the update; the scratch disk's size after a rollback.

Real daemon, real qemu-img and the test guest (TCG). The appliances: demo 1.0 and 2.0
(with a heartbeat), 3.0 (its guest sends none: its update is rolled back at the
deadline) and 5.0 (as 3.0, with a 32 MiB scratch disk), built as in test_images.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client import appliance_images as images
from client.errors import OperationInvalid
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, remove_domain, serving
from tests.integration.conftest import TestGuest

from .appliances import CMDLINE, build_appliance, descriptor, disk_sources, origin
from .appliances import work as work
from .conftest import EventLog, wait_state

pytestmark = pytest.mark.integration

#: short: a rollback needs the guest started, not booted
UPDATE_DEADLINE = 6.0
#: how long past the deadline a rollback that should not come is waited for
SETTLE = 8.0
MIB = 1024 * 1024
NO_HEARTBEAT = {"kernel": "boot/vmlinuz", "initrd": "boot/initramfs.img",
                "cmdline": f"{CMDLINE} qemud.noheartbeat"}


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img-guards"),
                           {"appliance": {"update_deadline": UPDATE_DEADLINE}})
    with serving(daemon):
        yield daemon


@pytest.fixture(scope="module")
def stored(qemud: DaemonProcess, work: Path, test_guest: TestGuest) -> None:
    with qemud.connect() as c:
        bigger = descriptor("5.0", boot=NO_HEARTBEAT)
        bigger["disks"][2]["size"] = "32M"  # (1.0's: 16M)
        for desc in (descriptor("1.0"), descriptor("2.0"),
                     descriptor("3.0", boot=NO_HEARTBEAT), bigger):
            images.import_appliance(c, str(build_appliance(work, test_guest, desc)))


def listed(conn: client.Connection) -> dict[str, tuple[int, bool]]:
    """Each domain's state and whether it is persistent, as ``list`` shows them."""
    return {d.name: (d.listed_state, bool(d.listed_persistent)) for d in conn.list_all()}


def test_undefine_of_a_running_vm_with_a_pending_update_is_refused(
        conn: client.Connection, events: EventLog, qemud: DaemonProcess,
        stored: None) -> None:
    """The guest would run on as a transient domain, and the rollback at the deadline
    define the domain again, on a deleted overlay: refused while the update is pending;
    once rolled back, the undefine works as for any domain."""
    dom = images.deploy(conn, "demo", "undef-run", "1.0", start=True)
    xml_file = qemud.config_dir / "domains" / "undef-run.xml"
    try:
        images.update(conn, dom, "3.0")
        events.wait("undef-run", "update-applied", timeout=30)
        with pytest.raises(OperationInvalid) as info:
            dom.undefine()
        message = str(info.value)
        assert ("cannot undefine the definition of domain 'undef-run': its appliance "
                "update from 1.0 to 3.0 is pending") in message, message
        assert "needs the definition while the guest runs" in message, message
        assert message.endswith("or destroy the domain first"), message
        assert listed(conn)["undef-run"] == (DomainState.RUNNING, True)
        assert xml_file.is_file()

        rolled = events.wait("undef-run", "update-rolled-back", timeout=UPDATE_DEADLINE + 60)
        assert "3.0 -> back to 1.0" in rolled[0].text
        wait_state(dom, DomainState.RUNNING)
        assert events.appliance("undef-run", "update-rollback-failed") == []
        assert origin(dom.xml(client.XML_INACTIVE)) == ("demo", "1.0")
        dom.undefine()  # nothing pending: runs on as a transient domain
        assert listed(conn)["undef-run"] == (DomainState.RUNNING, False)
        assert not xml_file.exists()
    finally:
        remove_domain(dom)


def test_a_pending_update_of_an_undefined_vm_defines_nothing(
        conn: client.Connection, events: EventLog, qemud: DaemonProcess,
        stored: None) -> None:
    """A shut-off VM with a pending update may be undefined. Its XML started again as a
    transient domain (same name and uuid, the state file still there) has no definition
    to roll back: the update is not armed, the guest runs on, nothing is defined."""
    dom = images.deploy(conn, "demo", "undef-off", "1.0")
    xml_file = qemud.config_dir / "domains" / "undef-off.xml"
    vmdir = qemud.state_dir / "vms" / "undef-off"
    try:
        images.update(conn, dom, "3.0")  # shut off: pending until its next start
        xml = dom.xml(client.XML_INACTIVE)
        dom.undefine()
        assert "undef-off" not in listed(conn) and not xml_file.exists()
        dom = conn.create_xml(xml)  # the same guest, transient, on 3.0's overlay
        wait_state(dom, DomainState.RUNNING)
        time.sleep(UPDATE_DEADLINE + SETTLE)
        events.drain(0.5)
        assert events.appliance("undef-off", "update-rolled-back") == []
        assert events.appliance("undef-off", "update-rollback-failed") == []
        assert listed(conn)["undef-off"] == (DomainState.RUNNING, False)
        assert not xml_file.exists()
        assert disk_sources(dom.xml())["vda"] == str(vmdir / "vda.b.qcow2")
        assert (vmdir / "vda.b.qcow2").is_file()
    finally:
        remove_domain(dom)
    assert "undef-off" not in listed(conn) and not xml_file.exists()


def state_of(qemud: DaemonProcess, vm: str) -> dict[str, object]:
    text = (qemud.state_dir / "vms" / vm / "appliance-state.json").read_text()
    return dict(json.loads(text))


def test_restore_of_a_memory_state_older_than_the_disks_is_refused(
        conn: client.Connection, events: EventLog, qemud: DaemonProcess, stored: None,
        tmp_path: Path) -> None:
    """A save image holds the definition it ran (the old slot, the old kernel) and the
    guest's memory of the disks as they were: restored after an update, or after a
    factory reset recreated the system overlay and the scratch disk in place, it would
    run on disks it does not know. Refused, naming the domain, the file and why; an
    image saved since restores."""
    dom = images.deploy(conn, "demo", "rs-vm", "1.0", start=True)
    vmdir = qemud.state_dir / "vms" / "rs-vm"
    before_update, before_reset, since = (str(tmp_path / n) for n in ("u.save", "r.save",
                                                                      "s.save"))
    try:
        dom.save(before_update)
        images.update(conn, dom, "2.0")  # shut off (saved): pending until its next start
        with pytest.raises(OperationInvalid) as info:
            conn.restore(before_update)
        message = str(info.value)
        assert (f"cannot restore domain 'rs-vm' from the save file {before_update}: its "
                f"system disk vda is {vmdir / 'vda.b.qcow2'} now, the image's "
                f"{vmdir / 'vda.a.qcow2'} (an appliance update or rollback since") \
            in message, message
        assert "boot the domain afresh (start rs-vm)" in message, message
        assert dom.state()[0] == DomainState.SHUTOFF
        assert state_of(qemud, "rs-vm")["pending"] is not None
        assert events.appliance("rs-vm", "update-confirmed") == []

        dom.create()  # 2.0 boots, its heartbeat confirms the update
        events.wait("rs-vm", "update-confirmed", timeout=UPDATE_DEADLINE + 60)
        dom.save(before_reset)
        images.factory_reset(conn, dom)  # shut off: the system overlay and scratch disk anew
        with pytest.raises(OperationInvalid) as info:
            conn.restore(before_reset)
        message = str(info.value)
        assert (f"cannot restore domain 'rs-vm' from the save file {before_reset}: its "
                "disks were replaced by the appliance factory reset to demo:2.0 at ") \
            in message, message
        assert dom.state()[0] == DomainState.SHUTOFF
        assert state_of(qemud, "rs-vm")["changed"] == {
            "at": pytest.approx(time.time(), abs=120), "by": "factory reset to demo:2.0"}

        dom.create()
        wait_state(dom, DomainState.RUNNING)
        dom.save(since)
        conn.restore(since)  # saved after the reset: its disks
        wait_state(dom, DomainState.RUNNING)
        assert disk_sources(dom.xml())["vda"] == str(vmdir / "vda.b.qcow2")
    finally:
        remove_domain(dom)


def test_restore_of_a_vm_on_a_snapshot_overlay_is_not_refused(
        conn: client.Connection, qemud: DaemonProcess, stored: None,
        tmp_path: Path) -> None:
    """A snapshot moves the running VM's system disk to an overlay in the snapshot store:
    no update or reset replaced the appliance's disks, and its save image restores."""
    dom = images.deploy(conn, "demo", "rs-snap", "1.0", start=True)
    image = str(tmp_path / "snap.save")
    try:
        dom.snapshot_create("s1")
        overlay = disk_sources(dom.xml())["vda"]
        assert "/snapshots/rs-snap/images/" in overlay
        dom.save(image)
        conn.restore(image)
        wait_state(dom, DomainState.RUNNING)
        assert disk_sources(dom.xml())["vda"] == overlay
    finally:
        remove_domain(dom)


def test_a_vm_whose_definition_must_follow_a_snapshot_is_not_reset(
        conn: client.Connection, qemud: DaemonProcess, stored: None) -> None:
    """The snapshot metadata records that the persistent definition must still follow the
    guest onto a snapshot's overlay (its write failed; see test_snapshot_definition_
    follow): the definition names the appliance's slot, which the snapshot froze. A
    factory reset (or update) would recreate that image under the overlay the next start
    boots: refused, saying why, and nothing changes."""
    dom = images.deploy(conn, "demo", "rs-follow", "1.0")
    vmdir = qemud.state_dir / "vms" / "rs-follow"
    index = qemud.state_dir / "snapshots" / "rs-follow" / "snapshots.json"
    overlay = str(qemud.state_dir / "snapshots" / "rs-follow" / "images" / "vda.s1.qcow2")
    try:
        index.parent.mkdir(parents=True)
        index.write_text(json.dumps({  # (as a create whose definition write failed leaves)
            "version": 1, "domain": "rs-follow", "uuid": dom.uuid,
            "current": "", "snapshots": [], "images": {}, "unplugged": {}, "kept": {},
            "follow": {"vda": [str(vmdir / "vda.a.qcow2"), overlay]}}, indent=1))
        before = (vmdir / "vda.a.qcow2").stat().st_ino
        for call in (lambda: images.factory_reset(conn, dom),
                     lambda: images.update(conn, dom, "2.0")):
            with pytest.raises(OperationInvalid) as info:
                call()
            assert ("its guest last ran on a snapshot's overlays, which its persistent "
                    "definition does not name yet") in str(info.value), info.value
        assert (vmdir / "vda.a.qcow2").stat().st_ino == before
        assert state_of(qemud, "rs-follow")["version"] == "1.0"
    finally:
        index.unlink()
        remove_domain(dom)


def test_a_guest_on_the_previous_disks_does_not_confirm_the_update(
        conn: client.Connection, events: EventLog, qemud: DaemonProcess,
        stored: None) -> None:
    """The VM's previous XML (slot A, 1.0, whose guest sends heartbeats) run over its
    definition while the update to 2.0 is pending: its heartbeat vouches for 1.0, not
    2.0. The update is neither confirmed nor rolled back; the start of its own
    definition confirms it."""
    dom = images.deploy(conn, "demo", "cf-vm", "1.0")
    vmdir = qemud.state_dir / "vms" / "cf-vm"
    try:
        old_xml = dom.xml(client.XML_INACTIVE)
        images.update(conn, dom, "2.0")  # shut off: pending until its next start
        conn.create_xml(old_xml)  # the defined domain runs the old XML
        assert disk_sources(dom.xml())["vda"] == str(vmdir / "vda.a.qcow2")
        events.wait("cf-vm", "heartbeat-seen", timeout=90)
        time.sleep(UPDATE_DEADLINE + 2)
        events.drain(0.5)
        assert events.appliance("cf-vm", "update-confirmed") == []
        assert events.appliance("cf-vm", "update-rolled-back") == []
        state = state_of(qemud, "cf-vm")
        assert state["pending"] is not None and state["version"] == "2.0"
        assert "update 1.0 -> 2.0 not armed: its live system disk vda is" \
            in qemud.log_text()

        dom.destroy()
        dom.create()  # its definition: 2.0 on slot B
        confirmed = events.wait("cf-vm", "update-confirmed", timeout=UPDATE_DEADLINE + 60)
        assert "1.0 -> 2.0" in confirmed[0].text
        assert state_of(qemud, "cf-vm")["pending"] is None
        assert disk_sources(dom.xml())["vda"] == str(vmdir / "vda.b.qcow2")
    finally:
        remove_domain(dom)


def virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["virtual-size"])


def test_a_rollback_gives_the_scratch_disk_its_previous_size_back(
        conn: client.Connection, events: EventLog, qemud: DaemonProcess,
        stored: None) -> None:
    """5.0's scratch disk is 32 MiB, 1.0's 16 MiB: rolled back to 1.0, the VM gets a
    scratch disk of 1.0's size again (recreated), and its state says so."""
    dom = images.deploy(conn, "demo", "size-vm", "1.0")
    scratch = qemud.state_dir / "vms" / "size-vm" / "vdc.scratch.qcow2"
    try:
        assert virtual_size(scratch) == 16 * MIB
        images.update(conn, dom, "5.0")  # shut off: pending until its next start
        assert virtual_size(scratch) == 32 * MIB
        assert state_of(qemud, "size-vm")["previous"]["scratch"] == {"vdc": 16 * MIB}
        dom.create()  # 5.0 sends no heartbeat: rolled back at the deadline
        rolled = events.wait("size-vm", "update-rolled-back", timeout=UPDATE_DEADLINE + 60)
        assert "5.0 -> back to 1.0" in rolled[0].text
        wait_state(dom, DomainState.RUNNING)
        assert origin(dom.xml(client.XML_INACTIVE)) == ("demo", "1.0")
        assert virtual_size(scratch) == 16 * MIB
        disks = state_of(qemud, "size-vm")["disks"]
        assert disks["vdc"]["size"] == 16 * MIB, disks
    finally:
        remove_domain(dom)
