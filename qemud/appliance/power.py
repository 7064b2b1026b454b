"""Power-cycle following: what the host does when the guest shuts down or reboots itself.

The guest is in control of the appliance: when it powers off or reboots, the host follows
the per-guest policy in the domain metadata (see :mod:`qemud.appliance.metadata`)::

    <qemud:power guest-shutdown="shutdown-host" guest-reboot="restart" hook="/usr/lib/x"/>

==============  ============================================================================
action          what happens
==============  ============================================================================
default         the domain's own ``<on_poweroff>`` / ``<on_reboot>`` (the driver decides)
none            the guest is left off (after a reboot too: it is stopped, not restarted)
restart         the guest is stopped and started again, within the restart budget
                (``appliance.restart_budget`` per ``restart_window``); past it, it stays
                off and the driver emits ``restart-budget-exhausted``
hook            ``hook`` is run with QEMUD_EVENT=guest-shutdown|guest-reboot,
                QEMUD_DOMAIN, QEMUD_UUID; the guest then does its default (a reboot
                with ``on_reboot=restart`` reboots in place, in the same QEMU)
shutdown-host   the guest is stopped, then ``appliance.shutdown_host_command`` runs
reboot-host     the guest is stopped, then ``appliance.reboot_host_command`` runs
==============  ============================================================================

Telling a reboot from a power-off: QEMU normally resets a rebooting guest by itself. For a
guest whose ``guest-reboot`` policy is not ``default`` the daemon sends QMP ``set-action
reboot=shutdown`` as soon as it has started, so a reboot stops the guest like a power-off
(``-no-shutdown`` keeps QEMU there, paused) and the SHUTDOWN event says
``reason: guest-reset``: the daemon acts before the guest runs one more instruction. (A
watchdog with action ``reset`` then counts as a guest reboot too.) Should a reboot happen
before that command got through, the RESET event that follows is handled the same way,
after the fact. ``set-action`` applies to host-requested resets as well, so around every
reset the daemon itself makes (``qemush reboot`` and ``reset``, a ``hook`` reboot in
place) it switches back to ``reboot=reset`` until the firmware's own follow-up resets
(SeaBIOS resets a warm-reset machine again) are over; see ``_begin_settle``. A daemon
restarted meanwhile sets ``reboot=shutdown`` again for each guest it re-attaches. (A guest with
``<on_reboot>destroy``, which the command line starts with ``-action reboot=shutdown``,
needs none of this: the driver, like libvirt, turns ``qemush reboot`` of such a guest into
a shutdown, so the daemon never resets it.)

Each action emits an appliance event ``power-action`` ("restart after guest shutdown")
and writes one line to the audit log. Programs (hooks, host commands) are started with
``subprocess.Popen`` and reaped by the loop (``watch_child``): nothing waits for them;
their exit status is logged, their output goes to ``<log_dir>/appliance-hooks.log``.

A guest powering off after an ACPI request from the host (``qemush shutdown``, or
``qemush reboot`` of a guest with ``<on_reboot>destroy``) is the admin's decision, not the
guest's: the policy does not apply (the domain's ``<on_poweroff>`` does, as in libvirt).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Procedure
from protocol.constants import EventId, LifecycleEvent, ShutoffReason, StoppedDetail
from protocol.payloads import DomainRef
from qemud.errors import QemudError

from .metadata import PowerPolicy, read_settings

if TYPE_CHECKING:
    from qemud.conf import DomainDef
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj
    from qemud.loop import EventLoop, Timer

    from . import ApplianceContext

__all__ = ["PowerDuty", "ProgramRunner", "install"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

#: how long after a reset the daemon made a guest reset counts as the firmware's...
SETTLE_TIMEOUT = 5.0
#: ... and how long after the firmware's last reset
SETTLE_QUIET = 1.0


class ProgramRunner:
    """Start programs without waiting for them; the loop reaps them and logs the exit."""

    def __init__(self, loop: EventLoop, log_file: Path) -> None:
        self.loop = loop
        self.log_file = log_file

    def run(self, argv: list[str], env: dict[str, str], what: str,
            on_exit: Callable[[int], None] | None = None) -> int | None:
        """Start ``argv`` (``env`` added to the daemon's); returns its pid, None if it
        could not be started (logged)."""
        full_env = dict(os.environ)
        full_env.update(env)
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        except OSError:
            out = None
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=out or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
                                     env=full_env, close_fds=True, start_new_session=True)
        except OSError as exc:
            log.error("%s: cannot run %s: %s", what, argv[0] if argv else "(empty)",
                      exc.strerror or exc)
            audit_log.info("appliance program=%r for=%r result=error %r", argv, what,
                           str(exc.strerror or exc))
            return None
        finally:
            if out is not None:
                out.close()
        log.info("%s: started %s (pid %d)", what, " ".join(argv), child.pid)

        def exited(code: int) -> None:
            (log.info if code == 0 else log.warning)(
                "%s: %s (pid %d) exited with %d", what, argv[0], child.pid, code)
            audit_log.info("appliance program=%r for=%r pid=%d result=exit %d", argv, what,
                           child.pid, code)
            if on_exit is not None:
                on_exit(code)
        self.loop.watch_popen(child, exited)
        return child.pid


def check_definition(definition: DomainDef) -> None:
    """Define-time check: appliance metadata with a bad value is refused, naming it."""
    read_settings(definition)


def guest_env(dom: DomainObj, event: str) -> dict[str, str]:
    return {"QEMUD_EVENT": event, "QEMUD_DOMAIN": dom.name, "QEMUD_UUID": dom.uuid}


class PowerDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.config = ctx.daemon.config
        self.events = ctx.driver.events
        self.runner = ProgramRunner(self.loop, self.config.paths.log_dir /
                                    "appliance-hooks.log")
        #: uuid -> what to do once the guest's QEMU has exited
        self._after_stop: dict[str, Callable[[DomainObj], None]] = {}
        #: guests that run with set-action reboot=shutdown
        self._reboot_as_shutdown: set[str] = set()
        self._own_reset: set[str] = set()
        #: uuid -> ("starting" | "settling", timer): a reset is under way (see _settle)
        self._settle: dict[str, tuple[str, Timer]] = {}

    def install(self) -> None:
        self.driver.power_hooks.append(self.on_guest_power)
        self.driver.reset_hooks.append(self.on_guest_reset)
        self.driver.host_reset_hooks.append(self._before_host_reset)
        self.driver.stop_hooks.append(self.on_stop)
        self.driver.registry.validators.append(check_definition)  # bad metadata: refused
        self.events.add_listener(self.on_event)
        for dom in self.driver.registry:  # re-attached after a daemon restart
            if dom.active and self._reboots_stop(dom):
                self._reboot_as_shutdown.add(dom.uuid)
                # QEMU kept the action set at its start, unless the last daemon stopped
                # within a reset's settling window (reboot=reset, in memory only): set
                # it again (the command waits for the monitor's negotiation)
                self._set_reboot_action(dom)

    def _reboots_stop(self, dom: DomainObj) -> bool:
        """Whether this duty runs the guest with set-action reboot=shutdown."""
        policy = self.policy(dom)
        return policy is not None and policy.guest_reboot != "default"

    # -- helpers -------------------------------------------------------------------------

    def policy(self, dom: DomainObj) -> PowerPolicy | None:
        try:
            return read_settings(dom.current()).power
        except QemudError as exc:  # defined before validation existed: log, do the default
            log.error("domain %s: ignoring appliance metadata: %s", dom.name, exc.message)
            return None

    def _announce(self, dom: DomainObj, action: str, kind: str, more: str = "") -> None:
        detail = f"{action} after guest {kind}" + (f": {more}" if more else "")
        self.events.appliance(dom.ref(), "power-action", detail)
        audit_log.info("appliance power domain=%r uuid=%s event=guest-%s action=%s%s",
                       dom.name, dom.uuid, kind, action, f" note={more!r}" if more else "")

    def _stop_then(self, dom: DomainObj, then: Callable[[DomainObj], None] | None) -> None:
        """Stop the guest's QEMU (it is paused in its shutdown); ``then`` runs after."""
        from qemud.driver.domain import StopIntent
        self._after_stop.pop(dom.uuid, None)
        if dom.process is None:  # already gone (cannot happen from a QMP event)
            if then is not None:
                then(dom)
            return
        if then is not None:
            self._after_stop[dom.uuid] = then
        dom.stop_intent = StopIntent(ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN)
        dom.process.terminate(self.config.qemu.destroy_grace)

    def _run_hook(self, dom: DomainObj, hook: str, kind: str) -> None:
        self.runner.run([hook], guest_env(dom, f"guest-{kind}"),
                        f"domain {dom.name}: power hook (guest {kind})")

    def _host_command(self, dom: DomainObj, action: str, kind: str) -> None:
        command = (self.config.appliance.shutdown_host_command if action == "shutdown-host"
                   else self.config.appliance.reboot_host_command)
        if not command:
            log.error("domain %s: %s after guest %s, but appliance.%s_command is empty",
                      dom.name, action, kind, action.replace("-", "_"))
            return
        env = guest_env(dom, f"guest-{kind}")
        env["QEMUD_ACTION"] = action
        self.runner.run(list(command), env, f"domain {dom.name}: {action} (guest {kind})")

    def _reset_in_place(self, dom: DomainObj) -> None:
        """Reboot the guest in the same QEMU (it sits paused in the shutdown state)."""
        monitor = dom.monitor
        if monitor is None or monitor.closed:
            return
        self._own_reset.add(dom.uuid)
        try:
            self.events.reboot(dom.ref())
        finally:
            self._own_reset.discard(dom.uuid)
        self._begin_settle(dom, "settling")
        reset = monitor.execute("system_reset")

        def resume(d: Any) -> None:
            if d.error is not None:
                log.error("domain %s: reboot in place failed: %s", dom.name, d.error.message)
                self._stop_then(dom, None)
                return
            dom.guest_shutdown = False
            if dom.monitor is not None:
                dom.monitor.execute("cont").add_done_callback(
                    lambda c: log.error("domain %s: cont after reboot failed: %s", dom.name,
                                        c.error.message) if c.error else None)
        reset.add_done_callback(resume)

    # -- resets the daemon does ------------------------------------------------------------
    #
    # With set-action reboot=shutdown, QEMU turns *every* reset into a shutdown, the ones
    # the host asks for (system_reset) included. And after a warm reset SeaBIOS resets the
    # machine again (a "hard reboot": two guest resets ~0.1 s later). So around a reset
    # the daemon makes (qemush reboot, a reboot in place) the guest runs with reboot=reset
    # until those firmware resets went by (SETTLE_QUIET after the last one, SETTLE_TIMEOUT
    # if none comes); a guest reset in that window is the firmware's, not a guest reboot.

    def _begin_settle(self, dom: DomainObj, state: str) -> None:
        old = self._settle.pop(dom.uuid, None)
        if old is not None:
            old[1].cancel()
        elif dom.uuid in self._reboot_as_shutdown and dom.monitor is not None:
            dom.monitor.execute("set-action", {"reboot": "reset"})
        uuid = dom.uuid
        timer = self.loop.call_later(SETTLE_TIMEOUT, lambda: self._end_settle(dom, uuid))
        self._settle[uuid] = (state, timer)

    def _end_settle(self, dom: DomainObj, uuid: str) -> None:
        entry = self._settle.pop(uuid, None)
        if entry is None:
            return
        entry[1].cancel()
        if uuid in self._reboot_as_shutdown and dom.monitor is not None and \
                not dom.monitor.closed:
            dom.monitor.execute("set-action", {"reboot": "shutdown"})

    def _promote(self, uuid: str) -> None:
        entry = self._settle.get(uuid)
        if entry is not None and entry[0] == "starting":
            self._settle[uuid] = ("settling", entry[1])

    # -- driver hooks --------------------------------------------------------------------

    def on_guest_power(self, dom: DomainObj, reason: str) -> bool:
        policy = self.policy(dom)
        if policy is None:
            return False
        kind = "reboot" if reason == "guest-reset" else "shutdown"
        action = policy.guest_reboot if kind == "reboot" else policy.guest_shutdown
        log.info("domain %s: guest %s (%s), policy %s", dom.name, kind, reason, action)
        if action == "default":
            return False
        if action == "none":
            self._announce(dom, action, kind, "the guest stays off")
            self._stop_then(dom, None)
        elif action == "restart":
            self._announce(dom, action, kind)
            self._stop_then(dom, lambda d: self._restart(d, kind))
        elif action == "hook":
            self._announce(dom, action, kind, policy.hook)
            self._run_hook(dom, policy.hook, kind)
            if kind == "reboot" and dom.current().on_reboot in ("restart", "rename-restart"):
                self._reset_in_place(dom)
                return True
            return False  # the domain's on_poweroff/on_reboot, as without a policy
        elif action in ("shutdown-host", "reboot-host"):
            self._announce(dom, action, kind)
            self._stop_then(dom, lambda d: self._host_command(d, action, kind))
        return True

    def on_guest_reset(self, dom: DomainObj, reason: str) -> bool:
        """A guest reset QEMU did by itself: the firmware's after a reset the daemon made,
        or a reboot that came before set-action got through."""
        entry = self._settle.get(dom.uuid)
        if entry is not None and entry[0] == "settling":
            # the firmware's (SeaBIOS resets twice, 20 ms apart): the window closes once
            # resets have been quiet for SETTLE_QUIET
            log.debug("domain %s: firmware reset after a host reset", dom.name)
            entry[1].cancel()
            uuid = dom.uuid
            self._settle[uuid] = ("settling", self.loop.call_later(
                SETTLE_QUIET, lambda: self._end_settle(dom, uuid)))
            return True
        policy = self.policy(dom)
        if policy is None or policy.guest_reboot == "default":
            return False
        # the firmware resets once more after this one: not a second reboot
        self._begin_settle(dom, "settling")
        action = policy.guest_reboot
        log.info("domain %s: guest reset before set-action applied; policy %s", dom.name,
                 action)
        if action == "restart":
            self._announce(dom, action, "reboot", "rebooted in place")
        elif action == "hook":
            self._announce(dom, action, "reboot", policy.hook)
            self._run_hook(dom, policy.hook, "reboot")
        elif action == "none":
            self._announce(dom, action, "reboot", "the guest stays off")
            self._stop_then(dom, None)
        else:
            self._announce(dom, action, "reboot")
            self._stop_then(dom, lambda d: self._host_command(d, action, "reboot"))
        return True

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        self._reboot_as_shutdown.discard(dom.uuid)
        entry = self._settle.pop(dom.uuid, None)
        if entry is not None:
            entry[1].cancel()
        then = self._after_stop.pop(dom.uuid, None)
        if then is not None:
            then(dom)

    def _restart(self, dom: DomainObj, kind: str) -> None:
        if not self.driver.restart_within_budget(dom, f"power policy: restart after guest "
                                                      f"{kind}"):
            audit_log.info("appliance power domain=%r uuid=%s event=guest-%s action=restart "
                           "result=refused (restart budget exhausted; the guest stays off)",
                           dom.name, dom.uuid, kind)

    # -- events --------------------------------------------------------------------------

    def on_event(self, event_id: EventId, ref: DomainRef, data: tuple[object, ...]) -> None:
        if event_id == EventId.LIFECYCLE and data and data[0] == LifecycleEvent.STARTED:
            self._started(ref)
        elif event_id == EventId.REBOOT:
            self._host_reset(ref)

    def _find(self, ref: DomainRef) -> DomainObj | None:
        try:
            return self.driver.registry.find(ref.name, ref.uuid)
        except QemudError:
            return None

    def _started(self, ref: DomainRef) -> None:
        dom = self._find(ref)
        if dom is None or dom.monitor is None or not self._reboots_stop(dom):
            return
        self._reboot_as_shutdown.add(dom.uuid)
        self._set_reboot_action(dom)

    @staticmethod
    def _set_reboot_action(dom: DomainObj) -> None:
        """QMP ``set-action reboot=shutdown``: the guest's reboots stop it (see the
        module docstring); a failure is logged (reboots are then handled after the
        fact, from QEMU's RESET event)."""
        if dom.monitor is None or dom.monitor.closed:
            return
        dom.monitor.execute("set-action", {"reboot": "shutdown"}).add_done_callback(
            lambda d: log.error("domain %s: set-action reboot=shutdown failed (%s): reboots "
                                "are handled after the fact", dom.name, d.error.message)
            if d.error else log.debug("domain %s: reboots stop the guest (set-action)",
                                      dom.name))

    def _host_reset(self, ref: DomainRef) -> None:
        """A reboot event: the driver is about to reset the guest (qemush reboot: it sends
        system_reset right after emitting the event, so reboot=reset gets there first), or
        QEMU reset it (then on_guest_reset follows at once, in this same event)."""
        dom = self._find(ref)
        if dom is not None:
            self._before_host_reset(dom)

    def _before_host_reset(self, dom: DomainObj) -> None:
        """The daemon resets the guest now (a reboot in place, ``qemush reset``: the
        driver's ``host_reset_hooks``, before its ``system_reset``): reboot=reset until
        the firmware's resets are over (``_begin_settle``), else QEMU would turn the
        reset into a shutdown."""
        if dom.uuid in self._own_reset or dom.monitor is None or dom.uuid in self._settle:
            return
        if dom.uuid not in self._reboot_as_shutdown:
            return
        self._begin_settle(dom, "starting")
        uuid = dom.uuid
        self.loop.call_soon(lambda: self._promote(uuid))


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    duty = PowerDuty(ctx)
    duty.install()
    return {}
