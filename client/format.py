"""Text output helpers shared by ``qemush``: virsh's table layout and virsh's words for
states, reasons and events.

Everything here is pure (no connection, no I/O) so it can be tested on its own::

    >>> print(table(["Id", "Name", "State"], [["1", "demo", "running"]]), end="")
     Id   Name   State
    ----------------------
     1    demo   running
"""

from __future__ import annotations

import datetime as _dt
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from protocol.constants import (
    CrashedDetail,
    DefinedDetail,
    DomainState,
    LifecycleEvent,
    ResumedDetail,
    ShutdownDetail,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
    UndefinedDetail,
)

__all__ = [
    "display_width", "table", "key_values", "state_name", "reason_name", "state_text",
    "snapshot_state_name", "event_name", "event_detail_name", "watchdog_action_name",
    "lifecycle_text", "version_string", "format_time", "to_json", "parse_state_name",
    "pretty_capacity",
]


# -- tables ------------------------------------------------------------------------------

def display_width(text: str) -> int:
    """Terminal columns taken by ``text`` (wide East Asian characters count twice,
    combining marks not at all)."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _safe(cell: object) -> str:
    """A cell as printable text: control characters become ``\\xNN`` (as virsh does)."""
    text = "" if cell is None else str(cell)
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], header: bool = True) -> str:
    """Render rows the way virsh's vshTable does.

    Every cell is preceded by one space; every column but the last is padded to its widest
    cell plus two spaces; under the header comes a line of ``sum(width + 3)`` dashes. The
    result ends with a newline (an empty string when there is nothing at all to print).
    """
    head = [_safe(h) for h in headers]
    body = [[_safe(c) for c in row] for row in rows]
    ncols = len(head)
    for row in body:
        if len(row) != ncols:
            raise ValueError(f"row has {len(row)} cells, the table has {ncols} columns: {row}")
    widths = [0] * ncols
    for row in ([head] if header else []) + body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))

    def line(row: list[str]) -> str:
        out = []
        for i, cell in enumerate(row):
            out.append(" " + cell)
            if i < ncols - 1:
                out.append(" " * (widths[i] - display_width(cell) + 2))
        return "".join(out) + "\n"

    text = []
    if header:
        text.append(line(head))
        text.append("-" * sum(w + 3 for w in widths) + "\n")
    text.extend(line(row) for row in body)
    return "".join(text)


def key_values(pairs: Iterable[tuple[str, object]], width: int = 15) -> str:
    """``label: value`` lines with the label left-justified to ``width`` (virsh's
    ``%-15s %s``; nodeinfo uses 20)."""
    return "".join(f"{label:<{width}} {value}\n" for label, value in pairs)


_CAPACITY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def pretty_capacity(size: int) -> str:
    """A byte count as virsh's ``--human`` prints it (vshPrettyCapacity, ``%.3lf %s``):
    the largest binary unit that leaves at least 1, three decimals (``1.500 GiB``,
    ``512.000 B``)."""
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(_CAPACITY_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.3f} {_CAPACITY_UNITS[unit]}"


# -- states and reasons (virsh's words) --------------------------------------------------

_STATE_NAMES = {
    DomainState.NOSTATE: "no state",
    DomainState.RUNNING: "running",
    DomainState.BLOCKED: "idle",
    DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "in shutdown",
    DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed",
    DomainState.PMSUSPENDED: "pmsuspended",
}

_REASONS: dict[DomainState, tuple[str, ...]] = {
    DomainState.NOSTATE: ("unknown",),
    DomainState.RUNNING: (
        "unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
        "migration canceled", "save canceled", "event wakeup", "crashed", "post-copy",
        "post-copy failed",
    ),
    DomainState.BLOCKED: ("unknown",),
    DomainState.PAUSED: (
        "unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
        "from snapshot", "shutting down", "creating snapshot", "crashed", "starting up",
        "post-copy", "post-copy failed", "api error",
    ),
    DomainState.SHUTDOWN: ("unknown", "user"),
    DomainState.SHUTOFF: (
        "unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
        "from snapshot", "daemon",
    ),
    DomainState.CRASHED: ("unknown", "panicked"),
    DomainState.PMSUSPENDED: ("unknown",),
}

#: libvirt's VIR_DOMAIN_SNAPSHOT_DISK_SNAPSHOT: the virDomainSnapshotState of a disk-only
#: snapshot of an active domain (the virDomainState values are the others' states)
SNAPSHOT_DISK_SNAPSHOT = 8


def _state(state: int) -> DomainState | None:
    try:
        return DomainState(state)
    except ValueError:
        return None


def state_name(state: int) -> str:
    """virsh's word for a state: ``running``, ``shut off``, ``in shutdown`` ..."""
    known = _state(state)
    return _STATE_NAMES[known] if known is not None else "unknown"


def parse_state_name(text: str) -> DomainState | None:
    """The state a virsh word names (inverse of :func:`state_name`)."""
    for state, name in _STATE_NAMES.items():
        if name == text:
            return state
    return None


def reason_name(state: int, reason: int) -> str:
    """virsh's word for a reason within a state: ``booted``, ``destroyed``, ``user`` ..."""
    known = _state(state)
    if known is None:
        return "unknown"
    names = _REASONS[known]
    return names[reason] if 0 <= reason < len(names) else "unknown"


def state_text(state: int, reason: int | None = None) -> str:
    """``running`` or, with a reason, ``running (booted)`` — virsh's domstate output."""
    if reason is None:
        return state_name(state)
    return f"{state_name(state)} ({reason_name(state, reason)})"


