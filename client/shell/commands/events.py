"""``event``: wait for and print domain events, virsh style."""

from __future__ import annotations

import datetime as _dt
import time

from protocol.constants import EventId

from ...connection import EventRecord
from ...format import lifecycle_text, watchdog_action_name
from ..context import Shell
from ..registry import DOMAIN, Arg, Args, Opt, UsageError, command

EVENT_TYPES: dict[str, EventId] = {
    "lifecycle": EventId.LIFECYCLE,
    "reboot": EventId.REBOOT,
    "watchdog": EventId.WATCHDOG,
    "metadata-change": EventId.METADATA_CHANGE,
    "appliance": EventId.APPLIANCE,
}
_NAMES = {v: k for k, v in EVENT_TYPES.items()}
#: virsh's names of the MetadataType a metadata-change event carries
_METADATA_TYPES = ("description", "title", "element")


def event_line(record: EventRecord) -> str:
    """The line virsh event prints, e.g. ``event 'lifecycle' for domain 'demo': Started
    Booted``."""
    name = _NAMES.get(record.event_id, str(int(record.event_id)))
    head = f"event '{name}' for domain '{record.domain.name}'"
    if record.event_id == EventId.LIFECYCLE:
        return f"{head}: {lifecycle_text(record.event, record.detail)}"
    if record.event_id == EventId.WATCHDOG:
        return f"{head}: {watchdog_action_name(record.event)}"
    if record.event_id == EventId.APPLIANCE:
        return f"{head}: {record.kind}" + (f": {record.text}" if record.text else "")
    if record.event_id == EventId.METADATA_CHANGE:  # virsh: NULL uri as <null>
        kind = _METADATA_TYPES[record.event] if 0 <= record.event < len(
            _METADATA_TYPES) else "unknown"
        return f"{head}: type {kind}, uri {record.uri or '<null>'}"
    return head


def _timestamp() -> str:
    now = _dt.datetime.now().astimezone()
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}" + \
        now.strftime("%z") + ": "


@command("event", "monitor", "Domain Events", description=(
    "List event types, or wait for domain events to occur. Without --loop the command "
    "returns after the first event; --timeout N stops waiting after N seconds. Without "
    "--event or --all, lifecycle events are shown."),
    args=(Arg("domain", "filter by domain name, id or uuid", required=False,
              complete=DOMAIN),),
    opts=(Opt("event", "which event type to wait for", "string",
              choices=tuple(EVENT_TYPES)),
          Opt("all", "wait for all events instead of just one type"),
          Opt("loop", "loop until timeout or interrupt, rather than one-shot"),
          Opt("timeout", "timeout seconds", "seconds", integer=True),
          Opt("list", "list valid event types"),
          Opt("timestamp", "show timestamp for each printed event")))
def cmd_event(sh: Shell, args: Args) -> None:
    if args.flag("list"):
        for name in EVENT_TYPES:
            sh.print(name)
        return
    if args.flag("all") and args.get("event"):
        raise UsageError("Options --all and --event are mutually exclusive")
    timeout = args.number("timeout")
    if timeout is not None and timeout <= 0:
        raise UsageError("command 'event': --timeout must be a positive number of seconds")
    kinds = list(EVENT_TYPES.values()) if args.flag("all") else \
        [EVENT_TYPES[args.get("event") or "lifecycle"]]
    dom = sh.domain(args.req("domain")) if args.get("domain") else None
    conn = sh.conn()
    callbacks: list[int] = []
    count = 0
    outcome = "done"
    try:
        with sh.failing("failed to register for events"):
            for kind in kinds:
                callbacks.append(conn.register_event(kind, None, dom))
        deadline = None if timeout is None else time.monotonic() + timeout
        with sh.failing("event loop failed"):
            while True:
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    outcome = "timeout"
                    break
                record = conn.next_event(wait)
                if record is None:
                    continue
                count += 1
                sh.print((_timestamp() if args.flag("timestamp") else "") + event_line(record))
                sh.out.flush()
                if not args.flag("loop"):
                    break
    except KeyboardInterrupt:
        outcome = "interrupt"
    finally:
        for cb in callbacks:
            try:
                conn.deregister_event(cb)
            except Exception:  # best effort on the way out
                pass
    if outcome == "timeout":
        sh.print("event loop timed out")
    elif outcome == "interrupt":
        sh.print("event loop interrupted")
    sh.print(f"events received: {count}")
