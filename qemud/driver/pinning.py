"""CPU pinning: ``<vcpu cpuset>``, ``<cputune>``'s ``<vcpupin>`` / ``<emulatorpin>``, and
``vcpupin`` / ``emulatorpin`` (DOMAIN_PIN_VCPU, DOMAIN_GET_VCPU_PIN_INFO,
DOMAIN_PIN_EMULATOR, DOMAIN_GET_EMULATOR_PIN_INFO).

libvirt's QEMU driver is the reference (``qemuProcessSetupVcpus``,
``qemuProcessSetupEmulator``, ``qemuDomainPinVcpuFlags``, ``qemuDomainPinEmulator``,
``virDomainDefGetVcpuPinInfoHelper``), without cgroups: qemud sets each thread's
affinity (``sched_setaffinity``, a syscall that never blocks the loop).

* At start, after QEMU is up and before its vCPUs first run (the start step between
  ``ready`` and ``cont``), each vCPU thread (QMP ``query-cpus-fast``) gets its
  ``<vcpupin>``, else ``<vcpu cpuset>``; every other thread of QEMU (the emulator
  threads, ``/proc/PID/task``) gets ``<emulatorpin>``, else ``<vcpu cpuset>``; threads
  QEMU creates later inherit their creator's. A set naming a CPU the host does not have
  fails the start, in the words of libvirt's cgroup error ("Invalid value '7' for
  'cpuset.cpus': Invalid argument").
* A vCPU plugged live (``setvcpus --live``) gets its pin right after QEMU added it.
* A live pin sets the thread(s) now and records the pin in the live XML (the status
  record); ``--config`` changes the persistent definition. A daemon restart re-applies
  nothing: the kernel keeps the affinities.
* The pin info is the definition's, as libvirt's: a vCPU's pin, else ``<vcpu cpuset>``,
  else every host CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from qemud.conf import DomainDef
from qemud.conf.cputune import format_cpuset, parse_cpuset
from qemud.dispatch import Deferred, Handler
from qemud.errors import InvalidArg, OperationFailed, QemudError, SystemCallFailed

from .domain import DomainObj
from .flags import check_flags
from .monitor import Monitor
from .stats import QMP_TIMEOUT, vcpu_threads

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Pinning", "cpumap_of", "cpus_of", "host_cpus", "pin_plugged_vcpu", "start_pins"]

log = logging.getLogger(__name__)

#: libvirt's VIR_DOMAIN_AFFECT_LIVE / _CONFIG (0 = the current state)
AFFECT_LIVE = 1
AFFECT_CONFIG = 2
_ONLINE = Path("/sys/devices/system/cpu/online")


# -- host CPUs and cpumaps ---------------------------------------------------------------

def host_cpus() -> frozenset[int]:
    """The host's online CPUs (libvirt's virHostCPUGetAvailableCPUsBitmap)."""
    try:
        return parse_cpuset(_ONLINE.read_text().strip())
    except (OSError, ValueError):
        return frozenset(range(os.cpu_count() or 1))


def cpus_of(cpumap: bytes) -> frozenset[int]:
    """The host CPUs of libvirt's cpumap: bit ``n % 8`` of byte ``n // 8`` is CPU ``n``."""
    return frozenset(i * 8 + bit for i, byte in enumerate(cpumap) for bit in range(8)
                     if byte >> bit & 1)


