"""Unit tests of the heartbeat watcher, the watchdog forwarding and the program runner,
with a real event loop and stand-ins for the driver (no QEMU)."""

from __future__ import annotations

import socket
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protocol.constants import DomainState, EventId
from protocol.payloads import DomainRef
from qemud.appliance.heartbeat import SHUTDOWN_WAIT, HeartbeatDuty, Watcher, check_definition
from qemud.appliance.metadata import HeartbeatPolicy
from qemud.appliance.power import ProgramRunner
from qemud.conf import parse_domain_xml
from qemud.errors import XMLError
from qemud.loop import EventLoop


@dataclass
class FakeDom:
    name: str = "g"
    uuid: str = "11111111-2222-3333-4444-555555555555"
    state: DomainState = DomainState.RUNNING
    job: str | None = None
    guest_shutdown: bool = False
    shutdown_requested: bool = False
    fake_reboot: bool = False
    power_requested_at: float = 0.0

    def ref(self) -> DomainRef:
        return DomainRef(self.name, uuidlib.UUID(self.uuid).bytes, 1)


@dataclass
class FakeDuty:
    loop: EventLoop
    seen: list[tuple[str, str]] = field(default_factory=list)
    acted: list[int] = field(default_factory=list)

    @property
    def events(self) -> FakeDuty:
        return self

    def appliance(self, ref: DomainRef, kind: str, detail: str) -> None:
        self.seen.append((kind, detail))

    def act(self, watcher: Watcher, missed: int, ago: str) -> None:
        self.acted.append(missed)


@pytest.fixture
def loop() -> Any:
    lp = EventLoop()
    yield lp
    lp.close()


def make_watcher(loop: EventLoop, path: str = "/nonexistent/hb.sock",
                 **policy: Any) -> tuple[Watcher, FakeDuty, FakeDom]:
    duty, dom = FakeDuty(loop), FakeDom()
    watcher = Watcher(duty, dom, HeartbeatPolicy(**{"interval": 1.0, "misses": 2,
                                                    "grace": 10.0, **policy}), path)
    return watcher, duty, dom


def test_grace_then_misses_then_action(loop: EventLoop) -> None:
    watcher, duty, _ = make_watcher(loop)
    t0 = watcher.due - 10.0  # rearm() made the first heartbeat due after the grace
    watcher.check(t0 + 9.0)
    watcher.check(t0 + 10.4)  # within half an interval of slack
    assert duty.seen == []
    watcher.check(t0 + 10.6)
    assert duty.seen == [("heartbeat-missed", "1 of 2 heartbeats missed (no heartbeat since "
                                              "the start)")]
    watcher.check(t0 + 11.6)
    assert duty.acted == [2] and len(duty.seen) == 2
    watcher.check(t0 + 30.0)  # acted: no more events until heartbeats come back
    assert duty.acted == [2] and len(duty.seen) == 2
    watcher.close()


def test_heartbeats_keep_it_quiet_and_resume_is_reported(loop: EventLoop) -> None:
    watcher, duty, _ = make_watcher(loop, misses=3)
    now = time.monotonic()
    for i in range(10):
        watcher.line(f"HEARTBEAT {i + 1} uptime={i}.5", now + i)
        watcher.check(now + i + 0.9)
        watcher.check(now + i + 1.4)
    # only the first beat is announced: the guest's software is up
    assert duty.seen == [("heartbeat-seen", "first heartbeat (1) since start")]
    assert watcher.count == 10 and watcher.last_seq == 10
    duty.seen.clear()
    watcher.check(now + 9 + 1.6)
    watcher.check(now + 9 + 2.6)
    assert [k for k, _ in duty.seen] == ["heartbeat-missed", "heartbeat-missed"]
    assert duty.seen[1][1].startswith("2 of 3 heartbeats missed (last heartbeat 2.6 s ago")
    watcher.line("HEARTBEAT 11 uptime=12", now + 12)
    assert duty.seen[-1] == ("heartbeat-resumed", "heartbeat 11 after 2 missed")
    assert duty.acted == []
    watcher.line("garbage", now + 13)
    watcher.line("", now + 13)
    assert watcher.count == 11
    watcher.close()


def test_paused_or_busy_guest_is_not_counted_against(loop: EventLoop) -> None:
    watcher, duty, dom = make_watcher(loop)
    now = time.monotonic()
    watcher.line("HEARTBEAT 1 uptime=1", now)
    assert [k for k, _ in duty.seen] == ["heartbeat-seen"]
    duty.seen.clear()
    dom.state = DomainState.PAUSED
    watcher.check(now + 100)
    dom.state = DomainState.RUNNING
    dom.job = "save"
    watcher.check(now + 200)
    dom.job = None
    watcher.check(now + 200.9)
    assert duty.seen == []
    watcher.check(now + 201.6)
    assert [k for k, _ in duty.seen] == ["heartbeat-missed"]
    watcher.close()


