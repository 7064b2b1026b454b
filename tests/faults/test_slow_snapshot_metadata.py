"""Snapshot operations on a disk that takes its time: their metadata waits for its fsyncs
off the daemon's loop.

The daemon's state directory (with the snapshot metadata and overlays) is on a real FUSE
file system whose fsyncs the test holds (:mod:`tests.helpers.slowfs`); the guest's own
image is on the temp dir's disk. While a snapshot's ``snapshots.json`` waits for the
disk, other clients are answered, the domain is busy for snapshot calls, and the caller
waits; a failed fsync fails the call with the file named, and the snapshot is not taken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, MetadataType, UndefineFlags
from tests.appliance.snapshot_guests import Guest, disk_source, disk_xml, make_image
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background
from tests.integration.conftest import TestGuest

from .conftest import NO_GUEST_EMULATOR, assert_log_clean, bare_domain_xml, guest_name
from .slow_disk import held_until, metadata_temp, recorded


def on_slow_state(slowfs: SlowFS, daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose state directory (snapshot metadata and overlays) and config
    directory (definitions) are on ``slowfs``."""
    return daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state"),
                                            "config_dir": str(slowfs.mount / "config")}})


def shut_off_domain(conn: client.Connection, name: str, image: Path) -> client.Domain:
    return conn.define_xml(bare_domain_xml(name, emulator=NO_GUEST_EMULATOR,
                                           devices=disk_xml(image)))


def held_snapshot_call(slowfs: SlowFS, d: DaemonProcess, name: str,
                       call: Callable[[client.Domain], object]) -> Background:
    """``call`` on domain ``name``, on its own connection, with every fsync held from
    now on; returned once its first metadata write's fsync waits."""
    slowfs.hold()
    background = Background(d, lambda c: call(c.lookup_by_name(name)))
    held_until(slowfs, metadata_temp(name))
    return background


