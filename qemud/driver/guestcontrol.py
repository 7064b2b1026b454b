"""What an administrator does to a running guest's hardware: ``virsh reset`` (the reset
button), ``virsh inject-nmi`` and ``virsh qemu-monitor-command`` (a QMP or HMP command
passed through to the guest's QEMU).

Why the pass-through exists at all: it is libvirt's escape hatch for what the API does
not cover, and admins who script QEMU through virsh expect it. Its reply is QEMU's own
(libvirt hands back QEMU's reply, errors included, as the call's result), and the daemon
keeps following the guest through the QMP events the command causes (a ``stop`` is seen
as a pause, a ``quit`` as the guest going away). What it cannot follow is a change QEMU
does not announce (a ``device_del`` of a disk, a ``blockdev-del``); as libvirt does, the
domain is then marked as tainted in the log, once per QEMU process.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import DomainState, PausedReason
from qemud.dispatch import Deferred, Handler
from qemud.errors import InternalError

from .flags import check_flags
from .lifecycle import REBOOT_IS_SHUTDOWN
from .monitor import CommandRejected

if TYPE_CHECKING:
    from .domain import DomainObj
    from .driver import QemuDriver

__all__ = ["GuestControl", "MONITOR_COMMAND_HMP"]

log = logging.getLogger(__name__)

#: libvirt's VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP: the command is HMP, not QMP JSON
MONITOR_COMMAND_HMP = 1

#: how long QEMU has to answer system_reset / inject-nmi (seconds)
QMP_TIMEOUT = 30.0


class QMPInputRefused(Exception):
    """What QEMU answers a malformed QMP command with (class GenericError): the reply is
    made here, as QEMU would make it, since the daemon sends QEMU commands of its own
    making only."""


def qmp_command(text: str) -> tuple[str, dict[str, Any] | None]:
    """A QMP command given as JSON (``{"execute": ..., "arguments": {...}}``): its name
    and arguments. QEMU's own ``id`` is the daemon's to choose, so a given one is
    dropped. Text that is not JSON is refused as libvirt refuses it; JSON that QMP would
    refuse raises :class:`QMPInputRefused` with QEMU's words."""
    try:
        obj = json.loads(text)
    except ValueError as exc:  # libvirt: virJSONValueFromString's error
        raise InternalError(f"cannot parse json {text}: {exc}") from None
    if not isinstance(obj, dict):
        raise QMPInputRefused("QMP input must be a JSON object")
    command = obj.get("execute")
    if command is None:
        raise QMPInputRefused("QMP input lacks member 'execute'")
    if not isinstance(command, str):
        raise QMPInputRefused("QMP input member 'execute' must be a string")
    arguments = obj.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise QMPInputRefused("QMP input member 'arguments' must be an object")
    unknown = sorted(set(obj) - {"execute", "arguments", "id"})
    if unknown:
        raise QMPInputRefused(f"QMP input member '{unknown[0]}' is unexpected")
    return command, arguments


def _error_reply(error_class: str, desc: str) -> pl.StringReply:
    return pl.StringReply(json.dumps({"error": {"class": error_class, "desc": desc}},
                                     separators=(",", ":")))


class GuestControl:
    """The handlers of DOMAIN_RESET, DOMAIN_INJECT_NMI and DOMAIN_QEMU_MONITOR_COMMAND."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        #: (uuid, QEMU pid) of the guests a pass-through command was sent to
        self._tainted: set[tuple[str, int]] = set()

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_RESET: self.reset,
                Procedure.DOMAIN_INJECT_NMI: self.inject_nmi,
                Procedure.DOMAIN_QEMU_MONITOR_COMMAND: self.monitor_command}

    def _running(self, args: Any) -> DomainObj:
        """The domain, running and free of any job (libvirt takes a modify job)."""
        dom = self.driver._dom(args)
        self.driver.lifecycle.require_active(dom)
        self.driver.lifecycle.require_no_job(dom)
        return dom

    def reset(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        """libvirt's qemuDomainReset: ``system_reset``, a pending reboot request is
        dropped, and a crashed guest kept by ``<on_crash>preserve</on_crash>`` becomes
        paused (crashed), as QEMU holds it stopped after the reset. The reboot event is
        sent once QEMU has taken the reset (its RESET event, ``guest: false``, is not
        announced again); the appliance's reset duties are for the guest's own resets
        and are not run."""
        check_flags(args.flags, 0, "qemuDomainReset")
        dom = self._running(args)
        assert dom.monitor is not None
        dom.fake_reboot = False
        # QEMU turns the reset of a guest whose reboots stop it (-action reboot=shutdown)
        # into a shutdown: the guest is then shut down (Lifecycle._host_shutdown), as in
        # libvirt, and no reboot is announced
        stops = dom.current().on_reboot in REBOOT_IS_SHUTDOWN
        for hook in self.driver.host_reset_hooks:
            hook(dom)
        out = Deferred()

        def done(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            if dom.state == DomainState.CRASHED:
                dom.state, dom.reason = DomainState.PAUSED, int(PausedReason.CRASHED)
                self.driver.lifecycle.save_status(dom)
            if not stops:
                self.driver.events.reboot(dom.ref())
            out.resolve(Empty())

        dom.monitor.execute("system_reset", timeout=QMP_TIMEOUT).add_done_callback(done)
        return out

    def inject_nmi(self, ctx: Any, args: pl.DomainFlagsArgs) -> Empty | Deferred:
        """libvirt's qemuDomainInjectNMI: QMP ``inject-nmi`` (to every vCPU on x86)."""
        check_flags(args.flags, 0, "qemuDomainInjectNMI")
        dom = self._running(args)
        assert dom.monitor is not None
        return self.driver._empty_or(dom.monitor.execute("inject-nmi", timeout=QMP_TIMEOUT))

    def monitor_command(self, ctx: Any,
                        args: pl.MonitorCommandArgs) -> pl.StringReply | Deferred:
        """libvirt's qemuDomainQemuMonitorCommand: the reply QEMU gave, as JSON text
        (``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``); with HMP the
        human monitor's text output, and a failure as the call's error. No timeout, as
        libvirt's: a command may run as long as QEMU takes (other clients do not wait)."""
        check_flags(args.flags, MONITOR_COMMAND_HMP, "qemuDomainQemuMonitorCommandWithFiles")
        dom = self.driver._dom(args)
        self.driver.lifecycle.require_active(dom)
        assert dom.monitor is not None and dom.process is not None
        hmp = bool(args.flags & MONITOR_COMMAND_HMP)
        arguments: dict[str, Any] | None
        if hmp:
            command, arguments = "human-monitor-command", {"command-line": args.cmd}
        else:
            try:
                command, arguments = qmp_command(args.cmd)
            except QMPInputRefused as exc:
                return _error_reply("GenericError", str(exc))
        key = (dom.uuid, dom.process.pid)
        if key not in self._tainted:
            self._tainted.add(key)
            log.warning("domain %s (id %s) is tainted: custom-monitor", dom.name, dom.id)
        out = Deferred()

        def done(d: Deferred) -> None:
            error = d.error
            if error is None:
                out.resolve(pl.StringReply(
                    d.result if hmp and isinstance(d.result, str) else
                    json.dumps({"return": d.result}, separators=(",", ":"))))
            elif isinstance(error, CommandRejected) and not hmp:
                out.resolve(_error_reply(error.error_class, error.desc))
            else:
                out.fail(error)

        dom.monitor.execute(command, arguments).add_done_callback(done)
        return out
