"""What a daemon killed during a live merge or backup left in a guest's QEMU, ended by
the next daemon when it re-attaches to the guest (libvirt reconciles its block jobs
then too). Until this is done the domain is busy; it takes a moment.

* A merge's commit job (``commit-<disk>-<token>``, see :mod:`.delete`) is cancelled
  (``block-job-cancel``, ``force``), never completed: an active commit then leaves the
  disk on its top overlay, which holds everything the guest wrote (the part already
  copied down is in S's image as well: nothing is lost), and a non-active one leaves
  the layer C in the chain, which still reads as before. Completing the pivot instead
  would need the definitions, the metadata and the garbage collection of a merge the
  daemon did not start; the cancel needs nothing, in every state of the job. The
  snapshot is already recorded as a failed merge (its merge mark, see
  ``SnapshotStore.load``): deleting it again redoes the merge, and a revert to it is
  refused.
* A merge's pivot QEMU made while no daemon listened (the daemon had sent
  ``block-job-complete`` and was killed before it handled ``BLOCK_JOB_COMPLETED``): no
  job is left to list, QEMU's disk reads S's image, and the definitions still name the
  top overlay, so what the guest writes from then on would not be in the chain the next
  cold start opens. :func:`adopt_pivots` compares QEMU's disks (``query-block``) with
  the live definition of a guest whose snapshot is a failed merge, and makes both
  definitions follow QEMU. The snapshot stays a failed merge; deleting it again forgets
  it (its disks no longer use an overlay of its image), and the overlay is collected.
* A backup's jobs (``backup-<disk>-<token>``, see :mod:`.backup`) are cancelled, its
  target nodes (``bk-<disk>-<token>``) closed (``blockdev-del``: QEMU no longer holds
  nor locks the files), and the target files **removed**: the backup created them (it
  refuses a target that exists), and no client was told they are complete, which is
  not known either (a job that ended while no daemon listened is no longer listed).
  Removed rather than renamed: a failed live backup removes its partial files too, so
  any file a backup leaves is a complete one. A ``backup-failed`` event and the log
  say which files went. The files are those of the target nodes of the interrupted
  backup, and the target the status file names (``job_file``: one target, recorded
  before it is created).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemud.dispatch import Deferred
from qemud.driver.discard import discard
from qemud.errors import QemudError
from qemud.qemu import naming

from .base import block_files, gather, log_failure, report_backup_failed

if TYPE_CHECKING:
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.driver.store import StatusRecord
    from qemud.loop import Timer
    from qemud.qemu.qmp import QMPEvent

    from .base import SnapshotOps

__all__ = ["Leftovers", "CLEANUP_JOB", "adopt_pivots"]

log = logging.getLogger(__name__)

#: the domain's job meanwhile (another snapshot call is refused: busy)
CLEANUP_JOB = "clean-up of the block jobs the last daemon left"
BACKUP_NODE_PREFIX = "bk-"
#: a job whose end QEMU never reports does not keep the domain busy longer than this
CLEANUP_TIMEOUT = 30.0


def _token(name: str) -> str:
    return name.rsplit("-", 1)[-1]


class Leftovers:
    """Ends the merge and backup jobs (listed in ``jobs``) the last daemon left in
    ``dom``'s QEMU, and what a backup it was running left (``record.job``)."""

    def __init__(self, driver: QemuDriver, dom: DomainObj, record: StatusRecord,
                 jobs: list[dict[str, Any]]) -> None:
        self.driver = driver
        self.dom = dom
        self.record = record
        self.jobs = {str(j.get("device")): j for j in jobs}
        self.pending = set(self.jobs)
        self.backup = record.job == "backup" or any(
            j.startswith("backup-") for j in self.jobs)
        self.own_job = False
        self.jobs_ended = False
        self.finished = False
        self.timer: Timer | None = None

    def start(self) -> None:
        dom = self.dom
        monitor = dom.monitor
        if monitor is None or monitor.closed:
            return
        if dom.job is None:
            self.own_job = True
            if self.record.job == "backup":  # a restart meanwhile finds it as it was
                dom.job, dom.job_file = "backup", self.record.job_file
            else:
                dom.job = CLEANUP_JOB
        self.driver.qmp_event_hooks.append(self._on_event)
        self.timer = self.driver.loop.call_later(CLEANUP_TIMEOUT, self._timed_out)
        for job, info in self.jobs.items():
            log.warning("domain %s: block job %s (%s, %s) was left by the last daemon: "
                        "cancelling it", dom.name, job, info.get("type"),
                        "ready" if info.get("ready") else info.get("status", "running"))
            monitor.execute("block-job-cancel", {"device": job, "force": True}
                            ).add_done_callback(functools.partial(self._cancelled, job))
        if not self.pending:
            self._jobs_gone()

    def _on_event(self, dom: DomainObj, event: QMPEvent) -> None:
        if dom is self.dom and event.name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            self._gone(str(event.data.get("device", "")),
                       event.name == "BLOCK_JOB_CANCELLED" or bool(event.data.get("error")))

    def _cancelled(self, job: str, d: Deferred) -> None:
        if d.error is not None:  # ended by itself meanwhile, or QEMU refused: go on
            log.warning("domain %s: cannot cancel block job %s: %s", self.dom.name, job,
                        d.error.message)
            self._gone(job, True)

    def _gone(self, job: str, cancelled: bool) -> None:
        if job not in self.pending:
            return
        self.pending.discard(job)
        if job.startswith("commit-"):
            # a non-active commit may complete just as it is cancelled: QEMU dropped the
            # merged layer from the chain then (the disks read the same either way)
            how = ("cancelled: the disk stays on its overlay, nothing is lost" if cancelled
                   else "QEMU completed it as it was cancelled")
            log.warning("domain %s: the merge job %s the last daemon left is ended (%s); "
                        "its snapshot is kept as a failed merge: delete it again to merge",
                        self.dom.name, job, how)
        if not self.pending:
            self._jobs_gone()

    def _jobs_gone(self) -> None:
        if self.jobs_ended or self.finished:
            return
        self.jobs_ended = True
        monitor = self.dom.monitor
        if not self.backup or monitor is None or monitor.closed:
            self._finish()
            return
        monitor.execute("query-named-block-nodes", {"flat": True}).add_done_callback(
            self._close_targets)

    def _close_targets(self, d: Deferred) -> None:
        """Close the interrupted backup's target nodes, then remove its files."""
        dom = self.dom
        monitor = dom.monitor
        if self.finished or monitor is None or monitor.closed:
            self._finish()
            return
        nodes = [n for n in (d.result or []) if d.error is None
                 and str(n.get("node-name", "")).startswith(BACKUP_NODE_PREFIX)
                 and n.get("drv") != "file"]
        tokens = {_token(j) for j in self.jobs if j.startswith("backup-")}
        if self.record.job == "backup" and not self.record.job_file and not tokens:
            # several targets, whose jobs all ended while no daemon ran: every node left
            # is one of them (the daemon closes a target node when its backup ends)
            tokens = {_token(str(n.get("node-name"))) for n in nodes}
        files = {self.record.job_file} if self.record.job == "backup" and \
            self.record.job_file else set()
        closing = []
        for node in nodes:
            name = str(node.get("node-name"))
            path = str(node.get("file", ""))
            if _token(name) in tokens or (path and path == self.record.job_file):
                files.add(path)
            step = monitor.execute("blockdev-del", {"node-name": name})
            step.add_done_callback(functools.partial(
                log_failure, f"domain {dom.name}: cannot close backup target node {name}"))
            closing.append(step)
        gather(closing).add_done_callback(lambda _: self._remove(sorted(files)))

    def _remove(self, files: list[str]) -> None:
        dom = self.dom
        failed: dict[Path, OSError] = {}
        removed = [str(p) for p in discard(self.driver.loop, files, failed=failed)]
        kept = [f"{p} ({exc.strerror or exc})" for p, exc in failed.items()]
        why = ("interrupted: the daemon stopped during the backup; "
               + (f"its partial file(s) were removed: {', '.join(removed)}" if removed
                  else "no file of it was left")
               + (f"; cannot remove {', '.join(kept)}: do not use it, it may be "
                  "incomplete" if kept else "") + "; run the backup again")
        log.warning("domain %s: a backup was in progress when the last daemon stopped: its "
                    "jobs and target nodes are ended; %s", dom.name, why)
        report_backup_failed(self.driver.events, dom, ", ".join(files), why)
        self._finish()

    def _timed_out(self) -> None:
        self.timer = None
        if not self.finished:
            log.warning("domain %s: block jobs %s did not end within %g s of their "
                        "cancel; the domain is no longer held busy for them", self.dom.name,
                        ", ".join(sorted(self.pending)), CLEANUP_TIMEOUT)
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._on_event in self.driver.qmp_event_hooks:
            self.driver.qmp_event_hooks.remove(self._on_event)
        dom = self.dom
        if not self.own_job:
            return
        if dom.job in ("backup", CLEANUP_JOB):
            dom.job = None
        if dom.job_file == self.record.job_file:
            dom.job_file = ""
        self.driver.lifecycle.save_status(dom)  # (none once the guest stopped)


