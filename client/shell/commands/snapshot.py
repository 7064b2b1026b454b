"""Snapshot commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...domain import (
    SNAPSHOT_DELETE_METADATA_ONLY,
    SNAPSHOT_REVERT_PAUSED,
    SNAPSHOT_REVERT_RUNNING,
    SNAPSHOT_XML_SECURE,
    Domain,
)
from ...errors import NoSnapshotError
from ...format import format_time, key_values, snapshot_state_name, table
from ..context import Shell
from ..progress import Progress
from ..registry import SNAPSHOT, Arg, Args, CommandError, Opt, UsageError, command
from .domain import DOM

if TYPE_CHECKING:
    from protocol.payloads import SnapshotInfo

SNAP = Arg("snapshotname", "snapshot name", complete=SNAPSHOT)
#: libvirt's error for a domain without a current snapshot (VIR_ERR_NO_DOMAIN_SNAPSHOT)
NO_CURRENT = "Domain snapshot not found: the domain does not have a current snapshot"


def _snapshots(sh: Shell, dom: Domain) -> list[SnapshotInfo]:
    with sh.failing(f"Failed to list snapshots of domain '{dom.name}'"):
        return dom.snapshots()


def _current(snaps: list[SnapshotInfo]) -> SnapshotInfo:
    found = next((s for s in snaps if s.current), None)
    if found is None:
        raise CommandError(NO_CURRENT)
    return found


def _named(snaps: list[SnapshotInfo], name: str) -> SnapshotInfo:
    found = next((s for s in snaps if s.name == name), None)
    if found is None:
        raise CommandError(f"Domain snapshot not found: no domain snapshot with matching "
                           f"name '{name}'")
    return found


def _print_xml(sh: Shell, dom: Domain, name: str, secure: bool) -> None:
    """The snapshot's XML as virsh prints it; an unknown snapshot is one line, as virsh's
    lookup error."""
    with sh.failing(f"failed to get the XML of snapshot '{name}' of domain '{dom.name}'"):
        try:
            xml = dom.snapshot_xml(name, SNAPSHOT_XML_SECURE if secure else 0)
        except NoSnapshotError as exc:
            raise CommandError(exc.message) from None
    sh.write(xml if xml.endswith("\n") else xml + "\n")


def _tree(snaps: list[SnapshotInfo]) -> str:
    """virsh's ``--tree`` rendering (vshTreePrint): each root, then its children under
    ``|`` and ``+-`` connectors, a blank line after each last leaf; siblings in name
    order, case-insensitively (virsh sorts its listing so)."""
    children: dict[str, list[str]] = {}
    for s in sorted(snaps, key=lambda s: (s.name.lower(), s.name)):
        children.setdefault(s.parent, []).append(s.name)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(name: str, indent: str, root: bool, last: bool) -> None:
        seen.add(name)
        lines.append(f"{indent}{'' if root else '+- '}{name}")
        if not root:
            indent += ("  " if last else "| ")
        kids = [c for c in children.get(name, []) if c not in seen]  # a damaged loop
        if kids:
            lines.append(f"{indent}  |")
        for kid in kids:
            walk(kid, indent + "  ", False, kid == kids[-1])
        if not kids and last:
            lines.append(indent)

    for root in children.get("", []):
        walk(root, "", True, True)
    return "".join(line + "\n" for line in lines)


def _descendants(snaps: list[SnapshotInfo], name: str) -> int:
    """How many snapshots have ``name`` as an ancestor (the listing is one tree walk)."""
    children: dict[str, list[str]] = {}
    for s in snaps:
        children.setdefault(s.parent, []).append(s.name)
    count, todo, seen = 0, list(children.get(name, [])), {name}
    while todo:
        child = todo.pop()
        if child in seen:  # a damaged record's loop must not hang the shell
            continue
        seen.add(child)
        count += 1
        todo.extend(children.get(child, []))
    return count


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
    "Snapshot names, creation times and their state, in virsh's words: disk-snapshot "
    "for a snapshot of a running or paused domain (qemud's snapshots are external and "
    "disk-only), shutoff for one of a shut-off domain; sorted by name, as virsh sorts "
    "them. --tree draws the snapshots as "
    "virsh does, each under its parent (the JSON listing names each one's parent "
    "instead)."),
    args=(DOM,), opts=(Opt("parent", "add a column showing parent snapshot"),
                       Opt("name", "list snapshot names only"),
                       Opt("current", "limit list to current snapshot"),
                       Opt("tree", "list snapshots in a tree")), json=True)
def cmd_snapshot_list(sh: Shell, args: Args) -> None:
    args.exclusive(("parent", "tree"), ("tree", "name"), ("tree", "current"))
    dom = sh.domain(args.req("domain"))
    snaps = _snapshots(sh, dom)
    if args.flag("tree") and not sh.want_json(args):
        sh.write(_tree(snaps))
        return
    if args.flag("current"):
        snaps = [s for s in snaps if s.current]
    # virsh's order (virshSnapSorter): by name, ignoring ASCII case
    snaps.sort(key=lambda s: (s.name.lower(), s.name))
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


@command("snapshot-current", "snapshot", "get the current snapshot", description=(
    "The XML of the domain's current snapshot (as snapshot-dumpxml), or with --name its "
    "name. Secrets (the VNC password) are left out of the XML unless --security-info "
    "is given, which a read-only connection may not do."),
    args=(DOM,), opts=(Opt("name", "list the name, rather than the full xml"),
                       Opt("security-info", "include security sensitive information in "
                                            "XML dump")))
def cmd_snapshot_current(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    current = _current(_snapshots(sh, dom))
    if args.flag("name"):
        sh.print(current.name)
        return
    _print_xml(sh, dom, current.name, args.flag("security-info"))


@command("snapshot-dumpxml", "snapshot", "Dump XML for a domain snapshot", description=(
    "libvirt's <domainsnapshot> XML of the snapshot: its name, description, state, "
    "parent, creation time, the overlay each disk got (qemud's snapshots are external "
    "and disk-only: <memory snapshot='no'/>), and the domain's definition when it was "
    "taken. Secrets (the VNC password) are left out unless --security-info is given, "
    "which a read-only connection may not do."),
    args=(DOM, SNAP), opts=(Opt("security-info", "include security sensitive information "
                                                 "in XML dump"),))
def cmd_snapshot_dumpxml(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    _print_xml(sh, dom, args.req("snapshotname"), args.flag("security-info"))


def _named_or_current(sh: Shell, dom: Domain,
                      args: Args) -> tuple[SnapshotInfo, list[SnapshotInfo]]:
    """The snapshot a ``<snapshotname> | --current`` pair of arguments names (virsh's
    rule: exactly one of them), and all of the domain's."""
    name = args.get("snapshotname")
    if name is not None and args.flag("current"):
        raise UsageError("--snapshotname and --current are mutually exclusive")
    if name is None and not args.flag("current"):
        raise UsageError("--snapshotname or --current is required")
    snaps = _snapshots(sh, dom)
    return (_current(snaps) if name is None else _named(snaps, name)), snaps


