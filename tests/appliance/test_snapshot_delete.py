"""Deleting a snapshot merges its data (libvirt's external snapshot deletion): the top
overlay is committed into the snapshot's frozen image and the disk points at it again.
Real qemu-img and a real TCG test guest, as in test_snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .test_snapshots import disk_source, first_bytes, qcow2_guest, qemu_io_write
from .test_snapshots import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration


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

        # a snapshot that is not the disk's direct backing file: metadata only
        dom.snapshot_create("s1")
        s1_top = disk_source(dom.xml(client.XML_INACTIVE))
        dom.snapshot_create("s2")
        s2_top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(s2_top, "C")
        dom.snapshot_delete("s1")
        assert [(s.name, s.parent) for s in dom.snapshots()] == [("s2", "")]
        assert disk_source(dom.xml(client.XML_INACTIVE)) == s2_top
        assert Path(s1_top).is_file() and first_bytes(data, "qcow2", 1) == b"B"
        # s2 froze s1's overlay, the disk's direct backing file: merged into it
        dom.snapshot_delete("s2")
        assert disk_source(dom.xml(client.XML_INACTIVE)) == s1_top
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
