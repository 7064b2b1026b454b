"""Starting, stopping and watching guests; re-attaching to them after a daemon restart.

Nothing here waits. A start launches QEMU paused (``-S``), connects QMP from timers,
negotiates, and sends ``cont``; each step continues in a callback. Why a guest stopped
is decided from what was seen, never guessed: our own stop intent (destroy, save), the
guest's QMP SHUTDOWN event (``guest: true``), or else an unexpected exit (crash).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocol.constants import (
    CrashedDetail,
    CrashedReason,
    DomainState,
    LifecycleEvent,
    PausedReason,
    ResumedDetail,
    RunningReason,
    ShutdownDetail,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
)
from qemud import testhooks
from qemud.conf import DomainDef
from qemud.dispatch import Deferred
from qemud.errors import (
    ConfigUnsupported,
    InternalError,
    OperationFailed,
    OperationInvalid,
    QemudError,
    StartInterrupted,
    SystemCallFailed,
)
from qemud.qemu import naming
from qemud.qemu.arch import strategy_for
from qemud.qemu.chardevs import pty_paths
from qemud.qemu.command import GuestPaths, build_argv, taints
from qemud.qemu.errors import QemuError
from qemud.qemu.pci import assign_addresses
from qemud.qemu.qmp import QMPEvent

from .discard import discard
from .domain import DomainObj, StopIntent
from .monitor import Monitor
from .pinning import start_pins
from .process import (
    GuestLog,
    QemuProcess,
    guest_name,
    guest_qemus,
    proc_cmdline,
    proc_start_ticks,
)
from .saving import RESTORE_FD_NAME, SAVE_FD_NAME, Incoming
from .screenshot import remove_screendumps
from .store import StatusRecord
from .update import set_link_states

if TYPE_CHECKING:
    from pathlib import Path

    from qemud.loop import EventLoop
    from qemud.qemu.arch import ArchStrategy
    from qemud.qemu.capabilities import Capabilities

    from .driver import QemuDriver
    from .firmware import NvramCopy

__all__ = ["Lifecycle", "command_line"]

log = logging.getLogger(__name__)

#: test hook (:mod:`qemud.testhooks`): seconds instead of :data:`MONITOR_TIMEOUT`
MONITOR_TIMEOUT_ENV = "QEMUD_MONITOR_TIMEOUT"
#: how long a starting QEMU has to open its QMP socket before the start fails and it is
#: killed (a QEMU hung in its set-up, an emulator that is not QEMU)
MONITOR_TIMEOUT = testhooks.seconds(MONITOR_TIMEOUT_ENV, 30.0)
#: Test hook: ``QEMUD_TEST_DIE_AFTER_LAUNCH=1`` makes the daemon SIGKILL itself right after
#: it launched a QEMU, before any status file names it (the window
#: :meth:`Lifecycle._kill_unrecorded` covers). For tests only.
DIE_AFTER_LAUNCH_ENV = "QEMUD_TEST_DIE_AFTER_LAUNCH"
_DIE_AFTER_LAUNCH = testhooks.flag(DIE_AFTER_LAUNCH_ENV)
#: how long a graceful destroy waits for QEMU to act on its SIGTERM when qemu.destroy_grace
#: is 0 (a plain destroy's SIGKILL at once): libvirt's virProcessKillPainfully wait
GRACEFUL_DESTROY_GRACE = 10.0
#: libvirt's VIR_DOMAIN_DESTROY_GRACEFUL (DOMAIN_DESTROY flags): SIGTERM only
DESTROY_GRACEFUL = 1
QMP_TIMEOUT = 30.0
#: ``Registry.operations``' mark while a start waits for its NVRAM file (before QEMU):
#: "domain 'X' is busy: start in progress"
START_BUSY = "start"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: <on_reboot> values for which an admin's reboot is a shutdown (libvirt's qemuDomainReboot)
REBOOT_IS_SHUTDOWN = ("destroy", "preserve")
#: QMP SHUTDOWN reasons (``guest: false``) after which QEMU exits: a signal (destroy),
#: the ``quit`` command
HOST_EXITS = ("host-signal", "host-qmp-quit")
#: libvirt's VIR_DOMAIN_EVENT_WATCHDOG_* by QEMU's WATCHDOG event action
WATCHDOG_ACTIONS = {"none": 0, "pause": 1, "reset": 2, "poweroff": 3, "shutdown": 4,
                    "debug": 5, "inject-nmi": 6}


#: lines of QEMU's own output quoted when it exits unexpectedly (the rest is in its log)
LAST_WORDS_LINES = 3


def last_words(output: str) -> str:
    """The last lines QEMU printed, on one line: what an admin reading the daemon's
    warning about a crash wants first (``terminating on signal 15 from pid ...``, an
    assertion); the guest's log has everything."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-LAST_WORDS_LINES:])


def command_line(live: DomainDef, strategy: ArchStrategy, caps: Capabilities,
                 paths: GuestPaths, *, pci_addresses: bool = True) -> list[str]:
    """The QEMU command line a start runs for ``live`` (the copy of the definition the
    guest runs from, which this completes): its RAM aligned as QEMU gets it (libvirt's
    qemuDomainAlignMemorySizes: the running guest shows the RAM QEMU gets; the
    persistent definition keeps the user's KiB), its PCI addresses assigned (a
    definition has them since its define or load; what the live XML shows is where QEMU
    puts each device, so a restore can do the same; not with ``pci_addresses`` false,
    see ``build_argv``). Raises :class:`QemuError` for what QEMU cannot be given."""
    if live.memory_kib > 0 and strategy.memory_kib(live) != live.memory_kib:
        live.memory_kib = strategy.memory_kib(live)
    if pci_addresses:
        assign_addresses(live, strategy)
    return build_argv(live, strategy, caps, paths, pci_addresses=pci_addresses)

