"""The QEMU driver: the procedure handlers for domains, on top of registry + lifecycle.

Each handler checks its arguments, finds the domain, and either answers at once (info,
XML, listing) or returns a Deferred that completes when QEMU has done the work (start,
destroy, save...). Policy for what the guest does on its own (power-off, reset, crash)
lives in :meth:`on_guest_power` and friends, so the appliance layer can hook in there.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import (
    DomainState,
    ErrorDomain,
    RebootFlags,
    RunningReason,
    ShutdownFlags,
    ShutoffReason,
    StoppedDetail,
)
from qemud.asyncfsync import AsyncFsync
from qemud.conf import DomainDef
from qemud.dispatch import Deferred, Handler
from qemud.errors import (
    ArgumentUnsupported,
    InternalError,
    InvalidArg,
    OperationDenied,
    OperationFailed,
    OperationInvalid,
    QemudError,
)
from qemud.qemu.capabilities import Capabilities, probe_capabilities
from qemud.qemu.chardevs import console_sources
from qemud.qemu.qmp import QMPEvent

from .blockinfo import BlockInfo
from .console import CONSOLE_FORCE, CONSOLE_SAFE, ConsoleManager
from .devices import AFFECT_CONFIG, AFFECT_LIVE, MODIFY_FORCE, Devices
from .discard import remove_discarded_below
from .domain import DomainObj, StopIntent
from .filewrites import FileWrites
from .firmware import START_RESET_NVRAM, UNDEFINE_KEEP_NVRAM, UNDEFINE_NVRAM, Firmware
from .flags import check_flags
from .guestcontrol import GuestControl
from .jobs import Jobs
from .lifecycle import CLK_TCK, DESTROY_GRACEFUL, Lifecycle
from .metadata import Metadata
from .migratable import XML_MIGRATABLE, migratable
from .native import handler as xml_to_native_handler
from .pinning import Pinning
from .ports import PortAllocator
from .registry import Registry
from .rename import Renamer
from .resources import Resources
from .saving import START_FORCE_BOOT, Saving
from .screenshot import Screenshots
from .stats import domain_stats, node_cpu_stats, node_memory_stats, node_stats
from .store import DomainStore
from .update import DeviceUpdate

if TYPE_CHECKING:
    from qemud.daemon import Daemon

__all__ = ["QemuDriver"]

log = logging.getLogger(__name__)

#: in the run directory: the autostart domains were started since the host booted
AUTOSTARTED = "autostarted"

XML_INACTIVE = 2  # libvirt's VIR_DOMAIN_XML_INACTIVE
XML_SECURE = 1  # libvirt's VIR_DOMAIN_XML_SECURE: include secrets (the VNC password)
#: libvirt's VIR_DOMAIN_XML_UPDATE_CPU: a host-model CPU given as the model it expands to.
#: qemud has no host-model CPU, so the XML is the same with the flag as without it.
XML_UPDATE_CPU = 4

GuestHook = Callable[[DomainObj, str], bool]

#: libvirt's reboot/shutdown modes: the same bits in RebootFlags and ShutdownFlags
_PowerModes = type[RebootFlags] | type[ShutdownFlags]


#: libvirt's VIR_DOMAIN_DEFINE_VALIDATE / VIR_DOMAIN_START_PAUSED / _START_VALIDATE
DEFINE_VALIDATE, START_PAUSED, START_VALIDATE = 1, 1, 16


class QemuDriver:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.loop = daemon.loop
        self.config = daemon.config
        self.events = daemon.events
        paths = self.config.paths
        cache = Path(self.config.qemu.cache_dir) if self.config.qemu.cache_dir else \
            paths.state_dir / "cache"
        started = time.monotonic()
        self.caps: Capabilities = probe_capabilities(
            cache, search_dirs=self.config.qemu.emulator_dirs or None)
        log.info("capabilities probed in %.2f s: %s; KVM %s (%s)", time.monotonic() - started,
                 ", ".join(f"{a} {e.version_string if hasattr(e, 'version_string') else ''}"
                           for a, e in self.caps.emulators.items()) or "no emulators",
                 "usable" if self.caps.kvm_usable else "not usable", self.caps.kvm_reason)
        x86 = self.caps.emulator("x86_64") or next(iter(self.caps.emulators.values()), None)
        self.hypervisor_version = ".".join(map(str, x86.version)) if x86 else "0.0.0"
        #: fsyncs off the loop (a define's), closed at shutdown
        self.fsync = AsyncFsync(self.loop)
        #: the appliance layer's records (snapshot metadata, VM state, image indexes),
        #: written the same way
        self.files = FileWrites(self.fsync)
        self.store = DomainStore(paths.domains_dir, paths.autostart_dir, paths.guest_run_dir,
                                 paths.state_dir / "save", self.fsync)
        self.registry = Registry(self.store, self.caps, self.events,
                                 daemon.dispatcher.reply_waits)
        #: the last listing and its key (flags, DomainObj.listed_generation, membership)
        self._listing: tuple[tuple[int, int, int], pl.ListDomainsReply] | None = None
        self.ports = PortAllocator(self.config.qemu.vnc_port_min, self.config.qemu.vnc_port_max)
        self.consoles = ConsoleManager(self.loop, daemon.server)
        self.lifecycle = Lifecycle(self)
        self.devices = Devices(self)
        #: appliance-layer hooks; a hook returning True has handled the guest's action
        self.power_hooks: list[GuestHook] = []
        self.reset_hooks: list[GuestHook] = []
        #: called with the domain right before the daemon resets its guest itself
        #: (DOMAIN_RESET's system_reset): the power duty lets that reset through QEMU's
        #: reboot=shutdown action first
        self.host_reset_hooks: list[Callable[[DomainObj], None]] = []
        self.stop_hooks: list[Callable[[DomainObj, ShutoffReason], None]] = []
        #: called with (dom, live definition) before the QEMU command line is built; a hook
        #: may add devices to the live definition (the heartbeat channel)
        self.start_hooks: list[Callable[[DomainObj, DomainDef], None]] = []
        #: called after autostart with whether it ran (the daemon's first start since
        #: the host started) or not (a daemon restarted since): the appliance layer
        #: starts again the guests its operations stopped when a killed daemon cut them short
        self.autostart_hooks: list[Callable[[bool], None]] = []
        #: extra DOMAIN_STATS params of a domain (the heartbeat state)
        self.stats_hooks: list[Callable[[DomainObj], list[pl.TypedParam]]] = []
        #: every QMP event of every guest, before the driver's own handling (block jobs)
        self.qmp_event_hooks: list[Callable[[DomainObj, QMPEvent], None]] = []
        #: a disk left a definition of the domain (detach: live once the guest released
        #: it, or --config; a define without it); the snapshot duty records an unplugged
        #: disk's last image
        self.disk_removed_hooks: list[Callable[[DomainObj], None]] = []
        #: checks a change of a domain's devices in its persistent definition (attach,
        #: detach, update or change-media --config; a define over it) must pass first,
        #: raising to refuse it (the snapshot duty: not during a snapshot job, whose
        #: metadata write would drop what the change recorded)
        self.config_change_guards: list[Callable[[DomainObj], None]] = []
        #: the appliance layer's long operations on domains (``Registry.operations``)
        self.busy = self.registry.operations
        self._restart_after_stop: set[str] = set()
        #: setmem/setmaxmem/dommemstat/setvcpus/vcpuinfo (after qmp_event_hooks: it hooks in)
        self.resources = Resources(self)
        #: domblkinfo
        self.blockinfo = BlockInfo(self)
        self.metadata = Metadata(self)
        #: domjobinfo/domjobabort/domcontrol (first: other parts register their aborters)
        self.jobs = Jobs(self)
        #: save / restore, managed save, and the start path that resumes a managed save
        self.saving = Saving(self)
        #: reset, inject-nmi, qemu-monitor-command
        self.guest_control = GuestControl(self)
        #: update-device (a CD-ROM's medium, a NIC's link state)
        self.device_update = DeviceUpdate(self)
        #: screenshot
        self.screenshots = Screenshots(self)
        #: UEFI: firmware='efi' at define, the NVRAM file at start, undefine's NVRAM rule
        self.firmware = Firmware(self)

    # -- daemon interface ----------------------------------------------------------------

    def start(self) -> None:
        self.registry.load()
        self.firmware.remove_dead_copies()
        # managed save images an earlier daemon was removing (driver.discard) when killed
        remove_discarded_below(self.loop, self.store.save_dir, depth=0)
        self.lifecycle.reconnect_all()

    def autostart(self) -> None:
        """Start the autostart domains, once per host boot (libvirt's
        virDriverShouldAutostart): a daemon restarted later (a crash, an upgrade) must
        not start again the guests an admin has stopped since. The mark is a file in
        the run directory, which a reboot empties (tmpfs)."""
        mark = Path(self.config.paths.run_dir) / AUTOSTARTED
        first = not mark.exists()
        if first:
            self._autostart(mark)
        else:
            log.info("autostart: already done since the host started (%s exists)", mark)
        for hook in self.autostart_hooks:
            hook(first)

    def _autostart(self, mark: Path) -> None:
        try:
            mark.touch()
        except OSError as exc:
            log.error("cannot mark the autostart as done (%s: %s): a daemon restarted "
                      "before the host reboots will autostart again", mark,
                      exc.strerror or exc)
        for dom in self.registry:
            if dom.autostart and not dom.active:
                log.info("autostarting %s", dom.name)
                try:
                    started = self.saving.start(dom)  # (resumes a managed save image)
                except Exception as exc:
                    log.error("autostart of %s failed: %s", dom.name, exc)
                    continue
                started.add_done_callback(functools.partial(_log_failure, "autostart", dom.name))

    def shutdown(self) -> None:
        self.lifecycle.detach_all()
        self.fsync.close()

    def capabilities_xml(self) -> str:
        return self.caps.to_xml()

    # -- guest-initiated actions (policy) ------------------------------------------------

    def on_guest_power(self, dom: DomainObj, reason: str,
                       announce: Callable[[], None] | None = None) -> None:
        """The guest powered off (or reset with on_reboot=destroy): apply on_poweroff.

        Appliance hooks only see power-offs the guest decided on itself: one that follows
        an admin's DOMAIN_SHUTDOWN must not, say, power off the host (libvirt's
        <on_poweroff> still applies, as it does in libvirt).

        ``<on_poweroff>restart`` reboots the guest in the same QEMU, as libvirt's
        qemuProcessShutdownOrReboot does (a fake reboot: same id, no STOPPED/STARTED);
        its power-off is then not announced either (libvirt's qemuProcessHandleShutdown
        sends no SHUTDOWN event for it). ``announce`` sends the SHUTDOWN event: first
        thing, unless the guest may be rebooted in place.
        """
        in_place = reason != "guest-reset" and dom.current().on_poweroff == "restart"
        if announce is not None and not in_place:
            announce()
            announce = None
        hooks = [] if dom.shutdown_requested else self.power_hooks
        for hook in hooks:
            if hook(dom, reason):
                if announce is not None:  # (a power policy stops it: a shutdown after all)
                    announce()
                return
        if in_place:
            self.lifecycle.reboot_in_place(dom)
            return
        policy = dom.current().on_reboot if reason == "guest-reset" else \
            dom.current().on_poweroff
        if policy in ("restart", "rename-restart"):
            self._restart_after_stop.add(dom.uuid)
        if dom.process is not None:
            dom.stop_intent = StopIntent(ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN)
            dom.process.terminate(self.config.qemu.destroy_grace)

    def on_guest_reset(self, dom: DomainObj, reason: str) -> None:
        for hook in self.reset_hooks:
            if hook(dom, reason):
                return

    def on_guest_crash(self, dom: DomainObj) -> None:
        """The guest panicked (QMP GUEST_PANICKED, from its ``<panic>`` device; the state
        is already crashed (panicked)): apply ``<on_crash>``.

        ``preserve`` keeps QEMU, the guest stopped in its panic, for the admin to look at,
        then ``reset`` (it becomes paused (crashed): ``resume`` runs it again) or
        ``destroy``. ``destroy`` stops it as crashed. ``restart`` stops it and starts a
        new QEMU (libvirt resets the guest in the same QEMU instead), within the restart
        budget. libvirt's ``coredump-destroy``/``coredump-restart`` first dump the guest's
        memory to its auto-dump directory; qemud has no core dumps: it says so in the log
        and destroys or restarts the guest without one.
        """
        policy = dom.current().on_crash
        if policy == "preserve" or dom.process is None:
            return
        restart = policy in ("restart", "coredump-restart", "rename-restart")
        if policy.startswith("coredump-"):
            log.warning("domain %s: <on_crash>%s</on_crash>: qemud writes no core dump of "
                        "the guest's memory; %s it without one", dom.name, policy,
                        "restarting" if restart else "destroying")
        if restart:
            self._restart_after_stop.add(dom.uuid)
        dom.stop_intent = StopIntent(ShutoffReason.CRASHED, StoppedDetail.CRASHED)
        dom.process.terminate(self.config.qemu.destroy_grace)

    def on_watchdog(self, dom: DomainObj, action: str) -> None:
        log.warning("domain %s: watchdog fired (action %s)", dom.name, action)

    def after_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        for hook in self.stop_hooks:
            hook(dom, reason)
        if dom.uuid in self._restart_after_stop:
            self._restart_after_stop.discard(dom.uuid)
            self.restart_within_budget(dom, "on_poweroff/on_crash policy")

    def restart_within_budget(self, dom: DomainObj, why: str) -> bool:
        """Start ``dom`` again unless it already restarted too often (crash-loop guard)."""
        count = self.config.appliance.restart_budget
        window = self.config.appliance.restart_window
        now = time.monotonic()
        dom.restarts = [t for t in dom.restarts if now - t < window]
        if len(dom.restarts) >= count:
            log.error("domain %s: not restarting (%s): %d restarts in %g s", dom.name, why,
                      count, window)
            self.events.appliance(dom.ref(), "restart-budget-exhausted",
                                  f"{count} automatic restarts within {window:g} s")
            return False
        dom.restarts.append(now)
        if dom.uuid not in {d.uuid for d in self.registry}:
            self.registry.add(dom)
        try:
            self.lifecycle.start(dom).add_done_callback(lambda d: log.error(
                "restart of %s failed: %s", dom.name, d.error.message) if d.error else None)
        except Exception as exc:
            log.error("restart of %s failed: %s", dom.name, exc)
            return False
        return True

    # -- handlers ------------------------------------------------------------------------

    def handlers(self) -> dict[Procedure, Handler]:
        P = Procedure
        return {
            P.DOMAIN_LOOKUP_BY_NAME: lambda c, a: pl.DomainReply(
                self.registry.by_name(a.name).ref()),
            P.DOMAIN_LOOKUP_BY_UUID: lambda c, a: pl.DomainReply(
                self.registry.by_uuid(a.uuid).ref()),
            P.DOMAIN_LOOKUP_BY_ID: lambda c, a: pl.DomainReply(self.registry.by_id(a.id).ref()),
            P.DOMAIN_LIST: self._list,
            P.DOMAIN_DEFINE_XML: self._define_xml,
            P.DOMAIN_UNDEFINE: self._undefine,
            P.DOMAIN_CREATE_XML: self._create_xml,
            P.DOMAIN_GET_XML: self._get_xml,
            P.DOMAIN_SET_AUTOSTART: self._set_autostart,
            P.DOMAIN_GET_AUTOSTART: lambda c, a: pl.BoolReply(self._dom(a).autostart),
            P.DOMAIN_CREATE: self._create,
            P.DOMAIN_SHUTDOWN: self._shutdown,
            P.DOMAIN_REBOOT: self._reboot,
            P.DOMAIN_DESTROY: self._destroy,
            P.DOMAIN_SUSPEND: self._suspend,
            P.DOMAIN_RESUME: self._resume,
            P.DOMAIN_GET_INFO: self._get_info,
            P.DOMAIN_GET_STATE: lambda c, a: pl.DomainStateReply(
                int(self._dom(a).state), self._dom(a).reason),
            **self.saving.handlers(),
            P.DOMAIN_ATTACH_DEVICE: self._attach_device,
            P.DOMAIN_DETACH_DEVICE: self._detach_device,
            P.DOMAIN_CHANGE_MEDIA: self._change_media,
            P.DOMAIN_OPEN_CONSOLE: self._open_console,
            P.DOMAIN_STATS: lambda c, a: domain_stats(self, a),
            P.NODE_STATS: lambda c, a: node_stats(a),
            P.NODE_GET_CPU_STATS: lambda c, a: node_cpu_stats(a),
            P.NODE_GET_MEMORY_STATS: lambda c, a: node_memory_stats(a),
            P.CONNECT_DOMAIN_XML_TO_NATIVE: xml_to_native_handler(self),  # domxml-to-native
            **self.resources.handlers(),
            **self.blockinfo.handlers(),
            **self.metadata.handlers(),
            **Renamer(self).handlers(),  # domrename
            **self.jobs.handlers(),
            **self.guest_control.handlers(),
            **self.device_update.handlers(),
            **self.screenshots.handlers(),
            **Pinning(self).handlers(),  # vcpupin, emulatorpin
        }

    def _dom(self, args: Any) -> DomainObj:
        return self.registry.find(args.dom.name, args.dom.uuid)

    @staticmethod
    def _empty_or(deferred: Deferred | None) -> Empty | Deferred:
        if deferred is None:
            return Empty()
        out = Deferred()
        deferred.chain(out, lambda _: Empty())
        return out

    def _list(self, ctx: Any, args: pl.ListDomainsArgs) -> pl.ListDomainsReply:
        """The listing, as last built while no domain came, went or changed a listed field
        (monitoring clients poll it): no per-domain work then (~0.25 µs a domain)."""
        key = (int(args.flags), DomainObj.listed_generation, self.registry.membership)
        if self._listing is not None and self._listing[0] == key:
            return self._listing[1]
        # Encoded records stand in for DomainSummary items (protocol.fields.Encoded)
        records: list[Any] = [d.summary() for d in self.registry.matching(args.flags)]
        reply = pl.ListDomainsReply(records)
        self._listing = (key, reply)
        return reply

    def _undefine(self, ctx: Any, args: pl.DomainFlagsArgs) -> Empty:
        # libvirt's MANAGED_SAVE, SNAPSHOTS_METADATA, NVRAM, KEEP_NVRAM
        check_flags(args.flags, 1 | 2 | UNDEFINE_NVRAM | UNDEFINE_KEEP_NVRAM,
                    "qemuDomainUndefineFlags")
        dom = self._dom(args)
        self.registry.require_no_operation(dom)  # (an image update defines it again)
        self.firmware.check_undefine(dom, args.flags)  # (refused: nothing removed yet)
        self.saving.before_undefine(dom, args.flags)  # (UNDEFINE_MANAGED_SAVE)
        self.firmware.before_undefine(dom, args.flags)  # (UNDEFINE_NVRAM)
        self.registry.undefine(dom)
        return Empty()

    def _define_xml(self, ctx: Any, args: pl.XMLFlagsArgs) -> Deferred:
        # VALIDATE is what every define does here (libvirt's schema, when installed)
        check_flags(args.flags, DEFINE_VALIDATE, "qemuDomainDefineXMLFlags")
        if self.busy:  # (parsed a second time only while an image operation runs)
            existing = self.registry.check_clash(self.registry.parse(args.xml))
            if existing is not None:
                self.registry.require_no_operation(existing)
        defined = Deferred()
        self.registry.define(args.xml, self.devices.disk_removed,
                             guards=self.config_change_guards).chain(
            defined, lambda dom: pl.DomainReply(dom.ref()))
        return defined

    def _create_xml(self, ctx: Any, args: pl.XMLFlagsArgs) -> Deferred:
        check_flags(args.flags, START_PAUSED | START_VALIDATE, "qemuDomainCreateXML")
        definition = self.registry.parse(args.xml)
        existing = self.registry.check_clash(definition)
        if existing is not None:
            if existing.active:
                raise OperationInvalid(f"domain '{existing.name}' is already running")
            dom = existing
        else:
            dom = DomainObj(definition, persistent=False)
            self.registry.add(dom)
        try:
            # libvirt's VIR_DOMAIN_START_PAUSED (1), as for DOMAIN_CREATE
            started = self.lifecycle.start(dom, definition, paused=bool(args.flags & 1))
        except Exception:
            # only the domain this call added: an inactive transient one found here is
            # another create's, whose start waits for its NVRAM file
            if existing is None:
                self.registry.remove(dom)
            raise
        return self._ref_reply(started)

    @staticmethod
    def _ref_reply(deferred: Deferred) -> Deferred:
        out = Deferred()
        deferred.chain(out, lambda ref: pl.DomainReply(ref))
        return out

    def _get_xml(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.StringReply:
        """The domain XML; secrets (the VNC password) only with XML_SECURE, which a
        read-only connection may not ask for (libvirt's rule and words); XML_MIGRATABLE:
        libvirt's migratable form (module migratable); XML_UPDATE_CPU: accepted, as
        libvirt does, and changes nothing (no host-model CPU to update)."""
        secure = bool(args.flags & XML_SECURE)
        if secure and ctx.readonly:
            raise OperationDenied("virDomainGetXMLDesc with secure flag")
        check_flags(args.flags, XML_SECURE | XML_INACTIVE | XML_UPDATE_CPU | XML_MIGRATABLE,
                    "qemuDomainGetXMLDesc")
        dom = self._dom(args)
        live = not (args.flags & XML_INACTIVE or dom.live is None)
        definition = dom.live if live else dom.persistent_definition
        assert definition is not None
        if not secure and any(g.passwd is not None for g in definition.graphics):
            definition = definition.copy()
            for graphics in definition.graphics:
                graphics.passwd = None
        if args.flags & XML_MIGRATABLE:
            definition = migratable(definition)
        return pl.StringReply(definition.to_xml(live=True) if live else definition.to_xml())

    def _set_autostart(self, ctx: Any, args: pl.AutostartArgs) -> Empty | Deferred:
        return self._empty_or(self.registry.set_autostart(self._dom(args), args.autostart))

    def _create(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        """libvirt's START_PAUSED (1), START_FORCE_BOOT (8) and START_RESET_NVRAM (32,
        the NVRAM file copied afresh from its template first): see Saving.start.

        A ``--config`` change whose file is still being written is waited for (a few
        ms): if that write failed, the change would be taken back, and the guest must
        not be running it by then. Other bits (AUTODESTROY, BYPASS_CACHE: not offered)
        are refused, in libvirt's words."""
        check_flags(args.flags, START_PAUSED | START_FORCE_BOOT | START_RESET_NVRAM,
                    "qemuDomainCreateWithFlags")
        dom = self._dom(args)
        written = self.registry.writes.pending(dom)
        if written is not None:
            out = Deferred()

            def then(_: Deferred) -> None:
                try:
                    self._create(ctx, args).chain(out)
                except QemudError as exc:
                    out.fail(exc)
                except Exception as exc:  # (a bug: the dispatcher's words for it)
                    log.exception("DOMAIN_CREATE crashed")
                    out.fail(InternalError(f"internal error in DOMAIN_CREATE: {exc!r}"))
            written.add_done_callback(then)
            return out
        return self._ref_reply(self.saving.start(dom, int(args.flags)))

    def _shutdown(self, ctx: Any, args: pl.ShutdownArgs) -> Any:
        _check_power_modes("shutdown", args.flags, ShutdownFlags,
                          ShutdownFlags.DESTROY_ON_TIMEOUT)
        dom = self._dom(args)
        self.lifecycle.require_active(dom)
        _refuse_agent_only("shutdown", args.flags, ShutdownFlags)
        assert dom.monitor is not None
        if dom.state == DomainState.PAUSED:
            raise OperationInvalid(f"domain '{dom.name}' is paused: resume it before an ACPI "
                                   "shutdown (or destroy it)")
        dom.shutdown_requested = True
        dom.power_requested_at = time.monotonic()
        # libvirt's qemuDomainShutdownFlagsMonitor: a shutdown ends a reboot request the
        # guest ignored, else its power-off would reset it
        dom.fake_reboot = False
        self.lifecycle.save_status(dom)  # (a daemon restarted meanwhile knows it too)
        request = dom.monitor.execute("system_powerdown")
        if not args.flags & ShutdownFlags.DESTROY_ON_TIMEOUT:
            return self._empty_or(request)
        done = Deferred()
        dom.stop_waiters.append(done)
        timeout = max(args.timeout_ms, 1) / 1000.0

        def expire() -> None:
            if not done.done and dom.process is not None:
                log.info("domain %s did not power off within %g s: destroying", dom.name,
                         timeout)
                self.lifecycle.destroy(dom)
        timer = self.loop.call_later(timeout, expire)
        done.add_done_callback(lambda d: timer.cancel())
        request.add_done_callback(lambda d: done.fail(d.error) if d.error else None)
        return self._empty_or(done)

    def _reboot(self, ctx: Any, args: pl.DomainFlagsArgs) -> Any:
        _check_power_modes("reboot", args.flags, RebootFlags)
        dom = self._dom(args)
        self.lifecycle.require_active(dom)
        _refuse_agent_only("reboot", args.flags, RebootFlags)
        assert dom.monitor is not None
        dom.fake_reboot = True  # like libvirt: ACPI power-off, then reset instead of stopping
        dom.power_requested_at = time.monotonic()
        self.lifecycle.save_status(dom)  # (libvirt keeps fakeReboot in its status XML too)
        return self._empty_or(dom.monitor.execute("system_powerdown"))

    def _destroy(self, ctx: Any, args: pl.DomainFlagsArgs) -> Any:
        # libvirt's qemuDomainDestroyFlags: GRACEFUL is SIGTERM only; other bits refused
        unsupported = args.flags & ~DESTROY_GRACEFUL
        if unsupported:
            raise InvalidArg(f"unsupported flags ({unsupported:#x}) in destroy (the QEMU "
                             "driver has 'graceful', 0x1)", domain=ErrorDomain.QEMU)
        return self._empty_or(self.lifecycle.destroy(
            self._dom(args), graceful=bool(args.flags & DESTROY_GRACEFUL)))

    def _attach_device(self, ctx: Any, args: pl.DeviceArgs) -> Any:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainAttachDeviceFlags")
        return self._empty_or(self.devices.attach(self._dom(args), args.xml, args.flags))

    def _detach_device(self, ctx: Any, args: pl.DeviceArgs) -> Any:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainDetachDeviceFlags")
        return self._empty_or(self.devices.detach(self._dom(args), args.xml, args.flags))

    def _change_media(self, ctx: Any, args: pl.ChangeMediaArgs) -> Any:
        # (libvirt changes media through virDomainUpdateDeviceFlags)
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG | MODIFY_FORCE,
                    "qemuDomainUpdateDeviceFlags")
        return self._empty_or(self.devices.change_media(self._dom(args), args.target,
                                                        args.source, args.flags))

    def _suspend(self, ctx: Any, args: pl.DomainArgs) -> Empty | Deferred:
        dom = self._dom(args)
        self.lifecycle.require_active(dom)
        self.lifecycle.require_no_job(dom)
        if dom.state == DomainState.PAUSED:
            # libvirt's qemuDomainSuspend: already paused is done (no event, same reason)
            return Empty()
        assert dom.monitor is not None
        return self._pause_resume(dom, "stop")

    def _resume(self, ctx: Any, args: pl.DomainArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_active(dom)
        self.lifecycle.require_no_job(dom)
        if dom.state == DomainState.RUNNING:  # libvirt's qemuDomainResume, same words
            raise OperationInvalid(f"domain '{dom.name}' is already running")
        if dom.state != DomainState.PAUSED:
            raise OperationInvalid(f"domain '{dom.name}' is not paused")
        return self._pause_resume(dom, "cont")

    def _pause_resume(self, dom: DomainObj, command: str) -> Deferred:
        from protocol.constants import (
            LifecycleEvent,
            PausedReason,
            ResumedDetail,
            SuspendedDetail,
        )
        assert dom.monitor is not None
        dom.job = command
        out = Deferred()

        def done(d: Deferred) -> None:
            dom.job = None
            if d.error is not None:
                out.fail(d.error)
                return
            if command == "stop":
                dom.state, dom.reason = DomainState.PAUSED, int(PausedReason.USER)
                self.events.lifecycle(dom.ref(), LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED)
            else:
                dom.state, dom.reason = DomainState.RUNNING, int(RunningReason.UNPAUSED)
                self.events.lifecycle(dom.ref(), LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED)
            self.lifecycle.save_status(dom)
            out.resolve(Empty())
        dom.monitor.execute(command).add_done_callback(done)
        return out

    def _get_info(self, ctx: Any, args: pl.DomainArgs) -> pl.DomainInfoReply:
        dom = self._dom(args)
        current = dom.current()
        return pl.DomainInfoReply(
            state=int(dom.state), max_mem_kib=current.memory_kib,
            memory_kib=current.current_memory_kib if dom.active else current.memory_kib,
            vcpus=current.vcpus, cpu_time_ns=self._cpu_time_ns(dom))

    @staticmethod
    def _cpu_time_ns(dom: DomainObj) -> int:
        if dom.process is None:
            return 0
        try:
            raw = Path(f"/proc/{dom.process.pid}/stat").read_text()
        except OSError:
            return 0
        fields = raw[raw.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK

    # -- console -------------------------------------------------------------------------

    def _open_console(self, ctx: Any, args: pl.ConsoleArgs) -> Deferred:
        check_flags(args.flags, CONSOLE_FORCE | CONSOLE_SAFE, "qemuDomainOpenConsole")
        dom = self._dom(args)
        self.lifecycle.require_active(dom)
        assert dom.monitor is not None and dom.live is not None
        live = dom.live
        serial = ctx.current_serial
        out = Deferred()

        def got(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            try:
                self.consoles.open(dom, ctx, serial, args.device,
                                   console_sources(live, d.result),
                                   force=bool(args.flags & CONSOLE_FORCE))
            except Exception as exc:
                out.fail(exc if isinstance(exc, QemudError) else OperationFailed(str(exc)))
                return
            out.resolve(Empty())
        dom.monitor.execute("query-chardev").add_done_callback(got)
        return out


def _check_power_modes(verb: str, flags: int, modes: _PowerModes, own: int = 0) -> None:
    """Refuse the flags of a reboot or shutdown that the QEMU driver cannot honour.

    It knows libvirt's ACPI and AGENT modes (as libvirt's QEMU driver does) plus the
    qemud bits in ``own``; anything else -- INITCTL, SIGNAL and PARAVIRT are for other
    hypervisors' drivers -- is refused before the domain is even looked up, with
    libvirt's code and words ("unsupported flags (0x4)", INVALID_ARG), so that a
    libvirt user's error handling applies. Silently pressing the ACPI button instead
    would not be the shutdown the caller asked for.
    """
    # (int: ~ of an IntFlag keeps only the bits the enum defines)
    unsupported = flags & ~int(modes.ACPI_POWER_BTN | modes.GUEST_AGENT | own)
    if not unsupported:
        return
    names = {int(mode): name.lower() for name, mode in modes.__members__.items()}
    bits = [1 << i for i in range(unsupported.bit_length()) if unsupported >> i & 1]
    what = ", ".join(f"mode '{names[bit]}'" if bit in names else f"unknown flag {bit:#x}"
                     for bit in bits)
    raise InvalidArg(f"unsupported flags ({unsupported:#x}) in {verb}: {what} (the QEMU "
                     "driver has the 'acpi' and 'agent' modes)", domain=ErrorDomain.QEMU)


def _refuse_agent_only(verb: str, flags: int, modes: _PowerModes) -> None:
    """Refuse the AGENT mode on its own: qemud has no guest agent channel.

    libvirt answers it with "QEMU guest agent is not configured" for a guest without an
    agent channel, which is every qemud guest. AGENT together with ACPI is fine: libvirt
    then tries the agent first and presses the ACPI button when that fails, so the
    button is what happens. Called once the domain is known to be running, as libvirt
    checks for the agent only then.
    """
    if flags & modes.GUEST_AGENT and not flags & modes.ACPI_POWER_BTN:
        raise ArgumentUnsupported(
            "QEMU guest agent is not configured (qemud has no guest "
            f"agent channel support): the 'agent' {verb} mode cannot work; use the 'acpi' "
            "mode (alone, or with 'agent' to fall back to it)", domain=ErrorDomain.QEMU)


def _log_failure(what: str, name: str, done: Deferred) -> None:
    if done.error is not None:
        log.error("%s of %s failed: %s", what, name, done.error.message)
