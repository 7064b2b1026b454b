"""DOMAIN_STATS and NODE_STATS: libvirt's ``virsh domstats`` / ``nodecpustats`` names;
NODE_GET_CPU_STATS / NODE_GET_MEMORY_STATS: one host CPU or NUMA cell, libvirt's fields.

Domain records (only what applies is present; "active" = QEMU runs)::

    state.state, state.reason                  libvirt's state and reason numbers
    cpu.time, cpu.user, cpu.system             ns of host CPU used by QEMU (active)
    balloon.current, balloon.maximum           KiB (currentMemory / memory)
    balloon.rss                                KiB resident in the QEMU process (active)
    vcpu.current, vcpu.maximum                 vCPUs
    vcpu.N.state, vcpu.N.time                  1 = running; ns used by that vCPU thread
    net.count, net.N.name, net.N.type, net.N.mac
    net.N.{rx,tx}.{bytes,pkts,errs,drop}       guest's view (the host tap's rx/tx swapped)
    block.count, block.N.name, block.N.path
    block.N.{rd,wr,fl}.{reqs,times}, block.N.{rd,wr}.bytes      (active)
    <whatever the driver's stats_hooks add: heartbeat.*>

CPU time comes from ``/proc/PID/stat`` (utime + stime of every QEMU thread), vCPU times
from the vCPU threads QMP ``query-cpus-fast`` names, block counters from QMP
``query-blockstats`` (its ``qdev`` / node names, ``disk-vda`` / ``drive-vda-format``, map
back to target devs). NIC counters are read on the host side of tap devices
(``/sys/class/net/DEV/statistics``), swapped like libvirt does so that ``rx`` is what
the guest received. User-mode (slirp) NICs have no host device and QEMU 7.2 has no QMP
counters for them: they get name/type/mac only.

QMP calls go through Deferreds (the loop is never blocked); small /proc and /sys reads are
done inline. A monitor that does not answer within :data:`QMP_TIMEOUT` costs that domain
its QMP-based fields, not the whole reply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import payloads as pl
from protocol.constants import TypedParamKind
from qemud.dispatch import Deferred
from qemud.errors import InternalError, InvalidArg, SystemCallFailed
from qemud.qemu import naming

from .domain import DomainObj
from .flags import check_flags

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["domain_stats", "node_stats", "node_cpu_stats", "node_memory_stats", "basic_stats",
           "block_stats", "net_stats", "rss_kib", "thread_stat", "vcpu_threads"]

log = logging.getLogger(__name__)

QMP_TIMEOUT = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK if 1_000_000_000 % CLK_TCK == 0 else 0
SYS_NET = Path("/sys/class/net")
PROC = Path("/proc")

Params = list[pl.TypedParam]


def _int(name: str, value: int) -> pl.TypedParam:
    return pl.TypedParam(name, int(TypedParamKind.INT), int_value=int(value))


def _str(name: str, value: str) -> pl.TypedParam:
    return pl.TypedParam(name, int(TypedParamKind.STRING), str_value=value)


def _ticks_ns(ticks: int) -> int:
    return ticks * NS_PER_TICK if NS_PER_TICK else ticks * 1_000_000_000 // CLK_TCK


# -- /proc readers ------------------------------------------------------------------------

def _proc_cpu_ns(path: Path) -> tuple[int, int] | None:
    """(user, system) ns from a /proc/.../stat file; None if unreadable."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return _ticks_ns(int(fields[11])), _ticks_ns(int(fields[12]))
    except (IndexError, ValueError):
        return None


def thread_stat(path: Path) -> tuple[int, int] | None:
    """(user + system ns, the host CPU it ran on last) from a /proc/.../stat file; None if
    unreadable (vcpuinfo's CPU time and CPU, as libvirt reads them)."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:  # (fields[0] is stat's field 3: utime is 14, stime 15, processor 39)
        return _ticks_ns(int(fields[11]) + int(fields[12])), int(fields[36])
    except (IndexError, ValueError):
        return None


def rss_kib(pid: int) -> int:
    """KiB resident in process ``pid`` (0 if unknown): balloon.rss, dommemstat's rss."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


# -- per-domain pieces --------------------------------------------------------------------

