"""Snapshot revert and delete when something fails: nothing of the user's is lost, and
what happened is said.

* A revert of a running guest makes its new overlays, and writes their backing links
  into the metadata, before it stops the guest: a ``qemu-img create`` that fails, or
  metadata that cannot be written, leaves the guest running on its disks.
* A daemon killed during an offline snapshot deletion (its ``qemu-img commit`` goes on
  and finishes) leaves a mark in the metadata, written before the merge started: the
  next daemon warns, and treats the snapshot as a failed merge (a revert to it is
  refused; deleting it again finishes the merge).

Real qemu-img (behind a wrapper that can fail or hold it) and the test guest (TCG).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client
from client.errors import OperationFailed, OperationInvalid
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, serving, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.procs import wait_exited
from tests.helpers.threads import in_thread
from tests.integration.conftest import TestGuest
from tests.integration.domains import bare_xml

from .snapshot_guests import Guest, disk_source, disk_xml, make_image, qemu_io_write

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE

_FAILING = """#!/bin/sh
# qemu-img for the daemon under test: "create" fails while {fail} exists
if [ -e "{fail}" ] && [ "$1" = create ]; then
    echo "qemu-img: simulated failure of the test" >&2
    exit 1
fi
exec "{held}" "$@"
"""


class Tools:
    """The daemon's qemu-img: fails ``create`` while ``fail`` exists, else held ones."""

    def __init__(self, root: Path) -> None:
        (root / "held").mkdir()
        self.held = HeldQemuImg.install(root / "held")
        self.fail = root / "fail"
        self.bin_dir = root / "failing"
        self.bin_dir.mkdir()
        wrapper = self.bin_dir / "qemu-img"
        wrapper.write_text(_FAILING.format(fail=self.fail,
                                           held=self.held.bin_dir / "qemu-img"))
        wrapper.chmod(0o755)

    def path_env(self) -> str:
        return f"{self.bin_dir}:{self.held.path_env()}"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return Tools(tmp_path_factory.mktemp("qemu-img-wrappers"))


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, tools: Tools
          ) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-snap-fail"),
                           env={"PATH": tools.path_env()})
    with serving(daemon):
        yield daemon


def readable_first_bytes(image: Path | str, n: int) -> bytes | None:
    """The first bytes the guest would see, or None while a writer holds the image."""
    proc = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -v 0 {n}",
                           str(image)], capture_output=True, text=True)
    if proc.returncode != 0 or "read " not in proc.stdout:
        return None
    data = bytearray()
    for line in proc.stdout.splitlines():
        if ":" in line and line[:8].strip("0123456789abcdef") == "":
            for part in line.split(":", 1)[1].split()[:16]:
                if len(part) == 2:
                    data.append(int(part, 16))
    return bytes(data[:n])


