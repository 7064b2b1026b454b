"""Snapshot commands."""

from __future__ import annotations

from ...format import format_time, snapshot_state_name, table
from ..context import Shell
from ..progress import Progress
from ..registry import SNAPSHOT, Arg, Args, Opt, command
from .domain import DOM

SNAP = Arg("snapshotname", "snapshot name", complete=SNAPSHOT)


@command("snapshot-create-as", "snapshot", "create a snapshot from a set of args",
         description="Create a snapshot of the domain; the daemon names it when NAME is "
                     "not given. qemud's snapshots are always external, disk-only (no RAM "
                     "state) and atomic (all covered disks switch at one instant, or "
                     "nothing changes; docs/SNAPSHOTS.md), so --disk-only and --atomic are "
                     "accepted for virsh scripts and change nothing.",
         args=(DOM, Arg("name", "name of snapshot", required=False)),
         opts=(Opt("description", "description of snapshot", "string"),
               Opt("disk-only", "create a disk-only snapshot (qemud's only kind: no "
                                "effect)"),
               Opt("atomic", "require atomic operation (qemud's snapshots always are: "
                             "no effect)")))
def cmd_snapshot_create_as(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to create snapshot of domain '{dom.name}'"), \
            Progress(sh.err, f"Creating snapshot of domain '{dom.name}'"):
        name = dom.snapshot_create(args.get("name") or "", args.get("description") or "")
    sh.print(f"Domain snapshot {name} created")


@command("snapshot-list", "snapshot", "list snapshots for a domain", description=(
    "Snapshot names, creation times and the domain state they captured."),
    args=(DOM,), opts=(Opt("parent", "add a column showing parent snapshot"),
                       Opt("name", "list snapshot names only")), json=True)
def cmd_snapshot_list(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to list snapshots of domain '{dom.name}'"):
        snaps = dom.snapshots()
    snaps.sort(key=lambda s: (s.creation_time, s.name))
    if sh.want_json(args):
        sh.print_json([{"name": s.name, "description": s.description,
                        "creation_time": s.creation_time,
                        "state": snapshot_state_name(s.state), "parent": s.parent or None,
                        "current": bool(s.current)} for s in snaps])
        return
    if args.flag("name"):
        for s in snaps:
            sh.print(s.name)
        return
    headers = ["Name", "Creation Time", "State"] + (["Parent"] if args.flag("parent") else [])
    rows = []
    for s in snaps:
        row = [s.name, format_time(s.creation_time), snapshot_state_name(s.state)]
        if args.flag("parent"):
            row.append(s.parent)
        rows.append(row)
    sh.write(table(headers, rows))
    sh.print()


@command("snapshot-revert", "snapshot", "revert a domain to a snapshot", args=(DOM, SNAP))
def cmd_snapshot_revert(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    name = args.req("snapshotname")
    with sh.failing(f"Failed to revert domain '{dom.name}' to snapshot {name}"), \
            Progress(sh.err, f"Reverting domain '{dom.name}' to snapshot {name}"):
        dom.snapshot_revert(name)
    sh.print(f"Domain '{dom.name}' reverted to snapshot {name}")


@command("snapshot-delete", "snapshot", "delete a domain snapshot", args=(DOM, SNAP))
def cmd_snapshot_delete(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    name = args.req("snapshotname")
    with sh.failing(f"Failed to delete snapshot {name}"):
        dom.snapshot_delete(name)
    sh.print(f"Domain snapshot {name} deleted")
