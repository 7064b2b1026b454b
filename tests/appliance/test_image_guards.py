"""A deployed VM's appliance state against the driver's own calls: an undefine while an
A/B update waits for its confirmation.

Real daemon, real qemu-img and the test guest (TCG). The appliances: demo 1.0 (with a
heartbeat) and 3.0 (its guest sends none: its update is rolled back at the deadline),
built as in test_images.
"""

from __future__ import annotations

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
        for desc in (descriptor("1.0"), descriptor("3.0", boot=NO_HEARTBEAT)):
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
