"""DOMAIN_GET_JOB_INFO, DOMAIN_ABORT_JOB, DOMAIN_GET_CONTROL_INFO: ``virsh domjobinfo``,
``domjobabort`` and ``domcontrol``.

qemud's job is :attr:`DomainObj.job`, the operation that excludes others; its start time
is :attr:`DomainObj.job_started` (set when the job is). libvirt's QEMU driver is the
reference (``qemuDomainGetJobInfo``, ``qemuDomainAbortJobFlags``,
``qemuDomainGetControlInfo``), with one difference: libvirt only has jobs on running
domains, qemud also backs up and snapshots shut-off ones (``qemu-img``), so a shut-off
domain with such a job reports it (and it can be aborted, for a backup) where libvirt
would answer "domain is not running".

* Background jobs (libvirt's async jobs: backup, save, start, restore, the snapshot
  operations) are reported UNBOUNDED with libvirt's virDomainJobOperation. Short
  monitor round trips (pause, resume, a reboot in place) are libvirt's sync jobs:
  domjobinfo says NONE and domcontrol OCCUPIED, as libvirt would.
* Progress comes from QEMU where QEMU knows it: ``query-jobs`` for a live backup (its
  jobs are ``backup-*``), ``query-block-jobs`` for a live snapshot-delete's merge
  (``commit-*``), ``query-migrate`` for a save. An offline job (``qemu-img``) has its
  type, operation and elapsed time only.
* Aborting: a backup is aborted by the layer that runs it (the appliance registers an
  aborter in :attr:`Jobs.aborters`: it cancels QEMU's jobs or kills ``qemu-img``, and
  the backup call then fails as cancelled); the save layer's aborter
  (:meth:`Saving.abort`) sends ``migrate_cancel``, and the save fails as cancelled (the
  guest runs on, the partial file is removed). The other jobs cannot be aborted:
  libvirt's OPERATION_INVALID wording for each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.payloads import ControlErrorReason, ControlState, JobOperation, JobType
from qemud.dispatch import Deferred, Handler
from qemud.errors import OperationInvalid

from .domain import DomainObj
from .flags import check_flags
from .stats import QMP_TIMEOUT

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Jobs", "Aborter", "OPERATIONS", "SYNC_JOBS", "MIGRATING"]

log = logging.getLogger(__name__)

#: aborts the job of a domain: None when that is done at once, else a Deferred that
#: resolves once the abort is under way (the job's own call then fails)
Aborter = Callable[[DomainObj], Deferred | None]

#: libvirt's virDomainJobOperation of each background job (any other: UNKNOWN)
OPERATIONS: dict[str, JobOperation] = {
    "start": JobOperation.START,
    "restore": JobOperation.RESTORE,
    "save": JobOperation.SAVE,
    "snapshot": JobOperation.SNAPSHOT,
    "snapshot-revert": JobOperation.SNAPSHOT_REVERT,
    "snapshot-delete": JobOperation.SNAPSHOT_DELETE,
    "backup": JobOperation.BACKUP,
}

#: jobs that are one monitor round trip, libvirt's sync jobs (no job for domjobinfo)
SYNC_JOBS = frozenset({"stop", "cont", "reboot", "setvcpus"})

#: libvirt's refusals of jobs it cannot abort (qemuDomainAbortJobFlags)
_NOT_ABORTABLE = {
    "start": "cannot abort VM start; use virDomainDestroy instead",
    "restore": "cannot abort VM start; use virDomainDestroy instead",
}

#: query-migrate statuses of a migration that is running (migrate_cancel acts on it)
MIGRATING = frozenset({"setup", "active", "pre-switchover", "device", "wait-unplug"})


def _uint(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else 0


def _progress(command: str, answer: Any) -> tuple[int, int] | None:
    """(processed, total) bytes of our jobs in a QMP answer; None if none is there."""
    if command == "query-migrate":
        ram = answer.get("ram") if isinstance(answer, dict) else None
        if not isinstance(ram, dict) or answer.get("status") not in MIGRATING:
            return None
        return _uint(ram.get("transferred")), _uint(ram.get("total"))
    entries = [e for e in answer if isinstance(e, dict)] if isinstance(answer, list) else []
    if command == "query-jobs":
        ours = [e for e in entries if str(e.get("id", "")).startswith("backup-")]
        done, total = "current-progress", "total-progress"
    else:  # query-block-jobs
        ours = [e for e in entries if str(e.get("device", "")).startswith("commit-")]
        done, total = "offset", "len"
    if not ours:
        return None
    return sum(_uint(e.get(done)) for e in ours), sum(_uint(e.get(total)) for e in ours)


#: the query that tells the progress of each live job that has one
_PROGRESS_QUERY = {"backup": "query-jobs", "snapshot-delete": "query-block-jobs",
                   "save": "query-migrate"}


class Jobs:
    """The handlers of the job procedures; :attr:`aborters` is where other layers say
    how their jobs are aborted."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        #: job name (``DomainObj.job``) -> how to abort it
        self.aborters: dict[str, Aborter] = {}

    def handlers(self) -> dict[Procedure, Handler]:
        P = Procedure
        return {P.DOMAIN_GET_JOB_INFO: self.get_job_info,
                P.DOMAIN_ABORT_JOB: self.abort_job,
                P.DOMAIN_GET_CONTROL_INFO: self.get_control_info}

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _background(dom: DomainObj) -> str | None:
        """The domain's background job (libvirt's async job), if it has one."""
        return dom.job if dom.job is not None and dom.job not in SYNC_JOBS else None

    @staticmethod
    def _elapsed_ms(dom: DomainObj) -> int:
        return max(0, int((time.monotonic() - dom.job_started) * 1000))

    @staticmethod
    def _not_running(dom: DomainObj) -> OperationInvalid:
        return OperationInvalid(f"domain '{dom.name}' is not running")

    @staticmethod
    def _monitor_up(dom: DomainObj) -> bool:
        return dom.monitor is not None and not dom.monitor.closed

    # -- domjobinfo ----------------------------------------------------------------------

    def get_job_info(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.JobInfoReply | Deferred:
        check_flags(args.flags, 0, "qemuDomainGetJobInfo")
        dom = self.driver._dom(args)
        job = self._background(dom)
        if job is None:
            if not dom.active:
                raise self._not_running(dom)
            return pl.JobInfoReply(int(JobType.NONE), int(JobOperation.UNKNOWN), 0, 0, 0, 0, 0)
        operation = int(OPERATIONS.get(job, JobOperation.UNKNOWN))
        query = _PROGRESS_QUERY.get(job)
        if not dom.active or query is None or not self._monitor_up(dom):
            return self._job_info(dom, operation, None)
        assert dom.monitor is not None
        out = Deferred()
        dom.monitor.execute(query, timeout=QMP_TIMEOUT).add_done_callback(
            partial(self._queried, dom, job, operation, query, out))
        return out

    def _queried(self, dom: DomainObj, job: str, operation: int, query: str, out: Deferred,
                 d: Deferred) -> None:
        progress = None
        if d.error is not None:  # the job's type and time are still worth an answer
            log.debug("domain %s: %s failed: %s", dom.name, query, d.error.message)
        else:
            progress = _progress(query, d.result)
        if dom.job != job:  # it ended while QEMU answered
            out.resolve(pl.JobInfoReply(int(JobType.NONE), int(JobOperation.UNKNOWN),
                                        0, 0, 0, 0, 0))
            return
        out.resolve(self._job_info(dom, operation, progress))

    def _job_info(self, dom: DomainObj, operation: int, progress: tuple[int, int] | None
                  ) -> pl.JobInfoReply:
        processed, total = progress if progress is not None else (0, 0)
        return pl.JobInfoReply(
            type=int(JobType.UNBOUNDED), operation=operation,
            time_elapsed_ms=self._elapsed_ms(dom), time_remaining_ms=0,
            data_total=total, data_processed=min(processed, total) if total else processed,
            data_remaining=max(total - processed, 0))

    # -- domjobabort ---------------------------------------------------------------------

    def abort_job(self, ctx: Any, args: pl.DomainFlagsArgs) -> Empty | Deferred:
        check_flags(args.flags, 0, "qemuDomainAbortJobFlags")
        dom = self.driver._dom(args)
        job = self._background(dom)
        if job is None:
            if not dom.active:
                raise self._not_running(dom)
            raise OperationInvalid("no job is active on the domain")
        aborter = self.aborters.get(job)
        if aborter is not None:
            log.info("domain %s: aborting its %s job at the client's request", dom.name, job)
            done = aborter(dom)
            return Empty() if done is None else done
        refusal = _NOT_ABORTABLE.get(job)
        if refusal is None:
            what = job.replace("-", " ") if job in OPERATIONS else f"the job '{job}'"
            refusal = f"cannot abort {what}"
        raise OperationInvalid(refusal)

    # -- domcontrol ----------------------------------------------------------------------

    def get_control_info(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.ControlInfoReply:
        """libvirt's order: a monitor failure first, then the job, else ok (a shut-off
        domain's offline job is reported too; with none it is "not running")."""
        check_flags(args.flags, 0, "qemuDomainGetControlInfo")
        dom = self.driver._dom(args)
        if self._background(dom) is not None:
            if dom.active and dom.job not in ("start", "restore") \
                    and not self._monitor_up(dom) and dom.stop_intent is None:
                return self._monitor_failure()
            return pl.ControlInfoReply(int(ControlState.JOB), 0, self._elapsed_ms(dom))
        if not dom.active:
            raise self._not_running(dom)
        if not self._monitor_up(dom) and dom.stop_intent is None:
            return self._monitor_failure()
        if dom.job is not None:  # a sync job: a monitor command in flight
            return pl.ControlInfoReply(int(ControlState.OCCUPIED), 0, self._elapsed_ms(dom))
        return pl.ControlInfoReply(int(ControlState.OK), 0, 0)

    @staticmethod
    def _monitor_failure() -> pl.ControlInfoReply:
        return pl.ControlInfoReply(int(ControlState.ERROR), int(ControlErrorReason.MONITOR), 0)
