"""Live vCPU hotplug: ``setvcpus --live`` plugs vCPUs in and out of a running guest.

libvirt's ``qemuDomainSetVcpusLive`` is the reference. QEMU lists the CPUs its machine
can hold (``query-hotpluggable-cpus``: each one's driver type and topology props, and
the QOM path of those present); qemud's command line gives one socket per possible vCPU
(``-smp CUR,maxcpus=MAX,sockets=MAX,cores=1,threads=1``, see qemud.qemu.command), so
each entry is one vCPU, and vCPU ``N`` (QEMU's entries in topology order, as libvirt
numbers them) is socket ``N``.

* More vCPUs: the next absent ones in order are ``device_add``-ed one after the other,
  each with the id ``vcpuN`` (libvirt's alias), so that a restore of a saved guest,
  whose QEMU gets ``-smp COUNT`` (the first COUNT sockets), recreates the same CPUs.
  The call answers once QEMU accepted them; the guest (ACPI on x86) brings them up.
* Fewer vCPUs: only vCPUs plugged this way while this QEMU runs (their QOM path is
  ``/machine/peripheral/vcpuN``) can go, the highest first; a vCPU QEMU started with,
  vCPU 0 always, is not hot-pluggable, and the call is refused with libvirt's error
  before anything changes. Each is ``device_del``-ed and waited for, one at a time, as
  libvirt does; the guest must release it (ACPI CPU eject). A guest that does not within
  :data:`qemud.driver.devices.UNPLUG_TIMEOUT` fails the call with libvirt's time-out
  error; the request stays with QEMU, and a late release still lowers the count.

The live ``<vcpu current=...>`` is QEMU's count (``query-cpus-fast``), read again after
each change, after every DEVICE_DELETED of a ``vcpuN`` (or of a child of one: QEMU 7.2
under TCG never sends the CPU's own event, only its local APIC's), after the guest
reports a CPU ejected (ACPI_DEVICE_OST), and when the daemon attaches again to a guest
an earlier daemon left running, and kept in the status record: what ``vcpucount``,
``dominfo`` and ``dumpxml`` show stays what the guest has, also when a call failed
half-way or timed out.

Under TCG (domain type 'qemu') vCPUs are plugged, never unplugged: see
:data:`TCG_UNPLUG`.

The change holds the domain's job (``setvcpus``, as libvirt's modify job): a save, a
snapshot or another change waits for it. Machines whose QEMU lists no hot-pluggable CPUs
(aarch64's ``virt`` under QEMU 7.2) get an error naming the machine.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qemud import testhooks
from qemud.dispatch import Deferred
from qemud.errors import (
    ConfigUnsupported,
    OperationFailed,
    OperationTimeout,
    OperationUnsupported,
    QemudError,
)
from qemud.qemu.qmp import QMPEvent

from .devices import UNPLUG_TIMEOUT
from .domain import DomainObj
from .pinning import pin_plugged_vcpu
from .stats import QMP_TIMEOUT

if TYPE_CHECKING:
    from .driver import QemuDriver
    from .store import StatusRecord

__all__ = ["VcpuHotplug", "JOB"]

log = logging.getLogger(__name__)

#: the job a live vCPU change holds (libvirt's modify job)
JOB = "setvcpus"
#: where QEMU puts a -device (device_add) object with an id
PERIPHERAL = "/machine/peripheral/"
#: the id of a vCPU qemud plugged (libvirt's alias): vcpu<its number>
ALIAS = re.compile(r"vcpu(\d+)")
#: Test hook for a daemon run as a subprocess: ``QEMUD_TCG_VCPU_UNPLUG=1`` in its
#: environment (read once, at import) lets a live setvcpus unplug vCPUs of a TCG guest,
#: so that tests on a host without KVM reach the unplug path. Never in production: see
#: :data:`TCG_UNPLUG`.
TCG_UNPLUG_ENV = "QEMUD_TCG_VCPU_UNPLUG"
#: Whether vCPUs of a TCG guest (domain type 'qemu') may be unplugged. They may not: QEMU
#: 7.2 under multi-threaded TCG takes the vCPU out, then crashes (SIGSEGV) at the next
#: vCPU device_add, and single-threaded TCG aborts at the unplug itself; a KVM guest's
#: vCPUs come and go as libvirt plugs them. So a decrease is refused for TCG guests
#: before anything changes, unless the test hook is set (its tests never plug after an
#: unplug).
TCG_UNPLUG = testhooks.flag(TCG_UNPLUG_ENV)
#: ACPI's _OST source event of an eject request (status 0: done)
_OST_EJECT = 3
_CHILD_OF_ALIAS = re.compile(re.escape(PERIPHERAL) + r"(vcpu\d+)/")
#: libvirt's words (qemuDomainSelectHotplugVcpuEntities, qemuDomainHotplugDelVcpu)
NO_ENTITIES = ("failed to find appropriate hotpluggable vcpus to reach the desired "
               "target vcpu count")
GRANULARITY = "target vm vcpu granularity does not allow the desired vcpu count"
UNPLUG_TIMED_OUT = ("vcpu unplug request timed out. Unplug result must be manually "
                    "inspected in the domain")


@dataclass(frozen=True)
class Slot:
    """One entry of ``query-hotpluggable-cpus``: a place for a CPU, filled or not."""

    number: int  # libvirt's vCPU number: the entry's place in topology order
    driver: str  # the CPU's QOM type, what device_add wants
    props: dict[str, Any]  # socket-id, core-id, thread-id (...): device_add's too
    vcpus: int  # vCPUs the entry holds (1 with qemud's topology)
    qom_path: str  # where the CPU is, "" while the slot is empty

    @property
    def alias(self) -> str:
        return f"vcpu{self.number}"

    @property
    def hotplugged(self) -> bool:
        """Plugged by a live setvcpus of this QEMU (a CPU QEMU started with is not)."""
        return self.qom_path == PERIPHERAL + self.alias


def slots(answer: Any) -> list[Slot]:
    """QEMU's answer in vCPU order: QEMU lists the possible CPUs last first, libvirt
    reverses the list (qemuMonitorJSONProcessHotpluggableCpusReply)."""
    entries = [e for e in answer if isinstance(e, dict)] if isinstance(answer, list) else []
    return [Slot(number=n, driver=str(e.get("type", "")),
                 props=dict(e.get("props") or {}), vcpus=int(e.get("vcpus-count", 1)),
                 qom_path=str(e.get("qom-path") or ""))
            for n, e in enumerate(reversed(entries))]


class VcpuHotplug:
    """The live half of DOMAIN_SET_VCPUS (:meth:`Resources.set_vcpus` checks the call),
    and the live vCPU count kept as QEMU has it."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        driver.qmp_event_hooks.append(self._on_qmp_event)
        driver.lifecycle.reattach_hooks.append(self._reattached)

    # -- the call --------------------------------------------------------------------

    def set_live(self, dom: DomainObj, count: int) -> Deferred:
        """Make the running ``dom`` have ``count`` vCPUs; resolves with None once it has,
        or fails saying why, the live count truthful either way."""
        lifecycle = self.driver.lifecycle
        lifecycle.require_active(dom)
        lifecycle.require_no_job(dom)
        change = _Change(self, dom)
        assert dom.monitor is not None
        dom.monitor.execute("query-hotpluggable-cpus", timeout=QMP_TIMEOUT
                            ).add_done_callback(lambda d: change.listed(d, count))
        return change.result

    # -- the live count, as QEMU has it --------------------------------------------------

    def sync(self, dom: DomainObj) -> Deferred:
        """Read QEMU's vCPUs (``query-cpus-fast``): the live ``<vcpu current>`` and the
        status record get their count, and an unplug waiting for a vCPU QEMU no longer
        has ends. Resolves with None once done."""
        out = Deferred()
        monitor, live = dom.monitor, dom.live
        if monitor is None or live is None or monitor.closed:
            out.fail(OperationFailed(f"domain '{dom.name}' is not running"))
            return out

        def got(d: Deferred) -> None:
            if d.error is not None:
                log.warning("domain %s: cannot list its vCPUs: %s", dom.name,
                            d.error.detail)
                out.fail(d.error)
                return
            if dom.live is not live:
                out.fail(OperationFailed(f"domain '{dom.name}' stopped"))
                return
            cpus = [c for c in d.result or [] if isinstance(c, dict)]
            if 1 <= len(cpus) <= live.max_vcpus and len(cpus) != live.vcpus:
                log.info("domain %s: %d vCPU(s) live (the live XML said %d)", dom.name,
                         len(cpus), live.vcpus)
                live.set_vcpus(len(cpus), live.max_vcpus)
                self.driver.lifecycle.save_status(dom)
            paths = {str(c.get("qom-path", "")) for c in cpus}
            for alias, waiter in list(dom.device_waiters.items()):
                if ALIAS.fullmatch(alias) and PERIPHERAL + alias not in paths and \
                        dom.device_waiters.get(alias) is waiter:
                    del dom.device_waiters[alias]
                    waiter.resolve(None)
            out.resolve(None)
        monitor.execute("query-cpus-fast", timeout=QMP_TIMEOUT).add_done_callback(got)
        return out

    def _on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        """DEVICE_DELETED of a vCPU (or of its child: see the module's docstring), and
        the guest's report that it ejected a CPU (ACPI_DEVICE_OST), which also covers a
        CPU QEMU started with (a restored guest's, ejected on a request the saved guest
        had pending): the count is read again."""
        if dom.live is None:
            return
        if event.name == "DEVICE_DELETED":
            device = str(event.data.get("device") or "")
            path = str(event.data.get("path") or "")
            if ALIAS.fullmatch(device) or _CHILD_OF_ALIAS.match(path):
                self.sync(dom)
        elif event.name == "ACPI_DEVICE_OST":
            info = event.data.get("info")
            if isinstance(info, dict) and info.get("slot-type") == "CPU" and \
                    info.get("source") == _OST_EJECT and info.get("status") == 0:
                self.sync(dom)

    def _reattached(self, dom: DomainObj, record: StatusRecord, jobs: list[Any]) -> None:
        """A guest an earlier daemon left running: a vCPU released while no daemon
        listened is no longer counted."""
        self.sync(dom)


