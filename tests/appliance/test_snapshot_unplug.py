"""Hot-unplugging a disk after a live snapshot or a live merge, then plugging a disk in
under the same target: the detach closes the whole block graph of the disk (the
overlays too), so the node names are free again and QEMU no longer holds the files.
Real qemu-img and a real TCG test guest, as in test_snapshots."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import client
from client.errors import OperationInvalid
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .snapshot_chains import qemu_files
from .snapshot_guests import Guest, disk_source, disk_xml, make_image, qemu_io_write
from .snapshot_guests import qemud as qemud  # the module's daemon fixture
from .vdb_hotplug import (
    UNPLUG_TIMEOUT,
    device_dels,
    has_vdb,
    overlays_of,
    plug,
    read_vdb,
    replug_in_qemu,
    snapshotted_vdb,
    unplug,
    wait_until,
)

pytestmark = pytest.mark.integration


def replug_and_check(g: Guest, qemud: DaemonProcess, tmp_path: Path,
                     gone: list[str]) -> None:
    """``gone`` are no longer open in QEMU; a new vdb plugs in and the guest reads it."""
    files = qemu_files(qemud, g.dom.name)
    assert not [f for f in files if f in gone], files
    fresh = make_image(tmp_path / "fresh.qcow2")
    qemu_io_write(str(fresh), "N")
    plug(g, disk_xml(fresh, dev="vdb"))
    assert read_vdb(g, 1) == "N"
    assert disk_source(g.dom.xml(), "vdb") == str(fresh)
    assert str(fresh) in qemu_files(qemud, g.dom.name)


@pytest.mark.parametrize("how", ["hotplugged", "at-start"])
def test_unplug_after_live_snapshot(conn: client.Connection, qemud: DaemonProcess,
                                    test_guest: TestGuest, tmp_path: Path,
                                    how: str) -> None:
    name = f"unplug-snap-{how}"
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdb_xml = disk_xml(vdb, dev="vdb")
    g = Guest(conn, test_guest, name, tmp_path,
              disk_xml(vda) + (vdb_xml if how == "at-start" else "")).boot()
    try:
        if how == "hotplugged":
            plug(g, vdb_xml)
        g.command("write-disk vdb OLD", r"QEMUD-WROTE vdb")
        g.dom.snapshot_create("s1")
        g.dom.snapshot_create("s2")  # two overlays: a chain of three images
        overlays = overlays_of(qemud, name)
        assert len(overlays) == 2 and disk_source(g.dom.xml(), "vdb") in overlays
        assert set(overlays) | {str(vdb)} <= set(qemu_files(qemud, name))
        unplug(g, vdb_xml)
        replug_and_check(g, qemud, tmp_path, [str(vdb), *overlays])
        g.write("STILL-VDA")  # the other disk's graph was left alone
        assert g.read(9) == "STILL-VDA"
    finally:
        g.close()


@pytest.mark.parametrize("merge", ["active", "below"])
def test_unplug_after_live_merge(conn: client.Connection, qemud: DaemonProcess,
                                 test_guest: TestGuest, tmp_path: Path, merge: str) -> None:
    name = f"unplug-merge-{merge}"
    g, vdb, vdb_xml = snapshotted_vdb(conn, test_guest, name, tmp_path)
    try:
        g.command("write-disk vdb MERGED", r"QEMUD-WROTE vdb")
        if merge == "below":
            g.dom.snapshot_create("s2")
        overlays = overlays_of(qemud, name)
        # active: s1's overlay is committed into vdb.qcow2 and the disk pivots back to
        # it; below: the layer on vdb.qcow2 (s1's overlay) is committed into it and s2's
        # overlay reads from vdb.qcow2 directly
        g.dom.snapshot_delete("s1")
        top = disk_source(g.dom.xml(), "vdb")
        assert top == (str(vdb) if merge == "active" else overlays[-1])
        assert read_vdb(g, 6) == "MERGED"
        assert top in qemu_files(qemud, name)
        unplug(g, vdb_xml)
        replug_and_check(g, qemud, tmp_path, [str(vdb), *overlays])
    finally:
        g.close()


def test_unplug_replug_without_snapshot(conn: client.Connection, qemud: DaemonProcess,
                                        test_guest: TestGuest, tmp_path: Path) -> None:
    vda = make_image(tmp_path / "vda.qcow2")  # the guest names the first virtio disk vda
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdb_xml = disk_xml(vdb, dev="vdb")
    g = Guest(conn, test_guest, "unplug-plain", tmp_path, disk_xml(vda)).boot()
    try:
        plug(g, vdb_xml)
        unplug(g, vdb_xml)
        replug_and_check(g, qemud, tmp_path, [str(vdb)])
    finally:
        g.close()


def test_detach_waiting_for_the_guest_excludes_jobs_and_a_second_detach(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """While the guest has not released a disk (here: paused, so it cannot), a second
    detach of it and a snapshot, merge or backup are refused; the first detach then
    completes once the guest releases the disk."""
    name = "unplug-busy"
    g, vdb, vdb_xml = snapshotted_vdb(conn, test_guest, name, tmp_path)
    try:
        overlays = overlays_of(qemud, name)
        sent = device_dels(qemud)
        g.dom.suspend()  # the guest answers the unplug request once resumed
        with qemud.connect() as other, ThreadPoolExecutor(1) as pool:
            first = pool.submit(other.lookup_by_name(name).detach_device, vdb_xml)
            wait_until(lambda: device_dels(qemud) > sent)
            with pytest.raises(OperationInvalid,
                               match=f"disk vdb of domain '{name}' is already being "
                                     "detached"):
                g.dom.detach_device(vdb_xml)
            busy = f"domain '{name}' is busy: detach of disk vdb in progress"
            with pytest.raises(OperationInvalid, match=busy):
                g.dom.snapshot_create("s2")
            with pytest.raises(OperationInvalid, match=busy):
                g.dom.snapshot_delete("s1")
            with pytest.raises(OperationInvalid, match=busy):
                g.dom.backup(str(tmp_path / "backup.raw"))
            assert not first.done()  # still waiting for the guest
            assert has_vdb(g.dom.xml())
            g.dom.resume()
            first.result(timeout=UNPLUG_TIMEOUT)  # released: the first detach succeeds
        assert device_dels(qemud) == sent + 1
        assert not has_vdb(g.dom.xml())
        assert [s.name for s in g.dom.snapshots()] == ["s1"]
        assert not (tmp_path / "backup.raw").exists()
        replug_in_qemu(g, qemud, tmp_path, [str(vdb), *overlays])
        g.dom.snapshot_create("s2")  # no longer busy
    finally:
        g.close()
