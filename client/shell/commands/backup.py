"""``backup``: a point-in-time copy of a domain's disks, with progress on stderr."""

from __future__ import annotations

import threading

from protocol.constants import EventId

from ...connection import EventRecord
from ..context import Shell
from ..registry import FILE, Arg, Args, Opt, command
from .domain import DOM

#: how long to wait, after the reply, for the completion event (callbacks run on the
#: connection's dispatch thread and may lag behind the reply)
EVENT_GRACE = 2.0


@command("backup", "domain", "back up the disks of a domain", description=(
    "Copy a consistent point-in-time image of the domain's disks while it keeps "
    "running (of a shut-off domain too). TARGET is a file on the daemon's host for one "
    "disk (raw, or qcow2 if it ends in .qcow2) or an existing directory for several "
    "(DOMAIN-DISK.qcow2 each). Progress is printed on stderr as 'backup: NN%'."),
    args=(DOM, Arg("target", "absolute path of the backup file or directory",
                   complete=FILE)),
    opts=(Opt("disk", "back up only this disk (target dev, e.g. vda)", "string"),))
def cmd_backup(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    target = args.req("target")
    disk = args.get("disk") or ""
    conn = sh.conn()
    finished = threading.Event()
    # a progress line the dispatch thread prints late must not come after the outcome
    # (the error lines, or the success line): none is printed once the command is over
    printing = threading.Lock()
    over = [False]

    def on_event(record: EventRecord) -> None:
        if record.kind == "backup-progress":
            with printing:
                if not over[0]:
                    sh.err.write(f"backup: {record.text}\n")
                    sh.err.flush()
        elif record.kind in ("backup-completed", "backup-failed"):
            finished.set()

    with sh.failing("failed to register for events"):
        callback = conn.register_event(EventId.APPLIANCE, on_event, dom)
    try:
        with sh.failing(f"Failed to back up domain '{dom.name}' to {target}"):
            dom.backup(target, disk)
        finished.wait(EVENT_GRACE)
    finally:
        with printing:
            over[0] = True
        try:
            conn.deregister_event(callback)
        except Exception:  # best effort on the way out
            pass
    sh.print(f"Domain '{dom.name}' backed up to {target}")
