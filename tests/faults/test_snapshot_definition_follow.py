"""A running guest moved to other images (a snapshot's overlays, a merge's pivot) while
the write of its persistent definition failed: nothing it wrote since is lost.

The definitions are on a real FUSE file system whose fsyncs the test fails
(:mod:`tests.helpers.slowfs`); the snapshot metadata and the images are on the temp dir's
disk. The snapshot metadata records that the definition must follow the guest's disks:
the next start boots the images the guest ran on, not the ones it left (a snapshot's
frozen image, or a layer merged below), and the next snapshot operation writes the
definition first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import client
from tests.appliance.snapshot_guests import Guest, disk_source, disk_xml, make_image
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background
from tests.integration.conftest import TestGuest

from .conftest import assert_log_clean, guest_name
from .slow_disk import held_until, on_slowfs


def failed_definition_write(slowfs: SlowFS, d: DaemonProcess, name: str,
                            call: str) -> client.OperationFailed:
    """The snapshot call ``call`` ("create" or "delete" of s1) on domain ``name``, with
    the fsync of its definition's write failed (EIO); returns the call's error."""
    slowfs.hold()
    try:
        background = Background(
            d, lambda c: (c.lookup_by_name(name).snapshot_create("s1") if call == "create"
                          else c.lookup_by_name(name).snapshot_delete("s1")))
        held_until(slowfs, lambda p: p.startswith(f"/config/domains/.{name}.xml."))
        slowfs.fail()
        with pytest.raises(client.OperationFailed) as failed:
            background.wait()
    finally:
        slowfs.release()
    return failed.value


def definition_file(slowfs: SlowFS, name: str) -> str:
    return (slowfs.backing / "config" / "domains" / f"{name}.xml").read_text()


@contextmanager
def booted(d: DaemonProcess, test_guest: TestGuest, name: str, tmp_path: Path,
           image: Path) -> Iterator[Guest]:
    """The test guest ``name`` on disk ``image``, booted on ``d``; closed (undefined)
    after, and whatever still runs on ``d`` destroyed."""
    try:
        with d.connect() as conn:
            g = Guest(conn, test_guest, name, tmp_path, disk_xml(image)).boot()
            try:
                yield g
            finally:
                g.close()
    finally:
        stop_destroying_guests(d)


def follow_record(d: DaemonProcess, name: str) -> dict[str, list[str]]:
    index = d.state_dir / "snapshots" / name / "snapshots.json"
    return dict(json.loads(index.read_text())["follow"])


def test_a_live_snapshot_whose_definition_write_fails_is_kept_and_booted(
        slowfs: SlowFS, daemon_factory: DaemonFactory, test_guest: TestGuest,
        tmp_path: Path) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("follow")
    image = make_image(tmp_path / "vda.qcow2")
    with booted(d, test_guest, name, tmp_path, image) as g:
        g.write("BEFORE")
        error = failed_definition_write(slowfs, d, name, "create")
        assert str(error).startswith(
            "operation failed: snapshot 's1' was taken and the guest writes to its "
            "overlays, but its persistent definition could not be saved: ")
        assert "Input/output error" in str(error)
        assert str(error).endswith(
            "The domain's next start uses the overlays, and its next snapshot "
            "operation saves the definition first")
        overlay = disk_source(g.dom.xml())
        assert overlay.endswith("/vda.s1.qcow2")
        assert [(s.name, s.current) for s in g.dom.snapshots()] == [("s1", True)]
        # the definition is as its file is: on the image the snapshot froze
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == str(image)
        assert str(image) in definition_file(slowfs, name)
        assert follow_record(d, name) == {"vda": [str(image), overlay]}
        g.write("AFTER!")
        g.dom.destroy()
        # the next start boots the overlay, where the guest wrote
        g.boot()
        assert disk_source(g.dom.xml()) == overlay
        assert g.read(6) == "AFTER!"
        # and the definition follows once the start is under way
        wait_for(lambda: overlay in definition_file(slowfs, name))
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == overlay
        wait_for(lambda: follow_record(d, name) == {})
        # the snapshot is whole: its delete merges the guest's writes into it
        g.dom.snapshot_delete("s1")
        assert disk_source(g.dom.xml()) == str(image)
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == str(image)
        assert g.read(6) == "AFTER!"
    assert_log_clean(d)


def test_the_next_snapshot_operation_writes_the_definition_first(
        slowfs: SlowFS, daemon_factory: DaemonFactory, test_guest: TestGuest,
        tmp_path: Path) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("followop")
    image = make_image(tmp_path / "vda.qcow2")
    with booted(d, test_guest, name, tmp_path, image) as g:
        failed_definition_write(slowfs, d, name, "create")
        first = disk_source(g.dom.xml())
        # a second snapshot while the disk still fails: refused, saying why
        slowfs.fail()
        try:
            with pytest.raises(client.OperationFailed) as refused:
                g.dom.snapshot_create("s2")
        finally:
            slowfs.release()
        assert str(refused.value).startswith(
            f"operation failed: cannot create a snapshot: the persistent definition "
            f"of domain '{name}' still names images its guest has left (disk vda: "
            f"{image}, now {first}; an earlier write failed), and writing it failed "
            "again: ")
        assert [s.name for s in g.dom.snapshots()] == ["s1"]
        assert disk_source(g.dom.xml()) == first
        # once the disk works: the definition first, then the snapshot on top
        assert g.dom.snapshot_create("s2") == "s2"
        second = disk_source(g.dom.xml())
        assert second.endswith("/vda.s2.qcow2")
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == second
        assert second in definition_file(slowfs, name)
        assert follow_record(d, name) == {}
        assert [s.name for s in g.dom.snapshots()] == ["s1", "s2"]
        assert Path(first).exists()  # s2 froze it
        g.write("SECOND")
        g.dom.snapshot_revert("s1")
        assert disk_source(g.dom.xml(client.XML_INACTIVE)).endswith(
            "vda.s1-revert.qcow2")
    assert_log_clean(d)


def test_a_live_merge_whose_definition_write_fails_boots_the_merged_image(
        slowfs: SlowFS, daemon_factory: DaemonFactory, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """After the pivot the guest writes to the snapshot's image; the overlay the
    definition still names holds older data over it, and is never booted."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("followmerge")
    image = make_image(tmp_path / "vda.qcow2")
    with booted(d, test_guest, name, tmp_path, image) as g:
        assert g.dom.snapshot_create("s1") == "s1"
        overlay = disk_source(g.dom.xml())
        g.write("OLDER!")
        error = failed_definition_write(slowfs, d, name, "delete")
        assert "Input/output error" in str(error)
        assert disk_source(g.dom.xml()) == str(image)  # pivoted
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == overlay
        assert follow_record(d, name) == {"vda": [overlay, str(image)]}
        g.write("NEWER!")
        g.dom.destroy()
        g.boot()
        assert disk_source(g.dom.xml()) == str(image)
        assert g.read(6) == "NEWER!"
        wait_for(lambda: follow_record(d, name) == {})
        assert disk_source(g.dom.xml(client.XML_INACTIVE)) == str(image)
        # the snapshot whose merge "failed" goes with a second delete
        g.dom.snapshot_delete("s1")
        assert g.dom.snapshots() == []
        assert g.read(6) == "NEWER!"
