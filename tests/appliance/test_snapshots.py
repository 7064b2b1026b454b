"""External snapshots, revert, delete and backup against a real daemon and guest (TCG).

One daemon serves the module; each test defines its own guests and disk images. The test
guest writes/reads the first bytes of a disk on serial commands (``write-disk``,
``read-disk``); shut-off disks are written with ``qemu-io``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import client
from client.errors import (
    ConfigUnsupportedError,
    NoDomainError,
    NoSnapshotError,
    OperationFailed,
    OperationInvalid,
)
from protocol.constants import DomainState, ErrorCode, UndefineFlags
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest

from .conftest import wait_state
from .snapshot_guests import (
    Guest,
    disk_source,
    disk_xml,
    first_bytes,
    make_image,
    qcow2_guest,
    qemu_io_write,
)
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration


# -- tests -----------------------------------------------------------------------------


def test_snapshot_revert_delete_running(conn: client.Connection, qemud: DaemonProcess,
                                        test_guest: TestGuest, tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "snap-run", tmp_path, disk_xml(data)).boot()
    try:
        dom = g.dom
        g.write("MARK-ONE")
        assert dom.snapshot_create("s1", "first mark") == "s1"
        assert dom.state()[0] == DomainState.RUNNING  # the guest kept running
        live_top = disk_source(dom.xml())
        assert live_top != str(data) and live_top.endswith(".qcow2")
        assert disk_source(dom.xml(client.XML_INACTIVE)) == live_top  # a restart uses it
        g.write("MARK-TWO")
        assert g.read(8) == "MARK-TWO"
        assert dom.snapshot_create("s2") == "s2"

        snaps = {s.name: s for s in dom.snapshots()}
        assert set(snaps) == {"s1", "s2"}
        assert (snaps["s1"].parent, snaps["s1"].current) == ("", False)
        assert (snaps["s2"].parent, snaps["s2"].current) == ("s1", True)
        assert snaps["s1"].description == "first mark"
        assert snaps["s1"].state == DomainState.RUNNING
        with pytest.raises(OperationInvalid, match="already exists"):
            dom.snapshot_create("s1")

        dom.snapshot_revert("s1")
        wait_state(dom, DomainState.RUNNING)
        g.attach()  # a new QEMU: a new serial socket
        assert g.read(8) == "MARK-ONE"
        snaps = {s.name: s for s in dom.snapshots()}
        assert snaps["s1"].current and not snaps["s2"].current
        assert disk_source(dom.xml(client.XML_INACTIVE)) == disk_source(dom.xml())

        # revert is repeatable: the snapshot's image stays frozen
        g.write("MARK-3RD")
        dom.snapshot_revert("s1")
        g.attach()
        assert g.read(8) == "MARK-ONE"

        with pytest.raises(NoSnapshotError, match="nope"):
            dom.snapshot_revert("nope")
        dom.snapshot_delete("s2")
        assert [(s.name, s.parent, s.current) for s in dom.snapshots()] == [("s1", "", True)]
        dom.snapshot_delete("s1")
        assert dom.snapshots() == []
        # s1 froze data.qcow2, the disk's direct backing file: merged back into it
        assert g.read(8) == "MARK-ONE"
        assert disk_source(dom.xml()) == str(data)
        assert disk_source(dom.xml(client.XML_INACTIVE)) == str(data)
        images = qemud.state_dir / "snapshots" / "snap-run" / "images"
        assert sorted(p.name for p in images.iterdir()) == []
    finally:
        g.close()


def test_snapshot_refuses_raw_disk(conn: client.Connection, test_guest: TestGuest,
                                   tmp_path: Path) -> None:
    raw = make_image(tmp_path / "data.img", "raw")
    g = Guest(conn, test_guest, "snap-raw", tmp_path, disk_xml(raw, "raw"))
    try:
        g.dom = g.dom.create()
        with pytest.raises(ConfigUnsupportedError) as info:
            g.dom.snapshot_create("s1")
        message = str(info.value)
        assert "'vda'" in message and "raw" in message and "qcow2" in message, message
        assert g.dom.snapshots() == []
        assert g.dom.state()[0] == DomainState.RUNNING
        assert disk_source(g.dom.xml()) == str(raw)
    finally:
        g.close()


def test_backup_running_guest(conn: client.Connection, qemud: DaemonProcess,
                              test_guest: TestGuest, tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "backup-run", tmp_path, disk_xml(data)).boot()
    try:
        dom = g.dom
        g.write("BACKUP-MARK-1")
        callback = conn.register_event(client.EventId.APPLIANCE, None, dom)
        target = tmp_path / "vda.raw"
        dom.backup(str(target))
        seen = [(r.kind, r.text) for r in conn.iter_events(1.0)]
        conn.deregister_event(callback)
        assert ("backup-progress", "0%") in seen and ("backup-progress", "100%") in seen
        assert ("backup-completed", str(target)) in seen, seen
        assert first_bytes(target, "raw", 13) == b"BACKUP-MARK-1"
        assert dom.state()[0] == DomainState.RUNNING
        g.command("ping", r"QEMUD-PONG")
        with pytest.raises(OperationInvalid, match="already exists"):
            dom.backup(str(target))

        # from the shell, to a qcow2 file, after a snapshot (the top is an overlay)
        dom.snapshot_create("before-backup")
        g.write("BACKUP-MARK-2")
        qcow = tmp_path / "vda.qcow2"
        proc = qemush(qemud, "backup", "backup-run", str(qcow), "--disk", "vda")
        assert proc.returncode == 0, proc.stderr
        assert "backup: 100%" in proc.stderr.splitlines(), proc.stderr
        assert f"backed up to {qcow}" in proc.stdout
        assert first_bytes(qcow, "qcow2", 13) == b"BACKUP-MARK-2"
        g.command("ping", r"QEMUD-PONG")
    finally:
        g.close()


def test_shell_snapshot_commands_shut_off(conn: client.Connection, qemud: DaemonProcess,
                                          test_guest: TestGuest, tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "snap-shell", tmp_path, disk_xml(data))
    try:
        qemu_io_write(str(data), "A")
        proc = qemush(qemud, "snapshot-create-as", "snap-shell", "first",
                      "--description", "offline")
        assert proc.returncode == 0, proc.stderr
        assert "Domain snapshot first created" in proc.stdout
        top = disk_source(g.dom.xml(client.XML_INACTIVE))
        assert top != str(data)
        qemu_io_write(top, "B")
        assert first_bytes(top, "qcow2", 1) == b"B"

        proc = qemush(qemud, "snapshot-list", "snap-shell", "--parent")
        assert proc.returncode == 0, proc.stderr
        assert "first" in proc.stdout and "shutoff" in proc.stdout, proc.stdout

        proc = qemush(qemud, "snapshot-revert", "snap-shell", "first")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""  # (as virsh: nothing on success)
        assert g.dom.state()[0] == DomainState.SHUTOFF
        new_top = disk_source(g.dom.xml(client.XML_INACTIVE))
        assert first_bytes(new_top, "qcow2", 1) == b"A"
        assert not Path(top).exists()  # the discarded state is gone

        # an offline backup goes through qemu-img convert
        proc = qemush(qemud, "backup", "snap-shell", str(tmp_path / "off.raw"))
        assert proc.returncode == 0, proc.stderr
        assert first_bytes(tmp_path / "off.raw", "raw", 1) == b"A"

        proc = qemush(qemud, "snapshot-delete", "snap-shell", "first")
        assert proc.returncode == 0, proc.stderr
        assert "Domain snapshot first deleted" in proc.stdout
        proc = qemush(qemud, "snapshot-list", "snap-shell", "--name")
        assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout
        proc = qemush(qemud, "snapshot-revert", "snap-shell", "first")
        assert proc.returncode != 0 and "first" in proc.stderr, proc.stderr
    finally:
        g.close()


# -- undefine vs snapshot metadata (libvirt's rule) ------------------------------------

REFUSED = "Requested operation is not valid: cannot delete inactive domain with {} snapshots"


def test_undefine_with_snapshots_needs_the_flag(conn: client.Connection, qemud: DaemonProcess,
                                                test_guest: TestGuest, tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "snap-undef")
    try:
        dom = g.dom
        qemu_io_write(str(data), "A")
        dom.snapshot_create("s1")
        dom.snapshot_create("s2")
        state = qemud.state_dir / "snapshots" / "snap-undef"
        files = sorted(state.rglob("*"))

        with pytest.raises(OperationInvalid) as info:
            dom.undefine()
        assert info.value.message == REFUSED.format(2)
        assert info.value.code == ErrorCode.OPERATION_INVALID
        proc = qemush(qemud, "undefine", "snap-undef")
        assert proc.returncode != 0 and REFUSED.format(2) in proc.stderr, proc.stderr
        # nothing was removed
        assert conn.lookup_by_name("snap-undef").uuid == dom.uuid
        assert [s.name for s in dom.snapshots()] == ["s1", "s2"]
        assert sorted(state.rglob("*")) == files

        # back to s1: the definition now uses a new overlay on s1's frozen image (data),
        # and s2's frozen image (s1's overlay) is only kept for s2
        dom.snapshot_revert("s1")
        top = disk_source(dom.xml(client.XML_INACTIVE))
        frozen_for_s2 = [p for p in (state / "images").iterdir() if str(p) != top]
        assert len(frozen_for_s2) == 1, frozen_for_s2

        proc = qemush(qemud, "undefine", "snap-undef", "--snapshots-metadata")
        assert proc.returncode == 0, proc.stderr
        assert "Domain 'snap-undef' has been undefined" in proc.stdout
        with pytest.raises(NoDomainError):
            conn.lookup_by_name("snap-undef")
        assert not (state / "snapshots.json").exists()
        # the disk the definition used stays, with its whole chain
        assert data.is_file() and Path(top).is_file()
        assert first_bytes(top, "qcow2", 1) == b"A"
        assert not frozen_for_s2[0].exists()  # only the discarded snapshot needed it
        audit = qemud.audit_file.read_text()
        assert "discard=['s1', 's2']" in audit, audit
    finally:
        g.close()


def test_undefine_flag_removes_the_snapshot_directory(conn: client.Connection,
                                                      qemud: DaemonProcess,
                                                      test_guest: TestGuest,
                                                      tmp_path: Path) -> None:
    g, data = qcow2_guest(conn, test_guest, tmp_path, "snap-undef-dir")
    try:
        g.dom.snapshot_create("s1")
        overlay = disk_source(g.dom.xml(client.XML_INACTIVE))
        # the user points the disk back at the original image: no definition needs the
        # overlay any more, so nothing of the snapshot directory needs to stay
        xml = g.dom.xml(client.XML_INACTIVE).replace(overlay, str(data))
        g.dom = conn.define_xml(xml)
        g.dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
        with pytest.raises(NoDomainError):
            conn.lookup_by_name("snap-undef-dir")
        assert not (qemud.state_dir / "snapshots" / "snap-undef-dir").exists()
        assert data.is_file()
    finally:
        g.close()


def test_undefine_without_snapshots_as_before(conn: client.Connection, qemud: DaemonProcess,
                                              test_guest: TestGuest, tmp_path: Path) -> None:
    never, _ = qcow2_guest(conn, test_guest, tmp_path, "snap-none")
    never.dom.undefine()
    with pytest.raises(NoDomainError):
        conn.lookup_by_name("snap-none")

    # all snapshots deleted: the metadata file is still there, with none in it
    g, data = qcow2_guest(conn, test_guest, tmp_path, "snap-gone")
    try:
        g.dom.snapshot_create("s1")
        g.dom.snapshot_delete("s1")
        top = disk_source(g.dom.xml(client.XML_INACTIVE))
        g.dom.undefine()
        with pytest.raises(NoDomainError):
            conn.lookup_by_name("snap-gone")
        assert (qemud.state_dir / "snapshots" / "snap-gone" / "snapshots.json").exists()
        assert Path(top).is_file() and data.is_file()
    finally:
        g.close()


def test_undefine_running_domain_keeps_its_snapshots(conn: client.Connection,
                                                     test_guest: TestGuest,
                                                     tmp_path: Path) -> None:
    """As libvirt: the rule is for inactive domains; a running one goes on transient."""
    g, _ = qcow2_guest(conn, test_guest, tmp_path, "snap-undef-run")
    try:
        g.dom = g.dom.create()
        g.dom.snapshot_create("s1")
        g.dom.undefine()
        assert g.dom.is_active()
        assert [s.name for s in g.dom.snapshots()] == ["s1"]
        g.dom.destroy()
        with pytest.raises(NoDomainError):
            conn.lookup_by_name("snap-undef-run")
    finally:
        g.close()


def test_undefine_refused_while_the_metadata_is_damaged(conn: client.Connection,
                                                        qemud: DaemonProcess,
                                                        test_guest: TestGuest,
                                                        tmp_path: Path) -> None:
    """How many snapshots it holds is unknown: fix it or move it away first."""
    g, _ = qcow2_guest(conn, test_guest, tmp_path, "snap-damaged")
    index = qemud.state_dir / "snapshots" / "snap-damaged" / "snapshots.json"
    try:
        index.parent.mkdir(parents=True)
        index.write_text("{not json")
        for flags in (0, UndefineFlags.SNAPSHOTS_METADATA):
            with pytest.raises(OperationFailed, match="snapshots.json is damaged"):
                g.dom.undefine(flags)
        # a backup does not use the metadata: it is not refused
        g.dom.backup(str(tmp_path / "backup.qcow2"))
        assert (tmp_path / "backup.qcow2").is_file()
        assert index.read_text() == "{not json"
        index.unlink()
        g.dom.undefine()
    finally:
        g.close()


def test_the_snapshot_store_is_private(tmp_path: Path, test_guest: TestGuest) -> None:
    """The overlays hold what the guests wrote since their snapshots: the store is the
    daemon's user's alone (mode 0700), also one an earlier version made 0755."""
    daemon = DaemonProcess(tmp_path / "d")
    store = daemon.state_dir / "snapshots"
    store.mkdir(parents=True)
    store.chmod(0o755)
    with serving(daemon):
        assert store.stat().st_mode & 0o777 == 0o700
        data = make_image(tmp_path / "priv.qcow2")
        with daemon.connect() as conn:
            g = Guest(conn, test_guest, "priv", tmp_path, disk_xml(data))
            try:
                g.dom.snapshot_create("s1")
                overlay = Path(disk_source(g.dom.xml(client.XML_INACTIVE)))
                assert overlay.is_relative_to(store)
                peek = subprocess.run(["runuser", "-u", "nobody", "--", "cat",
                                       str(overlay)], capture_output=True)
                assert peek.returncode != 0 and b"Permission denied" in peek.stderr
            finally:
                g.close()
