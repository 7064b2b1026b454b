"""A domain's memory and vCPUs: setmem, setmaxmem, dommemstat, setvcpus, vcpuinfo.

libvirt's QEMU driver is the reference (``qemuDomainSetMemoryFlags``,
``qemuDomainMemoryStats``, ``qemuDomainSetVcpusFlags``, ``qemuDomainGetVcpus``): the same
flags, the same checks in the same order, and libvirt's words in the errors, so a
libvirt user's scripts and error handling apply. What qemud cannot do is refused, never
faked:

* the live memory of a guest is its virtio balloon's target (QMP ``balloon``). Like
  libvirt, qemud gives a definition without ``<memballoon>`` a virtio one at define time
  on x86_64 and ppc64 (``ArchStrategy.fill_defaults``); with ``<memballoon
  model='none'>``, or when QEMU has no balloon (an aarch64 guest, a definition stored
  before that default), a live change fails with libvirt's "without the balloon device"
  error. A balloon given through ``<qemu:commandline>`` to a definition without
  ``<memballoon>`` works too (QEMU is asked, not the definition);
* ``<memory>`` (the maximum) and the maximum vCPU count change only in the persistent
  definition, as in libvirt's QEMU driver;
* a live change of the vCPU count plugs vCPUs in and out (QMP ``device_add`` /
  ``device_del``), as libvirt does: :mod:`.vcpu_hotplug`.

A config change writes the persistent definition before memory changes (a failed write
leaves both as they were); like libvirt, it sends no lifecycle event.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import ErrorDomain
from qemud.conf import DomainDef
from qemud.dispatch import Deferred, Handler
from qemud.errors import (
    ArgumentUnsupported,
    InputTooLarge,
    InvalidArg,
    OperationInvalid,
    OperationUnsupported,
    QemudError,
)
from qemud.qemu.qmp import QMPEvent

from .domain import DomainObj
from .flags import check_flags
from .stats import QMP_TIMEOUT, rss_kib, thread_stat, vcpu_threads
from .vcpu_hotplug import VcpuHotplug

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Resources"]

log = logging.getLogger(__name__)

#: libvirt's VIR_DOMAIN_AFFECT_LIVE / _CONFIG (0 = the current state)
AFFECT_LIVE = 1
AFFECT_CONFIG = 2
#: libvirt's VIR_DOMAIN_MEM_MAXIMUM (setmaxmem)
MEM_MAXIMUM = 4
#: setmem/setmaxmem refuse this many KiB and more: libvirt's virMemoryMaxValue(true) /
#: 1024 (an off_t of bytes, 2^63 - 1, on a 64-bit host), "input too large: N"
MAX_MEMORY_KIB = (2**63 - 1) // 1024
#: libvirt's VIR_DOMAIN_VCPU_MAXIMUM, _GUEST, _HOTPLUGGABLE
VCPU_MAXIMUM = 4
VCPU_GUEST = 8
VCPU_HOTPLUGGABLE = 16

#: libvirt's VIR_DOMAIN_MEMORY_STAT_* tags (protocol.payloads.MEMORY_STAT_TAGS)
STAT_ACTUAL, STAT_RSS, STAT_LAST_UPDATE = 6, 7, 9
#: QEMU's guest-stats keys -> (libvirt tag, divisor), in libvirt's order
#: (qemuMonitorJSONGetMemoryStats): sizes come in bytes and go out in KiB
_GUEST_STATS = (
    ("stat-swap-in", 0, 1024), ("stat-swap-out", 1, 1024),
    ("stat-major-faults", 2, 1), ("stat-minor-faults", 3, 1),
    ("stat-free-memory", 4, 1024), ("stat-total-memory", 5, 1024),
    ("stat-available-memory", 8, 1024),
)
_GUEST_STATS_AFTER = (
    ("stat-disk-caches", 10, 1024), ("stat-htlb-pgalloc", 11, 1), ("stat-htlb-pgfail", 12, 1),
)
#: where QEMU puts -device objects (with an id / without one)
_PERIPHERALS = ("/machine/peripheral", "/machine/peripheral-anon")
_NO_BALLOON = ("Unable to change memory of active domain without the balloon device and "
               "guest OS balloon driver")
_VCPU_RUNNING = 1  # libvirt's VIR_VCPU_RUNNING


def _has_balloon(live: DomainDef) -> bool:
    """False for ``<memballoon model='none'>`` (libvirt's virDomainDefHasMemballoon); a
    definition without ``<memballoon>`` may still have one through ``<qemu:commandline>``,
    so QEMU decides then."""
    balloon = live.memballoon
    return balloon is None or balloon.active


def _check_vcpu_count(definition: DomainDef, count: int, which: str) -> None:
    if count > definition.max_vcpus:
        raise InvalidArg(f"requested vcpus is greater than max allowable vcpus for the "
                         f"{which} domain: {count} > {definition.max_vcpus}")


def _no_balloon(error: QemudError) -> bool:
    """QEMU's DeviceNotActive answer to ``balloon`` / ``query-balloon``."""
    return "No balloon device has been activated" in error.message


class Resources:
    """The handlers of DOMAIN_SET_MEMORY, DOMAIN_MEMORY_STATS, DOMAIN_SET_VCPUS and
    DOMAIN_GET_VCPUS, and the live ``<currentMemory>`` kept in step with the balloon."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        driver.qmp_event_hooks.append(self._on_qmp_event)
        #: the live half of setvcpus, and the live vCPU count kept as QEMU has it
        self.vcpu_hotplug = VcpuHotplug(driver)

    def handlers(self) -> dict[Procedure, Handler]:
        P = Procedure
        return {
            P.DOMAIN_SET_MEMORY: self.set_memory,
            P.DOMAIN_MEMORY_STATS: self.memory_stats,
            P.DOMAIN_SET_VCPUS: self.set_vcpus,
            P.DOMAIN_GET_VCPUS: self.get_vcpus,
        }

    # -- which definitions a call changes ------------------------------------------------

    def affected_defs(self, dom: DomainObj, flags: int
                      ) -> tuple[DomainDef | None, DomainDef | None]:
        """(live, persistent copy) the AFFECT flags select, as libvirt's virDomainObjGetDefs:
        0 means the live definition of a running domain, else the persistent one (also
        for the other handlers that change a definition, e.g. :mod:`.metadata`)."""
        affect = flags & (AFFECT_LIVE | AFFECT_CONFIG)
        if not affect:
            affect = AFFECT_LIVE if dom.active else AFFECT_CONFIG
        if affect & AFFECT_LIVE:
            self.driver.lifecycle.require_active(dom)
        if affect & AFFECT_CONFIG and not dom.persistent:
            raise OperationInvalid("transient domains do not have any persistent config")
        if affect & AFFECT_CONFIG:  # (before a live half is made: save_persistent refuses)
            self.driver.registry.require_no_operation(dom)
        live = dom.live if affect & AFFECT_LIVE else None
        config = dom.persistent_definition.copy() \
            if affect & AFFECT_CONFIG else None
        return live, config

    # -- setmem / setmaxmem --------------------------------------------------------------

    def set_memory(self, ctx: Any, args: pl.MemoryArgs) -> Empty | Deferred:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM,
                     "qemuDomainSetMemoryFlags")
        if args.memory_kib == 0:
            raise InvalidArg("memory in virDomainSetMemoryFlags must not be zero")
        if args.memory_kib >= MAX_MEMORY_KIB:  # (libvirt's public API checks it first)
            raise InputTooLarge(f"input too large: {args.memory_kib}")
        dom = self.driver._dom(args)
        live, config = self.affected_defs(dom, args.flags)
        newmem = args.memory_kib
        if args.flags & MEM_MAXIMUM:
            if live is not None:
                raise OperationInvalid("cannot resize the maximum memory on an active domain")
            assert config is not None
            config.memory_kib = newmem
            if config.current_memory_kib > newmem:
                config.current_memory_kib = newmem
            self.driver.registry.save_persistent(dom, config)
            return Empty()
        maximum = min(d.memory_kib for d in (live, config) if d is not None)
        if newmem > maximum:
            raise InvalidArg("cannot set memory higher than max memory")
        if live is None:
            assert config is not None
            config.current_memory_kib = newmem
            self.driver.registry.save_persistent(dom, config)
            return Empty()
        if not _has_balloon(live):
            raise OperationInvalid(_NO_BALLOON)
        return self._balloon(dom, newmem, config is not None)

    def _balloon(self, dom: DomainObj, kib: int, config: bool) -> Deferred:
        """Set the balloon target; then the live <currentMemory> and, with ``config``,
        the persistent one (nothing changes when QEMU refuses)."""
        assert dom.monitor is not None
        out = Deferred()

        def current_memory(definition: DomainDef) -> None:
            if kib > definition.memory_kib:  # (a setmaxmem --config meanwhile)
                raise InvalidArg("cannot set memory higher than max memory")
            definition.current_memory_kib = kib

        def done(d: Deferred) -> None:
            if d.error is not None:
                out.fail(OperationInvalid(_NO_BALLOON) if _no_balloon(d.error) else d.error)
                return
            if dom.live is not None:
                dom.live.current_memory_kib = kib
                self.driver.lifecycle.save_status(dom)
            out.resolve(Empty())
        dom.monitor.execute("balloon", {"value": kib * 1024}).add_done_callback(done)
        return self.driver.registry.after_live(dom, out, current_memory) if config else out

    def _on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        """BALLOON_CHANGE: the guest reached a new size; the live <currentMemory> says so
        (libvirt's qemuProcessHandleBalloonChange)."""
        if event.name != "BALLOON_CHANGE" or dom.live is None:
            return
        actual = event.data.get("actual")
        if isinstance(actual, int) and actual > 0:
            dom.live.current_memory_kib = max(actual // 1024, 1)
            self.driver.lifecycle.save_status(dom)

    # -- dommemstat ----------------------------------------------------------------------

    def memory_stats(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        """libvirt's order: the balloon's ``actual``, its guest stats (when QEMU has a
        balloon), then the QEMU process's RSS (always, as libvirt does)."""
        check_flags(args.flags, 0, "qemuDomainMemoryStats")
        dom = self.driver._dom(args)
        self.driver.lifecycle.require_active(dom)
        monitor = dom.monitor
        assert monitor is not None and dom.process is not None
        pid = dom.process.pid
        stats: list[pl.MemoryStat] = []
        out = Deferred()

        def finish(_: Any = None) -> None:
            stats.append(pl.MemoryStat(STAT_RSS, rss_kib(pid)))
            out.resolve(pl.MemoryStatsReply(stats))

        def guest_stats(d: Deferred) -> None:
            answer = d.result if d.error is None and isinstance(d.result, dict) else {}
            values = answer.get("stats") or {}
            for key, tag, divisor in _GUEST_STATS:
                _add_stat(stats, values, key, tag, divisor)
            _add_stat(stats, answer, "last-update", STAT_LAST_UPDATE, 1)
            for key, tag, divisor in _GUEST_STATS_AFTER:
                _add_stat(stats, values, key, tag, divisor)
            finish()

        def listed(answers: list[Any]) -> None:
            path = _balloon_path(answers)
            if path is None:
                finish()
                return
            monitor.execute("qom-get", {"path": path, "property": "guest-stats"},
                            timeout=QMP_TIMEOUT).add_done_callback(guest_stats)

        def balloon(d: Deferred) -> None:
            if d.error is not None:
                if not _no_balloon(d.error):
                    log.debug("domain %s: query-balloon failed: %s", dom.name,
                              d.error.message)
                finish()
                return
            stats.append(pl.MemoryStat(STAT_ACTUAL, int(d.result.get("actual", 0)) // 1024))
            answers: list[Any] = []

            def got(a: Deferred) -> None:
                answers.append(a.result if a.error is None else [])
                if len(answers) == len(_PERIPHERALS):
                    listed(answers)
            for parent in _PERIPHERALS:
                monitor.execute("qom-list", {"path": parent},
                                timeout=QMP_TIMEOUT).add_done_callback(got)
        if dom.live is not None and not _has_balloon(dom.live):
            finish()  # libvirt asks QEMU only when the definition has a balloon
            return out
        monitor.execute("query-balloon", timeout=QMP_TIMEOUT).add_done_callback(balloon)
        return out

    # -- setvcpus ------------------------------------------------------------------------

    def set_vcpus(self, ctx: Any, args: pl.VcpusArgs) -> Empty | Deferred:
        flags = args.flags
        # virDomainSetVcpusFlags' checks, then the QEMU driver's
        if flags & VCPU_MAXIMUM and not flags & AFFECT_CONFIG:
            raise InvalidArg("Flag 'VIR_DOMAIN_VCPU_MAXIMUM' requires flag "
                             "'VIR_DOMAIN_AFFECT_CONFIG'")
        if flags & VCPU_GUEST and flags & AFFECT_CONFIG:
            raise InvalidArg("Flags 'VIR_DOMAIN_VCPU_GUEST' and 'VIR_DOMAIN_AFFECT_CONFIG' "
                             "are mutually exclusive")
        if args.count == 0:
            raise InvalidArg("nvcpus in virDomainSetVcpusFlags must not be zero")
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM | VCPU_GUEST |
                     VCPU_HOTPLUGGABLE, "qemuDomainSetVcpusFlags")
        dom = self.driver._dom(args)
        live, config = self.affected_defs(dom, flags)
        count = args.count
        if flags & VCPU_GUEST:
            raise ArgumentUnsupported(
                "QEMU guest agent is not configured (qemud has no "
                "guest agent channel support)", domain=ErrorDomain.QEMU)
        if flags & VCPU_HOTPLUGGABLE and config is not None:
            # (a live plug is hot-pluggable anyway: the flag changes only the definition)
            raise ArgumentUnsupported(
                "hot-pluggable vCPUs in the persistent definition (VIR_DOMAIN_VCPU_"
                "HOTPLUGGABLE with --config) are not supported: qemud's definitions have "
                "no per-vCPU <vcpus> list, so vCPUs added there are boot vCPUs",
                domain=ErrorDomain.QEMU)
        if flags & VCPU_MAXIMUM:
            if live is not None:
                raise OperationUnsupported("maximum vcpu count of a live domain can't be "
                                           "modified")
            assert config is not None
            config.set_vcpus(min(config.vcpus, count), count)
            self.driver.registry.check_for_host(config)
            self.driver.registry.save_persistent(dom, config)
            return Empty()

        def set_count(definition: DomainDef) -> None:
            _check_vcpu_count(definition, count, "persistent")
            definition.set_vcpus(count, definition.max_vcpus)
        if live is not None:
            _check_vcpu_count(live, count, "live")
        if config is not None:
            set_count(config)
        if live is not None and live.vcpus != count:
            # live first, as libvirt's qemuDomainSetVcpusInternal: the persistent
            # definition changes only once the guest has the new count
            done = self.vcpu_hotplug.set_live(dom, count)
            if config is not None:
                done = self.driver.registry.after_live(dom, done, set_count)
            out = Deferred()
            done.chain(out, lambda _: Empty())
            return out
        if config is not None:
            self.driver.registry.save_persistent(dom, config)
        return Empty()

    # -- vcpuinfo ------------------------------------------------------------------------

    def get_vcpus(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        """Per vCPU thread (QMP query-cpus-fast): its state (running: libvirt reports every
        online vCPU so), CPU time, the host CPU it ran on last, and its affinity."""
        check_flags(args.flags, 0, "qemuDomainGetVcpus")
        dom = self.driver._dom(args)
        if not dom.active:
            raise OperationInvalid("cannot retrieve vcpu information for inactive domain")
        self.driver.lifecycle.require_active(dom)
        assert dom.monitor is not None and dom.process is not None
        pid = dom.process.pid
        out = Deferred()

        def got(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            out.resolve(pl.VcpuInfoReply([_vcpu_info(pid, vcpu, tid) for vcpu, tid
                                          in vcpu_threads(d.result).items()]))
        dom.monitor.execute("query-cpus-fast", timeout=QMP_TIMEOUT).add_done_callback(got)
        return out


def _add_stat(stats: list[pl.MemoryStat], values: Any, key: str, tag: int,
              divisor: int) -> None:
    """One guest stat, unless QEMU has none (missing, or -1: the guest never sent it)."""
    value = values.get(key) if isinstance(values, dict) else None
    if isinstance(value, int) and 0 <= value < 2**64 - 1:
        stats.append(pl.MemoryStat(tag, value // divisor))


def _balloon_path(answers: list[Any]) -> str | None:
    """The QOM path of the virtio balloon among QEMU's -device objects (qom-list answers
    for :data:`_PERIPHERALS`), or None."""
    for parent, children in zip(_PERIPHERALS, answers, strict=True):
        for child in children or []:
            kind = str(child.get("type", ""))
            if kind.startswith("child<virtio-balloon"):
                return f"{parent}/{child.get('name')}"
    return None


def _cpumap(cpus: set[int]) -> bytes:
    """libvirt's cpumap of ``cpus``: bit ``n % 8`` of byte ``n // 8`` is host CPU ``n``."""
    size = max(os.cpu_count() or 1, max(cpus, default=0) + 1)
    data = bytearray((size + 7) // 8)
    for cpu in cpus:
        data[cpu // 8] |= 1 << (cpu % 8)
    return bytes(data)


def _vcpu_info(pid: int, vcpu: int, tid: int) -> pl.VcpuInfo:
    """vCPU ``vcpu``, QEMU thread ``tid``: its CPU time, last host CPU and affinity
    (time 0, CPU -1 and an empty map when the thread is gone)."""
    time_ns, host_cpu = 0, -1
    affinity: set[int] = set()
    stat = thread_stat(Path(f"/proc/{pid}/task/{tid}/stat"))
    if stat is not None:
        time_ns, host_cpu = stat
    try:
        affinity = os.sched_getaffinity(tid)
    except OSError:
        pass
    return pl.VcpuInfo(number=vcpu, state=_VCPU_RUNNING, cpu_time_ns=time_ns,
                       cpu=host_cpu, cpumap=_cpumap(affinity))