def basic_stats(dom: DomainObj) -> tuple[Params, Params, Params]:
    """(state + cpu, balloon, vcpu) params that need no QMP."""
    current = dom.current()
    head = [_int("state.state", int(dom.state)), _int("state.reason", dom.reason)]
    pid = dom.process.pid if dom.process is not None else None
    if pid is not None:
        cpu = _proc_cpu_ns(PROC / str(pid) / "stat")
        user, system = cpu if cpu is not None else (0, 0)
        head += [_int("cpu.time", user + system), _int("cpu.user", user),
                 _int("cpu.system", system)]
    balloon = [_int("balloon.current", current.current_memory_kib),
               _int("balloon.maximum", current.memory_kib)]
    if pid is not None:
        balloon.append(_int("balloon.rss", rss_kib(pid)))
    vcpu = [_int("vcpu.current", current.vcpus), _int("vcpu.maximum", current.max_vcpus)]
    return head, balloon, vcpu


def vcpu_threads(answer: Any) -> dict[int, int]:
    """QMP ``query-cpus-fast``'s answer as vCPU number (``cpu-index``) -> host thread id,
    in vCPU order: what domstats, vcpuinfo and the pinning code read from it. QEMU's
    schema makes both fields mandatory; an entry without a thread id (or an answer that
    is not a list) gives nothing rather than an error."""
    threads: dict[int, int] = {}
    for cpu in answer if isinstance(answer, list) else []:
        if isinstance(cpu, dict) and isinstance(cpu.get("thread-id"), int):
            threads[int(cpu.get("cpu-index", 0))] = int(cpu["thread-id"])
    return dict(sorted(threads.items()))


def vcpu_thread_stats(pid: int, cpus: Any) -> Params:
    """vcpu.N.state/time from query-cpus-fast's thread ids."""
    params: Params = []
    for index, tid in vcpu_threads(cpus).items():
        params.append(_int(f"vcpu.{index}.state", 1))
        times = _proc_cpu_ns(PROC / str(pid) / "task" / str(tid) / "stat")
        if times is not None:
            params.append(_int(f"vcpu.{index}.time", times[0] + times[1]))
    return params


def _disk_target(entry: dict[str, Any]) -> str:
    """The target dev a query-blockstats entry belongs to ("" if unknown)."""
    qdev = str(entry.get("qdev") or "")
    for part in qdev.split("/"):
        if part.startswith("disk-"):
            return part.removeprefix("disk-")
    node = str(entry.get("node-name") or "")
    if node.startswith("drive-"):
        for suffix in ("-format", "-storage"):
            if node.endswith(suffix):
                return node[len("drive-"):-len(suffix)]
    return str(entry.get("device") or "").removeprefix("drive-")


_BLOCK_COUNTERS = (
    ("rd_operations", "rd.reqs"), ("rd_bytes", "rd.bytes"), ("rd_total_time_ns", "rd.times"),
    ("wr_operations", "wr.reqs"), ("wr_bytes", "wr.bytes"), ("wr_total_time_ns", "wr.times"),
    ("flush_operations", "fl.reqs"), ("flush_total_time_ns", "fl.times"),
)


def block_stats(dom: DomainObj, blockstats: Any) -> Params:
    """block.* for every disk of the current definition, in definition order; counters
    from a query-blockstats answer (None: inactive or no answer, names/paths only)."""
    by_target: dict[str, dict[str, Any]] = {}
    for entry in blockstats or []:
        target = _disk_target(entry)
        if target and target not in by_target:
            by_target[target] = entry.get("stats") or {}
    disks = [(d.target_dev or "", d.source) for d in dom.current().disks]
    known = {t for t, _ in disks}
    # a disk QEMU has but the definition does not (should not happen): still report it
    disks += [(t, None) for t in by_target if t not in known]
    params: Params = [_int("block.count", len(disks))]
    for i, (target, source) in enumerate(disks):
        params.append(_str(f"block.{i}.name", target))
        if source:
            params.append(_str(f"block.{i}.path", source))
        stats = by_target.get(target)
        if stats is not None:
            for key, wire in _BLOCK_COUNTERS:
                params.append(_int(f"block.{i}.{wire}", int(stats.get(key, 0) or 0)))
    return params