def adopt_pivots(ops: SnapshotOps, dom: DomainObj) -> None:
    """The re-attached ``dom``'s disks that QEMU pivoted onto the image of a snapshot
    whose merge failed (see the module docstring): the live and persistent definitions
    follow QEMU. Nothing to do for most guests (no failed merge: no QMP call)."""
    try:
        meta = ops.store.load(dom)
    except QemudError:
        return  # (damaged metadata: every snapshot call says so)
    bases: dict[str, set[str]] = {}  # target -> realpaths of failed merges' images
    for snap in meta.snapshots.values():
        if snap.merge_failed:
            for target, d in snap.disks.items():
                bases.setdefault(target, set()).add(os.path.realpath(d.base))
    monitor, live = dom.monitor, dom.live
    if not bases or monitor is None or monitor.closed or live is None:
        return

    def queried(d: Deferred) -> None:
        if d.error is not None or dom.live is not live:
            return
        files = block_files(d.result)
        moves: dict[str, tuple[str | None, str]] = {}
        for disk in live.disks:
            target = disk.target_dev or ""
            now = files.get(naming.disk_device_id(target))
            if disk.device != "disk" or not now or now == disk.source \
                    or os.path.realpath(now) not in bases.get(target, ()):
                continue
            log.warning("domain %s: QEMU's disk %s reads %s, the image of a snapshot whose "
                        "merge the last daemon started (it made the pivot while no daemon "
                        "listened); the definitions named %s and now follow QEMU",
                        dom.name, target, now, disk.source)
            moves[target] = (disk.source, now)
            disk.source, disk.driver_type = now, "qcow2"
        if not moves:
            return
        ops.lifecycle.save_status(dom)

        def pointed(d: Deferred) -> None:
            if d.error is None:
                return
            log.error("domain %s: the persistent definition could not follow QEMU's "
                      "disks: %s", dom.name, d.error.message)
            try:  # the next start and snapshot operation follow them (see DomainSnapshots)
                now = ops.store.load(dom)
            except QemudError as exc:
                log.error("domain %s: %s", dom.name, exc.message)
                return
            ops.record_follow(now, moves)
            ops.store.save(now).add_done_callback(
                lambda d: log_failure(f"domain {dom.name}", d))
        ops.point_disks(dom, moves).add_done_callback(pointed)
    monitor.execute("query-block").add_done_callback(queried)
