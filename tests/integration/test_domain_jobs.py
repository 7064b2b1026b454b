"""domjobinfo, domjobabort and domcontrol against a real daemon and TCG guest.

Jobs are held in progress with no timing games: the daemon's ``qemu-img`` (an offline
backup's convert, a live qcow2 backup's target create, an offline snapshot-delete's
commit) is a wrapper that waits while a hold file exists
(tests/helpers/held_qemu_img.py), and a save's image goes to a FUSE file system whose
writes past the daemon's header wait while the test holds them
(tests/helpers/slowfs.py); QEMU's own backup jobs are slowed down by the
``QEMUD_TEST_JOB_SPEED`` test hook so that they run while the test looks at them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import ControlInfo, Domain
from client.errors import OperationFailed, OperationInvalid, ReadOnlyError
from protocol.constants import DomainState
from protocol.payloads import ControlState, JobOperation, JobType
from tests.appliance.snapshot_guests import Guest, disk_xml, first_bytes, make_image
from tests.helpers.daemon import (
    DaemonProcess,
    after_discards,
    qemush,
    remove_domain,
    serving,
    wait_for,
)
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import in_thread
from tests.integration.conftest import TestGuest
from tests.integration.domains import guest_xml

pytestmark = pytest.mark.integration

#: bytes/s of QEMU's backup jobs: an 8 MiB disk takes ~8 s, a 2 MiB one ~2 s
SPEED = 1024 * 1024
NO_JOB = "Requested operation is not valid: no job is active on the domain"


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> HeldQemuImg:
    """The daemon's held ``qemu-img``."""
    return HeldQemuImg.install(tmp_path_factory.mktemp("held-qemu-img"))


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, tool: HeldQemuImg
          ) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-jobs"),
                           env={"PATH": tool.path_env(), "QEMUD_TEST_JOB_SPEED": str(SPEED)})
    with serving(daemon):
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


@pytest.fixture
def held(tool: HeldQemuImg) -> Iterator[HeldQemuImg]:
    """The held ``qemu-img``, released after the test."""
    yield tool
    tool.release()


def shell(qemud: DaemonProcess, *args: str) -> tuple[int, list[str], str]:
    proc = qemush(qemud, *args)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def appliance_events(conn: client.Connection, dom: Domain, kind: str) -> list[str]:
    return [r.text for r in conn.iter_events(1.0) if r.kind == kind and r.domain == dom]


def assert_not_abortable_by_readonly(qemud: DaemonProcess, name: str,
                                     operation: JobOperation) -> None:
    """A read-only connection sees the job and its control state, may not abort it."""
    with qemud.connect(readonly=True) as ro:
        dom = ro.lookup_by_name(name)
        assert dom.job_info().operation == operation
        assert dom.control_info().state == ControlState.JOB
        with pytest.raises(ReadOnlyError):
            dom.abort_job()
        assert dom.job_info().operation == operation  # still running