def _tun_ifnames(pid: int) -> list[str]:
    """Names of the tun/tap devices QEMU has open, in fd order (from fdinfo ``iff:``)."""
    fd_dir = PROC / str(pid) / "fd"
    try:
        fds = sorted(int(n) for n in os.listdir(fd_dir) if n.isdigit())
    except OSError:
        return []
    names: list[str] = []
    for fd in fds:
        try:
            if os.readlink(fd_dir / str(fd)) != "/dev/net/tun":
                continue
            info = (PROC / str(pid) / "fdinfo" / str(fd)).read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("iff:"):
                name = line[4:].strip()
                if name and name not in names:
                    names.append(name)
    return names


def _safe_ifname(name: str | None) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")  # type: ignore[operator]


def _bridge_of(ifname: str) -> str | None:
    try:
        return os.path.basename(os.readlink(SYS_NET / ifname / "master"))
    except OSError:
        return None


def host_ifnames(dom: DomainObj) -> list[str | None]:
    """The host tap device of each NIC of the live definition (None: none/unknown).

    ``ethernet`` NICs with ``<target dev>`` use that name (QEMU opened it by name). Other
    tap-backed NICs (automatic names, bridge-helper taps) are matched to the taps QEMU
    holds open, preferring a tap enslaved to the NIC's bridge, in fd (creation) order.
    """
    nics = dom.current().interfaces
    names: list[str | None] = [None] * len(nics)
    pending: list[int] = []
    for i, nic in enumerate(nics):
        if nic.type == "ethernet" and _safe_ifname(nic.target_dev):
            names[i] = nic.target_dev
        elif nic.type in ("ethernet", "bridge"):
            pending.append(i)
    if pending and dom.process is not None:
        taps = [t for t in _tun_ifnames(dom.process.pid) if t not in names]
        for i in pending:
            nic = nics[i]
            wanted = nic.source_bridge if nic.type == "bridge" else None
            fits = [t for t in taps if _bridge_of(t) == wanted] or \
                ([t for t in taps if t == nic.target_dev] if nic.target_dev else [])
            if fits:
                names[i] = fits[0]
                taps.remove(fits[0])
    return names


_NET_COUNTERS = (  # guest's view <- host tap's counter (swapped, as libvirt does)
    ("rx.bytes", "tx_bytes"), ("rx.pkts", "tx_packets"), ("rx.errs", "tx_errors"),
    ("rx.drop", "tx_dropped"), ("tx.bytes", "rx_bytes"), ("tx.pkts", "rx_packets"),
    ("tx.errs", "rx_errors"), ("tx.drop", "rx_dropped"),
)


def _read_counter(ifname: str, counter: str) -> int | None:
    try:
        return int((SYS_NET / ifname / "statistics" / counter).read_text())
    except (OSError, ValueError):
        return None


def net_stats(dom: DomainObj) -> Params:
    """net.* of a running domain (empty when it is not running)."""
    if dom.process is None:
        return []
    nics = dom.current().interfaces
    ifnames = host_ifnames(dom)
    params: Params = [_int("net.count", len(nics))]
    for i, (nic, ifname) in enumerate(zip(nics, ifnames, strict=True)):
        mac = nic.mac or ""
        name = ifname
        if name is None:
            try:
                name = naming.nic_ids(mac)[1]  # the QEMU netdev id, e.g. hostnet-525400...
            except ValueError:
                name = f"net{i}"
        params += [_str(f"net.{i}.name", name), _str(f"net.{i}.type", nic.type or ""),
                   _str(f"net.{i}.mac", mac)]
        if ifname is None:
            continue
        values = [(wire, _read_counter(ifname, counter)) for wire, counter in _NET_COUNTERS]
        params += [_int(f"net.{i}.{wire}", v) for wire, v in values if v is not None]
    return params


# -- the handlers -------------------------------------------------------------------------

def _hook_stats(hooks: list[Callable[[DomainObj], Params]], dom: DomainObj) -> Params:
    params: Params = []
    for hook in hooks:
        try:
            params += hook(dom)
        except Exception:
            log.exception("stats hook %r failed for %s", hook, dom.name)
    return params


