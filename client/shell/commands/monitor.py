"""virsh's monitoring commands built on what the daemon already reports: domblkstat,
domifstat, vcpucount, domdisplay, ttyconsole (Domain Monitoring) and maxvcpus,
nodememstats, nodecpustats (Host and Hypervisor).

Counters come from DOMAIN_STATS, the host's from NODE_GET_CPU_STATS / NODE_GET_MEMORY_STATS
(virNodeGetCPUStats / virNodeGetMemoryStats, per CPU or cell) and the rest from the domain
XML and the capabilities. Output, option checks
and refusals follow virsh's (tools/virsh-domain-monitor.c, virsh-domain.c, virsh-host.c);
where the daemon reports an error itself its words are used, and where the shell has to
make one up it uses the daemon's wording for the same condition.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from protocol.constants import DomainState

from ...domain import XML_INACTIVE, XML_SECURE, Domain
from ..context import Shell
from ..registry import Arg, Args, CommandError, Opt, UsageError, command
from .domain import DOM

Stats = dict[str, int | float | str]

#: DOMAIN_STATS' block counters in virsh's order, with virsh's names: the legacy one
#: where it has one, else libvirt's typed-parameter field; then the --human wording
#: (virsh's errs is left out: QEMU reports no error count, as with libvirt)
BLOCK_FIELDS = (
    ("rd.reqs", "rd_req", "number of read operations:"),
    ("rd.bytes", "rd_bytes", "number of bytes read:"),
    ("wr.reqs", "wr_req", "number of write operations:"),
    ("wr.bytes", "wr_bytes", "number of bytes written:"),
    ("fl.reqs", "flush_operations", "number of flush operations:"),
    ("rd.times", "rd_total_times", "total duration of reads (ns):"),
    ("wr.times", "wr_total_times", "total duration of writes (ns):"),
    ("fl.times", "flush_total_times", "total duration of flushes (ns):"),
)

#: DOMAIN_STATS' NIC counters (the guest's view) in virsh's order, with virsh's names
NET_FIELDS = (
    ("rx.bytes", "rx_bytes"), ("rx.pkts", "rx_packets"), ("rx.errs", "rx_errs"),
    ("rx.drop", "rx_drop"), ("tx.bytes", "tx_bytes"), ("tx.pkts", "tx_packets"),
    ("tx.errs", "tx_errs"), ("tx.drop", "tx_drop"),
)

#: the graphics schemes virsh's domdisplay knows, in its order
DISPLAY_SCHEMES = ("vnc", "spice", "rdp")
#: listen addresses that mean "every address" (virSocketAddrIsWildcard)
_WILDCARDS = ("0.0.0.0", "::", "[::]")


# -- shared ------------------------------------------------------------------------------

def _stats(sh: Shell, dom: Domain) -> Stats:
    """DOMAIN_STATS of one domain."""
    with sh.failing(f"failed to get statistics of domain '{dom.name}'"):
        for _dom, stats in sh.conn().domain_stats([dom]):
            return stats
    raise CommandError(f"failed to get statistics of domain '{dom.name}'",
                       "the daemon returned no record")


def _running(stats: Stats) -> bool:
    return stats.get("state.state") not in (DomainState.SHUTOFF, DomainState.NOSTATE, None)


def _not_running(dom: Domain) -> str:
    """The daemon's own words for an operation that needs a running domain."""
    return f"domain '{dom.name}' is not running"


def _mac(text: str) -> str | None:
    """``text`` as a normalised MAC address (lower case), None if it is not one
    (virMacAddrParse: six hex bytes separated by ':')."""
    parts = text.split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        return None
    try:
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError:
        return None


# -- domblkstat --------------------------------------------------------------------------

def block_counters(stats: Stats, device: str) -> dict[str, int] | None:
    """The block counters (DOMAIN_STATS names without ``block.N.``) of disk ``device`` (its
    target dev or source path, as libvirt's virDomainDiskByName matches it), or summed over
    every disk when ``device`` is "" (libvirt's totals). None: no such disk."""
    totals: dict[str, int] = {}
    found = False
    for i in range(int(stats.get("block.count", 0))):
        if device and device not in (stats.get(f"block.{i}.name"),
                                     stats.get(f"block.{i}.path")):
            continue
        found = True
        for key, _legacy, _human in BLOCK_FIELDS:
            value = stats.get(f"block.{i}.{key}")
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
        if device:
            break
    return totals if found or not device else None


