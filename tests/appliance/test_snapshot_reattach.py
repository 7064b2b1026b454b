"""A daemon killed (``kill -9``) while QEMU runs a live merge or backup job of it: the
next daemon finds the job when it re-attaches to the guest (``query-block-jobs``) and
ends it, so the guest's disks are free again without a destroy and start.

* merge: the commit job is cancelled (the disk stays on its overlay), the snapshot is
  kept as a failed merge, and deleting it again merges;
* backup: the job is cancelled, its target node closed (QEMU no longer holds the file)
  and the incomplete target file removed; a new backup to it works.

Real TCG guest and QEMU jobs, slowed down by the ``QEMUD_TEST_JOB_SPEED`` test hook so
that the daemon is killed while they run.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.errors import OperationInvalid
from tests.helpers.daemon import DaemonProcess, serving, wait_for
from tests.helpers.threads import in_thread
from tests.integration.conftest import TestGuest
from tests.qemu.qmpclient import QMPTestClient

from .snapshot_chains import qemu_files
from .snapshot_guests import (
    Guest,
    disk_source,
    disk_xml,
    first_bytes,
    make_image,
    qemu_io_write,
)

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE
#: bytes/s of QEMU's merge and backup jobs: ``FILL`` (16 MiB) takes ~8 s
SPEED = 2 * 1024 * 1024
FILL = "16M"


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-reattach"),
                           env={"QEMUD_TEST_JOB_SPEED": str(SPEED)})
    with serving(daemon):
        yield daemon


def fill(image: str | Path, char: str) -> None:
    """Write ``FILL`` bytes of ``char`` at the start of a shut-off guest's image."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {ord(char)} 0 {FILL}",
                    str(image)], check=True, capture_output=True)


def log_since(qemud: DaemonProcess, mark: int) -> str:
    return qemud.log_text()[mark:]


def status(qemud: DaemonProcess, name: str) -> dict[str, object]:
    files = list(qemud.run_dir.rglob(f"{name}.status.json"))
    assert len(files) == 1, files
    data: dict[str, object] = json.loads(files[0].read_text())
    return data


def kill_when(qemud: DaemonProcess, mark: int, seen: str) -> None:
    """kill -9 the daemon once its log has ``seen`` (a QMP answer or event)."""
    wait_for(lambda: seen in log_since(qemud, mark), 60, message=seen)
    qemud.kill()


def restart(qemud: DaemonProcess) -> None:
    if qemud.proc is None or qemud.proc.poll() is not None:
        qemud.start()


def test_killed_live_merge_is_cancelled_at_restart(qemud: DaemonProcess,
                                                    test_guest: TestGuest,
                                                    tmp_path: Path) -> None:
    """Two disks: vdb's commit (little data) is ``ready``, waiting for the pivot, when
    the daemon is killed (the pivot waits for every disk), vda's still copies."""
    data = make_image(tmp_path / "data.qcow2", size="64M")
    data_b = make_image(tmp_path / "data-b.qcow2")
    conn = qemud.connect()
    g = Guest(conn, test_guest, "merge-reattach", tmp_path,
              disk_xml(data) + disk_xml(data_b, dev="vdb"))
    try:
        g.dom.snapshot_create("m1")  # shut off: the overlays are written with qemu-io
        top = disk_source(g.dom.xml(INACTIVE))
        top_b = disk_source(g.dom.xml(INACTIVE), "vdb")
        fill(top, "B")
        qemu_io_write(top_b, "b")
        g.boot()
        assert g.read(1) == "B"
        mark = len(qemud.log_text())
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("merge-reattach").snapshot_delete("m1"))
        conn.close()
        kill_when(qemud, mark, "<-- event BLOCK_JOB_READY {'device': 'commit-vdb-")
        thread.join(30)
        assert "error" in outcome, outcome

        mark = len(qemud.log_text())
        qemud.start()
        wait_for(lambda: log_since(qemud, mark).count("the merge job commit-vd") == 2, 30,
                 message="the leftover commit jobs to be cancelled")
        text = log_since(qemud, mark)
        assert re.search(r"block job commit-vdb-\w+ \(commit, ready\) was left by the "
                         r"last daemon: cancelling it", text), text[-3000:]
        assert re.search(r"block job commit-vda-\w+ \(commit, running\) was left by the "
                         r"last daemon: cancelling it", text), text[-3000:]
        assert "(cancelled: the disk stays on its overlay, nothing is lost)" in text
        assert "snapshot m1: a merge into its image was in progress" in text

        conn = qemud.connect()
        dom = g.dom = conn.lookup_by_name("merge-reattach")
        assert [s.name for s in dom.snapshots()] == ["m1"]  # kept, a failed merge
        assert disk_source(dom.xml()) == top == disk_source(dom.xml(INACTIVE))
        assert disk_source(dom.xml(), "vdb") == top_b
        assert g.read(1) == "B"  # the guest runs on its overlays
        with pytest.raises(OperationInvalid, match="no longer the state of the snapshot"):
            dom.snapshot_revert("m1")

        # no destroy/start: deleting it again merges (QEMU's disk is free again)
        mark = len(qemud.log_text())
        dom.snapshot_delete("m1")
        assert dom.snapshots() == []
        assert disk_source(dom.xml()) == str(data) == disk_source(dom.xml(INACTIVE))
        assert disk_source(dom.xml(), "vdb") == str(data_b)
        assert not Path(top).exists() and not Path(top_b).exists()
        assert g.read(1) == "B"
        assert "merged (vda: " in log_since(qemud, mark)
        # and a new snapshot can be taken
        dom.snapshot_create("m2")
        g.write("AFTER")
        assert g.read(5) == "AFTER"
    finally:
        restart(qemud)
        try:
            g.dom = qemud.connect().lookup_by_name("merge-reattach")
        except client.QemudClientError:
            pass
        g.close()


