"""CPU pinning commands: vcpupin, emulatorpin.

As virsh's: without a cpulist they show the pinning (vcpupin as a VCPU / CPU Affinity
table, emulatorpin as its ``*:`` line), with one they pin. The cpulist is libvirt's
cpuset syntax (``0-3,^2``) or ``r`` (every host CPU), checked against the host's CPU
count before anything is sent, in virsh's words.
"""

from __future__ import annotations

import re

from protocol.constants import DomainState

from ...domain import AFFECT_CONFIG, AFFECT_LIVE
from ...format import table
from ..context import Shell
from ..registry import Arg, Args, UsageError, command
from .domain import CONFIG, CURRENT, DOM, LIVE

_UINT = re.compile(r"\s*\+?([0-9]+)")
#: libvirt's virBitmapParse limit as virsh calls it for a cpulist
_MAX_PARSE = 1024
_ITEM = re.compile(r"\s*(\^)?\s*([0-9]+)(?:\s*-\s*([0-9]+))?\s*")

CPULIST = Arg("cpulist", "host cpu number(s) to set, or omit option to query",
              required=False)


def parse_cpulist(text: str, maxcpu: int) -> bytes:
    """virsh's virshParseCPUList: ``r`` is every host CPU, else libvirt's cpuset syntax
    (items ``N``, ``N-M``, ``^N``, left to right); the libvirt cpumap of the result."""
    if text.startswith("r"):
        cpus = set(range(maxcpu))
    else:
        parsed = _parse(text)
        if not parsed:
            raise UsageError(f"Invalid cpulist '{text}'")
        cpus = parsed
        last = max(cpus)
        if last >= maxcpu:
            raise UsageError(f"CPU {last} in cpulist '{text}' exceed the maxcpu {maxcpu}")
    data = bytearray((maxcpu + 7) // 8)
    for cpu in cpus:
        data[cpu // 8] |= 1 << (cpu % 8)
    return bytes(data)


def _parse(text: str) -> set[int] | None:
    cpus: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            return None
        negate, first, last = match.group(1), int(match.group(2)), match.group(3)
        end = first if last is None else int(last)
        if (negate and last is not None) or end < first or end >= _MAX_PARSE:
            return None
        if negate:
            cpus.discard(first)
        else:
            cpus.update(range(first, end + 1))
    return cpus


def cpumap_text(cpumap: bytes) -> str:
    """virBitmapDataFormat: the CPUs of a cpumap as ascending ranges (``0-1,3``)."""
    cpus = [i * 8 + bit for i, byte in enumerate(cpumap) for bit in range(8)
            if byte >> bit & 1]
    parts: list[str] = []
    start = prev = None
    for cpu in cpus + [None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def _flags(args: Args, query: bool) -> int:
    """--live/--config/--current as virsh reads them for vcpupin and emulatorpin."""
    args.exclusive(("current", "live"), ("current", "config"))
    if query:
        args.exclusive(("live", "config"))
    return (AFFECT_LIVE if args.flag("live") else 0) | \
        (AFFECT_CONFIG if args.flag("config") else 0)


def _vcpu_number(text: str) -> int:
    match = _UINT.fullmatch(text)
    if match is None or int(match.group(1)) > 2**32 - 1:
        raise UsageError(f"Numeric value '{text}' for <vcpu> option is malformed or out of "
                         "range")
    return int(match.group(1))


@command("vcpupin", "domain", "control or query domain vcpu affinity", description=(
    "Pin a vCPU of the domain to host CPUs, or show the pinning. CPULIST is a list of "
    "host CPU numbers in libvirt's syntax: comma-separated numbers and ranges, '^N' "
    "excluding one ('0-3,^2'), or 'r' for every host CPU. Without CPULIST, a table of "
    "each vCPU's affinity (only that of VCPU when given). --live pins the running vCPU thread "
    "now (and records the vcpupin in the live XML), --config the persistent definition's "
    "vcpupin; with neither, a pin changes the running domain, as virsh does, and a query "
    "shows the current state."),
    args=(DOM, Arg("vcpu", "vcpu number", required=False), CPULIST),
    opts=(CONFIG, LIVE, CURRENT))
def cmd_vcpupin(sh: Shell, args: Args) -> None:
    cpulist = args.get("cpulist")
    flags = _flags(args, query=cpulist is None)
    raw = args.get("vcpu")
    vcpu = None if raw is None else _vcpu_number(raw)
    if cpulist is not None and vcpu is None:
        raise UsageError("vcpupin: Missing vCPU number in pin mode.")
    with sh.failing(""):
        maxcpu = sh.conn().node_info().cpus
    dom = sh.domain(args.req("domain"))
    if cpulist is None:
        with sh.failing(""):
            maps = dom.vcpu_pin_info(flags)
            live = bool(flags & AFFECT_LIVE) or (
                not flags & AFFECT_CONFIG and dom.info().state != DomainState.SHUTOFF)
        if vcpu is not None and vcpu >= len(maps):
            which = "live" if live else "persistent"
            raise UsageError(f"vcpu {vcpu} is out of range of {which} cpu count {len(maps)}")
        rows = [(n, cpumap_text(m)) for n, m in enumerate(maps) if vcpu in (None, n)]
        sh.write(table(["VCPU", "CPU Affinity"], rows))
        sh.print()
        return
    assert vcpu is not None
    cpumap = parse_cpulist(cpulist, maxcpu)
    with sh.failing(""):
        # no --live/--config/--current: libvirt's old call, which changes the live domain
        dom.pin_vcpu(vcpu, cpumap, flags if flags or args.flag("current") else AFFECT_LIVE)


@command("emulatorpin", "domain", "control or query domain emulator affinity",
         description=(
    "Pin the emulator threads of the domain (every QEMU thread that is not a vCPU) to "
    "host CPUs, or show their pinning. CPULIST as for vcpupin. --live changes the running "
    "threads now (and the emulatorpin of the live XML), --config the persistent "
    "definition; with neither, the current state."),
    args=(DOM, CPULIST), opts=(CONFIG, LIVE, CURRENT))
def cmd_emulatorpin(sh: Shell, args: Args) -> None:
    cpulist = args.get("cpulist")
    flags = _flags(args, query=cpulist is None)
    with sh.failing(""):
        maxcpu = sh.conn().node_info().cpus
    dom = sh.domain(args.req("domain"))
    if cpulist is None:
        with sh.failing(""):
            cpumap = dom.emulator_pin_info(flags)
        sh.print("emulator: CPU Affinity")
        sh.print("----------------------------------")
        sh.print(f"       *: {cpumap_text(cpumap)}")
        return
    cpumap = parse_cpulist(cpulist, maxcpu)
    with sh.failing(""):
        dom.pin_emulator(cpumap, flags)
