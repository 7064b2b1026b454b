"""Memory and vCPU commands: setmem, setmaxmem, dommemstat, setvcpus, vcpuinfo.

Options, defaults, refusals and output follow virsh's: with none of --live/--config/
--current, setmem and setvcpus call libvirt's old API (the running domain), setmaxmem
its own (the current state); sizes are virsh's scaled integers (KiB without a suffix).
"""

from __future__ import annotations

import re

from protocol.constants import DomainState

from ...domain import AFFECT_CONFIG, AFFECT_LIVE, MEM_MAXIMUM, VCPU_MAXIMUM
from ...errors import QemudClientError
from ..context import Shell
from ..registry import Arg, Args, Opt, UsageError, command
from .domain import CONFIG, CURRENT, DOM, LIVE

#: libvirt's VIR_DOMAIN_VCPU_GUEST
VCPU_GUEST = 8

SIZE = Arg("size", "new memory size, as scaled integer (default KiB)")

#: virScaleInteger's powers: b, k, m, g, t, p, e (case-insensitive)
_POWERS = "bkmgtpe"
#: strtoull's number: leading blanks and a + sign allowed (the suffix follows)
_SCALED = re.compile(r"\s*\+?([0-9]+)")
_UINT = re.compile(r"\s*\+?([0-9]+)")
_ULLONG_MAX = 2**64 - 1

#: virsh's names of libvirt's virVcpuState
_VCPU_STATES = {0: "offline", 1: "running", 2: "blocked"}


def scaled_kib(text: str, name: str = "size") -> int:
    """virsh's scaled integer (vshCommandOptScaledInt with scale 1024) in KiB, rounded
    up; see :func:`scaled_bytes`."""
    return -(-scaled_bytes(text, name) // 1024)


def scaled_bytes(text: str, name: str = "size") -> int:
    """virsh's scaled integer (vshCommandOptScaledInt with scale 1024) in bytes.

    No suffix is KiB; ``b``/``byte``/``bytes`` are bytes; ``k``/``KiB``, ``M``/``MiB``...
    are powers of 1024 and ``KB``, ``MB``... powers of 1000, whatever the case (as
    virScaleInteger reads them). Anything else, or more than 2^64 - 1 bytes, is virsh's
    error, with virScaleInteger's reason as the second line where it has one.
    """
    first = f"Scaled numeric value '{text}' for <{name}> option is malformed or out of range"
    match = _SCALED.match(text)
    if match is None:
        raise UsageError(first)
    value, suffix = int(match.group(1)), text[match.end():]
    if value > _ULLONG_MAX:
        raise UsageError(first)
    lower = suffix.lower()
    if not suffix:
        scale = 1024
    elif lower in ("b", "byte", "bytes"):
        scale = 1
    else:
        power = _POWERS.find(lower[0])
        if power <= 0 or lower[1:] not in ("", "ib", "b"):
            raise UsageError(first, f"invalid argument: unknown suffix '{suffix}'")
        scale = (1000 if lower[1:] == "b" else 1024) ** power
    if value > _ULLONG_MAX // scale:
        raise UsageError(first, f"numerical overflow: value too large: {text}")
    return value * scale


def _uint(text: str, name: str) -> int:
    """virsh's unsigned int option (vshCommandOptUInt): digits, at most 2^32 - 1."""
    match = _UINT.fullmatch(text)
    if match is None or int(match.group(1)) > 2**32 - 1:
        raise UsageError(f"Numeric value '{text}' for <{name}> option is malformed or out "
                         "of range")
    return int(match.group(1))


def _affect(args: Args, legacy: int) -> int:
    """--live/--config/--current -> VIR_DOMAIN_AFFECT_* flags; ``legacy`` without any
    (the flags libvirt's old call, which virsh uses then, passes to the driver)."""
    args.exclusive(("current", "live"), ("current", "config"))
    if not any(args.flag(o) for o in ("live", "config", "current")):
        return legacy
    return (AFFECT_LIVE if args.flag("live") else 0) | \
        (AFFECT_CONFIG if args.flag("config") else 0)


# -- memory ------------------------------------------------------------------------------

@command("setmem", "domain", "change memory allocation", description=(
    "Change the memory allocation of a domain, in KiB unless SIZE has a suffix (b, KB, "
    "KiB, M, MB, G, GiB...). --config changes the currentMemory of the persistent "
    "definition (at most its memory); --live the balloon target of the running guest, "
    "which needs the domain's virtio balloon (added at define on x86_64 and ppc64, as "
    "libvirt does, unless <memballoon model='none'/>) and a guest balloon driver. "
    "Without --live, --config or "
    "--current, the running domain is changed, as virsh does."),
    args=(DOM, SIZE), opts=(CONFIG, LIVE, CURRENT))
def cmd_setmem(sh: Shell, args: Args) -> None:
    flags = _affect(args, AFFECT_LIVE)
    kib = scaled_kib(args.req("size"))
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):
        dom.set_memory(kib, flags)


@command("setmaxmem", "domain", "change maximum memory limit", description=(
    "Change the maximum memory (the memory element) of a domain, in KiB unless SIZE has "
    "a suffix. Only the persistent definition can change (--config, or a shut-off "
    "domain): the "
    "maximum of a running domain cannot, as in libvirt's QEMU driver. A currentMemory "
    "above the new maximum is lowered to it."),
    args=(DOM, SIZE), opts=(CONFIG, LIVE, CURRENT))
