"""Snapshots and an A/B appliance update waiting for its confirmation.

While the update is pending its rollback may delete the new slot's overlay and recreate
the scratch disks: a snapshot taken then would freeze the overlay that is deleted, and its
overlays would sit on a recreated, empty scratch image. So snapshot create and revert are
refused while an update is pending, and so are save and managed save (the saved memory
state would belong to disks the rollback deletes); the rollback itself leaves disks that
are no longer the appliance's alone. Real qemu-img and the test guest (TCG), with the appliances
of test_images.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client import appliance_images as images
from client.errors import OperationInvalid
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, remove_domain, serving

from .appliances import disk_sources, origin
from .appliances import stored as stored  # the appliances 1.0, 2.0, 3.0 (no heartbeat)
from .appliances import work as work
from .conftest import EventLog, wait_state

pytestmark = pytest.mark.integration

#: short: the rollback does not need the guest booted, only started
UPDATE_DEADLINE = 8.0


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img-snap"),
                           {"appliance": {"update_deadline": UPDATE_DEADLINE}})
    with serving(daemon):
        yield daemon


def test_pending_update_refuses_snapshots_and_rollback_spares_foreign_disks(
        conn: client.Connection, qemud: DaemonProcess, stored: dict[str, Path],
        tmp_path: Path) -> None:
    events = EventLog(conn)
    conn.register_event(client.EventId.APPLIANCE)
    dom = images.deploy(conn, "demo", "vm-pend", "1.0")
    vmdir = qemud.state_dir / "vms" / "vm-pend"
    try:
        images.update(conn, dom, "3.0")  # shut off: switched now, confirmed at its start
        assert origin(dom.xml(client.XML_INACTIVE)) == ("demo", "3.0")
        for call in (lambda: dom.snapshot_create("during"),
                     lambda: dom.snapshot_revert("during")):
            with pytest.raises(OperationInvalid) as info:
                call()
            message = str(info.value)
            assert "update from 1.0 to 3.0 is pending" in message, message
            assert "heartbeat confirms it" in message and "rollback" in message, message
        assert dom.snapshots() == []
        assert not (qemud.state_dir / "snapshots" / "vm-pend" / "images").exists()

        # the user points the scratch disk at an overlay of their own: the rollback
        # would recreate the image under it, so it must not run
        scratch = vmdir / "vdc.scratch.qcow2"
        mine = tmp_path / "vdc.mine.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(scratch), str(mine)], check=True)
        xml = dom.xml(client.XML_INACTIVE).replace(f"file='{scratch}'", f"file='{mine}'")
        assert str(mine) in xml
        dom = conn.define_xml(xml)
        scratch_inode = scratch.stat().st_ino
        dom.create()  # 3.0 sends no heartbeat: the rollback comes at the deadline
        # nor is the memory state saved meanwhile: the rollback would delete the disk
        # it belongs to (a managed save image could no longer be restored)
        for call in (lambda: dom.managed_save(), lambda: dom.save(str(tmp_path / "s"))):
            with pytest.raises(OperationInvalid) as info:
                call()
            assert str(info.value).startswith(
                "Requested operation is not valid: cannot save the memory state of "
                "domain 'vm-pend': its appliance update from 1.0 to 3.0 is pending")
        assert not dom.has_managed_save() and not (tmp_path / "s").exists()
        failed = events.wait("vm-pend", "update-rollback-failed",
                             timeout=UPDATE_DEADLINE + 60)[0]
        assert "not rolled back" in failed.text and "nothing was changed" in failed.text
        assert f"disk vdc is {mine}" in failed.text, failed.text
        assert events.appliance("vm-pend", "update-rolled-back") == []
        assert dom.state()[0] == DomainState.RUNNING  # not stopped
        assert (vmdir / "vda.b.qcow2").is_file() and (vmdir / "vda.a.qcow2").is_file()
        assert scratch.stat().st_ino == scratch_inode  # not recreated
        xml = dom.xml(client.XML_INACTIVE)
        assert origin(xml) == ("demo", "3.0")
        assert disk_sources(xml)["vdc"] == str(mine)
        assert "not rolled back" in qemud.log_text()
        with pytest.raises(OperationInvalid, match="update from 1.0 to 3.0 is pending"):
            dom.snapshot_create("still")

        # disks given back: the next start's deadline rolls it back
        dom.destroy()
        dom = conn.define_xml(xml.replace(f"file='{mine}'", f"file='{scratch}'"))
        dom.create()
        rolled = events.wait("vm-pend", "update-rolled-back",
                             timeout=UPDATE_DEADLINE + 60)[0]
        assert "3.0 -> back to 1.0" in rolled.text
        wait_state(dom, DomainState.RUNNING)
        assert origin(dom.xml(client.XML_INACTIVE)) == ("demo", "1.0")
        assert dom.snapshot_create("after") == "after"  # nothing pending any more
        dom.snapshot_delete("after")
    finally:
        remove_domain(dom)
