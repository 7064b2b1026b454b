"""A connection cannot hold unbounded event registrations (read-only ones included)."""

from __future__ import annotations

import pytest

import client
from client import EventId


def test_registrations_are_capped_per_connection(daemon_factory) -> None:
    d = daemon_factory(config={"limits": {"max_event_callbacks": 3}})
    with d.connect(readonly=True) as conn:
        ids = [conn.register_event(EventId.LIFECYCLE) for _ in range(3)]
        with pytest.raises(client.LimitExceeded, match="max_event_callbacks"):
            conn.register_event(EventId.REBOOT)
        conn.deregister_event(ids[0])  # the connection stays usable, and a slot is free
        conn.register_event(EventId.REBOOT)
    with d.connect() as other:  # the limit is per connection
        for _ in range(3):
            other.register_event(EventId.LIFECYCLE)