@command("snapshot-parent", "snapshot", "Get the name of the parent of a snapshot",
         description="The name of the snapshot's parent: the snapshot that was current "
                     "when it was taken (see snapshot-list --tree).",
         args=(DOM, Arg("snapshotname", "find parent of snapshot name", required=False,
                        complete=SNAPSHOT)),
         opts=(Opt("current", "find parent of current snapshot"),))
def cmd_snapshot_parent(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    snap, _ = _named_or_current(sh, dom, args)
    if not snap.parent:
        raise CommandError(f"snapshot '{snap.name}' has no parent")
    sh.print(snap.parent)


@command("snapshot-info", "snapshot", "snapshot information", description=(
    "virsh's fields of one snapshot, from the snapshot listing. qemud's snapshots are "
    "external (Location), disk-only (State: disk-snapshot, or shutoff when the domain "
    "was shut off) and always have metadata."),
    args=(DOM, Arg("snapshotname", "snapshot name", required=False, complete=SNAPSHOT)),
    opts=(Opt("current", "info on current snapshot"),))
def cmd_snapshot_info(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    snap, snaps = _named_or_current(sh, dom, args)
    sh.write(key_values([
        ("Name:", snap.name), ("Domain:", dom.name),
        ("Current:", "yes" if snap.current else "no"),
        ("State:", snapshot_state_name(snap.state)), ("Location:", "external"),
        ("Parent:", snap.parent or "-"),
        ("Children:", sum(1 for s in snaps if s.parent == snap.name)),
        ("Descendants:", _descendants(snaps, snap.name)), ("Metadata:", "yes")]))


@command("snapshot-revert", "snapshot", "revert a domain to a snapshot", description=(
    "Make the domain's disks what they were at the snapshot (docs/SNAPSHOTS.md). "
    "Afterwards the guest runs with --running, is paused with --paused, and is otherwise "
    "as it was before the revert (virsh: as the snapshot was; a disk-only snapshot "
    "leaves it shut off, see docs/CONFORMANCE.md)."),
    args=(DOM, SNAP),
    opts=(Opt("running", "after reverting, change state to running"),
          Opt("paused", "after reverting, change state to paused")))
def cmd_snapshot_revert(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    name = args.req("snapshotname")
    args.exclusive(("running", "paused"))
    flags = (SNAPSHOT_REVERT_RUNNING if args.flag("running") else 0) | \
        (SNAPSHOT_REVERT_PAUSED if args.flag("paused") else 0)
    with sh.failing(f"Failed to revert domain '{dom.name}' to snapshot {name}"), \
            Progress(sh.err, f"Reverting domain '{dom.name}' to snapshot {name}"):
        dom.snapshot_revert(name, flags)
    # (virsh's cmdDomainSnapshotRevert prints nothing on success either)


@command("snapshot-delete", "snapshot", "delete a domain snapshot", description=(
    "Discard the snapshot's point in time and keep the guest's current state, merging "
    "images where that is safe (docs/SNAPSHOTS.md). With --metadata only the snapshot's "
    "metadata goes: no image is merged, rewritten or removed, and the images it froze "
    "are left to you."),
    args=(DOM, SNAP),
    opts=(Opt("metadata", "delete only libvirt metadata, leaving snapshot contents "
                          "behind"),))
def cmd_snapshot_delete(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    name = args.req("snapshotname")
    flags = SNAPSHOT_DELETE_METADATA_ONLY if args.flag("metadata") else 0
    with sh.failing(f"Failed to delete snapshot {name}"):
        dom.snapshot_delete(name, flags)
    sh.print(f"Domain snapshot {name} deleted")
