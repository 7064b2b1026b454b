"""Point-in-time backups (DOMAIN_BACKUP) of a running or shut-off guest's disks.

Running guest: ``blockdev-backup sync=full`` of the disk(s) to new target nodes in one
``transaction`` (one consistent instant for all disks; QEMU's copy-before-write keeps it
while the guest writes on), tracked by BLOCK_JOB_COMPLETED, progress from ``query-jobs``
every 0.5 s as appliance events ``backup-progress`` ("NN%"), then ``backup-completed``
(or ``backup-failed``). A shut-off guest is backed up with ``qemu-img convert``. The
reply comes when the copy is complete and QEMU has closed the target files.

A job QEMU fails (the target's filesystem full, an I/O error) fails the backup with
QEMU's message; the other disks' jobs are cancelled, and once every job has ended (so
that no job holds a target node) the target nodes are closed, the partial files removed
and then the reply sent: the space is free again and the disks are not busy when the
client hears of the failure.

An abort (DOMAIN_ABORT_JOB, ``virsh domjobabort``; :meth:`BackupOps.abort`) ends a
backup the same way, as cancelled: a ``qemu-img`` it runs (an offline backup's convert,
a live one's target create) is killed (the loop reaps it), QEMU's jobs are cancelled,
and the backup call fails saying it was cancelled once the partial files are removed.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from protocol.constants import ShutoffReason
from qemud.dispatch import Deferred
from qemud.driver.tools import ChildGroup
from qemud.errors import InvalidArg, OperationFailed, OperationInvalid, QemudError

from .base import (
    SnapshotOps,
    gather,
    job_speed,
    log_failure,
    qemu_failure,
    report_backup_failed,
)

if TYPE_CHECKING:
    from qemud.conf import Disk
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.driver.tools import ToolRunner
    from qemud.loop import Timer
    from qemud.qemu.qmp import QMPEvent

    from .records import SnapshotStore

__all__ = ["BackupOps", "Backup", "BackupTarget"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

PROGRESS_INTERVAL = 0.5
#: a cancelled job whose end QEMU never reports holds the backup's end no longer than this
END_TIMEOUT = 30.0


@dataclass
class BackupTarget:
    target: str  # disk target dev
    path: Path
    fmt: str
    node: str = ""  # target node name once added
    job: str = ""
    size: int = 0
    current: int = 0
    done: bool = False
    ended: bool = False  # QEMU reported the job's end (completed, failed or cancelled)


@dataclass
class Backup:
    dom: DomainObj
    targets: list[BackupTarget]
    result: Deferred
    children: ChildGroup  # its qemu-img processes, killed by an abort
    created: list[Path] = field(default_factory=list)
    timer: Timer | None = None
    last_pct: int = -1
    started: bool = False  # the jobs' transaction was sent
    finished: bool = False  # the outcome is known: ending the jobs, closing the nodes
    error: QemudError | None = None  # why it failed (once finished)
    closing: bool = False  # the target nodes are being closed
    concluded: bool = False  # the result is sent
    aborted: bool = False  # DOMAIN_ABORT_JOB: it ends as cancelled, whatever else fails

    def job(self, job_id: str) -> BackupTarget | None:
        for t in self.targets:
            if t.job == job_id:
                return t
        return None


class BackupOps(SnapshotOps):
    """DOMAIN_BACKUP, and the QMP events and stops that end a backup in flight."""

    def __init__(self, driver: QemuDriver, store: SnapshotStore, tools: ToolRunner) -> None:
        super().__init__(driver, store, tools)
        self._backups: dict[str, Backup] = {}  # domain uuid -> backup in flight
        # DOMAIN_ABORT_JOB of a domain whose job is "backup" (there is one only once this
        # exists: a backup is started here)
        driver.jobs.aborters["backup"] = self.abort

    def backup(self, ctx: Any, args: pl.BackupArgs) -> Deferred:
        dom = self._dom(args)
        self.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom, disks_only=True)  # a disk is being unplugged
        if dom.active:
            self.lifecycle.require_active(dom)
        target = Path(args.target)
        if not args.target or not target.is_absolute():
            raise InvalidArg(f"backup target must be an absolute path, got '{args.target}'")
        disks = [d for d in dom.current().disks if d.device == "disk" and d.source]
        if args.disk:
            disks = [d for d in disks if d.target_dev == args.disk]
            if not disks:
                raise InvalidArg(f"domain '{dom.name}' has no disk '{args.disk}'")
        if not disks:
            raise OperationInvalid(f"domain '{dom.name}' has no disk to back up")
        targets = self._backup_targets(dom, disks, target)
        for t in targets:
            if t.path.exists():
                raise OperationInvalid(f"backup target {t.path} already exists (remove it "
                                       "or choose another name)")
            if not t.path.parent.is_dir():
                raise InvalidArg(f"backup target directory {t.path.parent} does not exist")
        qemu_img = self.qemu_img()
        dom.job = "backup"
        if dom.active:
            # in the status file: a daemon killed during the backup leaves QEMU's job and
            # the target; the next one ends the job and removes the target's file (see
            # .leftovers). One target: its path here, from before the file is created;
            # several: QEMU's target nodes name their files once they are added
            dom.job_file = str(targets[0].path) if len(targets) == 1 else ""
            self.lifecycle.save_status(dom)
        out = Deferred()
        backup = Backup(dom, targets, out, ChildGroup())
        self._backups[dom.uuid] = backup
        self.events.appliance(dom.ref(), "backup-progress", "0%")
        if dom.active:
            self._backup_live(backup, qemu_img)
        else:
            self._backup_offline(backup, {d.target_dev or "": d for d in disks}, qemu_img)
        return out

    @staticmethod
    def _backup_targets(dom: DomainObj, disks: list[Disk], target: Path
                        ) -> list[BackupTarget]:
        if len(disks) == 1 and not target.is_dir():
            fmt = "qcow2" if target.suffix == ".qcow2" else "raw"
            return [BackupTarget(disks[0].target_dev or "", target, fmt)]
        if not target.is_dir():
            raise InvalidArg(f"backup of {len(disks)} disks: target {target} must be an "
                             "existing directory")
        return [BackupTarget(d.target_dev or "", target / f"{dom.name}-{d.target_dev}.qcow2",
                             "qcow2") for d in disks]

    @staticmethod
    def _live(dom: DomainObj) -> bool:
        """QEMU's monitor is there to end jobs and close nodes (not while it stops)."""
        monitor = dom.monitor
        return monitor is not None and not monitor.closed and dom.stop_intent is None

    def abort(self, dom: DomainObj) -> None:
        """DOMAIN_ABORT_JOB: end the domain's backup as cancelled. A ``qemu-img`` it runs
        is killed (its failure then ends the backup); else the backup ends now, QEMU's
        jobs cancelled by :meth:`_finish_backup`. A backup whose outcome is known is
        ending anyway: nothing to do."""
        backup = self._backups.get(dom.uuid)
        if backup is None or backup.finished:
            return
        backup.aborted = True
        if backup.children.kill():
            log.info("domain %s: backup aborted: its qemu-img was killed", dom.name)
            return
        self._finish_backup(backup, self._cancelled(dom))

    @staticmethod
    def _cancelled(dom: DomainObj) -> OperationFailed:
        return OperationFailed(f"backup of domain '{dom.name}' was cancelled: its job was "
                               "aborted")

    def _finish_backup(self, backup: Backup, error: QemudError | None) -> None:
        """The outcome is known (``error``: why it failed). Jobs still running are
        cancelled; once every job has ended the target nodes are closed (a node a job
        still uses cannot be), then :meth:`_conclude` answers. Replying only then: QEMU
        no longer holds the files (a partial one's space is free, a qcow2 target's
        metadata is written out) and the disks are not busy when the client hears."""
        if backup.finished:
            return
        if backup.aborted:  # a killed qemu-img's failure, a job's cancel: the abort's
            error = self._cancelled(backup.dom)
        backup.finished = True
        backup.error = error
        if backup.timer is not None:
            backup.timer.cancel()
            backup.timer = None
        dom = backup.dom
        if not self._live(dom):
            self._conclude(backup)  # QEMU stops: its jobs and nodes go with it
            return
        monitor = dom.monitor
        assert monitor is not None
        running = [t for t in backup.targets if backup.started and not t.ended]
        for t in running:
            monitor.execute("block-job-cancel", {"device": t.job, "force": True}
                            ).add_done_callback(functools.partial(self._cancel_answered,
                                                                  backup, t))
        if running:
            backup.timer = self.loop.call_later(END_TIMEOUT, functools.partial(
                self._close_nodes, backup, True))
        else:
            self._close_nodes(backup)

    def _cancel_answered(self, backup: Backup, t: BackupTarget, d: Deferred) -> None:
        if d.error is not None:  # no such job (any more): it has ended
            t.ended = True
            self._job_ended(backup)

    def _job_ended(self, backup: Backup) -> None:
        if all(t.ended for t in backup.targets):
            self._close_nodes(backup)

    def _close_nodes(self, backup: Backup, timed_out: bool = False) -> None:
        if backup.closing or backup.concluded:
            return
        backup.closing = True
        dom = backup.dom
        if backup.timer is not None:
            backup.timer.cancel()
            backup.timer = None
        if timed_out:
            log.warning("domain %s: backup jobs %s did not end within %g s of their cancel; "
                        "closing the target nodes anyway", dom.name, ", ".join(
                            t.job for t in backup.targets if not t.ended), END_TIMEOUT)
        monitor = dom.monitor
        if monitor is None or not self._live(dom):
            self._conclude(backup)
            return
        steps = []
        for t in backup.targets:
            if t.node:
                step = monitor.execute("blockdev-del", {"node-name": t.node})
                step.add_done_callback(functools.partial(
                    log_failure, f"domain {dom.name}: cannot remove backup node {t.node}"))
                steps.append(step)
        gather(steps).add_done_callback(lambda _: self._conclude(backup))

    def _conclude(self, backup: Backup) -> None:
        """The jobs and nodes are gone: remove a failed backup's files, report, reply."""
        if backup.concluded:
            return
        backup.concluded = True
        error = backup.error
        dom = backup.dom
        if self._backups.get(dom.uuid) is backup:
            del self._backups[dom.uuid]
        if backup.timer is not None:
            backup.timer.cancel()
            backup.timer = None
        if dom.job == "backup":
            dom.job = None
        if dom.job_file in {str(t.path) for t in backup.targets}:
            dom.job_file = ""
        # before the reply: a status file that still named the backup would make a
        # restarted daemon remove a file the client was told is complete
        self.lifecycle.save_status(dom)
        files = ", ".join(str(t.path) for t in backup.targets)
        if error is not None:
            self._unlink(backup.created)
            log.warning("domain %s: backup failed: %s", dom.name, error.message)
            report_backup_failed(self.events, dom, files, error.message)
            backup.result.fail(error)
            return
        log.info("domain %s: backup written to %s", dom.name, files)
        audit_log.info("appliance backup domain=%r uuid=%s files=%r result=ok", dom.name,
                       dom.uuid, files)
        self.events.appliance(dom.ref(), "backup-progress", "100%")
        self.events.appliance(dom.ref(), "backup-completed", files)
        backup.result.resolve(Empty())

    def _backup_offline(self, backup: Backup, disks: dict[str, Disk], qemu_img: str) -> None:
        steps = []
        for t in backup.targets:
            disk = disks[t.target]
            try:
                _claim(backup, t)
            except OperationFailed as exc:
                steps.append(Deferred.failed(exc))
                continue
            steps.append(self.tools.run([qemu_img, "convert", "-f", disk.driver_type or "raw",
                                         "-O", t.fmt, disk.source or "", str(t.path)],
                                        group=backup.children))
        gather(steps).add_done_callback(lambda g: self._finish_backup(backup, g.error))

    def _backup_live(self, backup: Backup, qemu_img: str) -> None:
        dom = backup.dom
        monitor = dom.monitor
        assert monitor is not None
        token = os.urandom(3).hex()  # unique, not secret: no secrets/hashlib import

        def fail(error: QemudError) -> None:
            self._finish_backup(backup, error)

        def queried(d: Deferred) -> None:
            if backup.finished:  # aborted meanwhile
                return
            if d.error is not None:
                fail(d.error)
                return
            sources: dict[str, str] = {}
            for t in backup.targets:
                sources[t.target], t.size = d.result[t.target]
                t.job = f"backup-{t.target}-{token}"
            steps = [self._create_target(backup, t, qemu_img) for t in backup.targets]
            gather(steps).add_done_callback(
                lambda g: fail(g.error) if g.error else add_nodes(sources))

        def add_nodes(sources: dict[str, str]) -> None:
            if backup.finished:
                return
            adds = []
            for t in backup.targets:
                t.node = f"bk-{t.target}-{token}"
                adds.append(monitor.execute("blockdev-add", {
                    "driver": t.fmt, "node-name": t.node,
                    "file": {"driver": "file", "filename": str(t.path)}}))

            def added(g: Deferred) -> None:
                if backup.finished:  # aborted meanwhile: the nodes are being closed
                    return
                if g.error is not None:
                    fail(qemu_failure("cannot open the backup target", g.error))
                    return
                actions = [{"type": "blockdev-backup", "data": job_speed({
                    "job-id": t.job, "device": sources[t.target], "target": t.node,
                    "sync": "full"})} for t in backup.targets]
                # jobs may complete before this answer: on_qmp_event already tracks them
                backup.started = True
                monitor.execute("transaction", {"actions": actions}).add_done_callback(
                    started)
            gather(adds).add_done_callback(added)

        def started(d: Deferred) -> None:
            if d.error is None:
                progress_soon()
                return
            for t in backup.targets:
                t.ended = True  # a failed transaction started no job
            fail(qemu_failure("cannot start the backup", d.error))

        def progress_soon() -> None:
            if not backup.finished:
                backup.timer = self.loop.call_later(PROGRESS_INTERVAL, tick)

        def tick() -> None:
            backup.timer = None
            if backup.finished or monitor.closed:
                return
            monitor.execute("query-jobs").add_done_callback(jobs)

        def jobs(d: Deferred) -> None:
            if backup.finished:
                return
            if d.error is None:
                for job in d.result or []:
                    t = backup.job(str(job.get("id", "")))
                    if t is not None and not t.done:
                        t.current = int(job.get("current-progress", 0))
                        t.size = int(job.get("total-progress", 0)) or t.size
                self._report(backup)
            progress_soon()

        self._top_nodes(dom, [t.target for t in backup.targets]).add_done_callback(queried)

    def _create_target(self, backup: Backup, t: BackupTarget, qemu_img: str) -> Deferred:
        try:
            size = 0 if t.fmt == "qcow2" else t.size
            _claim(backup, t, size)
        except OperationFailed as exc:
            return Deferred.failed(exc)
        if t.fmt == "qcow2":
            return self.tools.run([qemu_img, "create", "-q", "-f", "qcow2", str(t.path),
                                   str(t.size)], group=backup.children)
        return Deferred.resolved(None)

    def _report(self, backup: Backup) -> None:
        total = sum(t.size for t in backup.targets)
        done = sum(t.size if t.done else min(t.current, t.size) for t in backup.targets)
        pct = min(99, done * 100 // total) if total else 0
        if pct != backup.last_pct and pct > 0:
            backup.last_pct = pct
            self.events.appliance(backup.dom.ref(), "backup-progress", f"{pct}%")

    def on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        if event.name not in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            return
        backup = self._backups.get(dom.uuid)
        if backup is None:
            return
        t = backup.job(str(event.data.get("device", "")))
        if t is None:
            return
        t.ended = True
        if backup.finished:  # waiting for the cancelled jobs to end
            self._job_ended(backup)
            return
        if event.name == "BLOCK_JOB_CANCELLED":
            why = f"domain '{dom.name}' stopped during the backup" if dom.stop_intent \
                else f"backup of disk '{t.target}' was cancelled"
            self._finish_backup(backup, OperationFailed(why))
            return
        error = event.data.get("error")
        if error:
            self._finish_backup(backup, OperationFailed(
                f"backup of disk '{t.target}' failed: {error}"))
            return
        t.done = True
        if all(x.done for x in backup.targets):
            self._finish_backup(backup, None)
        else:
            self._report(backup)

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        backup = self._backups.get(dom.uuid)
        if backup is None:
            return
        if backup.finished:
            self._conclude(backup)  # its jobs and nodes ended with QEMU
        else:
            self._finish_backup(backup, OperationFailed(
                f"domain '{dom.name}' stopped during the backup"))


def _claim(backup: Backup, t: BackupTarget, size: int = 0) -> None:
    """Create ``t``'s file, exclusively (0600, ``size`` bytes), before anything writes
    it: two backups to one path, or a file that appeared since the call's check, fail
    this one with "already exists", and a failed backup removes only files it made."""
    try:
        fd = os.open(t.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OperationFailed(f"backup target {t.path} already exists (another backup "
                              "writes it, or it appeared since the call began)") from None
    except OSError as exc:
        raise OperationFailed(f"cannot create backup target {t.path}: "
                              f"{exc.strerror or exc}") from None
    backup.created.append(t.path)
    try:
        if size:
            os.ftruncate(fd, size)
    except OSError as exc:
        raise OperationFailed(f"cannot create backup target {t.path}: "
                              f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)