def test_no_job(conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
                tmp_path: Path) -> None:
    dom = conn.define_xml(guest_xml("jobs-idle", test_guest, tmp_path / "idle.serial"))
    try:
        # shut off, with no job: libvirt's answer (the domain is not running)
        with pytest.raises(OperationInvalid, match="is not running"):
            dom.job_info()
        with pytest.raises(OperationInvalid, match="is not running"):
            dom.control_info()
        dom = dom.create()
        info = dom.job_info()
        assert (info.type, info.time_elapsed_ms, info.data_total) == (JobType.NONE, 0, 0)
        assert dom.control_info() == ControlInfo(ControlState.OK, 0, 0)
        with pytest.raises(OperationInvalid) as caught:
            dom.abort_job()
        assert str(caught.value.message) == NO_JOB
        assert dom.state()[0] == DomainState.RUNNING

        code, out, err = shell(qemud, "domjobinfo", "jobs-idle")
        assert code == 0, err
        assert out == ["Job type:         None        "]  # virsh's %-17s %-12s
        code, out, err = shell(qemud, "domcontrol", "jobs-idle")
        assert (code, out) == (0, ["ok"]), err
        code, out, err = shell(qemud, "domjobabort", "jobs-idle")
        assert code == 1 and out == []
        assert err.splitlines() == [f"error: {NO_JOB}"], err
    finally:
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_abort_held_live_backup(conn: client.Connection, qemud: DaemonProcess,
                                test_guest: TestGuest, tmp_path: Path,
                                held: HeldQemuImg) -> None:
    """The backup waits in its target's ``qemu-img create``: the abort kills it; the
    backup call fails as cancelled, no file is left, the guest runs on."""
    data = make_image(tmp_path / "data.qcow2", size="2M")
    g = Guest(conn, test_guest, "jobs-live", tmp_path, disk_xml(data)).boot()
    target = tmp_path / "backup.qcow2"
    try:
        dom = g.dom
        callback = conn.register_event(client.EventId.APPLIANCE, None, dom)
        held.start_holding()
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("jobs-live").backup(str(target)))
        wait_for(held.held.exists, 30, message="the held qemu-img create")

        first = dom.job_info()
        assert (first.type, first.operation) == (JobType.UNBOUNDED, JobOperation.BACKUP)
        wait_for(lambda: dom.job_info().time_elapsed_ms > first.time_elapsed_ms, 10,
                 message="the job's elapsed time to grow")
        control = dom.control_info()
        assert control.state == ControlState.JOB and control.state_time_ms > 0

        code, out, err = shell(qemud, "domjobinfo", "jobs-live")
        assert code == 0, err
        assert out[:2] == ["Job type:         Unbounded   ", "Operation:        Backup      "]
        assert re.fullmatch(r"Time elapsed:     \d+ +ms", out[2]), out
        assert len(out) == 3, out  # no progress known before QEMU's job runs
        code, out, err = shell(qemud, "domcontrol", "jobs-live")
        assert code == 0 and re.fullmatch(r"background job \(\d+\.\d{3}s\)", out[0]), out

        assert_not_abortable_by_readonly(qemud, "jobs-live", JobOperation.BACKUP)

        code, out, err = shell(qemud, "domjobabort", "jobs-live")
        assert code == 0, err
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), OperationFailed), outcome
        assert "was cancelled: its job was aborted" in outcome["error"].message
        assert not target.exists()
        assert any("cancelled" in text for text in
                   appliance_events(conn, dom, "backup-failed"))
        conn.deregister_event(callback)
        assert dom.job_info().type == JobType.NONE
        assert dom.state()[0] == DomainState.RUNNING
        g.command("ping", r"QEMUD-PONG")

        # nothing is left busy: a later backup works
        held.release()
        g.write("AFTER-ABORT")
        dom.backup(str(target))
        assert first_bytes(target, "qcow2", 11) == b"AFTER-ABORT"
    finally:
        held.release()
        g.close()


def test_abort_running_qemu_backup_job(conn: client.Connection, qemud: DaemonProcess,
                                       test_guest: TestGuest, tmp_path: Path) -> None:
    """QEMU's backup job runs (slowed down): domjobinfo shows its progress from
    query-jobs, the abort cancels it and the call fails as cancelled."""
    data = make_image(tmp_path / "data.qcow2", size="8M")
    g = Guest(conn, test_guest, "jobs-qemu", tmp_path, disk_xml(data)).boot()
    target = tmp_path / "backup.raw"
    try:
        dom = g.dom
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("jobs-qemu").backup(str(target)))
        info = wait_for(lambda: (lambda i: i if i.data_total else None)(dom.job_info()),
                        30, message="the backup's progress")
        assert info.operation == JobOperation.BACKUP
        assert info.data_total == 8 * 1024 * 1024
        assert info.data_processed + info.data_remaining == info.data_total
        code, out, err = shell(qemud, "domjobinfo", "jobs-qemu")
        assert code == 0, err
        assert out[3].startswith("Data processed:   ") and out[3].endswith("iB"), out
        assert re.fullmatch(r"Data remaining:   \d+\.\d{3} [KM]?i?B", out[4]), out
        assert out[5] == "Data total:       8.000 MiB", out
        assert target.exists()

        dom.abort_job()
        thread.join(30)
        assert isinstance(outcome.get("error"), OperationFailed), outcome
        assert "was cancelled" in outcome["error"].message
        assert not target.exists()
        assert dom.state()[0] == DomainState.RUNNING
        g.command("ping", r"QEMUD-PONG")
        with pytest.raises(OperationInvalid, match="no job is active on the domain"):
            dom.abort_job()
    finally:
        g.close()