class Lifecycle:
    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        self.loop = driver.loop
        self.events = driver.events
        self.registry = driver.registry
        self.config = driver.config
        #: called once the QMP of a guest a previous daemon left running is up again, with
        #: its status record and QEMU's block jobs (``query-block-jobs``): the appliance
        #: ends the jobs that daemon started and never saw end (see ``_leftover_jobs``)
        self.reattach_hooks: list[Callable[[DomainObj, StatusRecord, list[Any]], None]] = []
        #: the NVRAM copies starts wait for, by domain uuid, with the start's word for
        #: itself ("start", "restore"): a destroy meanwhile cancels the copy
        self.nvram_waits: dict[str, tuple[NvramCopy, str]] = {}

    # -- helpers -------------------------------------------------------------------------

    def guest_paths(self, name: str) -> GuestPaths:
        p = self.config.paths
        return GuestPaths.under(p.guest_run_dir, p.guest_log_dir, name)

    def _set_state(self, dom: DomainObj, state: DomainState, reason: int) -> None:
        dom.state, dom.reason = state, int(reason)

    def require_active(self, dom: DomainObj) -> None:
        if not dom.active:
            raise OperationInvalid(f"domain '{dom.name}' is not running")
        if dom.monitor is None or dom.monitor.closed:
            raise OperationInvalid(f"domain '{dom.name}' is not ready (no QEMU monitor)")

    def require_no_job(self, dom: DomainObj) -> None:
        if dom.job is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {dom.job} in progress")

    def require_not_busy(self, dom: DomainObj) -> None:
        """:meth:`require_no_job`, and no long operation of the appliance layer on the
        domain (``Registry.require_no_operation``: an image update that stops, redefines
        and starts it itself)."""
        self.require_no_job(dom)
        self.registry.require_no_operation(dom)

    # -- start ---------------------------------------------------------------------------

    def start(self, dom: DomainObj, definition: DomainDef | None = None, *,
              paused: bool = False, incoming: Incoming | None = None,
              pci_addresses: bool = True,
              reason: RunningReason = RunningReason.BOOTED,
              detail: StartedDetail = StartedDetail.BOOTED, busy_ok: bool = False,
              reset_nvram: bool = False) -> Deferred:
        """Launch ``dom``; the Deferred resolves with its DomainRef once vCPUs run (with
        ``paused``: once QEMU is ready, its vCPUs stopped; also after an ``incoming``
        migration, a restore). ``pci_addresses`` false: QEMU places the PCI devices
        itself (the restore of an older qemud's save image, see ``build_argv``).
        Refused while the domain is busy (:meth:`require_not_busy`: any start, a
        client's, a restore, an automatic restart), unless ``busy_ok``: the start is
        the busy operation's own. ``reset_nvram``: a UEFI guest's NVRAM file is
        copied afresh from its template first (``start --reset-nvram``).

        What is refused before anything happens raises here; a start that must first
        create the NVRAM file (:meth:`_after_nvram`) reports what fails after that
        through the Deferred, as it does QEMU's own failures."""
        if dom.active:
            raise OperationInvalid(f"domain '{dom.name}' is already running")
        if busy_ok:
            self.require_no_job(dom)
        else:
            self.require_not_busy(dom)
        live = (definition or dom.definition).copy()
        for hook in self.driver.start_hooks:
            hook(dom, live)
        try:
            strategy = strategy_for(live, self.driver.caps.host_arch)
        except QemuError as exc:  # a stored definition of an arch this build lacks
            raise ConfigUnsupported(str(exc)) from None

        def launch() -> Deferred:
            return self._launch(dom, live, strategy, paused=paused, incoming=incoming,
                                pci_addresses=pci_addresses, reason=reason, detail=detail)
        nvram = self.driver.firmware.prepare_nvram(live, reset=reset_nvram)
        if nvram is None:
            return launch()
        return self._after_nvram(dom, nvram, launch,
                                 "start" if incoming is None else "restore")

    def _after_nvram(self, dom: DomainObj, nvram: NvramCopy,
                     launch: Callable[[], Deferred], what: str) -> Deferred:
        """Launch once the NVRAM file is in place: its template is copied and synced off
        the loop (``Firmware.create_nvram``), and meanwhile the domain is busy ("start
        in progress", ``Registry.operations``, unless the operation that started it
        holds the mark): a second start, an undefine, a define over it or a rename
        would act on a domain whose start has begun. A failure, of the copy or of what
        the launch refuses at once, fails the Deferred; a transient domain then goes,
        as at any failed start. A destroy meanwhile cancels the copy
        (:meth:`destroy`, :attr:`nvram_waits`): the start fails as one a destroy cut
        short after QEMU ran (``what``: "start" or "restore", for its words)."""
        registry = self.registry
        marked = dom.uuid not in registry.operations
        if marked:
            registry.operations[dom.uuid] = START_BUSY
        self.nvram_waits[dom.uuid] = (nvram, what)
        result = Deferred()

        def unmark(_: object = None) -> None:
            if marked and registry.operations.get(dom.uuid) == START_BUSY:
                registry.operations.pop(dom.uuid, None)

        def ready(d: Deferred) -> None:
            if self.nvram_waits.get(dom.uuid, (None,))[0] is nvram:
                del self.nvram_waits[dom.uuid]
            if d.error is not None:
                # (cut short while a whole copy lands: busy until the file is there, so
                # that an undefine or rename meanwhile does not miss it)
                nvram.settled.add_done_callback(unmark)
            else:
                unmark()
            error = d.error
            if error is None and not registry.holds(dom):  # (nothing should do it, but)
                error = StartInterrupted(f"domain '{dom.name}' was undefined during its "
                                         "start")
            if error is None:
                try:
                    launch().chain(result)
                    return
                except QemudError as exc:
                    error = exc
                except Exception as exc:  # (a bug: the dispatcher's words for it)
                    log.exception("start of %s crashed", dom.name)
                    error = InternalError(f"internal error in the start of '{dom.name}': "
                                          f"{exc!r}")
            if not dom.persistent and not dom.active and registry.holds(dom):
                registry.remove(dom)
            result.fail(error)
        nvram.add_done_callback(ready)
        return result

    def _launch(self, dom: DomainObj, live: DomainDef, strategy: ArchStrategy, *,
                paused: bool, incoming: Incoming | None, pci_addresses: bool,
                reason: RunningReason, detail: StartedDetail) -> Deferred:
        """QEMU for ``live``, and the steps that take it to running (see :meth:`start`)."""
        paths = self.guest_paths(dom.name)
        self.driver.ports.assign(live)
        try:
            argv = command_line(live, strategy, self.driver.caps, paths,
                                pci_addresses=pci_addresses)
        except QemuError as exc:
            self.driver.ports.release(live)
            raise ConfigUnsupported(str(exc)) from None
        if incoming is not None:
            argv += ["-incoming", "defer"]
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (paths.qmp_socket, paths.pidfile):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        guest_log = GuestLog(paths.log_file, rotate_past=self.config.qemu.log_max_bytes)
        try:
            process = QemuProcess.launch(self.loop, argv, dom.name, guest_log,
                                         log_max_bytes=self.config.qemu.log_max_bytes)
        except OSError as exc:
            guest_log.close()
            self.driver.ports.release(live)
            raise OperationFailed(f"cannot start QEMU for '{dom.name}': {argv[0]}: "
                                  f"{exc.strerror or exc}") from None
        if _DIE_AFTER_LAUNCH:  # (a test hook: the window _kill_unrecorded covers)
            os.kill(os.getpid(), signal.SIGKILL)
        dom.job = "start"
        self.registry.assign_id(dom)
        live.id = dom.id
        for taint in taints(live):  # libvirt's words, in the daemon's log as in libvirtd's
            log.warning("Domain id=%d name='%s' uuid=%s is tainted: %s", dom.id, dom.name,
                        dom.uuid, taint)
        dom.live, dom.process = live, process
        dom.pci_addressed = pci_addresses
        dom.guest_shutdown = dom.fake_reboot = dom.shutdown_requested = False
        dom.stop_intent = None
        dom.started_at = time.time()
        self._set_state(dom, DomainState.PAUSED, PausedReason.STARTING_UP)
        # recorded at once: a daemon killed before the start completes must find this
        # QEMU on restart (to kill it), never leave it running unknown next to a new one
        self.save_status(dom)
        result = Deferred()
        monitor = Monitor(self.loop, str(paths.qmp_socket), dom.name,
                          on_event=lambda ev: self._on_qmp_event(dom, ev),
                          on_close=lambda why: None)
        dom.monitor = monitor

        failing: list[QemudError] = []

        def fail(error: QemudError) -> None:
            # dom.job stays set: _on_exit then knows the start failed (no STOPPED event)
            if result.done:
                return
            if failing:
                # the QEMU a failed step killed has exited: QEMU's own words if it left
                # any, else the step's error (not "QEMU exited during start"), also if
                # a destroy came meanwhile
                result.fail(self._start_error(failing[0], process))
                return
            intent = dom.stop_intent
            if intent is not None and intent.shutoff_reason == ShutoffReason.DESTROYED:
                # a client's destroy is ending the start: its reason (and STOPPED event)
                # stand, and QEMU's last words are only those of its signal
                if not process.alive:
                    what = "start" if incoming is None else "restore"
                    result.fail(StartInterrupted(f"domain '{dom.name}' was destroyed "
                                                 f"during its {what}"))
                elif not process.killing:
                    # a graceful destroy (SIGTERM only): a QEMU exiting on it closes its
                    # monitor, and its exit calls this again; one still there after the
                    # grace has failed this start on its own, and goes as any would
                    grace = self.config.qemu.destroy_grace or GRACEFUL_DESTROY_GRACE
                    self.loop.call_later(grace, lambda: stop_failed_start(error)
                                         if process.alive else None)
                return  # (a plain destroy: its SIGKILL follows, and the exit)
            stop_failed_start(error)

        def stop_failed_start(error: QemudError) -> None:
            if result.done or failing:
                return
            failing.append(error)
            log.warning("start of %s failed: %s", dom.name, error.message)
            dom.stop_intent = StopIntent(ShutoffReason.FAILED, StoppedDetail.FAILED)
            if process.alive:
                process.kill()
                process.add_exit_callback(lambda p: result.fail(self._start_error(error, p)))
            else:
                result.fail(self._start_error(error, process))

        def ready(_: Any) -> None:
            secured = _set_vnc_password(monitor, live)
            if secured is None:
                read_ptys()
            else:
                secured.add_done_callback(lambda d: fail(d.error) if d.error else read_ptys())

        def read_ptys() -> None:
            # like libvirt, the ptys QEMU allocated are known before the guest runs
            self._read_ptys(dom, monitor).add_done_callback(
                lambda d: fail(d.error) if d.error else balloon())

        def balloon() -> None:
            step = _setup_balloon(monitor, live)
            if step is None:
                links()
            else:
                step.add_done_callback(lambda d: fail(d.error) if d.error else links())

        def links() -> None:
            step = set_link_states(monitor, live)
            if step is None:
                pin()
            else:
                step.add_done_callback(lambda d: fail(d.error) if d.error else pin())

        def pin() -> None:
            # <vcpupin>, <emulatorpin>, <vcpu cpuset>: before a vCPU runs, as libvirt
            step = start_pins(monitor, live, process.pid)
            if step is None:
                go()
            else:
                step.add_done_callback(lambda d: fail(d.error) if d.error else go())

        def go() -> None:
            if incoming is not None:
                monitor.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "events", "state": True}]})
                dom.job = "restore"
                try:
                    fd = incoming.open()
                except QemudError as exc:
                    fail(exc)
                    return
                try:  # (the monitor passes a duplicate: ours is closed at once)
                    passed = monitor.execute("getfd", {"fdname": RESTORE_FD_NAME}, fds=[fd])
                finally:
                    os.close(fd)
                passed.add_done_callback(lambda d: fail(d.error) if d.error else None)
                step = monitor.execute("migrate-incoming",
                                       {"uri": f"fd:{RESTORE_FD_NAME}"})
                step.add_done_callback(lambda d: fail(d.error) if d.error else None)
                # a restore with ``paused`` (a managed save of a paused guest, or
                # start --paused) keeps the vCPUs stopped, as libvirt's restore does
                self._after_incoming(dom, lambda err: fail(err) if err else
                                     running(paused_now=True) if paused else resume())
            elif paused:
                running(paused_now=True)
            else:
                resume()

        def resume() -> None:
            cont = monitor.execute("cont", timeout=QMP_TIMEOUT)
            cont.add_done_callback(lambda d: fail(d.error) if d.error else running())

        def running(paused_now: bool = False) -> None:
            dom.job = None
            if paused_now:
                self._set_state(dom, DomainState.PAUSED, PausedReason.USER)
            else:
                self._set_state(dom, DomainState.RUNNING, reason)
            self.save_status(dom)
            log.info("domain %s started (id %d, pid %d)", dom.name, dom.id, process.pid)
            self.events.lifecycle(dom.ref(), LifecycleEvent.STARTED, detail)
            if paused_now:
                self.events.lifecycle(dom.ref(), LifecycleEvent.SUSPENDED,
                                      SuspendedDetail.PAUSED)
            result.resolve(dom.ref())

        # registered before _on_exit, which clears the job: a QEMU that dies while
        # starting fails the start with its own error text
        process.add_exit_callback(lambda proc: fail(OperationFailed("QEMU exited during start"))
                                  if dom.job in ("start", "restore") else None)
        process.add_exit_callback(lambda proc: self._on_exit(dom, proc))
        connected = monitor.connect(MONITOR_TIMEOUT, alive=lambda: process.alive)
        connected.add_done_callback(lambda d: fail(d.error) if d.error else ready(d.result))
        return result

    def _start_error(self, error: QemudError, process: QemuProcess) -> QemudError:
        text = process.output_text()
        if text:
            return OperationFailed(f"QEMU failed to start: {text}")
        return error

    def _after_incoming(self, dom: DomainObj, done: Callable[[QemudError | None], None]
                        ) -> None:
        dom.device_waiters["__migration__"] = waiter = Deferred()
        waiter.add_done_callback(lambda d: done(d.error))

    def _read_ptys(self, dom: DomainObj, monitor: Monitor) -> Deferred:
        """Put the ptys QEMU allocated into the live XML (``<source path>``, and ``tty``
        on a console), as libvirt shows them; resolved at once when there are none."""
        live = dom.live
        if live is None or not pty_paths(live, None):  # (lists every pty device)
            return Deferred.resolved(None)
        done = Deferred()

        def got(d: Deferred) -> None:
            if d.error is not None:
                done.fail(d.error)
                return
            if dom.live is live:  # (not stopped meanwhile)
                devices = {"serial": live.serials, "console": live.consoles,
                           "channel": live.channels}
                for kind, index, path in pty_paths(live, d.result):
                    dev = devices[kind][index]
                    dev.source_path = path  # QEMU's word, never a path from the XML
                    if kind == "console":
                        dev.tty = path
            done.resolve(None)
        monitor.execute("query-chardev", timeout=QMP_TIMEOUT).add_done_callback(got)
        return done

    # -- status file (for reconnect) -----------------------------------------------------

    def save_status(self, dom: DomainObj) -> None:
        if dom.process is None or dom.live is None:
            return
        ticks = proc_start_ticks(dom.process.pid) or 0
        record = StatusRecord(
            name=dom.name, uuid=dom.uuid, id=dom.id, pid=dom.process.pid, start_ticks=ticks,
            qmp_path=str(self.guest_paths(dom.name).qmp_socket),
            log_path=str(dom.process.log.path), live_xml=dom.live.to_xml(live=True),
            persistent=dom.persistent, state=int(dom.state), reason=dom.reason,
            started_at=dom.started_at, job=dom.job or "", job_file=dom.job_file,
            job_target=dom.job_target,
            pci_changes=list(dom.pci_changes), pci_addressed=dom.pci_addressed,
            unplugs=list(dom.unplugs), shutdown_requested=dom.shutdown_requested,
            fake_reboot=dom.fake_reboot)
        try:
            self.driver.store.save_status(record)
        except OSError as exc:
            log.error("cannot write status of %s: %s (a daemon restart will not find it)",
                      dom.name, exc)

    # -- stopping ------------------------------------------------------------------------

    def destroy(self, dom: DomainObj, intent: StopIntent | None = None, *,
                graceful: bool = False) -> Deferred:
        """Stop QEMU now (SIGTERM, then SIGKILL after the grace period); the Deferred
        resolves once it has exited.

        ``graceful`` (libvirt's VIR_DOMAIN_DESTROY_GRACEFUL): SIGTERM only, never
        SIGKILL. A QEMU still there after the grace period fails the call in libvirt's
        words and the domain stays running, as it is (unless a plain destroy meanwhile is
        killing it: then this call ends with that one).

        A domain whose start still waits for its NVRAM copy (:attr:`nvram_waits`) has
        no QEMU yet: the copy is cancelled, and the start fails at once.
        """
        stop_intent = intent or StopIntent(ShutoffReason.DESTROYED, StoppedDetail.DESTROYED)
        if not dom.active or dom.process is None:
            waiting = self.nvram_waits.get(dom.uuid)
            if waiting is None or dom.active:
                raise OperationInvalid(f"domain '{dom.name}' is not running")
            # a start still copying the NVRAM template, before QEMU: it ends here, as
            # libvirt's destroy ends a start at any step, with the reason and event a
            # destroy of a start whose QEMU runs has (the copy is killed)
            copy, what = waiting
            log.info("domain %s destroyed while its %s waited for its NVRAM file",
                     dom.name, what)
            self._set_state(dom, DomainState.SHUTOFF, stop_intent.shutoff_reason)
            self.events.lifecycle(dom.ref(), LifecycleEvent.STOPPED, stop_intent.event_detail)
            copy.cancel(StartInterrupted(f"domain '{dom.name}' was destroyed during its "
                                         f"{what}"))
            return Deferred.resolved(None)
        dom.stop_intent = stop_intent
        dom.fake_reboot = False  # (libvirt's destroy clears a pending reboot too)
        waiter = Deferred()
        dom.stop_waiters.append(waiter)
        process = dom.process
        if not graceful:
            process.terminate(self.config.qemu.destroy_grace)
            return waiter
        grace = self.config.qemu.destroy_grace or GRACEFUL_DESTROY_GRACE

        def still_running() -> None:
            if process.killing or waiter.done:
                return  # a plain destroy is killing it: the exit resolves the waiter
            dom.stop_waiters.remove(waiter)
            if dom.stop_intent is stop_intent:  # (not a later destroy's or save's)
                dom.stop_intent = None  # the domain runs on: nothing is stopping it
            log.warning("domain %s: QEMU (pid %d) did not exit within %g s of SIGTERM; "
                        "graceful destroy failed, the domain stays running", dom.name,
                        process.pid, grace)
            waiter.fail(SystemCallFailed(f"Failed to terminate process {process.pid} with "
                                         "SIGTERM: Device or resource busy"))
        process.terminate_gently(grace, still_running)
        return waiter

    def _on_exit(self, dom: DomainObj, process: QemuProcess) -> None:
        if dom.process is not process:
            return
        was_starting = dom.job in ("start", "restore")
        if dom.stop_intent is not None:
            reason, detail = dom.stop_intent.shutoff_reason, dom.stop_intent.event_detail
        elif dom.guest_shutdown:
            reason, detail = ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN
        else:
            reason, detail = ShutoffReason.CRASHED, StoppedDetail.FAILED
            last = last_words(process.output_text())
            log.warning("domain %s: QEMU exited unexpectedly (%s)%s", dom.name,
                        process.describe_exit(), f"; its last output: {last}" if last else "")
        ref = dom.ref()
        self._cleanup(dom)
        self._set_state(dom, DomainState.SHUTOFF, reason)
        if not was_starting or reason != ShutoffReason.FAILED:
            self.events.lifecycle(ref, LifecycleEvent.STOPPED, detail)
        if dom.next_definition is not None:
            dom.definition, dom.next_definition = dom.next_definition, None
        if not dom.persistent:
            self.registry.remove(dom)
        waiters, dom.stop_waiters = dom.stop_waiters, []
        for waiter in waiters:
            waiter.resolve(None)
        self.driver.after_stop(dom, reason)

    def _cleanup(self, dom: DomainObj) -> None:
        if dom.monitor is not None:
            dom.monitor.close()
        if dom.process is not None:
            dom.process.log.close()
        if dom.live is not None:
            self.driver.ports.release(dom.live)
        paths = self.guest_paths(dom.name)
        for path in (paths.qmp_socket, paths.pidfile):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        remove_screendumps(paths.run_dir)  # (one a timed-out screenshot left)
        self.driver.store.delete_status(dom.name)
        waiters, dom.device_waiters = dom.device_waiters, {}  # (callbacks may touch it)
        for waiter in waiters.values():
            waiter.fail(OperationFailed(f"domain '{dom.name}' stopped"))
        self.driver.consoles.close_for(dom)
        self.registry.release_id(dom)
        dom.live = dom.process = dom.monitor = None
        dom.pci_changes = []  # (a new QEMU places its PCI devices afresh)
        dom.unplugs = []  # (QEMU's unplug requests went with it)
        dom.job, dom.job_file, dom.job_target = None, "", ""

    # -- QMP events ----------------------------------------------------------------------

    def _on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        for hook in list(self.driver.qmp_event_hooks):
            try:
                hook(dom, event)
            except Exception:
                log.exception("domain %s: QMP event hook failed on %s", dom.name, event.name)
        data = event.data
        name = event.name
        if name == "SHUTDOWN":
            if not data.get("guest"):
                self._host_shutdown(dom, str(data.get("reason", "")))
                return
            # QEMU (-no-shutdown) now pauses the guest in its shutdown state: the STOP
            # that follows is part of the shutdown (or of the reboot in place below),
            # never shown as a pause
            self._powered_off(dom, str(data.get("reason", "guest-shutdown")),
                              announce=lambda: self.events.lifecycle(
                                  dom.ref(), LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST))
            return
        if name == "RESET":
            # libvirt's qemuProcessHandleReset: a reset (the guest's, or the firmware's
            # after one) ends a reboot request the guest ignored
            dom.fake_reboot = False
            # the host's own system_reset (guest: false) was announced when it was sent
            if data.get("guest", True):
                self.events.reboot(dom.ref())
                self.driver.on_guest_reset(dom, str(data.get("reason", "guest-reset")))
            return
        if name == "STOP":
            if dom.state == DomainState.RUNNING and dom.job is None and not dom.guest_shutdown:
                self._set_state(dom, DomainState.PAUSED, PausedReason.UNKNOWN)
                self.events.lifecycle(dom.ref(), LifecycleEvent.SUSPENDED,
                                      SuspendedDetail.PAUSED)
                self.save_status(dom)
            return
        if name == "RESUME":
            if dom.state == DomainState.PAUSED and dom.job is None:
                self._set_state(dom, DomainState.RUNNING, RunningReason.UNPAUSED)
                self.events.lifecycle(dom.ref(), LifecycleEvent.RESUMED,
                                      ResumedDetail.UNPAUSED)
                self.save_status(dom)
            return
        if name == "GUEST_PANICKED":
            self._panicked(dom)
            return
        if name == "WATCHDOG":
            action = WATCHDOG_ACTIONS.get(str(data.get("action", "none")), 0)
            self.events.watchdog(dom.ref(), action)
            self.driver.on_watchdog(dom, str(data.get("action", "")))
            return
        if name == "DEVICE_DELETED":
            self.device_deleted(dom, str(data.get("device", "")))
            return
        if name == "MIGRATION":
            status = str(data.get("status", ""))
            waiter = dom.device_waiters.get("__migration__")
            if waiter is not None and status in ("completed", "failed", "cancelled"):
                dom.device_waiters.pop("__migration__", None)
                if status == "completed":
                    waiter.resolve(None)
                else:
                    waiter.fail(OperationFailed(f"migration {status}"))

    def device_deleted(self, dom: DomainObj, device: str) -> None:
        """The guest released ``device`` (QMP DEVICE_DELETED, or found gone when the
        daemon re-attached: ``Devices._reattached``): its unplug request is no more, and
        the detach waiting for it goes on (else the device is removed as one would have:
        ``Devices.released_unawaited``). The status is saved once the device left the
        live XML."""
        if device in dom.unplugs:
            dom.unplugs.remove(device)
        waiter = dom.device_waiters.pop(device, None)
        if waiter is not None:
            waiter.resolve(None)
        else:
            self.driver.devices.released_unawaited(dom, device)

    def reboot_in_place(self, dom: DomainObj) -> None:
        """libvirt's fake reboot: reset the guest QEMU holds paused in its shutdown
        state, and run it again, in the same QEMU (same id, no STOPPED/STARTED).

        The pause is not shown (no SUSPENDED/RESUMED; the state stays running) and the
        guest runs as ``running (booted)`` after it, as in libvirt's
        qemuProcessFakeReboot. The reboot event is sent before ``system_reset`` (whose
        RESET, ``guest: false``, is then not announced again): the appliance's power
        duty acts on it before the reset reaches QEMU. If the reset or the continue
        fails, the guest is stopped as shut down, as libvirt kills it then. Until the
        guest runs again it is busy (libvirt's fake reboot takes a job too): a suspend
        in between would be undone by the continue.
        """
        monitor = dom.monitor
        if monitor is None or monitor.closed:
            return
        dom.guest_shutdown = True  # (the STOP of the shutdown pause: not a user pause)
        own_job = dom.job is None
        if own_job:
            dom.job = "reboot"
        self.events.reboot(dom.ref())

        def end_job() -> None:
            if own_job and dom.job == "reboot":
                dom.job = None

        def failed(step: str, error: QemudError) -> None:
            end_job()
            log.error("domain %s: reboot in place failed (%s: %s): stopping it", dom.name,
                      step, error.message)
            if dom.monitor is monitor and dom.process is not None and dom.stop_intent is None:
                dom.stop_intent = StopIntent(ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN)
                dom.process.terminate(self.config.qemu.destroy_grace)

        def reset(d: Deferred) -> None:
            if d.error is not None:
                failed("system_reset", d.error)
                return
            monitor.execute("cont", timeout=QMP_TIMEOUT).add_done_callback(running)

        def running(d: Deferred) -> None:
            if d.error is not None:
                failed("cont", d.error)
                return
            end_job()
            if dom.monitor is not monitor or dom.stop_intent is not None:
                return  # stopped, or being stopped (destroy), meanwhile
            # a new boot: what the admin asked of the guest before it is done
            dom.guest_shutdown = dom.shutdown_requested = False
            if dom.state == DomainState.RUNNING:
                self._set_state(dom, DomainState.RUNNING, RunningReason.BOOTED)
            self.save_status(dom)
            # a shutdown waiting for the power-off (DESTROY_ON_TIMEOUT) has it: the guest
            # powered off, <on_poweroff>restart started it again (it must not be
            # destroyed when the wait times out)
            waiters, dom.stop_waiters = dom.stop_waiters, []
            for waiter in waiters:
                waiter.resolve(None)
        monitor.execute("system_reset", timeout=QMP_TIMEOUT).add_done_callback(reset)

    # -- reconnect -----------------------------------------------------------------------

    def reconnect_all(self) -> None:
        """Find every QEMU a previous daemon left running and re-attach to it."""
        for path, record in self.driver.store.statuses():
            if record is None:
                continue
            try:
                self._reconnect(record)
            except Exception:
                log.exception("cannot reconnect to %s (status file %s)", record.name, path)
        try:
            self._kill_unrecorded()
        except Exception:  # (the daemon serves the guests it knows all the same)
            log.exception("cannot look for QEMUs no status file names")

    def _kill_unrecorded(self) -> None:
        """Kill every QEMU of this daemon's run directory that no status file names: the
        last daemon stopped between launching it and recording it (the first status
        write of a start). No client was told it started, so it is a failed start, as
        at STARTING_UP in :meth:`_reconnect`; left running it would hold the guest's
        disks unaccounted for, next to the QEMU of the guest's next start. A status file
        this daemon cannot read keeps its QEMU alive (:meth:`_reconnect` says why)."""
        for pid, name in guest_qemus(self.config.paths.guest_run_dir):
            if self.driver.store.status_path(name).exists():
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # (gone)
            try:
                # the same process still (a pid is not reused while its pidfd is open)
                if guest_name(proc_cmdline(pid)) != name:
                    continue
                log.warning("domain %s: QEMU (pid %d) was being started when the last "
                            "daemon stopped, before it was recorded: killing it", name, pid)
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError as exc:
                log.error("domain %s: cannot kill QEMU (pid %d), which no status file "
                          "names: %s", name, pid, exc.strerror or exc)
            finally:
                os.close(pidfd)

    def _reconnect(self, record: StatusRecord) -> None:
        from qemud.conf import ConfError, parse_domain_xml
        try:
            live = parse_domain_xml(record.live_xml, validate_schema=False)
        except ConfError as exc:
            log.error("status of %s unreadable (%s); leaving its QEMU alone", record.name, exc)
            return
        dom = self.registry._by_uuid.get(record.uuid)
        if dom is None:
            dom = DomainObj(live.copy(), persistent=False)
            self.registry.add(dom)
        alive = proc_start_ticks(record.pid) == record.start_ticks and \
            guest_name(proc_cmdline(record.pid)) == record.name
        saved = record.job == "save" and bool(record.job_target)  # its migration completed
        if saved and alive and not self.driver.saving.sync_completed(
                dom, record.job_file, record.job_target, alive=True):
            saved = False  # not on disk: cancelled below, as a save cut short
        if not alive:
            if saved:  # (QEMU exited as the save asked, or died after the state was out)
                self.driver.saving.sync_completed(dom, record.job_file, record.job_target,
                                                  alive=False)
                self.driver.saving.finish_completed(dom, record.job_file, record.job_target)
                reason, detail = ShutoffReason.SAVED, StoppedDetail.SAVED
            else:
                log.warning("domain %s: QEMU (pid %d) is gone since the last daemon ran: "
                            "marking it shut off (crashed)", record.name, record.pid)
                _remove_job_file(self.driver.loop, record)
                reason, detail = ShutoffReason.CRASHED, StoppedDetail.FAILED
            self.driver.store.delete_status(record.name)
            self._set_state(dom, DomainState.SHUTOFF, reason)
            if not dom.persistent:
                self.registry.remove(dom)
            self.events.lifecycle(dom.ref(), LifecycleEvent.STOPPED, detail)
            return
        # QEMU has it open: not renamed here, copy-truncated by the process's checks
        guest_log = GuestLog(self.guest_paths(dom.name).log_file)
        guest_log.note(f"{time.strftime('%Y-%m-%d %H:%M:%S')} qemud re-attached to pid "
                       f"{record.pid}")
        # what QEMU prints from here on is its output as far as this daemon knows it
        process = QemuProcess(self.loop, record.pid, dom.name, guest_log,
                              output_start=guest_log.size(),
                              log_max_bytes=self.config.qemu.log_max_bytes)
        self.registry.assign_id(dom, record.id)
        live.id = dom.id
        dom.live, dom.process, dom.started_at = live, process, record.started_at
        dom.pci_changes = [str(c) for c in record.pci_changes]  # (refuses a save still)
        dom.pci_addressed = bool(record.pci_addressed)
        # an admin's shutdown or reboot in progress: the guest's power-off that follows
        # is not its own decision (appliance power-following), a reboot resets it
        dom.shutdown_requested = bool(record.shutdown_requested)
        dom.fake_reboot = bool(record.fake_reboot)
        self.driver.ports.claim(live)
        if record.state == DomainState.PAUSED and record.reason == PausedReason.STARTING_UP:
            # the last daemon died before this start completed: no client was told it
            # started, so it is stopped as a failed start (as libvirt does)
            log.warning("domain %s: QEMU (pid %d) was still starting when the last daemon "
                        "stopped: killing it", record.name, record.pid)
            self._set_state(dom, DomainState.PAUSED, PausedReason.STARTING_UP)
            dom.job = "start"  # _on_exit: a failed start, no STOPPED event
            dom.stop_intent = StopIntent(ShutoffReason.FAILED, StoppedDetail.FAILED)
            process.add_exit_callback(lambda proc: self._on_exit(dom, proc))
            process.kill()
            return
        self._set_state(dom, DomainState(record.state), record.reason)
        if saved:
            # the save's file is complete: QEMU is stopped as the save would have (no
            # monitor needed to send it SIGTERM), and the save finished
            dom.job, dom.job_file, dom.job_target = "save", record.job_file, record.job_target
            process.add_exit_callback(lambda proc: self._on_exit(dom, proc))
            self.driver.saving.finish_completed(dom, record.job_file, record.job_target)
            self.destroy(dom, StopIntent(ShutoffReason.SAVED, StoppedDetail.SAVED))
            log.info("re-attached to domain %s (id %d, pid %d) to stop it as saved",
                     dom.name, dom.id, record.pid)
            return
        # before QMP is up: a DEVICE_DELETED then finds its wait, a save is refused
        self.driver.devices.remember_unplugs(dom, [str(u) for u in record.unplugs])
        monitor = Monitor(self.loop, record.qmp_path, dom.name,
                          on_event=lambda ev: self._on_qmp_event(dom, ev),
                          on_close=lambda why: None)
        dom.monitor = monitor
        process.add_exit_callback(lambda proc: self._on_exit(dom, proc))

        def refresh(_: Any) -> None:
            if record.job == "save":
                self._undo_save(dom, monitor, record)
            self._leftover_jobs(dom, monitor, record)
            # the ptys are in the status file's live XML; asked again for a status file
            # written by a daemon that did not record them
            self._read_ptys(dom, monitor).add_done_callback(query_status)

        def query_status(ptys: Deferred) -> None:
            if ptys.error is not None:
                log.warning("domain %s: cannot read its ptys: %s", dom.name,
                            ptys.error.message)
            status = monitor.execute("query-status")
            status.add_done_callback(lambda d: self._apply_status(dom, d.result)
                                     if d.error is None else None)

        def connected(d: Deferred) -> None:
            if d.error is None:
                refresh(d.result)
                return
            # As libvirt's qemuProcessReconnect: a QEMU no daemon can talk to is stopped,
            # else it runs on unmanaged (no pause, no shutdown, a power-off unseen) and
            # a later start would run a second one
            log.error("domain %s: cannot re-attach QMP: %s; stopping its QEMU (pid %d), "
                      "which no daemon could manage", dom.name, d.error.message,
                      record.pid)
            if dom.process is process and process.alive:
                dom.stop_intent = StopIntent(ShutoffReason.CRASHED, StoppedDetail.FAILED)
                process.terminate(self.config.qemu.destroy_grace)
        monitor.connect(MONITOR_TIMEOUT, alive=lambda: process.alive).add_done_callback(
            connected)
        log.info("re-attached to domain %s (id %d, pid %d)", dom.name, dom.id, record.pid)

    def _undo_save(self, dom: DomainObj, monitor: Monitor, record: StatusRecord) -> None:
        """The last daemon stopped during a save of this guest: no client was told it
        succeeded, so it is cancelled, as libvirt does when it re-attaches during a save
        job. The migration stops, its file goes, and a guest that was running before
        the save runs again (one the user had paused stays paused)."""
        log.warning("domain %s: a save was in progress when the last daemon stopped: "
                    "cancelled%s", dom.name,
                    ", the guest resumed" if record.state == DomainState.RUNNING else "")
        monitor.execute("migrate_cancel")
        # (the descriptor of its file, if QEMU still has it: the migration did not start)
        monitor.execute("closefd", {"fdname": SAVE_FD_NAME})
        if record.state == DomainState.RUNNING:
            monitor.execute("cont")
        _remove_job_file(self.driver.loop, record)

    def _leftover_jobs(self, dom: DomainObj, monitor: Monitor, record: StatusRecord
                       ) -> None:
        """QEMU's block jobs of a re-attached guest, to the ``reattach_hooks``: this
        daemon started none of them, so each was started by the last daemon (a merge,
        a backup) or by hand. Left alone, a merge's active commit waits forever for a
        pivot and keeps the disk busy (libvirt reconciles its block jobs when it
        re-attaches too). The hooks are called also when there is no job (a backup's
        target may be left without one) or the query fails (with no job then)."""
        def queried(d: Deferred) -> None:
            jobs = d.result if d.error is None and isinstance(d.result, list) else []
            if d.error is not None:
                log.warning("domain %s: cannot list its block jobs: %s", dom.name,
                            d.error.message)
            if dom.monitor is not monitor:
                return  # stopped meanwhile
            for hook in self.reattach_hooks:
                try:
                    hook(dom, record, jobs)
                except Exception:
                    log.exception("domain %s: re-attach hook failed", dom.name)
            if jobs and not self.reattach_hooks:
                log.warning("domain %s: block jobs left running: %s", dom.name,
                            ", ".join(str(j.get("device")) for j in jobs))
        monitor.execute("query-block-jobs").add_done_callback(queried)

    def _host_shutdown(self, dom: DomainObj, reason: str) -> None:
        """QMP SHUTDOWN, ``guest: false``: the host's request. A destroy's signal and
        ``quit`` end QEMU (its exit is handled then). Any other (a ``system_reset`` of a
        guest whose reboots stop it, which QEMU's ``-action reboot=shutdown`` turns into
        a shutdown) leaves QEMU paused in its shutdown state: the guest is shut down as
        an admin's shutdown is (``<on_poweroff>``, no appliance power policy), with
        libvirt's SHUTDOWN event, detail host (qemuProcessHandleShutdown). Before, the
        STOP that follows read as a pause the guest could never be resumed from. One
        that comes while a shutdown is being handled already (a reboot in place whose
        reset QEMU turned into a shutdown: it stops the guest when its ``cont`` fails)
        changes nothing."""
        if reason in HOST_EXITS or dom.guest_shutdown or dom.stop_intent is not None:
            return
        log.info("domain %s: QEMU shut the guest down at the host's request (%s)",
                 dom.name, reason or "no reason given")
        dom.shutdown_requested = True
        self._powered_off(dom, reason or "host", announce=lambda: self.events.lifecycle(
            dom.ref(), LifecycleEvent.SHUTDOWN, ShutdownDetail.HOST))

    def _powered_off(self, dom: DomainObj, reason: str,
                     announce: Callable[[], None] | None = None) -> None:
        """The guest powered off (QMP SHUTDOWN, guest: true; or found so at re-attach):
        a reboot an admin asked for resets it, else ``<on_poweroff>`` and the appliance
        hooks apply (see ``QemuDriver.on_guest_power``)."""
        dom.guest_shutdown = True
        if dom.fake_reboot:
            dom.fake_reboot = False
            if dom.current().on_reboot not in REBOOT_IS_SHUTDOWN:
                self.reboot_in_place(dom)
                return
            # libvirt's qemuDomainReboot: a guest whose reboots stop it is not rebooted
            # by an admin either, the ACPI power-off is a shutdown the admin asked for
            # (then <on_poweroff> applies)
            dom.shutdown_requested = True
        self.driver.on_guest_power(dom, reason, announce=announce)

    def _panicked(self, dom: DomainObj) -> None:
        """The guest panicked (QMP GUEST_PANICKED, or found so at re-attach): crashed
        (panicked), recorded so that a restarted daemon shows it too, and ``<on_crash>``
        applies (``QemuDriver.on_guest_crash``)."""
        self._set_state(dom, DomainState.CRASHED, CrashedReason.PANICKED)
        self.save_status(dom)
        self.events.lifecycle(dom.ref(), LifecycleEvent.CRASHED, CrashedDetail.PANICKED)
        self.driver.on_guest_crash(dom)

    def _apply_status(self, dom: DomainObj, status: Any) -> None:
        if not isinstance(status, dict):
            return
        if status.get("running"):
            if dom.state != DomainState.RUNNING:
                self._set_state(dom, DomainState.RUNNING, RunningReason.UNPAUSED)
        elif status.get("status") == "shutdown":
            # (powered off while no daemon listened: an admin's reboot or shutdown in
            # progress is in the status record)
            self._powered_off(dom, "guest-shutdown")
        elif status.get("status") == "guest-panicked":
            if dom.state != DomainState.CRASHED:  # (panicked while no daemon listened)
                self._panicked(dom)
        elif dom.state == DomainState.RUNNING:
            self._set_state(dom, DomainState.PAUSED, PausedReason.UNKNOWN)
        self.save_status(dom)

    def detach_all(self) -> None:
        """Daemon shutdown: stop watching, leave every guest running."""
        for dom in self.registry:
            if dom.active:
                self.save_status(dom)
            if dom.monitor is not None:
                dom.monitor.close()
            if dom.process is not None:
                dom.process.detach()


