"""Live disk attach/detach against jobs and slow guests, with a daemon whose unplug
timeout is short (the ``QEMUD_UNPLUG_TIMEOUT`` test hook) and whose ``qemu-img`` can be
held (a wrapper first on its PATH), so that a snapshot stays in progress while the test
tries a detach. Real QEMU and a real TCG test guest, as in test_snapshot_unplug."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import client
from client.errors import OperationInvalid, OperationTimeout
from qemud.driver.devices import UNPLUG_TIMEOUT_ENV
from tests.helpers.daemon import DaemonProcess, serving, stop_destroying_guests
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.integration.conftest import TestGuest

from .snapshot_chains import qemu_files
from .snapshot_guests import Guest, disk_xml, make_image
from .vdb_hotplug import (
    device_dels,
    has_vdb,
    overlays_of,
    plug,
    replug_in_qemu,
    snapshotted_vdb,
    unplug,
    wait_until,
)

pytestmark = pytest.mark.integration

#: the daemon's unplug timeout (seconds): a paused guest outlasts it
SHORT_TIMEOUT = 3



@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-detach")
    qemu_img = HeldQemuImg.install(root)
    daemon = DaemonProcess(root, env={UNPLUG_TIMEOUT_ENV: str(SHORT_TIMEOUT),
                                      "PATH": qemu_img.path_env()})
    with serving(daemon):
        yield daemon


def test_live_attach_and_detach_refused_during_a_snapshot(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    name = "detach-in-job"
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdc = make_image(tmp_path / "vdc.qcow2")
    vdb_xml, vdc_xml = disk_xml(vdb, dev="vdb"), disk_xml(vdc, dev="vdc")
    g = Guest(conn, test_guest, name, tmp_path, disk_xml(vda) + vdb_xml).boot()
    hold, held = qemud.root / "hold", qemud.root / "held"
    held.unlink(missing_ok=True)
    hold.touch()
    try:
        with qemud.connect() as other, ThreadPoolExecutor(1) as pool:
            snapshot = pool.submit(other.lookup_by_name(name).snapshot_create, "s1")
            try:
                wait_until(held.exists)  # the snapshot's qemu-img create is running
                busy = f"domain '{name}' is busy: snapshot in progress"
                with pytest.raises(OperationInvalid, match=busy):
                    g.dom.detach_device(vdb_xml)
                with pytest.raises(OperationInvalid, match=busy):
                    g.dom.detach_device(vdb_xml, client.AFFECT_LIVE | client.AFFECT_CONFIG)
                with pytest.raises(OperationInvalid, match=busy):
                    g.dom.attach_device(vdc_xml)
                assert not snapshot.done()
            finally:
                hold.unlink()
            assert snapshot.result(timeout=120) == "s1"
        # nothing changed, neither live nor in the persistent definition
        assert has_vdb(g.dom.xml()) and has_vdb(g.dom.xml(client.XML_INACTIVE))
        assert "<target dev='vdc'" not in g.dom.xml()
        # once the snapshot is done, both work (the overlay of vdb is closed too)
        overlays = overlays_of(qemud, name)
        unplug(g, vdb_xml)
        assert not [f for f in qemu_files(qemud, name) if f in overlays]
        plug(g, vdc_xml)
    finally:
        hold.unlink(missing_ok=True)
        g.close()


def test_config_detach_of_a_shut_off_domain(conn: client.Connection,
                                            test_guest: TestGuest, tmp_path: Path) -> None:
    """The job checks are the live path's: a shut-off domain's definition still loses
    the disk (a guard: this worked before them too)."""
    vda = make_image(tmp_path / "vda.qcow2")
    vdb_xml = disk_xml(make_image(tmp_path / "vdb.qcow2"), dev="vdb")
    g = Guest(conn, test_guest, "detach-config", tmp_path, disk_xml(vda) + vdb_xml)
    try:
        g.dom.detach_device(vdb_xml, client.AFFECT_CONFIG)
        assert not has_vdb(g.dom.xml(client.XML_INACTIVE))
        assert "<target dev='vda'" in g.dom.xml(client.XML_INACTIVE)
    finally:
        g.close()


def test_late_release_closes_the_disk(conn: client.Connection, qemud: DaemonProcess,
                                      test_guest: TestGuest, tmp_path: Path) -> None:
    """A guest releasing a disk after the detach timed out: the disk then leaves the
    live definition and QEMU closes its files (overlays included), as on time."""
    name = "detach-late"
    g, vdb, vdb_xml = snapshotted_vdb(conn, test_guest, name, tmp_path)
    try:
        overlays = overlays_of(qemud, name)
        assert overlays and set(overlays) <= set(qemu_files(qemud, name))
        sent = device_dels(qemud)
        g.dom.suspend()  # the guest cannot release the disk until resumed
        with pytest.raises(OperationTimeout,
                           match=f"did not release disk vdb within {SHORT_TIMEOUT} s"):
            g.dom.detach_device(vdb_xml)
        assert has_vdb(g.dom.xml())  # not released: still there
        assert str(vdb) in qemu_files(qemud, name)
        # the unplug request is still pending in QEMU: no second one, no job meanwhile
        with pytest.raises(OperationInvalid, match="disk vdb of domain .* already being "
                                                   "detached"):
            g.dom.detach_device(vdb_xml)
        with pytest.raises(OperationInvalid, match="busy: detach of disk vdb in progress"):
            g.dom.snapshot_create("s2")
        with pytest.raises(OperationInvalid, match="busy: detach of disk vdb in progress"):
            g.dom.save(str(tmp_path / "saved"))  # it would come back with vdb plugged in
        assert not (tmp_path / "saved").exists()
        assert device_dels(qemud) == sent + 1
        g.dom.resume()
        wait_until(lambda: not has_vdb(g.dom.xml()))
        wait_until(lambda: not [f for f in qemu_files(qemud, name)
                                if f in [str(vdb), *overlays]])
        replug_in_qemu(g, qemud, tmp_path, [str(vdb), *overlays])
        g.dom.snapshot_create("s2")  # no longer busy
    finally:
        g.close()


def qemu_answers(qemud: DaemonProcess, command: str) -> int:
    """How many replies to ``command`` the daemon has had from QEMU (its debug log)."""
    return sum(1 for line in qemud.log_text().splitlines() if f"<-- {command} " in line)


def test_release_after_a_daemon_restart_closes_the_disk(test_guest: TestGuest,
                                                        tmp_path: Path) -> None:
    """The daemon is killed while a detach waits for the guest; the guest releases the
    disk once the next daemon has re-attached to it. That daemon, which never sent the
    unplug, still closes the disk's files and takes it out of the live definition."""
    name = "detach-restart"
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    try:
        with daemon.connect() as first:
            g, vdb, vdb_xml = snapshotted_vdb(first, test_guest, name, tmp_path)
            overlays = overlays_of(daemon, name)
            sent = device_dels(daemon)
            answered = qemu_answers(daemon, "device_del")
            g.dom.suspend()  # the guest cannot release the disk until resumed
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(g.dom.detach_device, vdb_xml)
                wait_until(lambda: device_dels(daemon) == sent + 1)  # the unplug is asked
                # ... and QEMU has it (the daemon logs the command just before writing
                # it: a kill right after that line could come before QEMU got it)
                wait_until(lambda: qemu_answers(daemon, "device_del") == answered + 1)
                daemon.kill()  # kill -9: the wait for the guest dies with it
                with pytest.raises(client.ConnectionLost):
                    pending.result(timeout=60)
        daemon.start()
        with daemon.connect() as second:
            g.dom = second.lookup_by_name(name)
            assert has_vdb(g.dom.xml())  # re-attached: still there, not released
            assert str(vdb) in qemu_files(daemon, name)
            g.dom.resume()
            wait_until(lambda: not has_vdb(g.dom.xml()))
            assert f"domain {name}: the guest released disk vdb (a detach sent before the " \
                   "daemon restarted)" in daemon.log_text()
            wait_until(lambda: not [f for f in qemu_files(daemon, name)
                                    if f in [str(vdb), *overlays]])
            replug_in_qemu(g, daemon, tmp_path, [str(vdb), *overlays])
            g.close()
    finally:
        stop_destroying_guests(daemon)