def cmd_setmaxmem(sh: Shell, args: Args) -> None:
    flags = _affect(args, 0) | MEM_MAXIMUM
    kib = scaled_kib(args.req("size"))
    dom = sh.domain(args.req("domain"))
    with sh.failing("Unable to change MaxMemorySize"):
        dom.set_memory(kib, flags)


@command("dommemstat", "monitor", "get memory statistics for a domain", description=(
    "Memory statistics of a running domain, one 'name value' per line in KiB (counts for "
    "the fault counters): the balloon's 'actual' size and the guest's own figures when "
    "the domain has a virtio balloon, and always 'rss', what the QEMU process has "
    "resident on the host."), args=(DOM,))
def cmd_dommemstat(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to get memory statistics for domain {dom.name}"):
        stats = dom.memory_stats()
    for name, value in stats.items():
        sh.print(f"{name} {value}")


# -- vCPUs -------------------------------------------------------------------------------

@command("setvcpus", "domain", "change number of virtual CPUs", description=(
    "Change the number of vCPUs of a domain. --config sets the count the persistent "
    "definition starts with (vcpu current='N', at most the maximum); with --maximum "
    "(which needs --config) the maximum itself (the vcpu value), the count lowered to it. "
    "--live plugs vCPUs into the running guest, or unplugs those it plugged (KVM guests "
    "only; the guest must release them), see docs/CONFORMANCE.md; --guest is refused (no "
    "guest agent). Without --live, --config or --current, the running domain is changed, "
    "as virsh does."),
    args=(DOM, Arg("count", "number of virtual CPUs")),
    opts=(Opt("maximum", "set maximum limit on next boot"), CONFIG, LIVE, CURRENT,
          Opt("guest", "modify cpu state in the guest")))
def cmd_setvcpus(sh: Shell, args: Args) -> None:
    args.exclusive(("current", "live"), ("current", "config"), ("guest", "config"))
    if args.flag("maximum") and not args.flag("config"):
        raise UsageError("Option --config is required by option --maximum")
    count = _uint(args.req("count"), "count")
    flags = _affect(args, AFFECT_LIVE if not args.flag("guest") else 0)
    flags |= (VCPU_MAXIMUM if args.flag("maximum") else 0) | \
        (VCPU_GUEST if args.flag("guest") else 0)
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):
        dom.set_vcpus(count, flags)


def _cpus(cpumap: bytes, maxcpu: int) -> list[int]:
    """The host CPUs a libvirt cpumap holds (bit ``n % 8`` of byte ``n // 8``)."""
    return [n for n in range(maxcpu) if n // 8 < len(cpumap) and cpumap[n // 8] >> n % 8 & 1]


def _affinity(cpumap: bytes, maxcpu: int, pretty: bool) -> str:
    """virsh's affinity: ``yy-y`` per host CPU, or with --pretty ``0-1,3 (out of 4)``."""
    used = _cpus(cpumap, maxcpu)
    if not pretty:
        return "".join("y" if n in used else "-" for n in range(maxcpu))
    ranges: list[str] = []
    for n in used:
        if ranges and int(ranges[-1].rpartition("-")[2]) == n - 1:
            start = ranges[-1].partition("-")[0]
            ranges[-1] = f"{start}-{n}"
        else:
            ranges.append(str(n))
    return f"{','.join(ranges)} (out of {maxcpu})"


@command("vcpuinfo", "monitor", "detailed domain vcpu information", description=(
    "Per vCPU of the domain: its number, the host CPU it ran on last, its state, the CPU "
    "time it used and the host CPUs it may run on (its affinity: one y or - per host CPU, "
    "with --pretty as a list of ranges). For a shut-off domain, as virsh does, the "
    "vCPUs it would start with, N/A for the rest."),
    args=(DOM,), opts=(Opt("pretty", "return human readable output"),))
def cmd_vcpuinfo(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    pretty = args.flag("pretty")
    with sh.failing(""):
        maxcpu = sh.conn().node_info().cpus
        info = dom.info()
        pins: list[bytes] = []
        try:
            vcpus = dom.vcpus()
        except QemudClientError:
            if info.state != DomainState.SHUTOFF:
                raise
            vcpus = None
            # a shut-off domain: the pinning its definition gives, as virsh shows it
            pins = dom.vcpu_pin_info(AFFECT_CONFIG)
    blocks: list[list[tuple[str, object]]] = []
    if vcpus is not None:
        for v in vcpus:
            rows: list[tuple[str, object]] = [
                ("VCPU:", v.number), ("CPU:", v.cpu),
                ("State:", _VCPU_STATES.get(v.state, "no state"))]
            if v.cpu_time_ns:
                rows.append(("CPU time:", f"{v.cpu_time_ns / 1e9:.1f}s"))
            rows.append(("CPU Affinity:", _affinity(v.cpumap, maxcpu, pretty)))
            blocks.append(rows)
    else:
        for n in range(info.vcpus):
            # ("CPU time" without a colon: virsh's own spelling in this case)
            blocks.append([("VCPU:", n), ("CPU:", "N/A"), ("State:", "N/A"),
                           ("CPU time", "N/A"),
                           ("CPU Affinity:", _affinity(pins[n], maxcpu, pretty))])
    sh.write("\n".join("".join(f"{key:<15} {value}\n" for key, value in rows)
                       for rows in blocks))
    sh.print()
