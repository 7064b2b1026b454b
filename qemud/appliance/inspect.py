"""Host inspection: what the appliance layer sees of the hardware it runs on.

Everything is read from ``/proc`` and ``/sys`` under ``config.appliance.inspect_root``
(``/`` in production; tests point it at a fake tree), every time it is asked: the host
may have changed since the daemon started (a NIC swapped, RAM added), and the rendered
domain XML is meant to be renewed on each boot of the appliance.

* memory: ``MemTotal`` of ``/proc/meminfo``;
* CPUs: physical cores, hyperthreads excluded — distinct (package, core) pairs from
  ``/sys/devices/system/cpu/cpuN/topology``, else from ``physical id``/``core id`` in
  ``/proc/cpuinfo``, else the number of processors;
* NICs: ``/sys/class/net/*`` that have a ``device`` link (physical ones: ``lo``, bridges,
  taps, veths, bonds have none), with the MAC from ``address``; ordered by name
  naturally (eth2 before eth10);
* SMBIOS/DMI: ``/sys/class/dmi/id/*``. A host without DMI (many ARM boards, some VMs) is
  normal: ``dmi`` is then ``None``; a single unreadable field (``product_serial`` and
  ``product_uuid`` are root-only) is simply left out.

Reading sysfs/procfs files never blocks, so this runs in the loop.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol.payloads import RenderArgs, StringReply

if TYPE_CHECKING:
    from qemud.dispatch import Handler

    from . import ApplianceContext

__all__ = ["HostInventory", "NIC", "inspect_host", "DMI_FIELDS", "install"]

#: the /sys/class/dmi/id files reported (and inherited by templates' <qemud:smbios>)
DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "product_serial",
              "product_uuid", "product_sku", "product_family", "board_vendor", "board_name",
              "board_version", "board_serial", "board_asset_tag", "bios_vendor",
              "bios_version", "bios_date")


#: the DMI files only root may read (the host's serial numbers and UUID): not shown to
#: read-only clients, nor inherited by the templates they render
PRIVATE_DMI = frozenset({"product_serial", "product_uuid", "board_serial"})


@dataclass
class NIC:
    name: str
    mac: str
    driver: str = ""  # basename of device/driver, when known
    speed: int | None = None  # Mb/s, when the link is up and the driver tells


@dataclass
class HostInventory:
    memory_kib: int = 0
    logical_cpus: int = 0  # online CPUs, hyperthreads included
    cores: int = 0  # physical cores (hyperthreads excluded)
    sockets: int = 0
    cpu_source: str = ""  # "sysfs", "cpuinfo" or "cpuinfo-processors"
    nics: list[NIC] = field(default_factory=list)
    dmi: dict[str, str] | None = None  # None: no DMI on this host

    @property
    def memory_bytes(self) -> int:
        return self.memory_kib * 1024

    def public(self) -> HostInventory:
        """This inventory without the DMI fields the kernel lets only root read
        (:data:`PRIVATE_DMI`): what a read-only client gets. The daemon runs as root
        and reads them; the read-only socket is open to every local user."""
        if not self.dmi:
            return self
        dmi = {k: v for k, v in self.dmi.items() if k not in PRIVATE_DMI}
        return replace(self, dmi=dmi)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["memory_bytes"] = self.memory_bytes
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_memory_kib(root: Path) -> int:
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            try:
                value = int(rest.split()[0])
            except (IndexError, ValueError):
                return 0
            unit = rest.split()[1].lower() if len(rest.split()) > 1 else "kb"
            return value if unit == "kb" else value // 1024 if unit == "b" else value
    return 0


def read_cpus(root: Path) -> tuple[int, int, int, str]:
    """(logical CPUs, physical cores, sockets, where it came from)."""
    cpu_root = root / "sys/devices/system/cpu"
    cores: set[tuple[str, str]] = set()
    logical = 0
    try:
        entries = sorted(cpu_root.glob("cpu[0-9]*"), key=lambda p: _natural_key(p.name))
    except OSError:
        entries = []
    for cpu in entries:
        if not re.fullmatch(r"cpu\d+", cpu.name):
            continue
        if _read(cpu / "online") == "0":
            continue  # offline: its topology is gone or stale
        core = _read(cpu / "topology/core_id")
        if core is None:
            continue
        package = _read(cpu / "topology/physical_package_id") or "0"
        cores.add((package, core))
        logical += 1
    if cores:
        return logical, len(cores), len({p for p, _ in cores}), "sysfs"
    # fallback: /proc/cpuinfo, one block per logical CPU
    blocks = [b for b in (_read(root / "proc/cpuinfo") or "").split("\n\n") if b.strip()]
    pairs: set[tuple[str, str]] = set()
    processors = 0
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "processor" not in fields:
            continue
        processors += 1
        if "core id" in fields:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    if pairs and len(pairs) <= processors:
        return processors, len(pairs), len({p for p, _ in pairs}), "cpuinfo"
    if processors:
        return processors, processors, 1, "cpuinfo-processors"
    count = os.cpu_count() or 1  # nothing readable at all: what Python sees
    return count, count, 1, "os.cpu_count"


def read_nics(root: Path) -> list[NIC]:
    net = root / "sys/class/net"
    try:
        names = sorted((p.name for p in net.iterdir()), key=_natural_key)
    except OSError:
        return []
    nics = []
    for name in names:
        iface = net / name
        if name == "lo" or not os.path.exists(iface / "device"):
            continue  # virtual: loopback, bridge, tap, veth, bond, vlan...
        mac = (_read(iface / "address") or "").lower()
        driver_link = iface / "device" / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if os.path.islink(driver_link) \
            else ""
        speed_text = _read(iface / "speed")
        try:
            speed: int | None = int(speed_text) if speed_text else None
        except ValueError:
            speed = None
        if speed is not None and speed < 0:
            speed = None  # -1: link down
        nics.append(NIC(name=name, mac=mac, driver=driver, speed=speed))
    return nics


def read_dmi(root: Path) -> dict[str, str] | None:
    dmi = root / "sys/class/dmi/id"
    if not dmi.is_dir():
        return None
    out = {}
    for name in DMI_FIELDS:
        value = _read(dmi / name)
        if value:
            out[name] = value
    return out


def inspect_host(root: str | os.PathLike[str] = "/") -> HostInventory:
    base = Path(root)
    logical, cores, sockets, source = read_cpus(base)
    return HostInventory(memory_kib=read_memory_kib(base), logical_cpus=logical, cores=cores,
                         sockets=sockets, cpu_source=source, nics=read_nics(base),
                         dmi=read_dmi(base))


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    def host_inspect(call: Any, args: Empty) -> StringReply:
        host = inspect_host(ctx.daemon.config.appliance.inspect_root)
        return StringReply((host.public() if call.readonly else host).to_json())

    def render(call: Any, args: RenderArgs) -> StringReply:
        from .template import render_for_host  # on first use: see its docstring
        return render_for_host(ctx, args, readonly=call.readonly)

    return {Procedure.HOST_INSPECT: host_inspect, Procedure.APPLIANCE_RENDER: render}
