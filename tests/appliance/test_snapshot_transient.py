"""The snapshots of a transient domain go away with it (as in libvirt), its images stay.

A transient domain created again with the same XML (same name and uuid) must start
without the first run's snapshots: otherwise it writes into the old snapshot's frozen
image, and the next garbage collection removes the overlay that holds everything the
first run wrote. Real qemu-img and a real TCG test guest, as in test_snapshots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

from .snapshot_guests import boot_transient, disk_source, disk_xml, first_bytes, make_image, write
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration

NAME = "snap-transient"


def test_transient_domain_snapshots_end_with_it(conn: client.Connection,
                                                qemud: DaemonProcess,
                                                test_guest: TestGuest,
                                                tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    sock = tmp_path / "t.serial"
    xml = guest_xml(NAME, test_guest, sock, extra=disk_xml(data))
    state = qemud.state_dir / "snapshots" / NAME
    index = state / "snapshots.json"
    dom, serial = boot_transient(conn, test_guest, xml, sock)
    try:
        uuid = dom.uuid
        dom.snapshot_create("t1snap")
        first_top = disk_source(dom.xml())
        assert first_top != str(data)
        write(serial, "FIRST-RUN")
        serial.close()
        mark = len(qemud.log_text())
        dom.destroy()
        with pytest.raises(client.QemudClientError):
            conn.lookup_by_name(NAME)
        # the metadata went aside (under a name that says so), every image stayed; on the
        # loop turn after the stop, renamed first and logged just after: waited for by
        # its log line, as the record being gone could be seen before that line
        wait_for(lambda: "its snapshot metadata was moved to" in qemud.log_text()[mark:],
                 message="the record set aside")
        aside = sorted(state.glob("snapshots.*.transient-ended.json"))
        assert len(aside) == 1, sorted(state.iterdir())
        assert not index.exists()
        recorded = json.loads(aside[0].read_text())
        assert "t1snap" in {s["name"] for s in recorded["snapshots"]}
        assert aside[0].name == f"snapshots.{uuid}.transient-ended.json"
        assert first_bytes(first_top, "qcow2", 9) == b"FIRST-RUN"
        assert f"its snapshot metadata was moved to {aside[0]}" in qemud.log_text()

        # the same XML again: no snapshots; an unrelated create + delete leaves the
        # first run's overlay alone
        dom, serial = boot_transient(conn, test_guest, xml, sock)
        assert dom.snapshots() == []
        assert disk_source(dom.xml()) == str(data)
        dom.snapshot_create("t2snap")
        write(serial, "SECOND-RUN")
        dom.snapshot_delete("t2snap")
        assert dom.snapshots() == []
        assert Path(first_top).is_file()  # (read once the guest is gone: its backing
        serial.close()                     # file, merged into, is QEMU's to write now)
        dom.destroy()
        # ended twice with the same uuid: both records kept, neither replaced
        wait_for(lambda: not index.exists())
        assert len(sorted(state.glob("snapshots.*.transient-ended*.json"))) == 2
        assert first_bytes(first_top, "qcow2", 9) == b"FIRST-RUN"
    finally:
        serial.close()
        try:
            conn.lookup_by_name(NAME).destroy()
        except client.QemudClientError:
            pass


def test_a_transient_domain_restarted_after_a_crash_runs_on_its_snapshot_overlay(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """A transient guest with ``<on_crash>restart`` panics after a snapshot: the new
    QEMU opens the overlay the guest wrote since (it was started from the definition
    the guest was created with, so it read the snapshot's frozen image and then wrote
    into it, under a snapshot still listed)."""
    data = make_image(tmp_path / "crash.qcow2")
    sock = tmp_path / "c.serial"
    xml = guest_xml("snap-crash", test_guest, sock,
                    extra=disk_xml(data) + "<panic model='isa'/>").replace(
        "<on_crash>destroy</on_crash>", "<on_crash>restart</on_crash>")
    dom, serial = boot_transient(conn, test_guest, xml, sock)
    try:
        write(serial, "BEFORE-S1")
        dom.snapshot_create("s1")
        top = disk_source(dom.xml())
        write(serial, "AFTER-S1")
        conn.register_event(client.EventId.LIFECYCLE, domain=dom)
        serial.send("panic")
        wait_for(lambda: (e := conn.next_event(1)) is not None
                 and e.event == client.LifecycleEvent.STARTED, timeout=120,
                 message="the guest started again")
        serial.close()
        serial = SerialPort(sock)  # (the restarted QEMU's)
        serial.wait_for(READY, 120)
        assert disk_source(dom.xml()) == top
        serial.send("read-disk vda 8")
        assert serial.wait_for(r"QEMUD-READ vda (\S+)", 30).group(1) == "AFTER-S1"
        assert first_bytes(str(data), "qcow2", 9) == b"BEFORE-S1"  # (still frozen)
    finally:
        serial.close()
        try:
            dom.destroy()
        except client.QemudClientError:
            pass