@pytest.mark.parametrize("request_kind", ["shutdown_requested", "fake_reboot"])
def test_an_admins_shutdown_or_reboot_is_not_counted_against(loop: EventLoop,
                                                             request_kind: str) -> None:
    """`qemush shutdown` (or an ACPI reboot) under way: the guest's heartbeat agent stops
    early in its shutdown, and the action must not destroy it while it flushes (nor
    start again what the admin turns off); for up to SHUTDOWN_WAIT, after which a guest
    that ignored the request and went silent is acted on."""
    watcher, duty, dom = make_watcher(loop)
    now = time.monotonic()
    watcher.line("HEARTBEAT 1 uptime=1", now)
    duty.seen.clear()
    setattr(dom, request_kind, True)
    for t in range(1, int(SHUTDOWN_WAIT) + 2):  # (the wait began at the first check)
        watcher.check(now + t)
    assert duty.seen == [] and duty.acted == []
    watcher.check(now + SHUTDOWN_WAIT + 1.6)
    assert [k for k, _ in duty.seen] == ["heartbeat-missed"]
    watcher.check(now + SHUTDOWN_WAIT + 2.6)
    assert duty.acted == [2]
    # heartbeats again (the request was ignored): a silence later is acted on as usual
    later = now + SHUTDOWN_WAIT + 10
    watcher.line("HEARTBEAT 2 uptime=400", later)
    duty.seen.clear()
    duty.acted.clear()
    watcher.check(later + 2.6)
    watcher.check(later + 3.6)
    assert duty.acted == [2]
    # a second request (its time known): held again
    watcher.line("HEARTBEAT 3 uptime=410", later + 10)
    duty.seen.clear()
    duty.acted.clear()
    dom.power_requested_at = later + 10.5
    for t in range(11, int(SHUTDOWN_WAIT) + 10):
        watcher.check(later + t)
    assert duty.seen == [] and duty.acted == []
    watcher.close()


def test_a_reboot_does_not_hold_the_count_again_for_an_old_request(loop: EventLoop) -> None:
    """A guest that ignored an admin's shutdown keeps its flag until it boots afresh; a
    reboot (rearm) after the request's wait is not another hold: a hang is acted on
    after the grace and the misses, as usual."""
    watcher, duty, dom = make_watcher(loop, grace=2.0)
    now = time.monotonic()
    dom.shutdown_requested, dom.power_requested_at = True, now - SHUTDOWN_WAIT - 10
    watcher.rearm()  # (a reboot: the first heartbeat due after the grace)
    t0 = watcher.due - 2.0
    for t in (1.0, 2.0, 2.6, 3.6, 4.6):
        watcher.check(t0 + t)
    assert duty.acted == [2]
    watcher.close()


def test_reads_lines_from_the_socket(loop: EventLoop, tmp_path: Path) -> None:
    path = tmp_path / "hb.sock"
    watcher, duty, _ = make_watcher(loop, str(path))  # no socket yet: retried from timers
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    deadline = time.monotonic() + 5
    while watcher.sock is None and time.monotonic() < deadline:
        loop.run_once(0.05)
    peer, _ = server.accept()
    peer.sendall(b"HEARTBEAT 1 uptime=1.0\nHEART")
    peer.sendall(b"BEAT 2 uptime=2.0\nnoise\n")
    while watcher.count < 2 and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert watcher.count == 2 and watcher.last_seq == 2
    stats = {p.name: (p.int_value, p.float_value) for p in watcher.stats()}
    assert stats["heartbeat.connected"][0] == 1 and stats["heartbeat.count"][0] == 2
    assert 0 <= stats["heartbeat.last_seconds_ago"][1] < 5
    peer.close()  # QEMU closed its end: the watcher reconnects
    while watcher.sock is not None and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert watcher.sock is None
    while watcher.sock is None and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert watcher.sock is not None
    watcher.close()
    server.close()


def test_program_runner_reaps_and_reports(loop: EventLoop, tmp_path: Path) -> None:
    runner = ProgramRunner(loop, tmp_path / "hooks.log")
    codes: list[int] = []
    pid = runner.run(["/bin/sh", "-c", "echo hello $QEMUD_X; exit 3"], {"QEMUD_X": "there"},
                     "test", codes.append)
    assert pid is not None
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert codes == [3]
    assert "hello there" in (tmp_path / "hooks.log").read_text()
    assert runner.run([str(tmp_path / "missing")], {}, "test") is None


def test_watchdog_events_are_forwarded() -> None:
    emitted: list[tuple[str, str]] = []
    events = SimpleNamespace(appliance=lambda ref, kind, detail: emitted.append((kind, detail)))
    driver = SimpleNamespace(loop=None, events=events)
    ctx = SimpleNamespace(driver=driver, daemon=SimpleNamespace(config=SimpleNamespace(
        paths=SimpleNamespace(log_dir=Path("/tmp")))))
    duty = HeartbeatDuty(ctx)  # type: ignore[arg-type]
    duty.on_event(EventId.WATCHDOG, FakeDom().ref(), (2,))
    assert emitted == [("watchdog", "guest watchdog fired: reset")]


XML = """<domain type='qemu'><name>g</name><memory>65536</memory>
<metadata><qemud:appliance xmlns:qemud='http://qemud.org/xmlns/appliance/1'>
<qemud:heartbeat/></qemud:appliance></metadata>
<os><type arch='x86_64'>hvm</type></os><devices>{}</devices></domain>"""


def test_define_time_check_of_a_given_channel() -> None:
    check_definition(parse_domain_xml(XML.format("")))
    check_definition(parse_domain_xml(XML.format(
        "<channel type='unix'><source mode='bind' path='/tmp/x.sock'/>"
        "<target type='virtio' name='org.qemud.heartbeat.0'/></channel>")))
    with pytest.raises(XMLError, match="must be <channel type='unix'>"):
        check_definition(parse_domain_xml(XML.format(
            "<channel type='pty'><target type='virtio' name='org.qemud.heartbeat.0'/>"
            "</channel>")))