def _collect(driver: QemuDriver, dom: DomainObj) -> Deferred:
    """All params of one domain; never fails (missing QMP answers cost their fields)."""
    out = Deferred()
    head, balloon, vcpu = basic_stats(dom)
    net = net_stats(dom)
    hooks = _hook_stats(driver.stats_hooks, dom)
    monitor = dom.monitor
    pid = dom.process.pid if dom.process is not None else None
    answers: dict[str, Any] = {}

    def finish() -> None:
        threads = vcpu_thread_stats(pid, answers.get("query-cpus-fast")) \
            if pid is not None else []
        out.resolve(head + balloon + vcpu + threads + net +
                    block_stats(dom, answers.get("query-blockstats")) + hooks)

    if monitor is None or monitor.closed or pid is None:
        finish()
        return out
    commands = ("query-cpus-fast", "query-blockstats")
    remaining = [len(commands)]

    def got(command: str, d: Deferred) -> None:
        if d.error is None:
            answers[command] = d.result
        else:
            log.debug("domain %s: %s failed: %s", dom.name, command, d.error.message)
        remaining[0] -= 1
        if remaining[0] == 0:
            finish()
    for command in commands:
        monitor.execute(command, timeout=QMP_TIMEOUT).add_done_callback(partial(got, command))
    return out


def domain_stats(driver: QemuDriver, args: pl.StatsArgs) -> Deferred:
    """DOMAIN_STATS: one record per named domain, in the order named (every domain when
    none is named). A domain named more than once (the protocol allows MAX_LIST refs) is
    collected once, its record repeated, as libvirt's virDomainListGetStats repeats it:
    each collection costs /proc reads, a look at QEMU's fd table and QMP commands."""
    doms = [driver.registry.find(r.name, r.uuid) for r in args.domains] if args.domains \
        else list(driver.registry)
    out = Deferred()
    unique: list[DomainObj] = []  # each domain once, in the order first named
    first: dict[int, int] = {}  # id(DomainObj) -> its index in ``unique``
    slots: list[int] = []  # for each ref, the index of its domain's record
    for dom in doms:
        if id(dom) not in first:
            first[id(dom)] = len(unique)
            unique.append(dom)
        slots.append(first[id(dom)])
    records: list[Params | None] = [None] * len(unique)
    refs = [d.ref() for d in doms]  # as of the call (a domain may stop meanwhile)
    remaining = [len(unique)]
    if len(unique) < len(doms):
        log.debug("DOMAIN_STATS: %d domain refs name %d distinct domains, each collected "
                  "once", len(doms), len(unique))

    def finish() -> None:
        out.resolve(pl.StatsReply([pl.StatsRecord(ref, records[slot] or [])
                                   for ref, slot in zip(refs, slots, strict=True)]))
    if not doms:
        finish()
        return out

    def got(index: int, d: Deferred) -> None:
        records[index] = d.result
        remaining[0] -= 1
        if remaining[0] == 0:
            finish()
    for i, dom in enumerate(unique):
        log.debug("DOMAIN_STATS: collecting domain %s", dom.name)
        _collect(driver, dom).add_done_callback(partial(got, i))
    return out


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_MEM_FIELDS = {"MemTotal": "total", "MemFree": "free", "MemAvailable": "available",
               "Buffers": "buffers", "Cached": "cached"}


def node_stats(args: Any = None) -> pl.NodeStatsReply:
    """NODE_STATS: host CPU time per mode (ns, all CPUs summed) and memory (KiB)."""
    params: Params = []
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
        if first[0] == "cpu":
            for name, value in zip(_CPU_FIELDS, first[1:], strict=False):
                params.append(_int(f"cpu.{name}", _ticks_ns(int(value))))
    except (OSError, IndexError, ValueError):
        pass
    params.append(_int("cpu.count", os.cpu_count() or 0))
    memory: dict[str, int] = {}
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in _MEM_FIELDS:
                memory[_MEM_FIELDS[key]] = int(rest.split()[0])
    except (OSError, IndexError, ValueError):
        pass
    params += [_int(f"memory.{name}", memory[name]) for name in _MEM_FIELDS.values()
               if name in memory]
    return pl.NodeStatsReply(params)


# -- per-CPU and per-cell host stats (virNodeGetCPUStats / virNodeGetMemoryStats) ---------