def test_killed_live_backup_is_ended_at_restart(qemud: DaemonProcess,
                                                test_guest: TestGuest,
                                                tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2", size="32M")  # a full copy: ~16 s
    fill(data, "C")
    conn = qemud.connect()
    g = Guest(conn, test_guest, "backup-reattach", tmp_path, disk_xml(data)).boot()
    target = tmp_path / "backup" / "vda.qcow2"
    target.parent.mkdir()
    try:
        mark = len(qemud.log_text())
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("backup-reattach").backup(str(target)))
        wait_for(lambda: "<-- transaction ok" in log_since(qemud, mark), 60,
                 message="the backup job")
        recorded = status(qemud, "backup-reattach")
        assert (recorded["job"], recorded["job_file"]) == ("backup", str(target)), recorded
        conn.close()
        qemud.kill()
        thread.join(30)
        assert "error" in outcome, outcome
        assert target.exists()
        assert [f for f in qemu_files(qemud, "backup-reattach") if str(target) in f]

        mark = len(qemud.log_text())
        qemud.start()
        wait_for(lambda: "a backup was in progress when the last daemon stopped"
                 in log_since(qemud, mark), 30, message="the backup clean-up")
        text = log_since(qemud, mark)
        assert "block job backup-vda-" in text and "cancelling it" in text, text[-3000:]
        assert f"its partial file(s) were removed: {target}" in text, text[-3000:]
        assert not target.exists()
        # QEMU closed the target node: it no longer holds the file (not even unlinked)
        wait_for(lambda: not [f for f in qemu_files(qemud, "backup-reattach")
                              if str(target) in f], 10, message="the target node closed")
        assert "result=error" in qemud.audit_file.read_text().splitlines()[-1]
        wait_for(lambda: status(qemud, "backup-reattach")["job"] == "", 10,
                 message="the status file without the backup")
        assert status(qemud, "backup-reattach")["job_file"] == ""

        # no destroy/start: a new backup to the same file works
        conn = qemud.connect()
        dom = g.dom = conn.lookup_by_name("backup-reattach")
        dom.backup(str(target))
        assert first_bytes(target, "qcow2", 1) == b"C"
        assert status(qemud, "backup-reattach")["job"] == ""
    finally:
        restart(qemud)
        try:
            g.dom = qemud.connect().lookup_by_name("backup-reattach")
        except client.QemudClientError:
            pass
        g.close()


def test_a_pivot_made_while_no_daemon_listened_is_adopted(qemud: DaemonProcess,
                                                          test_guest: TestGuest,
                                                          tmp_path: Path) -> None:
    """The daemon is killed while a live merge's commit copies; the test then completes
    QEMU's job itself, as the daemon's ``block-job-complete`` sent just before a kill
    would have: QEMU's disk reads the snapshot's image, and no job is left to list. The
    next daemon sees that (``query-block``) and makes the definitions follow QEMU, so
    what the guest writes from then on is in the chain its next cold start opens."""
    data = make_image(tmp_path / "data.qcow2", size="64M")
    conn = qemud.connect()
    g = Guest(conn, test_guest, "pivot-adopt", tmp_path, disk_xml(data))
    try:
        g.dom.snapshot_create("p1")
        top = disk_source(g.dom.xml(INACTIVE))
        fill(top, "B")
        g.boot()
        mark = len(qemud.log_text())
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("pivot-adopt").snapshot_delete("p1"))
        conn.close()
        kill_when(qemud, mark, "<-- block-commit ok")
        thread.join(30)
        assert "error" in outcome, outcome

        qmp = QMPTestClient(qemud.guest_run_dir("pivot-adopt") / "monitor.sock")
        try:
            qmp.execute("qmp_capabilities")
            [job] = qmp.execute("query-block-jobs")
            qmp.execute("block-job-set-speed", {"device": job["device"], "speed": 0})
            wait_for(lambda: qmp.execute("query-block-jobs")[0]["ready"], 60,
                     message="the commit job ready")
            qmp.execute("block-job-complete", {"device": job["device"]})
            qmp.wait_event("BLOCK_JOB_COMPLETED")
            [disk] = [b for b in qmp.execute("query-block") if b.get("inserted")
                      and "vda" in str(b.get("qdev"))]
            assert disk["inserted"]["file"] == str(data)
        finally:
            qmp.close()

        mark = len(qemud.log_text())
        qemud.start()
        conn = qemud.connect()
        dom = g.dom = conn.lookup_by_name("pivot-adopt")
        wait_for(lambda: disk_source(dom.xml()) == str(data), 30,
                 message="the live definition to follow QEMU")
        assert disk_source(dom.xml(INACTIVE)) == str(data)
        assert (f"domain pivot-adopt: QEMU's disk vda reads {data}, the image of a "
                "snapshot whose merge the last daemon started") in log_since(qemud, mark)
        assert g.read(1) == "B"  # (merged into data.qcow2 before the pivot)
        g.write("AFTER")
        dom.destroy()
        g.boot()  # a cold start opens the chain the definition names
        assert g.read(5) == "AFTER"
        dom.snapshot_delete("p1")  # a failed merge whose disk left its overlay: forgotten
        assert dom.snapshots() == []
        assert not Path(top).exists()
    finally:
        restart(qemud)
        try:
            g.dom = qemud.connect().lookup_by_name("pivot-adopt")
        except client.QemudClientError:
            pass
        g.close()
