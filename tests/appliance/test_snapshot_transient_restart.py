"""A transient domain that ended while no daemon ran: the next daemon sets its snapshot
metadata aside at start-up.

The daemon is killed (``kill -9``) while the transient guest runs, then its QEMU is
killed too: no daemon sees the domain end, so no stop hook sets the metadata aside.
The next daemon finds the QEMU gone when it re-attaches (the transient domain is gone
with it) and must set the metadata aside then, as a stop would have: a transient domain
created again with the same name and uuid starts without the first run's snapshots,
while the record and every image stay on disk (nothing the guest wrote is lost), and
the log says where the record went. Real daemon, qemu-img and TCG test guest.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.helpers.procs import wait_pidfd
from tests.integration.conftest import TestGuest
from tests.integration.domains import guest_xml

from .snapshot_guests import boot_transient, disk_source, disk_xml, first_bytes, make_image, write

pytestmark = pytest.mark.integration

NAME = "snap-transient-restart"


@pytest.fixture
def qemus() -> Iterator[list[int]]:
    """PIDs of the QEMUs the test started: killed at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def qemud(tmp_path: Path, qemus: list[int]) -> Iterator[DaemonProcess]:
    """This test's own daemon (it is killed and started again); at the end every guest
    it runs is destroyed and it is stopped."""
    daemon = DaemonProcess(tmp_path / "qemud").start()
    try:
        yield daemon
    finally:
        try:
            if daemon.proc is None or daemon.proc.poll() is not None:
                daemon.start()
            stop_destroying_guests(daemon)
        finally:
            daemon.kill()


def qemu_pid(qemud: DaemonProcess, name: str, qemus: list[int]) -> int:
    pid = int((qemud.guest_run_dir(name) / "qemu.pid").read_text().strip())
    qemus.append(pid)
    return pid


def test_transient_ended_while_no_daemon_ran(qemud: DaemonProcess, qemus: list[int],
                                             test_guest: TestGuest, tmp_path: Path) -> None:
    data = make_image(tmp_path / "data.qcow2")
    sock = tmp_path / "t.serial"
    xml = guest_xml(NAME, test_guest, sock, extra=disk_xml(data))
    state = qemud.state_dir / "snapshots" / NAME
    index = state / "snapshots.json"
    conn = qemud.connect()
    dom, serial = boot_transient(conn, test_guest, xml, sock)
    try:
        uuid = dom.uuid
        dom.snapshot_create("t1snap")
        top = disk_source(dom.xml())
        assert top != str(data) and index.is_file()
        write(serial, "BEFORE-KILL")
        serial.close()
        pid = qemu_pid(qemud, NAME, qemus)
        conn.close()

        # the daemon dies, then the guest ends while no daemon runs; a pidfd says when it
        # has ended, files and image locks closed (its command line reads empty as soon as
        # its memory is gone, before that)
        qemud.kill()
        pidfd = os.pidfd_open(pid)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        wait_pidfd(pidfd, 30, f"QEMU {pid}")
        assert index.is_file()  # nobody has set it aside yet

        mark = len(qemud.log_text())
        qemud.start()
        conn = qemud.connect()
        with pytest.raises(client.NoDomainError):
            conn.lookup_by_name(NAME)
        assert NAME not in {d.name for d in conn.list_domains()}
        # set aside under a name that says so, kept whole; every image stays
        assert not index.exists()
        aside = state / f"snapshots.{uuid}.transient-ended.json"
        assert sorted(state.glob("snapshots*.json")) == [aside]
        recorded = json.loads(aside.read_text())
        assert recorded["uuid"] == uuid
        assert [s["name"] for s in recorded["snapshots"]] == ["t1snap"]
        assert Path(top).is_file() and first_bytes(top, "qcow2", 11) == b"BEFORE-KILL"
        log = qemud.log_text()[mark:]
        assert (f"transient domain '{NAME}' (uuid {uuid}) ended: its snapshot metadata was "
                f"moved to {aside}") in log, log[-3000:]

        # created again with the same name and uuid: none of the first run's snapshots
        same = xml.replace(f"<name>{NAME}</name>", f"<name>{NAME}</name><uuid>{uuid}</uuid>")
        dom, serial = boot_transient(conn, test_guest, same, sock)
        assert dom.uuid == uuid
        assert dom.snapshots() == []
        assert disk_source(dom.xml()) == str(data)
        dom.snapshot_create("t2snap")
        assert [s.name for s in dom.snapshots()] == ["t2snap"]
        write(serial, "SECOND-RUN")
        # the first run's record and overlay are untouched
        assert json.loads(aside.read_text()) == recorded
        assert first_bytes(top, "qcow2", 11) == b"BEFORE-KILL"
        serial.close()
        dom.destroy()
        wait_for(lambda: not index.exists(), 10, message="the second run's record aside")
        assert len(sorted(state.glob("snapshots.*.transient-ended*.json"))) == 2
        assert json.loads(aside.read_text()) == recorded
    finally:
        serial.close()
        conn.close()