def plan(entries: list[Slot], count: int) -> tuple[bool, list[Slot]]:
    """(plugging?, the slots to change, in order), as libvirt's
    qemuDomainSelectHotplugVcpuEntities: the next empty ones up, the last plugged ones
    down; refused (before anything changes) if that cannot reach ``count``."""
    present = [s for s in entries if s.qom_path]
    before = current = sum(s.vcpus for s in present)
    chosen: list[Slot] = []
    if count > current:
        for slot in entries:
            if current >= count:
                break
            if slot.qom_path:
                continue
            current += slot.vcpus
            if current > count:
                raise ConfigUnsupported(GRANULARITY)
            chosen.append(slot)
    else:
        for slot in reversed(present):
            if current <= count:
                break
            if not slot.hotplugged:
                raise ConfigUnsupported(
                    f"{NO_ENTITIES}: vCPU {slot.number} was not hot-plugged (only the "
                    "vCPUs a live setvcpus added to this QEMU can be unplugged; vCPU 0 "
                    "never)")
            current -= slot.vcpus
            if current < count:
                raise ConfigUnsupported(GRANULARITY)
            chosen.append(slot)
    if current != count:
        raise ConfigUnsupported(NO_ENTITIES)
    return count > before, chosen


class _Change:
    """One live setvcpus: its device_add or device_del steps, one after the other, then
    the count read again, the job ended, and the answer."""

    def __init__(self, hotplug: VcpuHotplug, dom: DomainObj) -> None:
        assert dom.monitor is not None and dom.live is not None
        self.hotplug = hotplug
        self.loop = hotplug.driver.loop
        self.dom = dom
        self.monitor = dom.monitor
        self.live = dom.live
        self.result = Deferred()
        self.ending = False
        dom.job = JOB

    def listed(self, d: Deferred, count: int) -> None:
        """query-hotpluggable-cpus answered: plan, then plug or unplug."""
        entries = slots(d.result) if d.error is None else []
        if not entries:
            why = d.error.detail if d.error is not None else "it lists none"
            machine = self.live.os.machine or "(default)"
            self.end(OperationUnsupported(
                f"vCPU hotplug is not supported by machine '{machine}' of domain "
                f"'{self.dom.name}': QEMU lists no hot-pluggable CPUs ({why})"))
            return
        try:
            plugging, chosen = plan(entries, count)
        except QemudError as exc:
            self.end(exc)
            return
        if plugging:
            self.plug(chosen, 0)
        elif chosen and self.live.type == "qemu" and not TCG_UNPLUG:
            self.end(OperationUnsupported(
                f"cannot unplug vCPUs of domain '{self.dom.name}': it runs under TCG "
                "(domain type 'qemu'), where this QEMU cannot take a vCPU out safely (it "
                "crashes at the next vCPU plug); lower the count with --config and "
                "restart the domain"))
        else:
            self.unplug(chosen, 0)

    def plug(self, chosen: list[Slot], index: int) -> None:
        """device_add each, in order; the first QEMU refuses ends the call."""
        if index == len(chosen):
            self.end(None)
            return
        slot = chosen[index]
        log.info("domain %s: plugging vCPU %d (%s)", self.dom.name, slot.number, slot.props)

        def added(d: Deferred) -> None:
            if d.error is not None:
                self.end(d.error)
            else:
                pin_plugged_vcpu(self.dom, slot.number)  # its <vcpupin>, as libvirt
                self.plug(chosen, index + 1)
        self.monitor.execute("device_add", {"driver": slot.driver, "id": slot.alias,
                                            **slot.props}).add_done_callback(added)

    def unplug(self, chosen: list[Slot], index: int) -> None:
        """device_del each, the highest first, and wait for the guest to release it.

        The wait is ``dom.device_waiters[vcpuN]``: the lifecycle resolves it on the
        CPU's DEVICE_DELETED (and fails it when the domain stops),
        :meth:`VcpuHotplug.sync` once QEMU's CPU list no longer has it. After a
        time-out it stays, so that a late release still lowers the count."""
        if index == len(chosen):
            self.end(None)
            return
        dom, slot = self.dom, chosen[index]
        gone = Deferred()
        dom.device_waiters[slot.alias] = gone
        timer = self.loop.call_later(UNPLUG_TIMEOUT, lambda: self.timed_out(slot, gone))
        log.info("domain %s: unplugging vCPU %d", dom.name, slot.number)

        def released(d: Deferred) -> None:
            timer.cancel()
            if self.ending:
                return  # released after the call timed out: sync counted it
            if d.error is not None:
                self.end(d.error)
            else:
                self.unplug(chosen, index + 1)

        def sent(d: Deferred) -> None:
            if d.error is not None:
                if dom.device_waiters.get(slot.alias) is gone:
                    del dom.device_waiters[slot.alias]
                gone.fail(d.error)
        gone.add_done_callback(released)
        self.monitor.execute("device_del", {"id": slot.alias}).add_done_callback(sent)

    def timed_out(self, slot: Slot, gone: Deferred) -> None:
        """QEMU may have let the vCPU go without an event naming it: asked first."""
        def asked(_: Deferred) -> None:
            if not gone.done:
                log.warning("domain %s: the guest did not release vCPU %d within %g s "
                            "(the unplug request stays)", self.dom.name, slot.number,
                            UNPLUG_TIMEOUT)
                self.end(OperationTimeout(UNPLUG_TIMED_OUT))
        self.hotplug.sync(self.dom).add_done_callback(asked)

    def end(self, error: QemudError | None) -> None:
        """Read the count again, end the job, then answer."""
        if self.ending:
            return
        self.ending = True
        dom = self.dom

        def synced(d: Deferred) -> None:
            if dom.job == JOB and dom.live is self.live:
                dom.job = None
            failure = error or d.error
            if failure is not None:
                self.result.fail(failure)
            else:
                self.result.resolve(None)
        self.hotplug.sync(dom).add_done_callback(synced)