def processes_naming(path: str) -> list[int]:
    """The processes (the held qemu-img behind its wrappers) with ``path`` as an argument.

    Only asked while the process is held in its wrapper's loop: its command line is then
    stable (during an ``exec`` it briefly reads empty, so polling command lines for the
    end of the process could see it gone while it is only becoming qemu-img)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if path.encode() in cmdline.split(b"\0"):
            found.append(int(proc.name))
    return found


def metadata_unwritable(tools: Tools, index: Path, call: Any) -> str:
    """``call`` (on its own connection) while the metadata file ``index`` cannot be
    written: once the call's ``qemu-img create`` is held (the call has read the file by
    then) a directory takes its place, until the call has failed. Returns the error."""
    tools.held.start_holding()
    thread, outcome = in_thread(call)
    aside = index.with_name("kept-by-test.json")
    try:
        wait_for(tools.held.held.exists, 30, message="the held qemu-img create")
        index.rename(aside)
        index.mkdir()
        (index / "in-the-way").touch()
    finally:
        tools.held.release()
    thread.join(120)
    assert not thread.is_alive()
    shutil.rmtree(index)
    aside.rename(index)
    error = outcome.get("error")
    assert isinstance(error, OperationFailed), outcome
    assert "cannot write snapshot metadata" in str(error), error
    return str(error)


def revert_files(images: Path) -> list[str]:
    return sorted(p.name for p in images.iterdir() if "-revert" in p.name)


# -- revert --------------------------------------------------------------------------


def test_failed_revert_keeps_the_guest_running(conn: client.Connection,
                                               qemud: DaemonProcess, tools: Tools,
                                               test_guest: TestGuest,
                                               tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    g = Guest(conn, test_guest, "revert-fail", tmp_path, disk_xml(data)).boot()
    images = qemud.state_dir / "snapshots" / "revert-fail" / "images"
    index = images.parent / "snapshots.json"
    try:
        dom = g.dom
        g.write("MARK-ONE")
        dom.snapshot_create("s1")
        g.write("MARK-TWO")
        top = disk_source(dom.xml())
        meta = index.read_text()

        # qemu-img create fails: before anything else, the guest never stopped
        tools.fail.touch()
        try:
            with pytest.raises(OperationFailed) as info:
                dom.snapshot_revert("s1")
        finally:
            tools.fail.unlink()
        message = str(info.value)
        assert "qemu-img create failed" in message, message
        assert "simulated failure of the test" in message, message
        assert dom.state()[0] == DomainState.RUNNING
        assert g.read(8) == "MARK-TWO"  # the same QEMU (same serial line) runs on
        assert disk_source(dom.xml()) == top == disk_source(dom.xml(INACTIVE))
        assert revert_files(images) == []
        assert index.read_text() == meta

        # the metadata cannot be written (the new overlays' links go in before the guest
        # is stopped): the guest never stopped
        text = metadata_unwritable(tools, index, lambda: qemud.connect().lookup_by_name(
            "revert-fail").snapshot_revert("s1"))
        assert "started again" not in text, text
        assert index.read_text() == meta
        assert dom.state()[0] == DomainState.RUNNING
        assert g.read(8) == "MARK-TWO"  # the same QEMU (same serial line) runs on
        assert disk_source(dom.xml(INACTIVE)) == top == disk_source(dom.xml())
        assert revert_files(images) == []

        # nothing in the way: the revert goes through
        dom.snapshot_revert("s1")
        g.attach()
        assert g.read(8) == "MARK-ONE"
    finally:
        tools.held.release()
        tools.fail.unlink(missing_ok=True)
        g.close()


# -- create ------------------------------------------------------------------------


def test_a_snapshot_whose_metadata_cannot_be_written_changes_nothing(
        conn: client.Connection, qemud: DaemonProcess, tools: Tools,
        test_guest: TestGuest, tmp_path: Path) -> None:
    """The new overlays' backing links are written before the definition names them: a
    metadata file that cannot be written leaves the definition on its image (the old
    code had already pointed it at the new overlay, whose link the metadata then
    lacked, so a later delete took the image below it as garbage)."""
    data = make_image(tmp_path / "create-fail.qcow2")
    g = Guest(conn, test_guest, "create-fail", tmp_path, disk_xml(data))  # shut off
    index = qemud.state_dir / "snapshots" / "create-fail" / "snapshots.json"
    images = index.parent / "images"
    try:
        g.dom.snapshot_create("s1")
        top = disk_source(g.dom.xml(INACTIVE))
        qemu_io_write(top, "K")  # written after s1: in s1's overlay
        meta = index.read_text()
        metadata_unwritable(tools, index, lambda: qemud.connect().lookup_by_name(
            "create-fail").snapshot_create("s2"))
        assert index.read_text() == meta
        assert disk_source(g.dom.xml(INACTIVE)) == top  # not moved to s2's overlay
        assert sorted(p.name for p in images.iterdir()) == [Path(top).name]
        g.dom.snapshot_delete("s1")  # merges s1's overlay, data and all
        assert readable_first_bytes(disk_source(g.dom.xml(INACTIVE)), 1) == b"K"
    finally:
        tools.held.release()
        g.close()


# -- delete, daemon killed -----------------------------------------------------------


def test_killed_offline_merge_is_a_failed_merge(qemud: DaemonProcess, tools: Tools,
                                                test_guest: TestGuest,
                                                tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    conn = qemud.connect()
    g = Guest(conn, test_guest, "merge-killed", tmp_path, disk_xml(data))
    index = qemud.state_dir / "snapshots" / "merge-killed" / "snapshots.json"
    try:
        qemu_io_write(str(data), "A")
        g.dom.snapshot_create("k1")
        top = disk_source(g.dom.xml(INACTIVE))
        qemu_io_write(top, "B")

        tools.held.start_holding()
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("merge-killed").snapshot_delete("k1"))
        try:
            wait_for(tools.held.held.exists, 30, message="the held qemu-img commit")
            # the mark is written before the merge starts
            recorded = json.loads(index.read_text())
            assert [s["merging"] for s in recorded["snapshots"]] != [""], recorded
            orphans = processes_naming(top)
            assert orphans, "the held qemu-img commit names the overlay"
            conn.close()
            qemud.kill()
        finally:
            tools.held.release()  # the orphaned qemu-img commit goes on and finishes
        thread.join(60)
        assert "error" in outcome, outcome
        # the image is not opened until the orphan is done: a reader's lock would make it
        # fail (a read-only open does not share writing)
        wait_exited(orphans, 60)
        assert readable_first_bytes(data, 1) == b"B"  # k1's image holds the later data
        qemud.start()

        conn = qemud.connect()
        dom = conn.lookup_by_name("merge-killed")
        log = qemud.log_text()
        assert "snapshot k1: a merge into its image was in progress when an earlier " \
               "daemon stopped" in log, log[-3000:]
        assert [s.name for s in dom.snapshots()] == ["k1"]  # kept, as a failed merge
        assert disk_source(dom.xml(INACTIVE)) == top
        with pytest.raises(OperationInvalid) as info:
            dom.snapshot_revert("k1")
        message = str(info.value)
        assert "no longer the state of the snapshot" in message, message
        assert "interrupted" in message and "snapshot-delete merge-killed k1" in message
        assert disk_source(dom.xml(INACTIVE)) == top and Path(top).is_file()
        recorded = json.loads(index.read_text())
        assert [(s["merging"], bool(s["merge_failed"])) for s in recorded["snapshots"]] \
            == [("", True)]

        # deleting it again finishes the merge
        dom.snapshot_delete("k1")
        assert dom.snapshots() == []
        assert disk_source(dom.xml(INACTIVE)) == str(data)
        assert readable_first_bytes(data, 1) == b"B"
        assert not Path(top).exists()
        g.dom = dom
    finally:
        tools.held.release()
        if qemud.proc is None or qemud.proc.poll() is not None:
            qemud.start()
        try:
            g.dom = qemud.connect().lookup_by_name("merge-killed")
        except client.QemudClientError:
            pass
        g.close()


def test_disk_config_changes_wait_for_a_snapshot_job(qemud: DaemonProcess, tools: Tools,
                                                     tmp_path: Path) -> None:
    """A revert of a shut-off domain holds its metadata from its start to its end; a
    ``detach-device --config`` of a disk meanwhile recorded the disk's image as unplugged,
    the revert then wrote its own metadata over that and removed the image as unused.
    Such a change (and a define over the domain) is refused as busy while the job runs;
    afterwards it works, and the detached disk's image is kept."""
    vda, vdb = make_image(tmp_path / "a.qcow2"), make_image(tmp_path / "b.qcow2")
    second = disk_xml(vdb, dev="vdb")
    xml = bare_xml("snap-busy").replace(
        "<os>", f"<devices>{disk_xml(vda)}{second}</devices><os>")
    with qemud.connect() as conn:
        dom = conn.define_xml(xml)
        try:
            dom.snapshot_create("s1")
            top = disk_source(dom.xml(INACTIVE), "vdb")
            qemu_io_write(top, "K")  # what vdb holds since s1
            without_vdb = _without_disk(dom.xml(INACTIVE), "vdb")
            tools.held.start_holding()
            thread, outcome = in_thread(
                lambda: qemud.connect().lookup_by_name("snap-busy").snapshot_revert("s1"))
            try:
                wait_for(tools.held.held.exists, 30, message="the revert's qemu-img held")
                for change in (lambda: dom.detach_device(second, client.AFFECT_CONFIG),
                               lambda: conn.define_xml(without_vdb)):
                    with pytest.raises(OperationInvalid,
                                       match="domain 'snap-busy' is busy: snapshot-revert "
                                             "in progress"):
                        change()
            finally:
                tools.held.release()
                thread.join(120)
            assert outcome.get("error") is None, outcome
            reverted = disk_source(dom.xml(INACTIVE), "vdb")  # vdb's image since the revert
            dom.detach_device(second, client.AFFECT_CONFIG)  # (the job is over)
            assert [s.name for s in dom.snapshots()] == ["s1"]
            assert Path(reverted).is_file()  # the detached disk's image is kept
        finally:
            for s in dom.snapshots():
                dom.snapshot_delete(s.name)
            dom.undefine()


