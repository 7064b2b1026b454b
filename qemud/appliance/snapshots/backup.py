"""Point-in-time backups (DOMAIN_BACKUP) of a running or shut-off guest's disks.

Running guest: ``blockdev-backup sync=full`` of the disk(s) to new target nodes in one
``transaction`` (one consistent instant for all disks; QEMU's copy-before-write keeps it
while the guest writes on), tracked by BLOCK_JOB_COMPLETED, progress from ``query-jobs``
every 0.5 s as appliance events ``backup-progress`` ("NN%"), then ``backup-completed``
(or ``backup-failed``). A shut-off guest is backed up with ``qemu-img convert``. The
reply comes when the copy is complete.
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
    from qemud.loop import Timer
    from qemud.qemu.qmp import QMPEvent

    from ..tools import ToolRunner
    from .records import SnapshotStore

__all__ = ["BackupOps", "Backup", "BackupTarget"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

PROGRESS_INTERVAL = 0.5


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


@dataclass
class Backup:
    dom: DomainObj
    targets: list[BackupTarget]
    result: Deferred
    created: list[Path] = field(default_factory=list)
    timer: Timer | None = None
    last_pct: int = -1
    finished: bool = False

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

    def backup(self, ctx: Any, args: pl.BackupArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom)  # a disk is being unplugged
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
        backup = Backup(dom, targets, out)
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

    def _finish_backup(self, backup: Backup, error: QemudError | None) -> None:
        if backup.finished:
            return
        backup.finished = True
        dom = backup.dom
        if self._backups.get(dom.uuid) is backup:
            del self._backups[dom.uuid]
        if backup.timer is not None:
            backup.timer.cancel()
        monitor = dom.monitor
        if monitor is not None and not monitor.closed and dom.stop_intent is None:
            for t in backup.targets:
                if error is not None and t.job and not t.done:
                    monitor.execute("block-job-cancel", {"device": t.job, "force": True})
                if t.node:
                    monitor.execute("blockdev-del", {"node-name": t.node}).add_done_callback(
                        functools.partial(log_failure, f"domain {dom.name}: cannot remove "
                                          f"backup node {t.node}"))
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
            backup.created.append(t.path)
            steps.append(self.tools.run([qemu_img, "convert", "-f", disk.driver_type or "raw",
                                         "-O", t.fmt, disk.source or "", str(t.path)]))
        gather(steps).add_done_callback(lambda g: self._finish_backup(backup, g.error))

    def _backup_live(self, backup: Backup, qemu_img: str) -> None:
        dom = backup.dom
        monitor = dom.monitor
        assert monitor is not None
        self._backups[dom.uuid] = backup
        token = os.urandom(3).hex()  # unique, not secret: no secrets/hashlib import

        def fail(error: QemudError) -> None:
            self._finish_backup(backup, error)

        def queried(d: Deferred) -> None:
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
                if g.error is not None:
                    fail(qemu_failure("cannot open the backup target", g.error))
                    return
                actions = [{"type": "blockdev-backup", "data": job_speed({
                    "job-id": t.job, "device": sources[t.target], "target": t.node,
                    "sync": "full"})} for t in backup.targets]
                # jobs may complete before this answer: on_qmp_event already tracks them
                monitor.execute("transaction", {"actions": actions}).add_done_callback(
                    lambda d: fail(qemu_failure("cannot start the backup", d.error))
                    if d.error else progress_soon())
            gather(adds).add_done_callback(added)

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
        backup.created.append(t.path)
        if t.fmt == "qcow2":
            return self.tools.run([qemu_img, "create", "-q", "-f", "qcow2", str(t.path),
                                   str(t.size)])
        try:
            fd = os.open(t.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, t.size)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == 17:  # EEXIST: not ours, never removed
                backup.created.remove(t.path)
            return Deferred.failed(OperationFailed(f"cannot create backup target {t.path}: "
                                                   f"{exc.strerror or exc}"))
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
        if backup is None or backup.finished:
            return
        t = backup.job(str(event.data.get("device", "")))
        if t is None:
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
        if backup is not None:
            self._finish_backup(backup, OperationFailed(
                f"domain '{dom.name}' stopped during the backup"))