def test_a_snapshot_waits_for_its_metadata_off_the_loop(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("snapmeta")
    image = make_image(tmp_path / "vda.qcow2")
    index = slowfs.backing / "state" / "snapshots" / name / "snapshots.json"
    with d.connect() as other:
        dom = shut_off_domain(other, name, image)
        # first the overlay's backing link, before any definition names the overlay
        create = held_snapshot_call(slowfs, d, name, lambda dom: dom.snapshot_create("s1"))
        try:
            assert other.node_info().cpus >= 1  # the loop serves others meanwhile
            assert not index.exists()
            assert dom.snapshots() == []
            with pytest.raises(client.OperationInvalid, match="busy: snapshot in progress"):
                dom.snapshot_create("s2")
            assert not create.answered
            slowfs.let()
            # then the definition, which names the overlay in memory at once
            held_until(slowfs, lambda p: p.startswith(f"/config/domains/.{name}.xml."))
            assert other.node_info().cpus >= 1
            assert disk_source(dom.xml(client.XML_INACTIVE)).endswith("/vda.s1.qcow2")
            assert "vda.s1.qcow2" not in (slowfs.backing / "config" / "domains" /
                                          f"{name}.xml").read_text()
            # a change queued on that write would carry it even if it failed
            with pytest.raises(client.OperationInvalid, match="busy: snapshot in progress"):
                dom.set_metadata(MetadataType.TITLE, "mid-snapshot", client.AFFECT_CONFIG)
            slowfs.let()
            # then the snapshot itself
            held_until(slowfs, metadata_temp(name))
            assert other.node_info().cpus >= 1
            assert recorded(index) == []  # the file: the first write's
            assert [s.name for s in dom.snapshots()] == ["s1"]  # the write in flight
            assert not create.answered
        finally:
            slowfs.release()
        assert create.wait() == "s1"
        assert recorded(index) == ["s1"]
        assert [p.name for p in index.parent.iterdir() if p.name.endswith(".tmp")] == []
        dom.snapshot_delete("s1")
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(image)
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
    assert_log_clean(d)


def test_a_failed_metadata_fsync_takes_no_snapshot(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("snapeio")
    image = make_image(tmp_path / "vda.qcow2")
    images = slowfs.backing / "state" / "snapshots" / name / "images"
    with d.connect() as other:
        dom = shut_off_domain(other, name, image)
        create = held_snapshot_call(slowfs, d, name, lambda dom: dom.snapshot_create("s1"))
        try:
            slowfs.fail()
            with pytest.raises(client.OperationFailed) as failed:
                create.wait()
        finally:
            slowfs.release()
        index = slowfs.mount / "state" / "snapshots" / name / "snapshots.json"
        assert str(failed.value) == (f"operation failed: cannot write snapshot metadata "
                                     f"{index}: Input/output error")
        # nothing changed: no snapshot, the definition on its image, no overlay left
        assert dom.snapshots() == []
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(image)
        assert [p.name for p in images.iterdir()] == []
        assert not index.exists()
        assert dom.snapshot_create("s1") == "s1"  # the domain is not left busy
        dom.snapshot_delete("s1")
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)


def test_a_delete_removes_no_image_before_its_metadata_is_written(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("delmeta")
    image = make_image(tmp_path / "vda.qcow2")
    index = slowfs.backing / "state" / "snapshots" / name / "snapshots.json"
    with d.connect() as other:
        dom = shut_off_domain(other, name, image)
        assert dom.snapshot_create("s1") == "s1"
        overlay = Path(disk_source(dom.xml(client.XML_INACTIVE)))
        # the merge's mark, before qemu-img commit writes into the image
        delete = held_snapshot_call(slowfs, d, name, lambda dom: dom.snapshot_delete("s1"))
        try:
            assert other.node_info().cpus >= 1
            with pytest.raises(client.OperationInvalid,
                               match="busy: snapshot-delete in progress"):
                dom.snapshot_create("s2")
            slowfs.let()
            # merged, the definition back on the image; s1 forgotten in the write held,
            # and the overlay is still there until that write has ended
            held_until(slowfs, metadata_temp(name))
            assert disk_source(dom.xml(client.XML_INACTIVE)) == str(image)
            assert recorded(index) == ["s1"]
            assert overlay.exists()
            assert not delete.answered
        finally:
            slowfs.release()
        delete.wait()
        assert recorded(index) == []
        assert dom.snapshots() == []
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
    assert_log_clean(d)


def test_a_revert_removes_no_image_before_its_metadata_is_written(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("revmeta")
    image = make_image(tmp_path / "vda.qcow2")
    with d.connect() as other:
        dom = shut_off_domain(other, name, image)
        assert dom.snapshot_create("s1") == "s1"
        first = Path(disk_source(dom.xml(client.XML_INACTIVE)))
        # the new overlay's backing link
        revert = held_snapshot_call(slowfs, d, name, lambda dom: dom.snapshot_revert("s1"))
        try:
            assert other.node_info().cpus >= 1
            with pytest.raises(client.OperationInvalid,
                               match="busy: snapshot-revert in progress"):
                dom.snapshot_delete("s1")
            slowfs.let()
            held_until(slowfs, metadata_temp(name))  # reverted: s1 current, first unused
            second = Path(disk_source(dom.xml(client.XML_INACTIVE)))
            assert second != first and second.name.startswith("vda.s1-revert")
            assert first.exists()  # until the write has ended
            assert not revert.answered
        finally:
            slowfs.release()
        revert.wait()
        assert [(s.name, s.current) for s in dom.snapshots()] == [("s1", True)]
        assert not first.exists() and second.exists()
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
    assert_log_clean(d)


def test_a_live_merge_keeps_snapshot_calls_out_until_its_metadata_is_under_way(
        slowfs: SlowFS, daemon_factory: DaemonFactory, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """A live merge ends its job when QEMU has pivoted (a stop that ends it must let an
    ``<on_poweroff>restart`` start the guest), then writes the definition, then the
    metadata: in between, the metadata file still names the snapshot, and a snapshot
    call is refused as busy rather than build on it."""
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("livemerge")
    image = make_image(tmp_path / "vda.qcow2")
    try:
        with d.connect() as conn:
            g = Guest(conn, test_guest, name, tmp_path, disk_xml(image)).boot()
            try:
                assert g.dom.snapshot_create("s1") == "s1"
                # the merge's mark
                delete = held_snapshot_call(slowfs, d, name,
                                            lambda dom: dom.snapshot_delete("s1"))
                try:
                    slowfs.let()
                    # merged and pivoted; the definition follows the disk
                    held_until(slowfs, lambda p: p.startswith(f"/config/domains/.{name}.xml."))
                    with pytest.raises(client.OperationInvalid,
                                       match="busy: snapshot-delete in progress"):
                        g.dom.snapshot_create("s2")
                    assert not delete.answered
                    slowfs.let()
                    held_until(slowfs, metadata_temp(name))  # s1 forgotten
                    assert g.dom.snapshots() == []  # (the write in flight)
                    assert not delete.answered
                finally:
                    slowfs.release()
                delete.wait()
                assert disk_source(g.dom.xml()) == str(image)
                assert disk_source(g.dom.xml(client.XML_INACTIVE)) == str(image)
                g.write("AFTER")
                assert g.read(5) == "AFTER"
            finally:
                g.close()
    finally:
        stop_destroying_guests(d)


def test_a_guest_stopped_while_a_delete_marks_its_merge_is_not_merged(
        slowfs: SlowFS, daemon_factory: DaemonFactory, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """The delete of a running guest's snapshot writes the merge's mark first; a guest
    destroyed meanwhile is not merged as a shut-off one would be (its plan was the live
    one): the call fails saying so, and the snapshot stays, revertible."""
    d = on_slow_state(slowfs, daemon_factory)
    name = guest_name("stopmark")
    image = make_image(tmp_path / "vda.qcow2")
    try:
        with d.connect() as conn:
            g = Guest(conn, test_guest, name, tmp_path, disk_xml(image)).boot()
            try:
                assert g.dom.snapshot_create("s1") == "s1"
                delete = held_snapshot_call(slowfs, d, name,
                                            lambda dom: dom.snapshot_delete("s1"))
                try:
                    g.dom.destroy()
                finally:
                    slowfs.release()
                with pytest.raises(client.OperationFailed,
                                   match=f"domain '{name}' stopped during the snapshot "
                                         "deletion"):
                    delete.wait()
                assert g.dom.state()[0] == DomainState.SHUTOFF
                [snap] = g.dom.snapshots()
                assert snap.name == "s1"
                g.dom.snapshot_revert("s1")  # (not marked as a failed merge)
            finally:
                g.close()
    finally:
        stop_destroying_guests(d)