def test_a_live_and_config_attach_refuses_its_config_half_to_a_snapshot_begun_meanwhile(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """``attach-device --live --config`` changes the persistent definition once QEMU has
    the device; a snapshot create that began during that QMP round trip (QEMU stopped,
    so both wait) holds its job by then, and the config half is refused as the same
    change with ``--config`` alone would have been. The live half stays, and the error
    says so."""
    name = "snap-attach-race"
    nic = "<interface type='user'><model type='virtio'/></interface>"
    with qemud.connect() as conn:
        g = Guest(conn, test_guest, name, tmp_path,
                  disk_xml(make_image(tmp_path / "vda.qcow2"))).boot()
        [pid] = [int(p) for p in subprocess.run(
            ["pgrep", "-f", f"guest={name},"], capture_output=True, text=True
        ).stdout.split()]
        try:
            os.kill(pid, signal.SIGSTOP)
            try:
                attach, attached = in_thread(lambda: qemud.connect().lookup_by_name(
                    name).attach_device(nic, client.AFFECT_LIVE | client.AFFECT_CONFIG))
                wait_for(lambda: "--> netdev_add" in qemud.log_text(), 30,
                         message="the attach's QMP request")
                create, created = in_thread(
                    lambda: qemud.connect().lookup_by_name(name).snapshot_create("s1"))

                def busy() -> bool:  # (a delete of no snapshot: refused as busy first)
                    try:
                        g.dom.snapshot_delete("none")
                    except OperationInvalid as exc:
                        return "busy: snapshot in progress" in str(exc)
                    except client.NoSnapshotError:
                        return False
                    raise AssertionError("a snapshot 'none' was deleted")
                wait_for(busy, 30, message="the snapshot's job")
            finally:
                os.kill(pid, signal.SIGCONT)
            attach.join(60)
            create.join(60)
            assert created.get("result") == "s1", created
            error = attached.get("error")
            assert isinstance(error, OperationInvalid), attached
            assert str(error) == (
                "Requested operation is not valid: the live change was made, not the "
                f"persistent one: domain '{name}' is busy: snapshot in progress")
            assert "<interface type='user'>" in g.dom.xml()
            assert "<interface type='user'>" not in g.dom.xml(INACTIVE)
        finally:
            g.close()


def _without_disk(xml: str, target: str) -> str:
    """The domain XML ``xml`` without its disk ``target``."""
    from lxml import etree
    root = etree.fromstring(xml.encode())
    for disk in root.iter("disk"):
        found = disk.find("target")
        if found is not None and found.get("dev") == target:
            disk.getparent().remove(disk)
    return etree.tostring(root, encoding="unicode")


def test_two_backups_to_one_target_leave_the_finished_one(
        qemud: DaemonProcess, tools: Tools, tmp_path: Path) -> None:
    """Two shut-off domains backed up to the same file, the first one's qemu-img held:
    the first made its file when it began (exclusively), so the second fails saying
    the target exists, and removes nothing. Before, both passed the call's check, the
    second's qemu-img failed on the first's lock, and its failure removed the first
    one's file, which then reported success."""
    target = tmp_path / "out.qcow2"
    doms = []
    with qemud.connect() as conn:
        for name in ("bk-one", "bk-two"):
            image = make_image(tmp_path / f"{name}.qcow2")
            doms.append(conn.define_xml(bare_xml(name).replace(
                "<os>", f"<devices>{disk_xml(image)}</devices><os>")))
        try:
            tools.held.start_holding()
            try:
                first, first_outcome = in_thread(
                    lambda: qemud.connect().lookup_by_name("bk-one").backup(str(target)))
                wait_for(tools.held.held.exists, 30, message="the first backup held")
                with pytest.raises(client.RemoteError,
                                   match=f"backup target {target} already exists"):
                    doms[1].backup(str(target))
            finally:
                tools.held.release()
                first.join(120)
            assert first_outcome.get("error") is None, first_outcome
            assert target.is_file() and target.stat().st_size > 0
            info = subprocess.run(["qemu-img", "info", "--output=json", str(target)],
                                  capture_output=True, text=True, check=True)
            assert json.loads(info.stdout)["format"] == "qcow2"
        finally:
            for dom in doms:
                dom.undefine()