@command("domblkstat", "monitor", "get device block stats for a domain", description=(
    "Get device block stats for a running domain: one 'DEVICE name value' line per "
    "counter (requests, bytes, flushes and the ns spent in each, from QEMU). DEVICE is a "
    "disk's target (vda) or source path; without it the counters of every disk are "
    "summed and the device column is empty, as in virsh. --human explains each field."),
    args=(DOM, Arg("device", "block device", required=False)),
    opts=(Opt("human", "print a more human readable output"),))
def cmd_domblkstat(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    device = args.get("device") or ""
    stats = _stats(sh, dom)
    if not _running(stats):
        raise CommandError(_not_running(dom))
    counters = block_counters(stats, device)
    if counters is None:
        raise CommandError(f"invalid path: {device}")
    if not counters and int(stats.get("block.count", 0)):
        raise CommandError(f"Failed to get block stats for domain '{dom.name}' device "
                           f"'{device}'", "QEMU did not report block statistics")
    human = args.flag("human")
    if human:
        sh.print(f"Device: {device}")
        device = ""
    for key, legacy, text in BLOCK_FIELDS:
        if key in counters:
            sh.print(f"{device} {text:<31} {counters[key]}" if human else
                     f"{device} {legacy} {counters[key]}")


# -- domifstat ---------------------------------------------------------------------------

def interface_index(stats: Stats, interface: str) -> int | None:
    """The ``net.N`` index of ``interface``: by MAC address when it reads as one, else by
    host device name (libvirt's virDomainNetFind); None if no NIC matches."""
    mac = _mac(interface)
    for i in range(int(stats.get("net.count", 0))):
        if mac is not None:
            if _mac(str(stats.get(f"net.{i}.mac", ""))) == mac:
                return i
        elif stats.get(f"net.{i}.name") == interface:
            return i
    return None


@command("domifstat", "monitor", "get network interface stats for a domain", description=(
    "Get network interface stats for a running domain, as the guest sees them (rx is "
    "what it received): bytes, packets, errors and drops. INTERFACE is the host device "
    "name (domiflist's Interface) or the MAC address. A user-mode (slirp) interface has no "
    "counters: it has no host device and QEMU keeps none for it."),
    args=(DOM, Arg("interface", "interface device specified by name or MAC Address")))
def cmd_domifstat(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    interface = args.req("interface")
    context = f"Failed to get interface stats {dom.name} {interface}"
    stats = _stats(sh, dom)
    if not _running(stats):
        raise CommandError(context, _not_running(dom))
    index = interface_index(stats, interface)
    if index is None:
        raise CommandError(context, f"'{interface}' is not a known interface")
    values = [(name, stats.get(f"net.{index}.{key}")) for key, name in NET_FIELDS]
    if not any(isinstance(v, int) for _name, v in values):
        kind = stats.get(f"net.{index}.type")
        why = ("a user-mode interface has no host device and QEMU keeps no counters for "
               "it") if kind == "user" else "its host device is not known"
        raise CommandError(context, f"no statistics for interface '{interface}': {why}")
    for name, value in values:
        if isinstance(value, int) and value >= 0:
            sh.print(f"{interface} {name} {value}")


# -- vcpucount ---------------------------------------------------------------------------

def vcpu_counts(domain_xml: str) -> tuple[int, int]:
    """(maximum, current) of a domain XML's ``<vcpu current='C'>M</vcpu>``."""
    el = ET.fromstring(domain_xml).find("vcpu")
    maximum = int((el.text or "1").strip()) if el is not None else 1
    current = el.get("current") if el is not None else None
    return maximum, int(current) if current else maximum


def _persistent(sh: Shell, dom: Domain) -> bool:
    for d in sh.conn().list_domains(0):
        if d.uuid == dom.uuid and d.summary is not None:
            return bool(d.summary.persistent)
    return True


@command("vcpucount", "monitor", "domain vcpu counts", description=(
    "Returns the number of virtual CPUs used by the domain. Without options, virsh's "
    "table: the maximum and current counts of the persistent definition (config) and of "
    "the running domain (live); a shut-off domain has only config rows, a transient one "
    "only live rows. Otherwise one number: --maximum or --active (the count in use), of "
    "--live, --config or --current (the default: the domain's current state)."),
    args=(DOM,),
    opts=(Opt("maximum", "get maximum count of vcpus"),
          Opt("active", "get number of currently active vcpus"),
          Opt("live", "get value from running domain"),
          Opt("config", "get value to be used on next boot"),
          Opt("current", "get value according to current domain state")))
def cmd_vcpucount(sh: Shell, args: Args) -> None:
    maximum, active, live, config, current = (
        args.flag(o) for o in ("maximum", "active", "live", "config", "current"))
    every = not (maximum or active or live or config or current)
    # virsh's backwards compatibility: --current alone (or with --live/--config) was
    # once the opposite of --maximum, i.e. --active
    if current and not maximum and not active:
        current = False
    for first, second, both in (("current", "live", current and live),
                                ("current", "config", current and config),
                                ("active", "maximum", active and maximum)):
        if both:
            raise UsageError(f"Options --{first} and --{second} are mutually exclusive")
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):
        running = dom.is_active()
        persistent = _persistent(sh, dom)
        live_xml = dom.xml() if running else None
        config_xml = dom.xml(XML_INACTIVE) if persistent else None
    if every:
        rows: list[tuple[str, str, int]] = []
        config_counts = vcpu_counts(config_xml) if config_xml is not None else None
        live_counts = vcpu_counts(live_xml) if live_xml is not None else None
        for which, index in (("maximum", 0), ("current", 1)):
            if config_counts is not None:
                rows.append((which, "config", config_counts[index]))
            if live_counts is not None:
                rows.append((which, "live", live_counts[index]))
        for which, state, count in rows:
            sh.print(f"{which:<12} {state:<12} {count:>3}")
        return
    if live and config:
        raise CommandError("Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' "
                           "are mutually exclusive")
    if live or (not config and running):
        if live_xml is None:
            raise CommandError(_not_running(dom))
        source = live_xml
    else:
        if config_xml is None:
            raise CommandError("transient domains do not have any persistent config")
        source = config_xml
    counts = vcpu_counts(source)
    sh.print(str(counts[0] if maximum else counts[1]))


# -- domdisplay, ttyconsole --------------------------------------------------------------

def display_uri(domain_xml: str, kind: str | None = None, server: str | None = None
                ) -> str | None:
    """virsh domdisplay's URI of the first graphics device (of scheme ``kind`` if given)
    with a port: ``vnc://[:PASSWORD@]HOST:DISPLAY`` (the VNC port less 5900), other
    schemes with the port itself. A wildcard listen address is replaced by ``server``
    (the connection's host), else ``localhost``; the password is in the XML only when it
    was asked for with the secure flag."""
    uris = display_uris(domain_xml, kind, server)
    return uris[0] if uris else None


def display_uris(domain_xml: str, kind: str | None = None, server: str | None = None
                 ) -> list[str]:
    """What ``domdisplay --all`` prints: the URI of each scheme's first graphics device
    with a port (as :func:`display_uri` makes it), in virsh's scheme order."""
    root = ET.fromstring(domain_xml)
    uris: list[str] = []
    for scheme in DISPLAY_SCHEMES:
        if kind is not None and kind != scheme:
            continue
        for gfx in root.iterfind("./devices/graphics"):
            if gfx.get("type") != scheme:
                continue
            try:
                port = int(gfx.get("port", "0"))
            except ValueError:
                port = 0
            if port <= 0:
                continue
            listen = gfx.get("listen")
            if listen is None:
                el = gfx.find("listen[@type='address']")
                listen = el.get("address") if el is not None else None
            if listen in _WILDCARDS:
                listen = server
            host = listen or "localhost"
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            passwd = gfx.get("passwd")
            auth = f":{passwd}@" if scheme == "vnc" and passwd is not None else ""
            if scheme == "vnc":
                port -= 5900
            uris.append(f"{scheme}://{auth}{host}:{port}")
            break
    return uris


@command("domdisplay", "monitor", "domain display connection URI", description=(
    "Output the URI which can be used to connect to the graphical display of a running "
    "domain, e.g. vnc://127.0.0.1:0 (the VNC display number, port 5900 + N). "
    "--include-password puts the VNC password in it (vnc://:PASSWORD@HOST:N), which needs "
    "the domain's secrets: a read-only connection is refused, as for dumpxml "
    "--security-info. --all prints every graphical display, one URI a line, as virsh "
    "does for a domain with several (--type is then not a filter, as in virsh); a qemud "
    "domain has at most one, its VNC display."),
    args=(DOM,),
    opts=(Opt("include-password", "includes the password into the connection URI if "
                                  "available"),
          Opt("type", "select particular graphical display (e.g. \"vnc\", \"spice\", "
                      "\"rdp\")", "string", suggest=DISPLAY_SCHEMES),
          Opt("all", "show all possible graphical displays")))
def cmd_domdisplay(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    flags = XML_SECURE if args.flag("include-password") else 0
    with sh.failing(""):
        if not dom.is_active():
            raise CommandError("Domain is not running")
        xml = dom.xml(flags)
        server = urlsplit(sh.conn().uri()).hostname
    kind = args.get("type")
    every = args.flag("all")
    uris = display_uris(xml, None if every else kind, server)
    if not uris:
        raise CommandError(f"No graphical display with type '{kind}' found" if kind else
                           "No graphical display found")
    for uri in uris if every else uris[:1]:
        sh.print(uri)


def console_tty(domain_xml: str) -> str | None:
    """The pty of the domain's first console (``<console tty>``, as virsh reads it), else
    of its first pty serial port; None if it has none (or is not running)."""
    root = ET.fromstring(domain_xml)
    for console in root.iterfind("./devices/console"):
        if console.get("tty"):
            return console.get("tty")
    for serial in root.iterfind("./devices/serial[@type='pty']"):
        source = serial.find("source")
        if source is not None and source.get("path"):
            return source.get("path")
    return None


@command("ttyconsole", "monitor", "tty console", description=(
    "Output the device (a host pty, e.g. /dev/pts/3) of the first console of a running "
    "domain: a <console type='pty'> or <serial type='pty'> device."), args=(DOM,))
def cmd_ttyconsole(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        running = dom.is_active()
        xml = dom.xml()
    path = console_tty(xml) if running else None
    if path is None:
        raise CommandError(_not_running(dom) if not running else
                           f"domain '{dom.name}' has no pty console (a <console "
                           "type='pty'> or <serial type='pty'> device)")
    sh.print(path)


# -- host --------------------------------------------------------------------------------

def machine_max_cpus(capabilities_xml: str, virt_type: str | None) -> int | None:
    """The vCPU limit the capabilities give (libvirt's ``<machine maxCpus='N'>``) for the
    host architecture's first machine type offering domain type ``virt_type`` (any type
    if None); None if they give none. Raises CommandError for a domain type no guest
    architecture offers."""
    root = ET.fromstring(capabilities_xml)
    host_arch = (root.findtext("./host/cpu/arch") or "").strip()
    arches = [a for a in root.iterfind("./guest/arch")
              if virt_type is None or a.find(f"domain[@type='{virt_type}']") is not None]
    if not arches:
        offered = sorted({d.get("type", "") for d in root.iterfind("./guest/arch/domain")})
        raise CommandError(f"unknown type '{virt_type}' (this host offers: "
                           f"{', '.join(offered) or 'none'})")
    arches.sort(key=lambda a: a.get("name") != host_arch)
    for machine in arches[0].iterfind("machine"):
        value = machine.get("maxCpus")
        if value and value.isdigit():
            return int(value)
    return None


@command("maxvcpus", "host", "connection vcpu maximum", description=(
    "Show the maximum number of virtual CPUs for guests on this connection: the "
    "maxCpus the capabilities give for the host architecture's default machine type "
    "(listed first; of domain type --type: qemu or kvm), as QEMU's query-machines "
    "reports it. When the capabilities give none the command says so rather than guess."),
    opts=(Opt("type", "domain type", "string", suggest=("qemu", "kvm")),))
def cmd_maxvcpus(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get capabilities"):
        caps = sh.conn().capabilities()
    virt_type = args.get("type")
    try:
        limit = machine_max_cpus(caps, virt_type)
    except ET.ParseError as exc:
        raise CommandError("failed to read the capabilities", str(exc)) from None
    if limit is None:
        raise CommandError("the daemon reports no vCPU limit: its capabilities give no "
                           "maxCpus for the machine types of domain type "
                           f"'{virt_type or 'qemu'}'")
    sh.print(str(limit))


@command("nodememstats", "host", "Prints memory stats of the node.", description=(
    "Returns memory stats of the node, in KiB, as virsh prints them: total, free, buffers "
    "and cached of the host (its /proc/meminfo, read by the daemon); with --cell N those "
    "of NUMA cell N, which libvirt reads from the node's own meminfo: total and free only "
    "(a host without NUMA in sysfs is one cell, 0, with the host's four). A cell the host "
    "does not have is refused in libvirt's words."),
    opts=(Opt("cell", "prints specified cell statistics only.", "number", integer=True),))
def cmd_nodememstats(sh: Shell, args: Args) -> None:
    cell = args.number("cell")
    # virsh's first call (how many fields) is the one that fails for a bad cell
    with sh.failing("Unable to get number of memory stats"):
        stats = sh.conn().node_memory_stats(-1 if cell is None else cell)
    for name, value in stats.items():
        if isinstance(value, int):
            sh.print(f"{name:<7}: {value:>20} KiB")


def cpu_percent(first: dict[str, int], second: dict[str, int]) -> list[tuple[str, float]]:
    """virsh nodecpustats --percent: each mode's share of the time between two samples,
    and usage = user + system. A mode missing from either sample counts as no time, as
    in virsh, whose counters start at 0 for fields the daemon does not send."""
    modes = ("user", "system", "idle", "iowait")
    delta = {k: second[k] - first[k] if k in first and k in second else 0 for k in modes}
    total = sum(delta.values()) or 1
    share = {k: v / total * 100 for k, v in delta.items()}
    return [("usage", share["user"] + share["system"]), ("user", share["user"]),
            ("system", share["system"]), ("idle", share["idle"]),
            ("iowait", share["iowait"])]


def libvirt_cpu_times(stats: Stats) -> dict[str, int]:
    """virsh's nodecpustats rows from virNodeGetCPUStats' fields: libvirt's "kernel" is
    virsh's "system:"; rows the daemon did not give are left out, as virsh does."""
    rows = {"user": "user", "system": "kernel", "idle": "idle", "iowait": "iowait"}
    return {row: int(value) for row, field in rows.items()
            if isinstance(value := stats.get(field), int)}


@command("nodecpustats", "host", "Prints cpu stats of the node.", description=(
    "Returns cpu stats of the node, in nanoseconds summed over every CPU, or with --cpu N "
    "those of host CPU N: user, system, idle and iowait (as libvirt reads /proc/stat). "
    "--percent instead samples twice, one second apart, and prints each one's share of "
    "that second and the usage (user + system). A CPU the host does not have is refused "
    "in libvirt's words."),
    opts=(Opt("cpu", "prints specified cpu statistics only.", "number", integer=True),
          Opt("percent", "prints by percentage during 1 second"),))
def cmd_nodecpustats(sh: Shell, args: Args) -> None:
    cpu = args.number("cpu")
    number = -1 if cpu is None else cpu
    # virsh first asks how many fields there are, which fails only for a negative number
    # other than -1; a CPU the host lacks fails the call that reads the stats
    context = "Unable to get number of cpu stats" if number < -1 else \
        "Unable to get node cpu stats"

    def sample() -> dict[str, int]:
        with sh.failing(context):
            return libvirt_cpu_times(sh.conn().node_cpu_stats(number))
    first = sample()
    if not first:
        raise CommandError(context, "the daemon reported no CPU times")
    if not args.flag("percent"):
        for name, value in first.items():
            sh.print(f"{name + ':':<15} {value:>20}")
        return
    time.sleep(1)  # virsh's own sampling interval (the shell, never the daemon, waits)
    second = sample()
    for name, share in cpu_percent(first, second):
        sh.print(f"{name + ':':<15} {share:5.1f}%")
