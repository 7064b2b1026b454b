"""Facts about the host the daemon runs on (node info, hostname), read once.

Node info does not change while the daemon runs, so it is computed at start-up and the
NODE_INFO call (the benchmark's small read call) costs only the encoding.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from protocol.payloads import NodeInfoReply

__all__ = ["HostInfo", "read_host_info"]


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    node_info: NodeInfoReply


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_host_info(root: Path = Path("/")) -> HostInfo:
    """Inspect /proc and /sys under ``root`` (tests point it at a fake tree)."""
    meminfo = _read(root / "proc/meminfo")
    memory_kib = 0
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
            break
    cpuinfo = _read(root / "proc/cpuinfo")
    mhz = 0
    for line in cpuinfo.splitlines():
        if line.lower().startswith("cpu mhz"):
            mhz = int(float(line.split(":", 1)[1]))
            break
    cpu_root = root / "sys/devices/system/cpu"
    cpus = sorted(p for p in cpu_root.glob("cpu[0-9]*") if (p / "topology").is_dir())
    packages: set[str] = set()
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        package = _read(cpu / "topology/physical_package_id").strip() or "0"
        core = _read(cpu / "topology/core_id").strip() or cpu.name
        packages.add(package)
        cores.add((package, core))
    ncpus = len(cpus) or os.cpu_count() or 1
    sockets = max(1, len(packages))
    cores_per_socket = max(1, len(cores) // sockets) if cores else ncpus
    threads = max(1, ncpus // (sockets * cores_per_socket))
    nodes = max(1, len(list((root / "sys/devices/system/node").glob("node[0-9]*"))))
    info = NodeInfoReply(model=os.uname().machine, memory_kib=memory_kib, cpus=ncpus,
                         mhz=mhz, nodes=nodes, sockets=max(1, sockets // nodes),
                         cores=cores_per_socket, threads=threads)
    return HostInfo(hostname=socket.gethostname(), node_info=info)
