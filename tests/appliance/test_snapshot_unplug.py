"""Hot-unplugging a disk after a live snapshot or a live merge, then plugging a disk in
under the same target: the detach closes the whole block graph of the disk (the
overlays too), so the node names are free again and QEMU no longer holds the files.
Real qemu-img and a real TCG test guest, as in test_snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .test_snapshot_delete import qemu_files
from .test_snapshots import Guest, disk_source, disk_xml, make_image, qemu_io_write
from .test_snapshots import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration

HAS_VDB = r"QEMUD-BLOCK: [^\n]*vdb"
NO_VDB = r"QEMUD-BLOCK: (?![^\n]*vdb)[^\n]*\n"
#: device_del -> ACPI unplug in the guest -> its block monitor (polls every 0.5 s), TCG
UNPLUG_TIMEOUT = 60.0


def plug(g: Guest, xml: str) -> None:
    """Attach ``xml`` (vdb) live and wait until the guest sees it."""
    assert g.serial is not None
    mark = g.serial.mark()
    g.dom.attach_device(xml)
    g.serial.wait_for(HAS_VDB, UNPLUG_TIMEOUT, start=mark)


def unplug(g: Guest, xml: str) -> None:
    """Detach ``xml`` (vdb) live: the call returns once the guest released it."""
    assert g.serial is not None
    mark = g.serial.mark()
    g.dom.detach_device(xml)
    g.serial.wait_for(NO_VDB, UNPLUG_TIMEOUT, start=mark)
    assert "'vdb'" not in g.dom.xml()


def overlays_of(qemud: DaemonProcess, name: str) -> list[str]:
    """The overlay files snapshots of ``name`` made for its disk vdb."""
    images = qemud.state_dir / "snapshots" / name / "images"
    return sorted(str(p) for p in images.glob("vdb.*"))


def read_vdb(g: Guest, n: int) -> str:
    line = g.command(f"read-disk vdb {n}", r"QEMUD-READ vdb [^\n]*\n")
    return line.rstrip("\n").split(" ", 2)[2]


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
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdb_xml = disk_xml(vdb, dev="vdb")
    g = Guest(conn, test_guest, name, tmp_path, disk_xml(vda)).boot()
    try:
        plug(g, vdb_xml)
        g.dom.snapshot_create("s1")
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