def snapshot_state_name(state: int) -> str:
    """virsh's word for a snapshot's state (the ``<state>`` of libvirt's snapshot XML).

    qemud's snapshots are all external and disk-only, and the protocol carries the
    domain's state when one was taken (``SnapshotInfo.state``). libvirt records a
    disk-only snapshot of an active domain (running, paused ...) as ``disk-snapshot``
    and one of an inactive domain as ``shutoff``: so does this.
    """
    if state == SNAPSHOT_DISK_SNAPSHOT:
        return "disk-snapshot"
    known = _state(state)
    if known is None:
        return "unknown"
    if known == DomainState.NOSTATE:
        return "nostate"  # a record that names no state
    if known in (DomainState.SHUTOFF, DomainState.CRASHED):
        return "shutoff"
    return "disk-snapshot"


# -- events (virsh event's words) --------------------------------------------------------

_EVENT_NAMES = {
    LifecycleEvent.DEFINED: "Defined",
    LifecycleEvent.UNDEFINED: "Undefined",
    LifecycleEvent.STARTED: "Started",
    LifecycleEvent.SUSPENDED: "Suspended",
    LifecycleEvent.RESUMED: "Resumed",
    LifecycleEvent.STOPPED: "Stopped",
    LifecycleEvent.SHUTDOWN: "Shutdown",
    LifecycleEvent.PMSUSPENDED: "PMSuspended",
    LifecycleEvent.CRASHED: "Crashed",
}

_DETAILS: dict[LifecycleEvent, dict[int, str]] = {
    LifecycleEvent.DEFINED: {
        DefinedDetail.ADDED: "Added", DefinedDetail.UPDATED: "Updated",
        DefinedDetail.RENAMED: "Renamed", DefinedDetail.FROM_SNAPSHOT: "Snapshot",
    },
    LifecycleEvent.UNDEFINED: {UndefinedDetail.REMOVED: "Removed", 1: "Renamed"},
    LifecycleEvent.STARTED: {
        StartedDetail.BOOTED: "Booted", StartedDetail.MIGRATED: "Migrated",
        StartedDetail.RESTORED: "Restored", StartedDetail.FROM_SNAPSHOT: "Snapshot",
        StartedDetail.WAKEUP: "Event wakeup",
    },
    LifecycleEvent.SUSPENDED: {
        SuspendedDetail.PAUSED: "Paused", SuspendedDetail.MIGRATED: "Migrated",
        SuspendedDetail.IOERROR: "I/O Error", SuspendedDetail.WATCHDOG: "Watchdog",
        SuspendedDetail.RESTORED: "Restored", SuspendedDetail.FROM_SNAPSHOT: "Snapshot",
        SuspendedDetail.API_ERROR: "API error", 7: "Post-copy", 8: "Post-copy Error",
    },
    LifecycleEvent.RESUMED: {
        ResumedDetail.UNPAUSED: "Unpaused", ResumedDetail.MIGRATED: "Migrated",
        ResumedDetail.FROM_SNAPSHOT: "Snapshot", 3: "Post-copy", 4: "Post-copy Error",
    },
    LifecycleEvent.STOPPED: {
        StoppedDetail.SHUTDOWN: "Shutdown", StoppedDetail.DESTROYED: "Destroyed",
        StoppedDetail.CRASHED: "Crashed", StoppedDetail.MIGRATED: "Migrated",
        StoppedDetail.SAVED: "Saved", StoppedDetail.FAILED: "Failed",
        StoppedDetail.FROM_SNAPSHOT: "Snapshot",
    },
    LifecycleEvent.SHUTDOWN: {
        ShutdownDetail.FINISHED: "Finished",
        ShutdownDetail.GUEST: "Finished after guest request",
        ShutdownDetail.HOST: "Finished after host request",
    },
    LifecycleEvent.PMSUSPENDED: {0: "Memory", 1: "Disk"},
    LifecycleEvent.CRASHED: {CrashedDetail.PANICKED: "Panicked", 1: "Crashloaded"},
}

_WATCHDOG_ACTIONS = ("none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi")


def event_name(event: int) -> str:
    try:
        return _EVENT_NAMES[LifecycleEvent(event)]
    except ValueError:
        return "unknown"


def event_detail_name(event: int, detail: int) -> str:
    try:
        return _DETAILS[LifecycleEvent(event)].get(detail, "unknown")
    except ValueError:
        return "unknown"


def lifecycle_text(event: int, detail: int) -> str:
    """``Started Booted``, ``Stopped Destroyed`` ... as virsh event prints them."""
    return f"{event_name(event)} {event_detail_name(event, detail)}"


def watchdog_action_name(action: int) -> str:
    return _WATCHDOG_ACTIONS[action] if 0 <= action < len(_WATCHDOG_ACTIONS) else "unknown"


# -- misc --------------------------------------------------------------------------------

def version_string(code: int) -> str:
    """libvirt's version encoding (major * 1e6 + minor * 1e3 + micro) as ``X.Y.Z``."""
    return f"{code // 1_000_000}.{code // 1_000 % 1_000}.{code % 1_000}"


def format_time(epoch: float, utc: bool = False, compact_zone: bool = False) -> str:
    """``2024-05-01 10:00:00 +0200`` (virsh's snapshot-list format); ``compact_zone``
    drops the space before the zone, as virt-admin's client-list does."""
    moment = _dt.datetime.fromtimestamp(epoch, _dt.UTC if utc else None)
    if moment.tzinfo is None:
        moment = moment.astimezone()
    sep = "" if compact_zone else " "
    return moment.strftime(f"%Y-%m-%d %H:%M:%S{sep}%z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def to_json(value: Any) -> str:
    """Pretty, stable JSON (keys in insertion order) with a trailing newline."""
    return json.dumps(_jsonable(value), indent=2, ensure_ascii=False) + "\n"
