"""A live backup that QEMU itself fails: the target filesystem fills up (ENOSPC).

The backup target is on a 1 MiB tmpfs mounted for the test (root); the guest's disk is
a raw image of several MiB of non-zero data, so QEMU's ``blockdev-backup`` job hits
"No space left on device" part-way and ends with an error. A user must then see:

* the call (and ``qemush backup``) fail with an error that names the cause (QEMU's
  message), the shell's last line being that error;
* one audit line ``result=error`` and one ``backup-failed`` event, no
  ``backup-completed``;
* the partial target file removed (the tmpfs is empty again: its space is back);
* the guest running on, its disk usable and not busy: no QEMU block job, no target or
  copy-before-write node left (checked on a second QMP monitor the test adds with
  ``<qemu:commandline>``), a backup to a good place succeeds, a disk detach and the
  destroy work.

Real daemon, real TCG test guest, real QEMU block jobs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client
from tests.appliance.conftest import BOOT_TIMEOUT, EventLog
from tests.helpers.daemon import DaemonProcess, qemush, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort
from tests.qemu.qmpclient import QMPTestClient

from .conftest import assert_log_clean, guest_name

pytestmark = pytest.mark.integration

FS_SIZE = "1M"
DISK_SIZE = 8 * 1024 * 1024
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ENOSPC = "No space left on device"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end whatever happened (lazily if QEMU still holds
    a file there). Requested before the daemon and QEMU fixtures: torn down after them."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700",
                           "tmpfs", str(mountpoint)], capture_output=True, text=True)
    assert proc.returncode == 0, f"cannot mount a tmpfs (needs root): {proc.stderr}"
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def data_disk(path: Path) -> Path:
    """A raw image of ``DISK_SIZE`` non-zero bytes (every block is copied)."""
    pattern = b"QEMUD-ENOSPC-DATA-"
    with open(path, "wb") as f:
        f.write((pattern * (DISK_SIZE // len(pattern) + 1))[:DISK_SIZE])
    return path


def raw_disk_xml(path: Path, dev: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>")


def domain_xml(name: str, guest: TestGuest, serial: Path, qmp: Path, disks: str) -> str:
    """The test guest with ``disks`` and a second QMP monitor on ``qmp`` for the test."""
    xml = guest_xml(name, guest, serial, extra=disks)
    xml = xml.replace("<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'>")
    return xml.replace("</domain>", (
        "<qemu:commandline><qemu:arg value='-qmp'/>"
        f"<qemu:arg value='unix:{qmp},server=on,wait=off'/></qemu:commandline></domain>"))


def space_back(fs: Path) -> None:
    """A failed backup's partial files are gone from ``fs``: renamed away by the time the
    call returned (no visible name left), removed with their space soon after (an ``rm``
    child of the daemon frees it, off the loop)."""
    assert [p for p in fs.iterdir() if not p.name.startswith(".")] == []
    wait_for(lambda: list(fs.iterdir()) == []
             and os.statvfs(fs).f_bfree == os.statvfs(fs).f_blocks,
             30, message=f"the partial backup files in {fs} removed")


def leftovers(qmp: QMPTestClient, small_fs: Path) -> list[Any]:
    """What a backup may leave in QEMU: jobs, its target nodes, a copy-before-write
    filter, a node on a file of the tmpfs."""
    found: list[Any] = list(qmp.execute("query-block-jobs"))
    found += list(qmp.execute("query-jobs"))
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        name = str(node.get("node-name", ""))
        if name.startswith("bk-") or node.get("drv") == "copy-before-write" \
                or str(node.get("file", "")).startswith(f"{small_fs}/"):
            found.append((name, node.get("drv"), node.get("file")))
    return found


def audit_errors(daemon: DaemonProcess, target: Path) -> list[str]:
    return [line for line in daemon.audit_file.read_text().splitlines()
            if "appliance backup" in line and str(target) in line
            and "result=error" in line]


def test_backup_fails_on_full_target_fs(small_fs: Path, qemu_cleanup: None,
                                        daemon_factory: Any, test_guest: TestGuest,
                                        short_tmp: Path, tmp_path: Path) -> None:
    daemon: DaemonProcess = daemon_factory()
    name = guest_name("bk-enospc")
    serial_sock, qmp_sock = short_tmp / "serial", short_tmp / "qmp"
    disk = data_disk(tmp_path / "data.raw")
    spare = data_disk(tmp_path / "spare.raw")
    conn = daemon.connect()
    dom = conn.define_xml(domain_xml(name, test_guest, serial_sock, qmp_sock,
                                     raw_disk_xml(disk, "vda") + raw_disk_xml(spare, "vdb")))
    serial: SerialPort | None = None
    qmp: QMPTestClient | None = None
    try:
        dom = dom.create()
        serial = SerialPort(serial_sock)
        serial.wait_for(READY, BOOT_TIMEOUT)
        qmp = QMPTestClient(qmp_sock)
        qmp.execute("qmp_capabilities")
        assert leftovers(qmp, small_fs) == []
        conn.register_event(client.EventId.APPLIANCE, None, dom)
        events = EventLog(conn)

        # -- the API: QEMU's job fails, the call says why ---------------------------------
        target = small_fs / "vda.raw"
        with pytest.raises(client.OperationFailed) as info:
            dom.backup(str(target), "vda")
        # at the reply QEMU has closed the partial file: it is gone, and its space back
        # once the daemon's rm child has removed it (it is renamed away at once)
        space_back(small_fs)
        message = str(info.value)
        assert ENOSPC in message and "'vda'" in message, message
        failed = events.wait(name, "backup-failed")
        events.drain(1.0)
        assert [r.text for r in events.appliance(name, "backup-failed")] == [failed[0].text]
        assert ENOSPC in failed[0].text, failed[0].text
        assert not events.appliance(name, "backup-completed")
        assert len(audit_errors(daemon, target)) == 1, daemon.audit_file.read_text()
        assert f"domain {name}: backup failed: " in daemon.log_text()
        assert leftovers(qmp, small_fs) == []

        # -- both disks into a directory there: one job fails, the other one is ended ----
        with pytest.raises(client.OperationFailed, match=ENOSPC):
            dom.backup(str(small_fs))
        space_back(small_fs)
        assert leftovers(qmp, small_fs) == []
        events.wait(name, "backup-failed", 2)
        events.drain(1.0)
        assert len(events.appliance(name, "backup-failed")) == 2
        assert len(audit_errors(daemon, small_fs)) == 2
        # the guest runs on, its disk works
        assert dom.state()[0] == client.DomainState.RUNNING
        mark = serial.mark()
        serial.send("write-disk vda AFTER-ENOSPC")
        serial.wait_for(r"QEMUD-WROTE vda", 30, start=mark)

        # -- the shell: progress lines (if any), then the error, last --------------------
        proc = qemush(daemon, "backup", name, str(target), "--disk", "vda")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines[-2] == f"error: Failed to back up domain '{name}' to {target}", lines
        assert lines[-1].startswith("error: ") and ENOSPC in lines[-1], lines
        assert "backed up" not in proc.stdout
        space_back(small_fs)
        assert len(audit_errors(daemon, target)) == 2
        assert leftovers(qmp, small_fs) == []

        # -- not busy: a backup to a good place works, then a detach and the destroy ------
        good = tmp_path / "good.raw"
        dom.backup(str(good), "vda")
        with open(good, "rb") as f:
            assert f.read(12) == b"AFTER-ENOSPC"
        assert good.stat().st_size == DISK_SIZE
        assert leftovers(qmp, small_fs) == []
        dom.detach_device(raw_disk_xml(spare, "vdb"))
        wait_for(lambda: "vdb" not in dom.xml(), 30, message="vdb detached")
        serial.close()
        serial = None
        qmp.close()
        qmp = None
        dom.destroy()
        assert dom.state()[0] == client.DomainState.SHUTOFF
        assert_log_clean(daemon)
    finally:
        if serial is not None:
            serial.close()
        if qmp is not None:
            qmp.close()
        try:
            if dom.is_active():
                dom.destroy()
            dom.undefine()
        except client.QemudClientError:
            pass
        conn.close()
