"""Host, hypervisor, statistics and daemon administration commands."""

from __future__ import annotations

from importlib import metadata

from ...format import format_time, key_values, table, version_string
from ..context import Shell
from ..registry import DOMAIN, Arg, Args, CommandError, Opt, UsageError, command


def client_version() -> str:
    try:
        return metadata.version("qemud")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "unknown"


@command("uri", "host", "print the hypervisor canonical URI")
def cmd_uri(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get URI"):
        sh.print(sh.conn().uri())


@command("hostname", "host", "print the hypervisor hostname")
def cmd_hostname(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get hostname"):
        sh.print(sh.conn().hostname())


@command("version", "host", "show version", description=(
    "Versions of the client library, the daemon and the hypervisor it runs."), json=True)
def cmd_version(sh: Shell, args: Args) -> None:
    conn = sh.conn()
    with sh.failing("failed to get the daemon version"):
        v = conn.version()
    mine = client_version()
    hv = version_string(v.hypervisor_version) if v.hypervisor_version else None
    if sh.want_json(args):
        sh.print_json({
            "library": mine, "daemon": v.daemon_version_string,
            "daemon_version_code": v.daemon_version, "protocol": conn.protocol_version,
            "hypervisor": v.hypervisor, "hypervisor_version": hv,
            "hypervisor_version_code": v.hypervisor_version,
        })
        return
    sh.print(f"Compiled against library: qemud {mine}")
    sh.print(f"Using library: qemud {mine}")
    sh.print(f"Using API: qemud protocol {conn.protocol_version}")
    sh.print(f"Running against daemon: qemud {v.daemon_version_string}")
    if hv is None:
        sh.print(f"Running hypervisor: {v.hypervisor} (version unknown)")
    else:
        sh.print(f"Running hypervisor: {v.hypervisor} {hv}")
    sh.print()


@command("nodeinfo", "host", "node information", description=(
    "Returns basic information about the node: CPUs, NUMA cells and memory."), json=True)
def cmd_nodeinfo(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get node information"):
        n = sh.conn().node_info()
    if sh.want_json(args):
        sh.print_json({"model": n.model, "cpus": n.cpus, "mhz": n.mhz, "sockets": n.sockets,
                       "cores": n.cores, "threads": n.threads, "nodes": n.nodes,
                       "memory_kib": n.memory_kib})
        return
    sh.write(key_values([
        ("CPU model:", n.model), ("CPU(s):", n.cpus), ("CPU frequency:", f"{n.mhz} MHz"),
        ("CPU socket(s):", n.sockets), ("Core(s) per socket:", n.cores),
        ("Thread(s) per core:", n.threads), ("NUMA cell(s):", n.nodes),
        ("Memory size:", f"{n.memory_kib} KiB"),
    ], width=20))
    sh.print()


@command("capabilities", "host", "capabilities", description=(
    "Returns the capabilities of the hypervisor and the host as XML."))
def cmd_capabilities(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get capabilities"):
        xml = sh.conn().capabilities()
    sh.write(xml if xml.endswith("\n") else xml + "\n")


def _value(v: int | float | str) -> str:
    return repr(v) if isinstance(v, float) else str(v)


@command("domstats", "monitor", "get statistics about one or multiple domains",
         description=("Statistics (state, cpu, balloon, vcpu, block, net ...) as "
                      "name=value lines; every domain when none is named."),
         args=(Arg("domain", "list of domains to get stats for", required=False, many=True,
                   complete=DOMAIN),),
         opts=(Opt("all", "every domain, active or not (the default when none is named)"),),
         json=True)
def cmd_domstats(sh: Shell, args: Args) -> None:
    if args.flag("all") and args.many("domain"):
        raise UsageError("Options --all and <domain> are mutually exclusive")
    doms = [sh.domain(key) for key in args.many("domain")]
    with sh.failing("failed to get domain statistics"):
        records = sh.conn().domain_stats(doms or None)
    if sh.want_json(args):
        sh.print_json([{"domain": d.name, "uuid": d.uuid, "stats": stats}
                       for d, stats in records])
        return
    for d, stats in records:
        sh.print(f"Domain: '{d.name}'")
        for name, value in stats.items():
            sh.print(f"  {name}={_value(value)}")
        sh.print()


@command("nodestats", "host", "host CPU and memory statistics", description=(
    "The daemon's host statistics as name=value lines."), json=True)
def cmd_nodestats(sh: Shell, args: Args) -> None:
    with sh.failing("failed to get node statistics"):
        stats = sh.conn().node_stats()
    if sh.want_json(args):
        sh.print_json(stats)
        return
    for name, value in stats.items():
        sh.print(f"{name}={_value(value)}")


@command("client-list", "admin", "list clients connected to the daemon", description=(
    "Every client connected to the daemon (needs a read-write connection)."), json=True)
def cmd_client_list(sh: Shell, args: Args) -> None:
    with sh.failing("failed to obtain list of connected clients"):
        clients = sh.conn().client_list()
    clients.sort(key=lambda c: c.id)
    if sh.want_json(args):
        sh.print_json([{"id": c.id, "transport": c.transport, "identity": c.identity,
                        "readonly": bool(c.readonly), "connected_since": c.connected_since,
                        "calls": c.calls} for c in clients])
        return
    rows = [[str(c.id), format_time(c.connected_since, compact_zone=True), c.transport,
             "yes" if c.readonly else "no", str(c.calls), c.identity] for c in clients]
    sh.write(table(["Id", "Connection time", "Transport", "Read-only", "Calls", "Identity"],
                   rows))
    sh.print()


@command("client-disconnect", "admin", "force disconnect a client from the daemon",
         args=(Arg("client", "client which to disconnect, specified by ID"),))
def cmd_client_disconnect(sh: Shell, args: Args) -> None:
    text = args.req("client")
    if not text.isascii() or not text.isdigit() or int(text) >= 2**64:
        raise CommandError(f"Invalid client ID '{text}' (a client-list Id)")
    client_id = int(text)
    with sh.failing(f"Failed to disconnect client '{client_id}'"):
        sh.conn().client_disconnect(client_id)
    sh.print(f"Client '{client_id}' disconnected")
