"""Images the snapshot operations drop are removed off the loop (see
``qemud.driver.discard.discard``): renamed away at once, so the path is gone when the
call returns, then removed by an ``rm`` child; what a killed daemon left of them is
removed at the next start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DISCARD_MARK, DaemonProcess, serving, wait_for
from tests.integration.conftest import TestGuest

from .snapshot_guests import disk_source, qcow2_guest, qemu_io_write
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration


def discarded(*roots: Path) -> list[Path]:
    """The files being removed below ``roots``."""
    return sorted(p for root in roots for p in root.rglob(f".*{DISCARD_MARK}*"))


def test_deleted_overlay_is_gone_at_once_and_removed(conn: client.Connection,
                                                     qemud: DaemonProcess,
                                                     test_guest: TestGuest,
                                                     tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "discard-del")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")  # the overlay holds data: merged into data, then garbage
        store = qemud.state_dir / "snapshots"
        assert Path(top).is_relative_to(store / "discard-del" / "images")
        dom.snapshot_delete("s")
        assert not Path(top).exists()  # renamed when the call returns
        images = store / "discard-del" / "images"
        assert sorted(images.iterdir()) == []  # nothing of it is left in its directory
        wait_for(lambda: discarded(store, tmp_path) == [],
                 message=f"no {DISCARD_MARK} file left "
                         f"(seen: {discarded(store, tmp_path)})")
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(data)
        assert "cannot remove" not in qemud.log_text()
    finally:
        g.close()


def test_discarded_files_left_behind_are_removed_at_start(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "qemud")
    store = daemon.state_dir / "snapshots"
    images = store / "gone" / "images"
    images.mkdir(parents=True)
    left = [store / f".vda.s1.qcow2{DISCARD_MARK}4242-1",  # into the store's root
            images / f".vda.s2.qcow2{DISCARD_MARK}4242-2"]  # in its own directory
    for path in left:
        path.write_bytes(b"\0" * 65536)
    kept = [images / "vda.s3.qcow2", images / ".vda.s4.qcow2"]
    for path in kept:
        path.write_bytes(b"x")
    with serving(daemon):
        wait_for(lambda: discarded(store) == [],
                 message=f"the left {DISCARD_MARK} files removed "
                         f"(seen: {discarded(store)})")
        assert all(path.is_file() for path in kept)
