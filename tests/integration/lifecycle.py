"""What a guest's lifecycle leaves for a test to check: its lifecycle events on a
connection and its resets in the daemon's log, for test_driver_lifecycle,
test_driver_process_log, test_driver_reboot and test_guest_control.
"""

from __future__ import annotations

import time

import client
from tests.helpers.daemon import DaemonProcess


def lifecycle_events(conn: client.Connection, dom: client.Domain, count: int,
                     timeout: float = 60.0) -> list[tuple[int, int]]:
    """The next ``count`` lifecycle events of ``dom`` as (event, detail)."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        record = conn.next_event(max(0.1, deadline - time.monotonic()))
        if record is None:
            raise TimeoutError(f"only saw {seen} of {count} events for {dom.name}")
        if record.event_id == client.EventId.LIFECYCLE and record.domain.name == dom.name:
            seen.append((record.event, record.detail))
    return seen


def resets_since(qemud: DaemonProcess, name: str, offset: int) -> int:
    """The resets of guest ``name`` since log offset ``offset``: each ``system_reset``
    the daemon sent and each RESET the guest (or its firmware) made (its debug log of
    QMP traffic; the host's own reset's RESET, ``guest: false``, is not counted again)."""
    prefix = f"qemud.qemu.monitor.{name}: "
    return sum(1 for line in qemud.log_text()[offset:].splitlines()
               if prefix + "--> system_reset" in line or
               prefix + "<-- event RESET {'guest': True" in line)
