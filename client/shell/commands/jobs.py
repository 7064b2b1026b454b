"""``domjobinfo``, ``domjobabort``, ``domcontrol``: a domain's background job, as virsh
shows and aborts it (virsh's cmdDomjobinfo, cmdDomjobabort, cmdDomControl)."""

from __future__ import annotations

from protocol.payloads import ControlErrorReason, ControlState, JobOperation, JobType

from ...domain import ControlInfo, JobInfo
from ...format import pretty_capacity
from ..context import Shell
from ..registry import Args, command
from .domain import DOM

#: virsh's words for libvirt's virDomainJobType (virshDomainJob)
JOB_TYPES: dict[int, str] = {
    JobType.NONE: "None", JobType.BOUNDED: "Bounded", JobType.UNBOUNDED: "Unbounded",
    JobType.COMPLETED: "Completed", JobType.FAILED: "Failed", JobType.CANCELLED: "Cancelled",
}

#: virsh's words for libvirt's virDomainJobOperation (virshDomainJobOperation)
JOB_OPERATIONS: dict[int, str] = {
    JobOperation.UNKNOWN: "Unknown", JobOperation.START: "Start",
    JobOperation.SAVE: "Save", JobOperation.RESTORE: "Restore",
    JobOperation.MIGRATION_IN: "Incoming migration",
    JobOperation.MIGRATION_OUT: "Outgoing migration",
    JobOperation.SNAPSHOT: "Snapshot", JobOperation.SNAPSHOT_REVERT: "Snapshot revert",
    JobOperation.DUMP: "Dump", JobOperation.BACKUP: "Backup",
    JobOperation.SNAPSHOT_DELETE: "Snapshot delete",
}

#: virsh's words for libvirt's virDomainControlState and virDomainControlErrorReason
CONTROL_STATES: dict[int, str] = {
    ControlState.OK: "ok", ControlState.JOB: "background job",
    ControlState.OCCUPIED: "occupied", ControlState.ERROR: "error",
}
CONTROL_ERRORS: dict[int, str] = {
    ControlErrorReason.NONE: "none", ControlErrorReason.UNKNOWN: "unknown",
    ControlErrorReason.MONITOR: "monitor failure",
    ControlErrorReason.INTERNAL: "internal (locking) error",
}


def job_lines(info: JobInfo) -> str:
    """virsh domjobinfo's text: ``%-17s %-12s`` lines (the padding included, as virsh
    prints it); only the type when there is no job; data only when some is known."""
    out = [f"{'Job type:':<17} {JOB_TYPES.get(info.type, 'Unknown'):<12}"]
    if info.type not in (JobType.BOUNDED, JobType.UNBOUNDED):
        return "\n".join(out) + "\n"
    operation = JOB_OPERATIONS.get(info.operation, "Unknown")
    out.append(f"{'Operation:':<17} {operation:<12}")
    out.append(f"{'Time elapsed:':<17} {info.time_elapsed_ms:<12} ms")
    if info.type == JobType.BOUNDED:
        out.append(f"{'Time remaining:':<17} {info.time_remaining_ms:<12} ms")
    if info.data_total or info.data_processed or info.data_remaining:
        out += [f"{'Data processed:':<17} {pretty_capacity(info.data_processed)}",
                f"{'Data remaining:':<17} {pretty_capacity(info.data_remaining)}",
                f"{'Data total:':<17} {pretty_capacity(info.data_total)}"]
    return "\n".join(out) + "\n"


def control_line(info: ControlInfo) -> str:
    """virsh domcontrol's line: ``ok``, ``background job (1.234s)``, ``error: monitor
    failure``."""
    state = CONTROL_STATES.get(info.state, "unknown")
    if info.state not in (ControlState.OK, ControlState.ERROR):
        return f"{state} ({info.state_time_ms / 1000:0.3f}s)"
    if info.state == ControlState.ERROR and info.details > 0:
        return f"{state}: {CONTROL_ERRORS.get(info.details, 'unknown')}"
    return state


@command("domjobinfo", "domain", "domain job information", description=(
    "Returns information about the domain's background job (a backup, save, snapshot "
    "operation...): its type (None when there is none), operation, time elapsed and, "
    "where QEMU reports it, the data processed, remaining and total."),
    args=(DOM,))
def cmd_domjobinfo(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):  # virsh prints the daemon's error alone
        info = dom.job_info()
    sh.write(job_lines(info))


@command("domjobabort", "domain", "abort active domain job", description=(
    "Aborts the domain's background job: a backup (its partial files are removed) or a "
    "save (the guest runs on); the command that started it fails as cancelled. Other "
    "jobs cannot be aborted."),
    args=(DOM,))
def cmd_domjobabort(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):
        dom.abort_job()


@command("domcontrol", "monitor", "domain control interface state", description=(
    "Returns the state of the interface the daemon uses to control the domain: ok, "
    "background job (with how long it has run), occupied, or error (monitor failure)."),
    args=(DOM,))
def cmd_domcontrol(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):
        info = dom.control_info()
    sh.print(control_line(info))