def test_abort_offline_backup(conn: client.Connection, qemud: DaemonProcess,
                              test_guest: TestGuest, tmp_path: Path,
                              held: HeldQemuImg) -> None:
    """A shut-off domain's backup (``qemu-img convert``, held): its job is reported and
    aborted (qemud backs up shut-off domains, libvirt has no such job)."""
    data = make_image(tmp_path / "data.qcow2", size="2M")
    dom = conn.define_xml(guest_xml("jobs-offline", test_guest, tmp_path / "off.serial",
                                    extra=disk_xml(data)))
    target = tmp_path / "offline.qcow2"
    try:
        held.start_holding()
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("jobs-offline").backup(str(target)))
        wait_for(held.held.exists, 30, message="the held qemu-img convert")
        info = dom.job_info()
        assert (info.type, info.operation, info.data_total) == (
            JobType.UNBOUNDED, JobOperation.BACKUP, 0)
        assert dom.control_info().state == ControlState.JOB
        dom.abort_job()
        thread.join(30)
        assert isinstance(outcome.get("error"), OperationFailed), outcome
        assert "was cancelled: its job was aborted" in outcome["error"].message
        assert not target.exists()
        with pytest.raises(OperationInvalid, match="is not running"):
            dom.abort_job()
        held.release()
        dom.backup(str(target))  # a later one works
        assert target.exists()
    finally:
        held.release()
        dom.undefine()


def test_snapshot_delete_cannot_be_aborted(conn: client.Connection, qemud: DaemonProcess,
                                           test_guest: TestGuest, tmp_path: Path,
                                           held: HeldQemuImg) -> None:
    data = make_image(tmp_path / "data.qcow2", size="2M")
    dom = conn.define_xml(guest_xml("jobs-merge", test_guest, tmp_path / "m.serial",
                                    extra=disk_xml(data)))
    try:
        dom.snapshot_create("s1")
        held.start_holding()
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("jobs-merge").snapshot_delete("s1"))
        wait_for(held.held.exists, 30, message="the held qemu-img commit")
        assert dom.job_info().operation == JobOperation.SNAPSHOT_DELETE
        code, out, err = shell(qemud, "domjobinfo", "jobs-merge")
        assert out[1] == "Operation:        Snapshot delete", out
        with pytest.raises(OperationInvalid) as caught:
            dom.abort_job()
        assert caught.value.message == \
            "Requested operation is not valid: cannot abort snapshot delete"
        held.release()
        thread.join(60)
        assert outcome == {"result": None}, outcome
        assert dom.snapshots() == []
    finally:
        held.release()
        remove_domain(dom)


def test_abort_save(conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
                    tmp_path: Path, slowfs: SlowFS) -> None:
    """The save's migration waits on its held writes: the abort cancels the migration;
    the save fails saying so, the guest runs on, no file is left."""
    g = Guest(conn, test_guest, "jobs-save", tmp_path, "").boot()
    saves = slowfs.mount / "saves"
    saves.mkdir()
    try:
        dom = g.dom
        # past the first MiB: QEMU is through its set-up then (the RAM figures)
        slowfs.hold_writes(from_offset=1 << 20)
        thread, outcome = in_thread(
            lambda: qemud.connect().lookup_by_name("jobs-save").save(str(saves / "g.sav")))
        slowfs.wait_held_write()
        info = dom.job_info()
        assert (info.type, info.operation) == (JobType.UNBOUNDED, JobOperation.SAVE)
        # query-migrate's RAM figures: QEMU has none while the migration is still in its
        # 'setup' state, which can outlast its first write by a few ms
        info = wait_for(lambda: (lambda i: i if i.data_total else None)(dom.job_info()),
                        30, message="the save's RAM figures")
        assert (info.type, info.operation) == (JobType.UNBOUNDED, JobOperation.SAVE)
        code, out, err = shell(qemud, "domjobinfo", "jobs-save")
        assert out[1] == "Operation:        Save        ", out
        assert out[5].startswith("Data total:       "), out

        dom.abort_job()
        slowfs.release_writes()  # (the cancel takes once QEMU's write returns)
        thread.join(60)
        assert isinstance(outcome.get("error"), client.OperationFailed), outcome
        assert outcome["error"].message == (
            f"operation failed: save of domain '{dom.name}' was cancelled: its job was "
            "aborted"), outcome
        assert after_discards(saves) == []
        assert dom.state()[0] == DomainState.RUNNING
        assert dom.job_info().type == JobType.NONE
        g.command("ping", r"QEMUD-PONG")
    finally:
        slowfs.release_writes()
        g.close()