def cpumap_of(cpus: Iterable[int]) -> bytes:
    """libvirt's cpumap of ``cpus``, long enough for every host CPU."""
    wanted = set(cpus)
    size = max(max(host_cpus(), default=0), max(wanted, default=0)) + 1
    data = bytearray((size + 7) // 8)
    for cpu in wanted:
        data[cpu // 8] |= 1 << (cpu % 8)
    return bytes(data)


def require_on_host(cpus: frozenset[int]) -> None:
    """Refuse a set naming a CPU the host does not have, in the words libvirt's cgroup
    setting uses (``Invalid value '0,7' for 'cpuset.cpus': Invalid argument``)."""
    if not cpus <= host_cpus():
        raise SystemCallFailed(f"Invalid value '{format_cpuset(cpus)}' for 'cpuset.cpus': "
                               "Invalid argument")


# -- what each thread gets ---------------------------------------------------------------

def vcpu_affinity(definition: DomainDef, vcpu: int) -> frozenset[int] | None:
    """vCPU ``vcpu``'s host CPUs: its ``<vcpupin>``, else ``<vcpu cpuset>`` (None: any)."""
    return definition.vcpupins.get(vcpu, definition.cpuset)


def emulator_affinity(definition: DomainDef) -> frozenset[int] | None:
    """The emulator threads' host CPUs: ``<emulatorpin>``, else ``<vcpu cpuset>``."""
    pin = definition.emulatorpin
    return definition.cpuset if pin is None else pin


def _set_affinity(tid: int, cpus: frozenset[int], *, gone_ok: bool = False) -> None:
    """sched_setaffinity, libvirt's words when the kernel refuses; a thread that ended
    meanwhile (``gone_ok``: an emulator worker) is no error."""
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError:
        if not gone_ok:
            raise SystemCallFailed(f"cannot set CPU affinity on process {tid}: "
                                   "No such process") from None
    except OSError as exc:
        raise SystemCallFailed(f"cannot set CPU affinity on process {tid}: "
                               f"{exc.strerror or exc}") from None


def _threads(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit()]
    except OSError:
        return []


def _pin_emulator(pid: int, vcpu_tids: Iterable[int], cpus: frozenset[int]) -> None:
    skip = set(vcpu_tids)
    for tid in _threads(pid):
        if tid not in skip:
            _set_affinity(tid, cpus, gone_ok=True)


def _daemon_everywhere() -> bool:
    """Whether the daemon may run on every host CPU: then a QEMU thread that inherits
    its affinity (from the daemon, or from QEMU's main thread before any pin) may too."""
    try:
        return frozenset(os.sched_getaffinity(0)) >= host_cpus()
    except OSError:
        return True


def start_pins(monitor: Monitor, live: DomainDef, pid: int) -> Deferred | None:
    """The start step: every thread of the new QEMU gets the affinity ``live`` asks
    for, and a thread it asks nothing for every host CPU (libvirt's
    qemuProcessSetupPid: a QEMU does not inherit a restricted daemon's affinity);
    None when there is nothing to change (no QMP round trip)."""
    if live.cpuset is None and live.emulatorpin is None and not live.vcpupins \
            and _daemon_everywhere():
        return None
    try:
        for cpus in (live.cpuset, live.emulatorpin, *live.vcpupins.values()):
            if cpus is not None:
                require_on_host(cpus)
    except QemudError as exc:
        return Deferred.failed(exc)
    out = Deferred()

    def got(d: Deferred) -> None:
        if d.error is not None:
            out.fail(d.error)
            return
        threads = vcpu_threads(d.result)
        everywhere = host_cpus()
        try:
            for vcpu, tid in sorted(threads.items()):
                _set_affinity(tid, vcpu_affinity(live, vcpu) or everywhere)
            _pin_emulator(pid, threads.values(), emulator_affinity(live) or everywhere)
        except QemudError as exc:
            out.fail(exc)
            return
        log.debug("domain %s: vCPU and emulator threads pinned", live.name)
        out.resolve(None)
    monitor.execute("query-cpus-fast", timeout=QMP_TIMEOUT).add_done_callback(got)
    return out


def pin_plugged_vcpu(dom: DomainObj, vcpu: int) -> None:
    """A vCPU ``setvcpus --live`` just plugged gets its pin (libvirt applies it at
    hotplug), or every host CPU without one: its thread inherits the affinity of the
    QEMU thread that made it, an ``<emulatorpin>``'s. A failure is logged (the vCPU is
    in the guest, which is what was asked)."""
    live, monitor = dom.live, dom.monitor
    if live is None or monitor is None:
        return
    cpus = vcpu_affinity(live, vcpu)
    if cpus is None:
        if emulator_affinity(live) is None and _daemon_everywhere():
            return  # (it inherits every CPU)
        cpus = host_cpus()

    def got(d: Deferred) -> None:
        tid = vcpu_threads(d.result).get(vcpu) if d.error is None else None
        if tid is None:
            log.warning("domain %s: cannot pin plugged vCPU %d: QEMU did not list its "
                        "thread", dom.name, vcpu)
            return
        try:
            _set_affinity(tid, cpus)
        except QemudError as exc:
            log.warning("domain %s: cannot pin plugged vCPU %d: %s", dom.name, vcpu,
                        exc.message)
    monitor.execute("query-cpus-fast", timeout=QMP_TIMEOUT).add_done_callback(got)


# -- the procedures ----------------------------------------------------------------------

class Pinning:
    """The handlers of DOMAIN_PIN_VCPU, DOMAIN_GET_VCPU_PIN_INFO, DOMAIN_PIN_EMULATOR and
    DOMAIN_GET_EMULATOR_PIN_INFO."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def handlers(self) -> dict[Procedure, Handler]:
        P = Procedure
        return {
            P.DOMAIN_PIN_VCPU: self.pin_vcpu,
            P.DOMAIN_GET_VCPU_PIN_INFO: self.vcpu_pin_info,
            P.DOMAIN_PIN_EMULATOR: self.pin_emulator,
            P.DOMAIN_GET_EMULATOR_PIN_INFO: self.emulator_pin_info,
        }

    def _one_def(self, dom: DomainObj, flags: int) -> DomainDef:
        """virDomainObjGetOneDefState: the live or the persistent definition (both
        flags: libvirt's exclusive-flags error)."""
        if flags & AFFECT_LIVE and flags & AFFECT_CONFIG:
            raise InvalidArg("Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG'"
                             " are mutually exclusive")
        live, config = self.driver.resources.affected_defs(dom, flags)
        chosen = live if live is not None else config
        assert chosen is not None
        return chosen

    def _live_pin(self, dom: DomainObj, live: DomainDef, config: bool,
                  apply: Callable[[dict[int, int]], None],
                  record: Callable[[DomainDef], None]) -> Deferred:
        """A live pin: QEMU's vCPU threads (``query-cpus-fast``) to ``apply`` (vCPU number
        -> thread id), then ``record`` into the live definition, the status record and,
        with ``config``, the persistent definition as it is then. Fails as the first
        step fails; a guest that stopped meanwhile changes nothing."""
        self.driver.lifecycle.require_no_job(dom)
        assert dom.monitor is not None
        out = Deferred()

        def got(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            if dom.live is not live:
                out.fail(OperationFailed(f"domain '{dom.name}' stopped"))
                return
            try:
                apply(vcpu_threads(d.result))
            except QemudError as exc:
                out.fail(exc)
                return
            record(live)
            self.driver.lifecycle.save_status(dom)
            out.resolve(Empty())
        dom.monitor.execute("query-cpus-fast", timeout=QMP_TIMEOUT).add_done_callback(got)
        return self.driver.registry.after_live(dom, out, record) if config else out

    # -- vcpupin -----------------------------------------------------------------------

    def pin_vcpu(self, ctx: Any, args: pl.PinVcpuArgs) -> Empty | Deferred:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainPinVcpuFlags")
        dom = self.driver._dom(args)
        live, config = self.driver.resources.affected_defs(dom, args.flags)
        vcpu = args.vcpu

        def in_range(definition: DomainDef) -> None:
            if vcpu >= definition.max_vcpus:
                raise InvalidArg(f"vcpu {vcpu} is out of range of persistent cpu count "
                                 f"{definition.vcpus}")

        def pin(definition: DomainDef) -> None:
            in_range(definition)  # (again for --live --config: after QEMU answered)
            definition.set_vcpupin(vcpu, cpus)
        if config is not None:
            in_range(config)
        cpus = cpus_of(args.cpumap)
        if not cpus:
            raise InvalidArg("Empty cpu list for pinning")
        if live is None:
            assert config is not None
            pin(config)
            self.driver.registry.save_persistent(dom, config)
            return Empty()
        if vcpu >= live.max_vcpus:
            raise InvalidArg(f"vcpu {vcpu} is out of range of live cpu count "
                             f"{live.max_vcpus}")
        require_on_host(cpus)

        def apply(threads: dict[int, int]) -> None:
            tid = threads.get(vcpu)
            if tid is not None:  # (an offline vCPU gets the pin when plugged)
                _set_affinity(tid, cpus)
        return self._live_pin(dom, live, config is not None, apply, pin)

    def vcpu_pin_info(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.VcpuPinInfoReply:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetVcpuPinInfo")
        definition = self._one_def(self.driver._dom(args), args.flags)
        every = host_cpus()
        return pl.VcpuPinInfoReply([
            pl.VcpuPinInfo(n, cpumap_of(vcpu_affinity(definition, n) or every))
            for n in range(definition.max_vcpus)])

    # -- emulatorpin -------------------------------------------------------------------

    def pin_emulator(self, ctx: Any, args: pl.PinEmulatorArgs) -> Empty | Deferred:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainPinEmulator")
        dom = self.driver._dom(args)
        live, config = self.driver.resources.affected_defs(dom, args.flags)
        cpus = cpus_of(args.cpumap)
        if not cpus:
            raise InvalidArg("Empty cpu list for pinning")
        if live is None:
            assert config is not None
            config.emulatorpin = cpus
            self.driver.registry.save_persistent(dom, config)
            return Empty()
        require_on_host(cpus)
        assert dom.process is not None
        pid = dom.process.pid

        def record(definition: DomainDef) -> None:
            definition.emulatorpin = cpus
        return self._live_pin(
            dom, live, config is not None,
            lambda threads: _pin_emulator(pid, threads.values(), cpus), record)

    def emulator_pin_info(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.EmulatorPinInfoReply:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetEmulatorPinInfo")
        definition = self._one_def(self.driver._dom(args), args.flags)
        return pl.EmulatorPinInfoReply(cpumap_of(emulator_affinity(definition) or host_cpus()))
