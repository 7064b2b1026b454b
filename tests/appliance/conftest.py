"""Fixtures and helpers of the appliance-layer tests.

Guest tests reuse the session-wide test guest of tests/integration (built once by
contrib/build-test-guest); each test module runs one daemon, each test its own guests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import test_guest  # noqa: F401  (re-exported fixture)

DATA = Path(__file__).parent / "data"
HOSTS = DATA / "hosts"
TEMPLATES = DATA / "templates"
#: TCG boots the test guest in ~7 s alone; two guests on two loaded cores take longer
BOOT_TIMEOUT = 90.0


@pytest.fixture
def host_tree() -> Callable[[str], Path]:
    def get(name: str) -> Path:
        path = HOSTS / name
        assert path.is_dir(), path
        return path
    return get


class EventLog:
    """Appliance (and lifecycle) events of one connection, kept for later assertions."""

    def __init__(self, conn: client.Connection) -> None:
        self.conn = conn
        self.seen: list[client.EventRecord] = []

    def _pump(self, timeout: float) -> None:
        record = self.conn.next_event(timeout)
        if record is not None:
            self.seen.append(record)

    def appliance(self, domain: str, kind: str | None = None) -> list[client.EventRecord]:
        return [r for r in self.seen if r.event_id == client.EventId.APPLIANCE and
                r.domain.name == domain and (kind is None or r.kind == kind)]

    def wait(self, domain: str, kind: str, count: int = 1, timeout: float = 60.0
             ) -> list[client.EventRecord]:
        """The first ``count`` appliance events ``kind`` of ``domain`` (waits for them)."""
        deadline = time.monotonic() + timeout
        while len(self.appliance(domain, kind)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{count} appliance event(s) {kind!r} of {domain} not seen within "
                    f"{timeout} s; seen: {[(r.domain.name, r.kind, r.text) for r in self.seen]}")
            self._pump(min(remaining, 0.5))
        return self.appliance(domain, kind)[:count]

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(min(0.2, max(0.01, deadline - time.monotonic())))


def wait_state(dom: client.Domain, state: client.DomainState, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while dom.state()[0] != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dom.name} not {state.name} within {timeout} s "
                               f"(is {dom.state()})")
        time.sleep(0.05)


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    """A connection to the test module's ``qemud`` daemon fixture."""
    with qemud.connect() as c:
        yield c


@pytest.fixture
def events(conn: client.Connection) -> EventLog:
    """Appliance events of ``conn``, kept for assertions."""
    conn.register_event(client.EventId.APPLIANCE)
    return EventLog(conn)
