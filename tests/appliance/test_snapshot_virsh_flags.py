"""libvirt's snapshot flags against a real daemon and TCG guest, as in test_snapshots:
REVERT_RUNNING / REVERT_PAUSED (the guest's state after a revert, whatever it was
before) and DELETE_METADATA_ONLY (forget the snapshot; no image is merged, rewritten or
removed, then or later), plus the flags qemud refuses (libvirt's INVALID_ARG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import client
from client.domain import (
    SNAPSHOT_DELETE_METADATA_ONLY,
    SNAPSHOT_REVERT_PAUSED,
    SNAPSHOT_REVERT_RUNNING,
)
from client.errors import InvalidArgError
from client.format import snapshot_state_name
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .conftest import wait_state
from .snapshot_guests import Guest, disk_source, disk_xml, first_bytes, make_image
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE


def test_revert_running_and_paused_flags(conn: client.Connection, qemud: DaemonProcess,
                                         test_guest: TestGuest, tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "snap-flags", tmp_path, disk_xml(data)).boot()
    try:
        dom = g.dom
        g.write("MARK-ONE")
        dom.snapshot_create("s1")
        (s1,) = dom.snapshots()
        # the wire keeps the domain's state; virsh's word for it is disk-snapshot
        assert s1.state == DomainState.RUNNING
        assert snapshot_state_name(s1.state) == "disk-snapshot"
        g.write("MARK-TWO")

        # refused before anything changes: both flags, and flags qemud does not have
        xml = dom.xml()
        with pytest.raises(InvalidArgError, match="mutually exclusive"):
            dom.snapshot_revert("s1", SNAPSHOT_REVERT_RUNNING | SNAPSHOT_REVERT_PAUSED)
        with pytest.raises(InvalidArgError, match=r"unsupported flags \(0x4\).*'force'"):
            dom.snapshot_revert("s1", 4)
        assert dom.state()[0] == DomainState.RUNNING and dom.xml() == xml

        # running -> paused
        dom.snapshot_revert("s1", SNAPSHOT_REVERT_PAUSED)
        wait_state(dom, DomainState.PAUSED)
        # paused -> running, on the snapshot's disk
        dom.snapshot_revert("s1", SNAPSHOT_REVERT_RUNNING)
        wait_state(dom, DomainState.RUNNING)
        g.attach()
        assert g.read(8) == "MARK-ONE"
        # shut off -> running
        dom.destroy()
        dom.snapshot_revert("s1", SNAPSHOT_REVERT_RUNNING)
        wait_state(dom, DomainState.RUNNING)
        # shut off -> paused
        dom.destroy()
        dom.snapshot_revert("s1", SNAPSHOT_REVERT_PAUSED)
        wait_state(dom, DomainState.PAUSED)
        # no flag: as before the revert (paused stays paused, shut off stays shut off)
        dom.snapshot_revert("s1")
        wait_state(dom, DomainState.PAUSED)
        dom.destroy()
        dom.snapshot_revert("s1")
        assert dom.state()[0] == DomainState.SHUTOFF
        assert [(s.name, s.current) for s in dom.snapshots()] == [("s1", True)]
        # every revert discarded the overlay it replaced: one revert overlay is left
        images = qemud.state_dir / "snapshots" / "snap-flags" / "images"
        assert len([p for p in images.iterdir() if "-revert" in p.name]) == 1
    finally:
        g.close()


def test_delete_metadata_only_of_a_running_guest(conn: client.Connection,
                                                 qemud: DaemonProcess,
                                                 test_guest: TestGuest,
                                                 tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "snap-meta", tmp_path, disk_xml(data)).boot()
    images = qemud.state_dir / "snapshots" / "snap-meta" / "images"
    try:
        dom = g.dom
        g.write("MARK-ONE")
        dom.snapshot_create("s1")
        g.write("MARK-TWO")
        dom.snapshot_create("s2")
        g.write("MARK-3RD")
        s1_top, s2_top = str(images / "vda.s1.qcow2"), str(images / "vda.s2.qcow2")
        assert disk_source(dom.xml()) == s2_top

        with pytest.raises(InvalidArgError, match=r"unsupported flags \(0x1\).*'children'"):
            dom.snapshot_delete("s2", 1)
        # s2 is the latest: a plain delete would commit vda.s2 into vda.s1 (block-commit)
        dom.snapshot_delete("s2", SNAPSHOT_DELETE_METADATA_ONLY)
        assert [(s.name, s.current) for s in dom.snapshots()] == [("s1", True)]
        assert dom.state()[0] == DomainState.RUNNING
        assert disk_source(dom.xml()) == s2_top == disk_source(dom.xml(INACTIVE))
        assert sorted(p.name for p in images.iterdir()) == ["vda.s1.qcow2", "vda.s2.qcow2"]
        assert g.read(8) == "MARK-3RD"
        # what s2 froze is untouched (not merged into): MARK-TWO, and recorded as kept
        assert first_bytes(s1_top, "qcow2", 8) == b"MARK-TWO"
        meta = json.loads((images.parent / "snapshots.json").read_text())
        assert meta["kept"] == {s1_top: "s2"}

        # later: a revert to s1 discards vda.s2 (the disk's top, as any revert does) but
        # not vda.s1, the image s2 froze
        dom.snapshot_revert("s1")
        wait_state(dom, DomainState.RUNNING)
        g.attach()
        assert g.read(8) == "MARK-ONE"
        assert not Path(s2_top).exists() and Path(s1_top).is_file()
        # a delete of s1 would write into data.qcow2, which vda.s1 reads from: no merge
        dom.snapshot_delete("s1")
        assert dom.snapshots() == []
        assert first_bytes(s1_top, "qcow2", 8) == b"MARK-TWO"
        assert first_bytes(data, "qcow2", 8) == b"MARK-ONE"
        assert g.read(8) == "MARK-ONE"
        # undefine --snapshots-metadata (nothing left to forget) keeps it too
        g.close()
        assert Path(s1_top).is_file()
    finally:
        g.close()
