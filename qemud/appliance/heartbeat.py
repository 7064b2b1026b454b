"""Heartbeat watchdog: restart (or report) a guest that stopped saying it is alive.

A guest whose metadata has ``<qemud:heartbeat interval="1" misses="3" action="restart"
grace="60"/>`` sends ``HEARTBEAT <n> uptime=<s>`` lines on the virtio-serial port named
``org.qemud.heartbeat.0``. If the definition has no such ``<channel>``, one is added to
the *live* definition at each start (a unix socket ``<run_dir>/qemu/<name>/heartbeat.sock``
that QEMU listens on); a channel the definition has must be a unix socket QEMU listens
on (``mode='bind'``, the default). The daemon connects to that socket — one more fd in
the loop, connection retried from timers like the QMP monitor's — and reads the lines.

The first heartbeat is due ``grace`` seconds after the start (and after each reboot); each
later one ``interval`` seconds after the previous one, with half an interval of slack.
Every further missed heartbeat emits the appliance event ``heartbeat-missed``; after
``misses`` of them the action runs and ``heartbeat-action`` is emitted:

* ``restart``: the guest is destroyed and started again, within the restart budget
  (``appliance.restart_budget`` per ``restart_window``; past it, it stays off and the
  driver emits ``restart-budget-exhausted``);
* ``hook``: ``hook`` runs (QEMUD_EVENT=heartbeat-missed, QEMUD_DOMAIN, QEMUD_UUID,
  QEMUD_MISSED), without waiting for it; it runs again only after heartbeats came back;
* ``none``: only the events.

A paused guest sends nothing and is not counted against, nor one shutting down or
rebooting at an admin's request (``qemush shutdown``, an ACPI ``reboot``; for up to
5 minutes: a guest that ignored the request is counted against again). The first
heartbeat after each start emits ``heartbeat-seen`` (what an A/B appliance update waits
for before confirming); when heartbeats come back after missed ones,
``heartbeat-resumed`` is emitted. The state shows in DOMAIN_STATS as
``heartbeat.count``, ``heartbeat.missed``, ``heartbeat.connected`` and
``heartbeat.last_seconds_ago`` (-1 before the first heartbeat).

QEMU's own watchdog device (``<watchdog model='i6300esb' action='reset'/>``, passed to QEMU
by the command-line builder) needs no daemon help; its QMP WATCHDOG events, already
forwarded as libvirt watchdog events by the driver, are also emitted as appliance events
``watchdog`` ("guest watchdog fired: reset").
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import Procedure
from protocol import payloads as pl
from protocol.constants import (
    DomainState,
    EventId,
    LifecycleEvent,
    ShutoffReason,
    StoppedDetail,
    TypedParamKind,
)
from qemud.conf import DomainDef
from qemud.conf.devices import CharDevice
from qemud.errors import QemudError, XMLError
from qemud.loop import READ, Timer, connect_unix

from .metadata import HeartbeatPolicy, read_settings
from .power import ProgramRunner

if TYPE_CHECKING:
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj

    from . import ApplianceContext

__all__ = ["CHANNEL_NAME", "HeartbeatDuty", "Watcher", "install"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

CHANNEL_NAME = "org.qemud.heartbeat.0"
SOCKET_NAME = "heartbeat.sock"
CONNECT_RETRY = 0.2
MAX_LINE = 4096
#: how long an admin's shutdown or reboot request holds the heartbeat count (libvirt-
#: guests' default shutdown timeout): a guest still silent after it has ignored the
#: request and is acted on
SHUTDOWN_WAIT = 300.0
#: libvirt's VIR_DOMAIN_EVENT_WATCHDOG_* -> QEMU's action names
WATCHDOG_NAMES = {0: "none", 1: "pause", 2: "reset", 3: "poweroff", 4: "shutdown",
                  5: "debug", 6: "inject-nmi"}


def heartbeat_channel(definition: DomainDef) -> CharDevice | None:
    for channel in definition.channels:
        if channel.target_name == CHANNEL_NAME:
            return channel
    return None


def check_definition(definition: DomainDef) -> None:
    """Define-time check: a heartbeat channel the definition brings must be usable."""
    if read_settings(definition).heartbeat is None:
        return
    channel = heartbeat_channel(definition)
    if channel is None:
        return
    if channel.type != "unix" or (channel.source_mode or "bind") != "bind":
        raise XMLError(f"devices/channel '{CHANNEL_NAME}': the heartbeat channel "
                       "must be <channel type='unix'> with <source mode='bind'> (QEMU "
                       "listens, the daemon connects); or leave it out and the daemon adds "
                       "one at start")


class Watcher:
    """The heartbeat of one running guest."""

    def __init__(self, duty: HeartbeatDuty, dom: DomainObj, policy: HeartbeatPolicy,
                 path: str) -> None:
        self.duty = duty
        self.loop = duty.loop
        self.dom = dom
        self.policy = policy
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.count = 0
        self.last_seq: int | None = None
        self.last_beat: float | None = None
        self.due = 0.0
        self.reported = 0
        self.acted = False
        self.closed = False
        #: when the daemon first saw an admin's shutdown or reboot request in progress
        #: (see :meth:`check`), None when there is none
        self.winding_down: float | None = None
        self._retry: Timer | None = None
        self._tick: Timer | None = None
        self.rearm()
        self._connect()
        self._schedule()

    # -- timing --------------------------------------------------------------------------

    def rearm(self) -> None:
        """(Re)start: the first heartbeat is due after the grace period."""
        self.due = time.monotonic() + self.policy.grace
        self.last_beat = None
        self.reported = 0
        self.acted = False
        self.winding_down = None

    def missed(self, now: float) -> int:
        slack = self.policy.interval / 2
        if now < self.due + slack:
            return 0
        return 1 + math.floor((now - self.due - slack) / self.policy.interval)

    def _schedule(self) -> None:
        if not self.closed:
            period = max(0.1, min(self.policy.interval / 2, 5.0))
            self._tick = self.loop.call_later(period, self._check)

    def _check(self) -> None:
        self._tick = None
        if self.closed:
            return
        try:
            self.check(time.monotonic())
        finally:
            self._schedule()

    def check(self, now: float) -> None:
        dom = self.dom
        if dom.state != DomainState.RUNNING or dom.job is not None or dom.guest_shutdown \
                or self._winding_down(now):
            # paused, powered off (QEMU about to go), busy saving, shutting down at an
            # admin's request...: no heartbeat expected
            self.due = max(self.due, now + self.policy.interval)
            return
        if self.acted:
            return
        missed = self.missed(now)
        if missed <= self.reported:
            return
        self.reported = missed
        ago = (f"last heartbeat {now - self.last_beat:.1f} s ago" if self.last_beat
               is not None else "no heartbeat since the start")
        self.duty.events.appliance(dom.ref(), "heartbeat-missed",
                                   f"{missed} of {self.policy.misses} heartbeats missed "
                                   f"({ago})")
        if missed >= self.policy.misses:
            self.acted = True
            self.duty.act(self, missed, ago)

    def _winding_down(self, now: float) -> bool:
        """Whether an admin's shutdown or reboot (``qemush shutdown``, an ACPI ``reboot``)
        is under way, for at most :data:`SHUTDOWN_WAIT` after the request: the guest's
        heartbeat agent stops early in a graceful shutdown, and the action must not cut
        the power while it flushes its disks, nor start again the appliance the admin is
        turning off. A guest that ignored the request and went silent is acted on after
        that wait, also after a reboot; a later request holds the count again
        (``DomainObj.power_requested_at``; one a restarted daemon does not know the time
        of counts from when this watcher first saw it)."""
        dom = self.dom
        if not (dom.shutdown_requested or dom.fake_reboot):
            self.winding_down = None
            return False
        if self.winding_down is None:
            self.winding_down = now
        since = dom.power_requested_at or self.winding_down
        return now - since < SHUTDOWN_WAIT

    # -- the channel ---------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if self.closed:
            return
        try:
            sock = connect_unix(self.path)
        except OSError as exc:
            sock = None
            log.warning("domain %s: cannot connect to the heartbeat channel %s: %s",
                        self.dom.name, self.path, errno.errorcode.get(exc.errno or 0, exc.errno))
        if sock is not None:
            self.sock = sock
            self.loop.add(sock.fileno(), READ, self._on_io)
            log.debug("domain %s: heartbeat channel connected (%s)", self.dom.name, self.path)
            return
        self._retry = self.loop.call_later(CONNECT_RETRY, self._connect)

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.buf.clear()

    def _on_io(self, mask: int) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("domain %s: heartbeat channel read failed: %s", self.dom.name, exc)
            data = b""
        if not data:
            self._disconnect()
            if not self.closed:  # QEMU still there (it closed on us): try again
                self._retry = self.loop.call_later(CONNECT_RETRY, self._connect)
            return
        self.buf += data
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > MAX_LINE:
                    del self.buf[:]
                return
            line = bytes(self.buf[:end]).decode(errors="replace").strip()
            del self.buf[:end + 1]
            self.line(line, time.monotonic())

    def line(self, line: str, now: float) -> None:
        parts = line.split()
        if not parts or parts[0] != "HEARTBEAT":
            if line:
                log.debug("domain %s: heartbeat channel: ignored %r", self.dom.name, line[:80])
            return
        try:
            self.last_seq = int(parts[1]) if len(parts) > 1 else None
        except ValueError:
            self.last_seq = None
        self.count += 1
        self.last_beat = now
        self.due = now + self.policy.interval
        if self.count == 1:  # the guest's software is up (the A/B update waits for this)
            self.duty.events.appliance(self.dom.ref(), "heartbeat-seen",
                                       f"first heartbeat ({self.last_seq}) since start")
        if self.reported:
            self.duty.events.appliance(self.dom.ref(), "heartbeat-resumed",
                                       f"heartbeat {self.last_seq} after {self.reported} "
                                       "missed")
        self.reported = 0
        self.acted = False

    def close(self) -> None:
        self.closed = True
        for timer in (self._retry, self._tick):
            if timer is not None:
                timer.cancel()
        self._disconnect()

    # -- stats ---------------------------------------------------------------------------

    def stats(self) -> list[pl.TypedParam]:
        now = time.monotonic()
        ago = -1.0 if self.last_beat is None else round(now - self.last_beat, 3)
        return [
            pl.TypedParam("heartbeat.count", int(TypedParamKind.INT), int_value=self.count),
            pl.TypedParam("heartbeat.missed", int(TypedParamKind.INT),
                          int_value=self.missed(now) if not self.acted else self.reported),
            pl.TypedParam("heartbeat.connected", int(TypedParamKind.INT),
                          int_value=int(self.sock is not None)),
            pl.TypedParam("heartbeat.last_seconds_ago", int(TypedParamKind.FLOAT),
                          float_value=ago),
        ]


class HeartbeatDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.events = ctx.driver.events
        self.config = ctx.daemon.config
        self.runner = ProgramRunner(self.loop, self.config.paths.log_dir /
                                    "appliance-hooks.log")
        self.watchers: dict[str, Watcher] = {}
        self._restart_after_stop: set[str] = set()

    def install(self) -> None:
        self.driver.start_hooks.append(self.before_start)
        self.driver.stop_hooks.append(self.on_stop)
        self.driver.stats_hooks.append(self.stats)
        self.driver.registry.validators.append(check_definition)
        self.events.add_listener(self.on_event)
        for dom in self.driver.registry:  # guests re-attached after a daemon restart
            if dom.active:
                self.watch(dom)

    def policy(self, definition: DomainDef, name: str) -> HeartbeatPolicy | None:
        try:
            return read_settings(definition).heartbeat
        except QemudError as exc:
            log.error("domain %s: ignoring appliance metadata: %s", name, exc.message)
            return None

    # -- driver hooks --------------------------------------------------------------------

    def socket_path(self, dom: DomainObj) -> Path:
        return self.driver.lifecycle.guest_paths(dom.name).run_dir / SOCKET_NAME

    def before_start(self, dom: DomainObj, live: DomainDef) -> None:
        if self.policy(live, dom.name) is None:
            return
        channel = heartbeat_channel(live)
        if channel is None:
            channel = CharDevice.new("channel")
            channel.type = "unix"
            channel.source_mode = "bind"
            channel.source_path = str(self.socket_path(dom))
            channel.target_type = "virtio"
            channel.target_name = CHANNEL_NAME
            live.add_device(channel)
            log.debug("domain %s: heartbeat channel added (%s)", dom.name,
                      channel.source_path)
        elif channel.type == "unix" and not channel.source_path:
            channel.source_path = str(self.socket_path(dom))

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        watcher = self.watchers.pop(dom.uuid, None)
        if watcher is not None:
            watcher.close()
        if dom.uuid in self._restart_after_stop:
            self._restart_after_stop.discard(dom.uuid)
            self.driver.restart_within_budget(dom, "heartbeat watchdog")

    def stats(self, dom: DomainObj) -> list[pl.TypedParam]:
        watcher = self.watchers.get(dom.uuid)
        return watcher.stats() if watcher is not None else []

    # -- events --------------------------------------------------------------------------

    def on_event(self, event_id: EventId, ref: pl.DomainRef, data: tuple[object, ...]
                 ) -> None:
        if event_id == EventId.LIFECYCLE and data and data[0] == LifecycleEvent.STARTED:
            dom = self._find(ref)
            if dom is not None:
                self.watch(dom)
        elif event_id == EventId.REBOOT:
            watcher = self.watchers.get(_uuid_text(ref))
            if watcher is not None:
                watcher.rearm()  # the guest boots again: grace again
        elif event_id == EventId.WATCHDOG:
            action = WATCHDOG_NAMES.get(int(data[0]) if data else 0, str(data))  # type: ignore[call-overload]
            self.events.appliance(ref, "watchdog", f"guest watchdog fired: {action}")
            audit_log.info("appliance watchdog domain=%r action=%s", ref.name, action)

    def _find(self, ref: pl.DomainRef) -> DomainObj | None:
        try:
            return self.driver.registry.find(ref.name, ref.uuid)
        except QemudError:
            return None

    def watch(self, dom: DomainObj) -> None:
        live = dom.live
        if live is None:
            return
        policy = self.policy(live, dom.name)
        if policy is None:
            return
        channel = heartbeat_channel(live)
        if channel is None or channel.type != "unix" or not channel.source_path or \
                (channel.source_mode or "bind") != "bind":
            log.error("domain %s: has a heartbeat policy but no usable heartbeat channel "
                      "(started before the policy was set?): not watched", dom.name)
            self.events.appliance(dom.ref(), "heartbeat-unavailable",
                                  f"no unix channel {CHANNEL_NAME} QEMU listens on")
            return
        old = self.watchers.pop(dom.uuid, None)
        if old is not None:
            old.close()
        self.watchers[dom.uuid] = Watcher(self, dom, policy, channel.source_path)
        log.info("domain %s: heartbeat watched (every %g s, %d misses -> %s, grace %g s)",
                 dom.name, policy.interval, policy.misses, policy.action, policy.grace)

    # -- the action ----------------------------------------------------------------------

    def act(self, watcher: Watcher, missed: int, ago: str) -> None:
        dom, policy = watcher.dom, watcher.policy
        action = policy.action
        detail = f"{action}: {missed} heartbeats missed ({ago})"
        log.warning("domain %s: heartbeat lost: %s", dom.name, detail)
        self.events.appliance(dom.ref(), "heartbeat-action", detail)
        audit_log.info("appliance heartbeat domain=%r uuid=%s missed=%d action=%s",
                       dom.name, dom.uuid, missed, action)
        if action == "restart":
            from qemud.driver.domain import StopIntent
            if not dom.active or dom.process is None:
                return
            self._restart_after_stop.add(dom.uuid)
            try:
                self.driver.lifecycle.destroy(
                    dom, StopIntent(ShutoffReason.DESTROYED, StoppedDetail.DESTROYED))
            except QemudError as exc:
                self._restart_after_stop.discard(dom.uuid)
                log.error("domain %s: heartbeat restart: %s", dom.name, exc.message)
        elif action == "hook":
            self.runner.run([policy.hook], {
                "QEMUD_EVENT": "heartbeat-missed", "QEMUD_DOMAIN": dom.name,
                "QEMUD_UUID": dom.uuid, "QEMUD_MISSED": str(missed)},
                f"domain {dom.name}: heartbeat hook")


def _uuid_text(ref: pl.DomainRef) -> str:
    import uuid as uuidlib
    try:
        return str(uuidlib.UUID(bytes=bytes(ref.uuid)))
    except ValueError:
        return ""


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    HeartbeatDuty(ctx).install()
    return {}
