"""Deleting a snapshot merges its data (libvirt's external snapshot deletion): the top
overlay is committed into the snapshot's frozen image and the disk points at it again.
Real qemu-img and a real TCG test guest, as in test_snapshots."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import client
from client.errors import OperationFailed
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .snapshot_chains import (
    backing_chain,
    digest,
    flat_copy,
    qemu_files,
    qemu_io_write_at,
    same_content,
)
from .snapshot_guests import disk_source, first_bytes, qcow2_guest, qemu_io_write
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration


def check_clean(image: str) -> None:
    proc = subprocess.run(["qemu-img", "check", "-U", image], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "No errors were found" in proc.stdout, proc.stdout


def test_delete_merges_shut_off(conn: client.Connection, qemud: DaemonProcess,
                                test_guest: TestGuest, tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-off")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")
        dom.snapshot_delete("s")
        assert dom.snapshots() == []
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(data)
        assert not Path(top).exists()
        assert first_bytes(data, "qcow2", 1) == b"B"  # the later data is kept

        # a snapshot that is not the disk's direct backing file: its layer is merged
        # into its image (see test_delete_merges_deeper_shut_off)
        dom.snapshot_create("s1")
        s1_top = disk_source(dom.xml(client.XML_INACTIVE))
        dom.snapshot_create("s2")
        s2_top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(s2_top, "C")
        dom.snapshot_delete("s1")
        assert [(s.name, s.parent) for s in dom.snapshots()] == [("s2", "")]
        assert disk_source(dom.xml(client.XML_INACTIVE)) == s2_top
        assert not Path(s1_top).exists() and first_bytes(data, "qcow2", 1) == b"B"
        # s2 now froze data.qcow2, the disk's direct backing file: merged into it
        dom.snapshot_delete("s2")
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(data)
        assert not Path(s2_top).exists()

        g.boot()  # the guest sees what was written last
        assert g.read(1) == "C"
    finally:
        g.close()


def test_delete_merges_running(conn: client.Connection, qemud: DaemonProcess,
                               test_guest: TestGuest, tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-run")
    g.boot()
    try:
        dom = g.dom
        g.write("MARK-A")
        dom.snapshot_create("s")
        top = disk_source(dom.xml())
        g.write("MARK-B")
        dom.snapshot_delete("s")  # active commit, then pivot
        assert dom.state()[0] == DomainState.RUNNING
        assert dom.snapshots() == []
        assert disk_source(dom.xml()) == str(data)
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(data)
        assert not Path(top).exists()
        assert g.read(6) == "MARK-B"
        g.write("MARK-C")  # the guest now writes to the original image

        dom.destroy()
        assert first_bytes(data, "qcow2", 6) == b"MARK-C"
        g.boot()
        assert g.read(6) == "MARK-C"
    finally:
        g.close()


# -- a snapshot deeper in the chain: its layer is merged into its image ----------------


def test_delete_merges_deeper_shut_off(conn: client.Connection, qemud: DaemonProcess,
                                       test_guest: TestGuest, tmp_path: Path) -> None:
    """data (s1) <- C (s2) <- A: deleting s1 commits C into data, A reads from data."""
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-deep-off")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s1")
        layer = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(layer, "B")
        qemu_io_write_at(layer, "b", 65536)  # only in C: must reach data
        dom.snapshot_create("s2")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "C")
        assert backing_chain(top) == [top, layer, str(data)]
        before = flat_copy(top, tmp_path / "before.raw")

        dom.snapshot_delete("s1")
        assert [(s.name, s.parent, s.current) for s in dom.snapshots()] == [
            ("s2", "", True)]
        assert disk_source(dom.xml(client.XML_INACTIVE)) == top
        assert backing_chain(top) == [top, str(data)]
        assert not Path(layer).exists()
        assert same_content(before, top)  # the disk reads as before the delete
        check_clean(top)
        check_clean(str(data))
        assert first_bytes(data, "qcow2", 1) == b"B"  # s2's state is now in data
        assert "delete='s1' merged=['vda']" in qemud.audit_file.read_text()
        assert (f"snapshot s1 deleted, merged (vda: {layer} -> {data}, {top} now reads "
                "from it)") in qemud.log_text()

        dom.snapshot_revert("s2")  # s2's state: what C held on data's
        reverted = disk_source(dom.xml(client.XML_INACTIVE))
        assert backing_chain(reverted) == [reverted, str(data)]
        assert first_bytes(reverted, "qcow2", 1) == b"B"
        with open(flat_copy(reverted, tmp_path / "s2.raw"), "rb") as f:
            f.seek(65536)
            assert f.read(1) == b"b"
        assert not Path(top).exists()  # discarded by the revert
    finally:
        g.close()


def test_delete_deeper_metadata_only_when_shared(conn: client.Connection,
                                                 qemud: DaemonProcess,
                                                 test_guest: TestGuest,
                                                 tmp_path: Path) -> None:
    """After a revert to s1, s1's image has two layers on it (s2's frozen one and the
    new one under s3): committing either into it would change the other: no merge."""
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-deep-shared")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s1")
        frozen_for_s2 = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(frozen_for_s2, "B")
        dom.snapshot_create("s2")
        dom.snapshot_revert("s1")
        reverted = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(reverted, "D")
        dom.snapshot_create("s3")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        files = {p: digest(p) for p in (str(data), frozen_for_s2, reverted, top)}

        dom.snapshot_delete("s1")
        assert sorted((s.name, s.parent) for s in dom.snapshots()) == [
            ("s2", ""), ("s3", "")]
        assert {p: digest(p) for p in files} == files  # no image was written
        assert backing_chain(top) == [top, reverted, str(data)]
        assert (f"snapshot s1: metadata only, no merge ({data} is still needed by another "
                "snapshot or disk)") in qemud.log_text()
        dom.snapshot_revert("s2")  # still s2's state
        assert first_bytes(disk_source(dom.xml(client.XML_INACTIVE)), "qcow2", 1) == b"B"
    finally:
        g.close()


def test_delete_deeper_failure_keeps_the_snapshot(conn: client.Connection,
                                                  qemud: DaemonProcess,
                                                  test_guest: TestGuest,
                                                  tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-deep-fail")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s1")
        layer = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(layer, "B")
        dom.snapshot_create("s2")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "C")
        before = flat_copy(top, tmp_path / "before.raw")
        with open(layer, "r+b") as f:  # C's qcow2 magic
            header = f.read(4)
            f.seek(0)
            f.write(b"\0\0\0\0")
        files = {p: digest(p) for p in (str(data), layer, top)}

        with pytest.raises(OperationFailed) as info:
            dom.snapshot_delete("s1")
        message = str(info.value)
        assert "qemu-img commit failed" in message and "qcow2" in message, message
        assert sorted(s.name for s in dom.snapshots()) == ["s1", "s2"]
        assert {p: digest(p) for p in files} == files  # nothing was written
        assert disk_source(dom.xml(client.XML_INACTIVE)) == top
        # qemu-img commit ran: it may have written part of C (here it wrote nothing)
        assert "merging snapshot s1 failed (the snapshot is kept; its image may hold part " \
               "of the later data)" in qemud.log_text()

        with open(layer, "r+b") as f:
            f.write(header)
        assert backing_chain(top) == [top, layer, str(data)]
        assert same_content(before, top)
        dom.snapshot_delete("s1")  # with C readable again it merges
        assert backing_chain(top) == [top, str(data)] and same_content(before, top)
    finally:
        g.close()


def test_delete_merges_deeper_running(conn: client.Connection, qemud: DaemonProcess,
                                      test_guest: TestGuest, tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-deep-run")
    g.boot()
    try:
        dom = g.dom
        g.write("MARK-ONE")
        dom.snapshot_create("s1")
        layer = disk_source(dom.xml())
        g.write("MARK-TWO")
        dom.snapshot_create("s2")
        top = disk_source(dom.xml())
        assert backing_chain(top) == [top, layer, str(data)]

        dom.snapshot_delete("s1")  # non-active commit of C into data
        assert dom.state()[0] == DomainState.RUNNING
        g.command("ping", r"QEMUD-PONG")
        assert [(s.name, s.parent, s.current) for s in dom.snapshots()] == [
            ("s2", "", True)]
        assert disk_source(dom.xml()) == top
        assert disk_source(dom.xml(client.XML_INACTIVE)) == top
        assert backing_chain(top) == [top, str(data)]  # QEMU rewrote the link
        assert not Path(layer).exists()
        assert not [f for f in qemu_files(qemud, "del-deep-run") if layer in f]  # closed
        assert g.read(8) == "MARK-TWO"  # read from data now
        assert "delete='s1' merged=['vda']" in qemud.audit_file.read_text()
        g.write("MARK-3RD")  # into the top overlay

        dom.destroy()
        assert first_bytes(data, "qcow2", 8) == b"MARK-TWO"
        assert first_bytes(top, "qcow2", 8) == b"MARK-3RD"
        check_clean(top)
        check_clean(str(data))
        g.boot()
        assert g.read(8) == "MARK-3RD"
        dom.snapshot_revert("s2")
        g.attach()
        assert g.read(8) == "MARK-TWO"
    finally:
        g.close()


def test_delete_merges_deeper_running_chain_opened_at_start(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """Snapshots taken shut off: QEMU opened C and data from the headers at start (nodes
    it owns and frees itself when C leaves the chain)."""
    g, data = qcow2_guest(conn, test_guest, tmp_path, "del-deep-start")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s1")
        layer = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(layer, "B")
        dom.snapshot_create("s2")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        g.boot()
        dom = g.dom
        dom.suspend()  # a paused guest merges the same way
        dom.snapshot_delete("s1")
        assert dom.state()[0] == DomainState.PAUSED
        dom.resume()
        assert backing_chain(top) == [top, str(data)]
        assert not Path(layer).exists()
        assert not [f for f in qemu_files(qemud, "del-deep-start") if layer in f]
        assert g.read(1) == "B"
        assert (f"snapshot s1 deleted, merged (vda: {layer} -> {data}, {top} now reads "
                "from it)") in qemud.log_text()
    finally:
        g.close()