ALL = -1  # VIR_NODE_CPU_STATS_ALL_CPUS / VIR_NODE_MEMORY_STATS_ALL_CELLS
NUMA_NODES = Path("/sys/devices/system/node")


def _refuse_negative(number: int, name: str, function: str) -> None:
    """libvirt's public API check: -1 is the only negative number that means anything."""
    if number < 0 and number != ALL:
        raise InvalidArg(f"{name} in {function} only accepts {ALL} as a negative value")


def _mode_ns(ticks: dict[str, int], *modes: str) -> int:
    """ns of the /proc/stat ``modes`` summed, as libvirt sums them for its four fields."""
    return _ticks_ns(sum(ticks.get(m, 0) for m in modes))


def node_cpu_stats(args: pl.NodeGetStatsArgs) -> pl.NodeStatsReply:
    """NODE_GET_CPU_STATS: libvirt's four fields of one host CPU (its ``cpuN`` line of
    /proc/stat) or of all of them (the ``cpu`` line), summed as libvirt sums them."""
    check_flags(args.flags, 0, "virHostCPUGetStats")
    number = int(args.number)
    _refuse_negative(number, "cpuNum", "virNodeGetCPUStats")
    label = "cpu" if number == ALL else f"cpu{number}"
    try:
        lines = (PROC / "stat").read_text().splitlines()
    except OSError as exc:
        raise SystemCallFailed(f"cannot open {PROC / 'stat'}: {exc.strerror}") from None
    for line in lines:
        fields = line.split()
        if not fields or fields[0] != label:
            continue
        try:
            ticks = dict(zip(_CPU_FIELDS, (int(v) for v in fields[1:]), strict=False))
        except ValueError:
            break
        return pl.NodeStatsReply([
            _int("kernel", _mode_ns(ticks, "system", "irq", "softirq")),
            _int("user", _mode_ns(ticks, "user", "nice")),
            _int("idle", _mode_ns(ticks, "idle")), _int("iowait", _mode_ns(ticks, "iowait"))])
    raise InvalidArg("Invalid cpuNum in virHostCPUGetStatsLinux")


def _max_numa_node() -> int | None:
    """The highest NUMA node number the kernel shows, or None without NUMA in sysfs."""
    try:
        nodes = [int(p.name[4:]) for p in NUMA_NODES.iterdir()
                 if p.name.startswith("node") and p.name[4:].isdigit()]
    except OSError:
        return None
    return max(nodes) if nodes else None


def _meminfo(path: Path, fields: dict[str, str]) -> list[pl.TypedParam]:
    """The ``fields`` of a meminfo file (KiB), in the file's order; a node's meminfo has
    "Node N " before each name."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemCallFailed(f"cannot open {path}: {exc.strerror}") from None
    out: list[pl.TypedParam] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["Node"]:
            words = words[2:]
        if len(words) >= 2 and words[0].rstrip(":") in fields and words[1].isdigit():
            out.append(_int(fields[words[0].rstrip(":")], int(words[1])))
    if not out:
        raise InternalError("no available memory line found")
    return out


def node_memory_stats(args: pl.NodeGetStatsArgs) -> pl.NodeStatsReply:
    """NODE_GET_MEMORY_STATS: total, free, buffers and cached of the host (KiB), or, as
    libvirt gives a NUMA cell, total and free from that node's meminfo. A host whose
    sysfs shows no NUMA nodes is one cell: cell 0 is the whole host, as in libvirt."""
    check_flags(args.flags, 0, "virHostMemGetStats")
    number = int(args.number)
    _refuse_negative(number, "cellNum", "virNodeGetMemoryStats")
    max_node = _max_numa_node() if number != ALL else None
    if number == ALL or (number == 0 and max_node is None):
        fields = {"MemTotal": "total", "MemFree": "free", "Buffers": "buffers",
                  "Cached": "cached"}
        return pl.NodeStatsReply(_meminfo(PROC / "meminfo", fields))
    if max_node is None or number > max_node:
        raise InvalidArg(f"cellNum in virHostMemGetStats must be less than or equal to "
                         f"{0 if max_node is None else max_node}")
    return pl.NodeStatsReply(_meminfo(NUMA_NODES / f"node{number}" / "meminfo",
                                      {"MemTotal": "total", "MemFree": "free"}))
