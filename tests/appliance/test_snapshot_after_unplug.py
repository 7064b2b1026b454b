"""Snapshots that cover a disk which was hot-unplugged afterwards: what the user sees
and that no data of the unplugged disk is lost. The unplugged disk's last image is an
overlay the daemon created (the snapshot gave the disk one), so it holds what the guest
wrote after the snapshot: revert, delete and undefine must leave it (and its chain)
alone, and a revert to a snapshot whose disk is gone is refused without a change.
Real qemu-img and a real TCG test guest, as in test_snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from client.errors import OperationInvalid
from protocol.constants import UndefineFlags
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .snapshot_guests import Guest, disk_source, disk_xml, first_bytes, make_image
from .snapshot_guests import qemud as qemud  # the module's daemon fixture
from .vdb_hotplug import (
    has_vdb,
    overlays_of,
    plug,
    read_vdb,
    snapshotted_vdb,
    unplug,
)

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE


def unplugged_after_write(conn: client.Connection, test_guest: TestGuest, name: str,
                          tmp_path: Path) -> tuple[Guest, Path, str]:
    """A running guest whose vdb (under snapshot s1) got ``AFTER`` written after s1 and
    was then unplugged; the guest, vdb's own image and the image vdb used last (an
    overlay of the daemon, the only file with ``AFTER``)."""
    g, vdb, vdb_xml = snapshotted_vdb(conn, test_guest, name, tmp_path)
    try:
        g.command("write-disk vdb AFTER", r"QEMUD-WROTE vdb")
        top = disk_source(g.dom.xml(), "vdb")
        assert top != str(vdb)
        unplug(g, vdb_xml)
    except BaseException:
        g.close()
        raise
    return g, vdb, top


def holds_after(top: str) -> bool:
    return Path(top).is_file() and first_bytes(top, "qcow2", 5) == b"AFTER"


def refused_revert(g: Guest, vdb: Path) -> OperationInvalid:
    """A revert to s1 is refused because vdb is not in the persistent definition, and
    nothing changed: same state, same disks and files, same current snapshot."""
    name = g.dom.name
    running = g.dom.is_active()
    xml, inactive = g.dom.xml(), g.dom.xml(INACTIVE)
    files = sorted(p.name for p in (Path(vdb).parent).iterdir())
    with pytest.raises(OperationInvalid, match=(
            f"cannot revert domain '{name}' to snapshot 's1': its disk 'vdb' "
            rf"\({vdb}\) is not in the domain's persistent definition \(unplugged "
            r"since, or attached live only\)")) as err:
        g.dom.snapshot_revert("s1")
    assert "Attach the disk with --config to revert it too, or delete the snapshot" \
        in str(err.value)
    assert g.dom.is_active() == running
    assert g.dom.xml() == xml and g.dom.xml(INACTIVE) == inactive
    assert sorted(p.name for p in (Path(vdb).parent).iterdir()) == files
    assert [(s.name, s.current) for s in g.dom.snapshots()] == [("s1", True)]
    return err.value


@pytest.mark.parametrize("running", [True, False], ids=["running", "shut-off"])
def test_revert_to_snapshot_of_unplugged_disk_is_refused(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path, running: bool) -> None:
    """Refused with the disk and where its data is; attaching it again (--config) lets
    the revert go ahead and reset it to the snapshot, the unplugged image stays."""
    name = f"unplugged-revert-{'run' if running else 'off'}"
    g, vdb, top = unplugged_after_write(conn, test_guest, name, tmp_path)
    try:
        g.write("NOW")
        if not running:
            g.dom.destroy()
        files = overlays_of(qemud, name)
        error = refused_revert(g, vdb)
        assert f"what it held last is in {top}" in str(error)
        assert overlays_of(qemud, name) == files
        if running:
            assert g.read(3) == "NOW"  # the guest was not touched
        assert holds_after(top)
        # the way out the message gives: the disk back in the definition, then revert
        g.dom.attach_device(disk_xml(vdb, dev="vdb"), client.AFFECT_CONFIG)
        g.dom.snapshot_revert("s1")
        assert g.dom.is_active() == running
        source = disk_source(g.dom.xml(INACTIVE), "vdb")
        assert source.startswith(str(qemud.state_dir / "snapshots" / name / "images"))
        if running:  # vdb as s1 froze it (empty), not AFTER
            g.attach()
            assert disk_source(g.dom.xml(), "vdb") == source
            assert read_vdb(g, 5) == "....."
        else:
            assert first_bytes(source, "qcow2", 5) == bytes(5)
        assert holds_after(top)  # not the reverted disk's image: still kept
    finally:
        g.close()
    assert holds_after(top)


def test_revert_with_disk_attached_live_only_is_refused(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """vdb hot-plugged (live only) under s1 and still attached: the guest would come
    back from the revert without it, so the revert is refused as well."""
    g, vdb, _ = snapshotted_vdb(conn, test_guest, "live-only-revert", tmp_path)
    try:
        error = refused_revert(g, vdb)
        assert "what it held last" not in str(error)  # vdb is still attached
        assert has_vdb(g.dom.xml())
        g.write("UP")
        assert g.read(2) == "UP"
    finally:
        g.close()


def test_revert_to_earlier_snapshot_keeps_unplugged_disk_image(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """s0 (vda only) -> plug vdb -> s1 -> write vdb -> unplug -> revert to s0: vdb is not
    in s0, so the revert goes ahead, and the image vdb used last stays."""
    name = "unplugged-revert-s0"
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdb_xml = disk_xml(vdb, dev="vdb")
    g = Guest(conn, test_guest, name, tmp_path, disk_xml(vda)).boot()
    try:
        g.dom.snapshot_create("s0")
        plug(g, vdb_xml)
        g.dom.snapshot_create("s1")
        g.command("write-disk vdb AFTER", r"QEMUD-WROTE vdb")
        top = disk_source(g.dom.xml(), "vdb")
        unplug(g, vdb_xml)
        g.dom.snapshot_revert("s0")
        g.attach()
        assert not has_vdb(g.dom.xml()) and not has_vdb(g.dom.xml(INACTIVE))
        assert holds_after(top)
    finally:
        g.close()
    assert holds_after(top)  # undefine --snapshots-metadata kept it too


def test_delete_snapshot_of_unplugged_disk_keeps_its_image(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    name = "unplugged-delete"
    g, vdb, top = unplugged_after_write(conn, test_guest, name, tmp_path)
    try:
        vda = disk_source(g.dom.xml(), "vda")
        g.dom.snapshot_delete("s1")  # metadata only: vdb has no overlay of s1 any more
        assert "snapshot s1: metadata only, no merge (disk vdb does not use an overlay " \
               "of the snapshot's image)" in qemud.log_text()
        assert g.dom.snapshots() == []
        assert disk_source(g.dom.xml(), "vda") == vda and Path(vda).is_file()
        g.write("VDA")
        assert g.read(3) == "VDA"
        assert holds_after(top)
        assert vdb.is_file()
    finally:
        g.close()
    assert holds_after(top)


def test_undefine_snapshots_metadata_keeps_unplugged_disk_image(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    name = "unplugged-undefine"
    g, vdb, top = unplugged_after_write(conn, test_guest, name, tmp_path)
    try:
        vda = disk_source(g.dom.xml(), "vda")
        g.dom.destroy()
        g.dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
        assert Path(vda).is_file()  # the definition's image stays, as for every disk
        assert holds_after(top)
        assert vdb.is_file()
    finally:
        g.close()


def test_no_merge_under_the_unplugged_disk_image(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """vdb unplugged (its last image, an overlay on vdb.qcow2, kept), s1 deleted, then
    vdb.qcow2 plugged again and snapshotted (s2): deleting s2 would commit into
    vdb.qcow2, which the kept image reads from, so it only drops the metadata."""
    name = "unplugged-replug"
    g, vdb, top = unplugged_after_write(conn, test_guest, name, tmp_path)
    try:
        g.dom.snapshot_delete("s1")  # metadata only; no snapshot reads vdb.qcow2 now
        plug(g, disk_xml(vdb, dev="vdb"))
        g.dom.snapshot_create("s2")
        g.command("write-disk vdb NEWER", r"QEMUD-WROTE vdb")
        s2_top = disk_source(g.dom.xml(), "vdb")
        assert s2_top not in (top, str(vdb))
        g.dom.snapshot_delete("s2")
        assert (f"snapshot s2: metadata only, no merge ({vdb} is still needed by another "
                "snapshot or disk)") in qemud.log_text()
        assert disk_source(g.dom.xml(), "vdb") == s2_top  # no pivot: not merged
        assert read_vdb(g, 5) == "NEWER"
        assert holds_after(top)
        assert g.dom.snapshots() == []
    finally:
        g.close()
    assert holds_after(top)


def test_image_recorded_at_unplug_survives_a_replug_under_the_same_target(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """The unplug itself records the disk's last image: a new disk plugged under the
    same target before any snapshot call does not make it look like a source changed
    by hand (whose old overlay is discarded). The image survives the snapshot's delete
    and the undefine with the snapshot metadata."""
    g, vdb, top = unplugged_after_write(conn, test_guest, "unplugged-replug", tmp_path)
    try:
        other = make_image(tmp_path / "other.qcow2")
        plug(g, disk_xml(other, dev="vdb"))  # no snapshot call since the unplug
        assert disk_source(g.dom.xml(), "vdb") == str(other)
        g.dom.snapshot_delete("s1")
        assert holds_after(top)
    finally:
        g.close()  # undefine with the snapshot metadata
    assert holds_after(top) and vdb.is_file()


def without_disk(xml: str, dev: str) -> str:
    """``xml`` with its disk ``dev`` removed."""
    from lxml import etree
    root = etree.fromstring(xml.encode())
    for disk in root.iter("disk"):
        if disk.find("target").get("dev") == dev:
            disk.getparent().remove(disk)
    return etree.tostring(root, encoding="unicode")


def test_image_recorded_when_a_define_drops_the_disk(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """A define without vdb removes it as a detach --config would: the image vdb used
    last (written after s1) is recorded at once, so a second define that puts another
    image under vdb, before any snapshot call, does not make it look discardable."""
    name = "define-drops-vdb"
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    g = Guest(conn, test_guest, name, tmp_path, disk_xml(vda) + disk_xml(vdb, dev="vdb"))
    try:
        g.boot()
        g.dom.snapshot_create("s1")
        g.command("write-disk vdb AFTER", r"QEMUD-WROTE vdb")
        top = disk_source(g.dom.xml(), "vdb")
        g.dom.destroy()
        assert disk_source(g.dom.xml(INACTIVE), "vdb") == top
        conn.define_xml(without_disk(g.dom.xml(INACTIVE), "vdb"))
        other = make_image(tmp_path / "other.qcow2")
        conn.define_xml(without_disk(g.dom.xml(INACTIVE), "vdb").replace(
            "</devices>", disk_xml(other, dev="vdb") + "</devices>"))
        assert disk_source(g.dom.xml(INACTIVE), "vdb") == str(other)
        g.dom.snapshot_delete("s1")
        assert holds_after(top)
    finally:
        g.close()  # undefine with the snapshot metadata
    assert holds_after(top) and vdb.is_file()