def _set_vnc_password(monitor: Monitor, live: DomainDef) -> Deferred | None:
    """Give VNC its password (``-vnc ...,password=on`` refuses everyone until then) and
    its expiry, before the vCPUs start; None when the guest has no VNC password."""
    vnc = next((g for g in live.graphics if g.passwd is not None), None)
    if vnc is None:
        return None
    password = monitor.execute("set_password", {"protocol": "vnc", "password": vnc.passwd})
    expiry = vnc.password_expiry()
    if expiry is None:
        return password
    expire = monitor.execute("expire_password", {"protocol": "vnc", "time": str(expiry)})
    both = Deferred()

    def done(_: Deferred) -> None:  # the monitor answers in order: both are known now
        error = password.error or expire.error
        if error is not None:
            both.fail(error)
        else:
            both.resolve(None)
    expire.add_done_callback(done)
    return both


def _setup_balloon(monitor: Monitor, live: DomainDef) -> Deferred | None:
    """libvirt's qemuProcessSetupBalloon, before the vCPUs start: the guest stats polling
    period of ``<stats period>`` (a failure is only logged, as in libvirt), then the
    balloon target ``<currentMemory>``; None when the guest has no balloon."""
    balloon = live.memballoon
    if balloon is None or not balloon.active:
        return None
    period = balloon.stats_period
    if period:
        def polled(d: Deferred) -> None:
            if d.error is not None:
                log.warning("domain %s: cannot set the balloon stats period: %s", live.name,
                            d.error.message)
        monitor.execute("qom-set", {"path": f"/machine/peripheral/{naming.BALLOON_ID}",
                                    "property": "guest-stats-polling-interval",
                                    "value": period},
                        timeout=QMP_TIMEOUT).add_done_callback(polled)
    return monitor.execute("balloon", {"value": live.current_memory_kib * 1024},
                           timeout=QMP_TIMEOUT)


def _remove_job_file(loop: EventLoop, record: StatusRecord) -> None:
    """Remove what an unfinished job of the last daemon was writing: a save's temp file
    (never the user's target, which it had not replaced yet), a live backup's target
    (created by that backup, which refuses an existing file; no client was told it is
    complete). Off the loop (``discard.discard``): either may be gigabytes."""
    if not record.job_file or record.job not in ("save", "backup"):
        return  # (a job that writes no file of its own names none)
    failed: dict[Path, OSError] = {}
    if not discard(loop, [record.job_file], failed=failed):
        for exc in failed.values():
            log.warning("cannot remove %s, left by an unfinished %s: %s", record.job_file,
                        record.job, exc.strerror or exc)
        return
    log.info("removed %s, left by an unfinished %s", record.job_file, record.job)
