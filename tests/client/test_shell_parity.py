"""virsh parity of qemush's smaller options, against a real daemon: nodecpustats --cpu,
nodememstats --cell, undefine's storage options, domdisplay --all and dumpxml
--migratable / --update-cpu. Output and refusals are virsh's (tools/virsh-host.c,
virsh-domain.c)."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.connection import connect
from client.errors import InvalidArgError
from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess


def _fails(proc: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout,
                                                         proc.stderr)
    assert proc.stderr.splitlines() == [f"error: {line}" for line in lines], proc.stderr


def _proc_stat_ns(label: str) -> dict[str, int]:
    """libvirt's four sums of one /proc/stat line, in ns, read now."""
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == label:
            user, nice, system, idle, iowait, irq, softirq = (int(v) for v in fields[1:8])
            return {"user": (user + nice) * 10**9 // tick,
                    "system": (system + irq + softirq) * 10**9 // tick,
                    "idle": idle * 10**9 // tick, "iowait": iowait * 10**9 // tick}
    raise AssertionError(f"no {label} line in /proc/stat")


def _rows(text: str) -> dict[str, int]:
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["user:", "system:", "idle:", "iowait:"]
    assert all(re.fullmatch(r"[a-z:]+ +\d+", line) and len(line) == 36 for line in lines)
    return {line.split()[0][:-1]: int(line.split()[1]) for line in lines}


# -- nodecpustats --cpu ------------------------------------------------------------------

def test_nodecpustats_of_one_cpu(daemon: DaemonProcess, qemush: Qemush) -> None:
    """--cpu N gives host CPU N's own times (its cpuN line of /proc/stat), not the total:
    each is at least what /proc/stat said before the call and below the all-CPU sum."""
    u = daemon.uri
    last = max(int(line.split()[0][3:]) for line in
               Path("/proc/stat").read_text().splitlines() if re.match(r"cpu\d+ ", line))
    for cpu in sorted({0, last}):
        before = _proc_stat_ns(f"cpu{cpu}")
        values = _rows(ok(qemush("-r", "-c", u, "nodecpustats", "--cpu", str(cpu))))
        total = _proc_stat_ns("cpu")
        # (iowait is left out: the kernel documents that it may go down)
        for name in ("user", "system", "idle"):
            assert before[name] <= values[name] <= total[name], (cpu, name, before, values,
                                                                 total)
    if last > 0:  # more than one CPU: one CPU's idle time is less than all of theirs
        values = _rows(ok(qemush("-r", "-c", u, "nodecpustats", "--cpu", "0")))
        assert values["idle"] < _proc_stat_ns("cpu")["idle"]
    # -1 is libvirt's "all CPUs"
    assert _rows(ok(qemush("-r", "-c", u, "nodecpustats", "--cpu", "-1")))["idle"] >= \
        _proc_stat_ns("cpu")["idle"] - 10**10


def test_nodecpustats_percent_of_one_cpu(daemon: DaemonProcess, qemush: Qemush) -> None:
    text = ok(qemush("-r", "-c", daemon.uri, "nodecpustats", "--cpu", "0", "--percent"))
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["usage:", "user:", "system:", "idle:",
                                                   "iowait:"], text
    share = {line.split()[0][:-1]: float(line.split()[1][:-1]) for line in lines}
    assert 99.7 <= share["user"] + share["system"] + share["idle"] + share["iowait"] <= 100.3


def test_nodecpustats_refuses_a_cpu_the_host_lacks(daemon: DaemonProcess,
                                                  qemush: Qemush) -> None:
    u = daemon.uri
    missing = str(max(int(line.split()[0][3:]) for line in
                      Path("/proc/stat").read_text().splitlines()
                      if re.match(r"cpu\d+ ", line)) + 1)
    _fails(qemush("-r", "-c", u, "nodecpustats", "--cpu", missing),
           "Unable to get node cpu stats",
           "invalid argument: Invalid cpuNum in virHostCPUGetStatsLinux")
    _fails(qemush("-r", "-c", u, "nodecpustats", "--cpu", "4096", "--percent"),
           "Unable to get node cpu stats",
           "invalid argument: Invalid cpuNum in virHostCPUGetStatsLinux")
    _fails(qemush("-r", "-c", u, "nodecpustats", "--cpu", "-2"),
           "Unable to get number of cpu stats",
           "invalid argument: cpuNum in virNodeGetCPUStats only accepts -1 as a negative "
           "value")


# -- nodememstats --cell -----------------------------------------------------------------

def _mem_rows(text: str) -> dict[str, int]:
    lines = text.splitlines()
    assert all(re.fullmatch(r"[a-z ]{7}: {1,20}\d+ KiB", line) and len(line) == 33
               for line in lines), text
    return {line.split(":")[0].strip(): int(line.split()[-2]) for line in lines}


def test_nodememstats_cell(daemon: DaemonProcess, qemush: Qemush) -> None:
    """This host's one NUMA cell, 0: libvirt reads it from the node's meminfo, which gives
    total and free; the whole host (no --cell, or -1) has buffers and cached too."""
    u = daemon.uri
    whole = _mem_rows(ok(qemush("-r", "-c", u, "nodememstats")))
    assert list(whole) == ["total", "free", "buffers", "cached"]
    assert _mem_rows(ok(qemush("-r", "-c", u, "nodememstats", "--cell", "-1")))["total"] \
        == whole["total"]
    node0 = Path("/sys/devices/system/node/node0/meminfo")
    cell = _mem_rows(ok(qemush("-r", "-c", u, "nodememstats", "--cell", "0")))
    if node0.exists():
        assert list(cell) == ["total", "free"]
        node_total = next(int(line.split()[3]) for line in node0.read_text().splitlines()
                          if line.split()[2] == "MemTotal:")
        assert cell["total"] == node_total
    else:  # no NUMA in sysfs: libvirt's one cell is the whole host
        assert list(cell) == list(whole) and cell["total"] == whole["total"]


def test_nodememstats_refuses_a_cell_the_host_lacks(daemon: DaemonProcess,
                                                   qemush: Qemush) -> None:
    u = daemon.uri
    nodes = [int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*")]
    highest = max(nodes, default=0)
    _fails(qemush("-r", "-c", u, "nodememstats", "--cell", str(highest + 1)),
           "Unable to get number of memory stats",
           "invalid argument: cellNum in virHostMemGetStats must be less than or equal to "
           f"{highest}")
    _fails(qemush("-r", "-c", u, "nodememstats", "--cell", "-3"),
           "Unable to get number of memory stats",
           "invalid argument: cellNum in virNodeGetMemoryStats only accepts -1 as a "
           "negative value")


# -- domains for the rest: one shut off with files as disks, one running ------------------

def _guest(name: str, devices: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
            f"{devices}</devices></domain>\n")


def _define(qemush: Qemush, uri: str, tmp_path: Path, name: str, devices: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(_guest(name, devices))
    ok(qemush("-c", uri, "define", str(path)))


def _disks(tmp_path: Path) -> tuple[Path, Path, str]:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for path in (a, b):
        path.write_bytes(b"\0" * 4096)
    devices = (f"<disk type='file' device='disk'><source file='{a}'/>"
               "<target dev='vda' bus='virtio'/></disk>"
               f"<disk type='file' device='disk'><source file='{b}'/>"
               "<target dev='vdb' bus='virtio'/></disk>"
               "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/>"
               "<readonly/></disk>")
    return a, b, devices


def _names(qemush: Qemush, uri: str) -> list[str]:
    return ok(qemush("-c", uri, "list", "--all", "--name")).split()


# -- undefine's storage options ----------------------------------------------------------

def test_undefine_remove_all_storage_reports_unmanaged_disks(
        daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    """qemud has no storage pools: each disk with a source is reported as virsh reports
    a disk no pool manages, the domain is undefined anyway, and the files stay."""
    u = daemon.uri
    a, b, devices = _disks(tmp_path)
    _define(qemush, u, tmp_path, "st", devices)
    proc = qemush("-c", u, "undefine", "st", "--remove-all-storage", "--wipe-storage",
                  "--delete-storage-volume-snapshots")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Domain 'st' has been undefined\n"
    assert proc.stderr.splitlines() == [
        f"error: Storage volume 'vda'({a}) is not managed by libvirt. Remove it manually.",
        f"error: Storage volume 'vdb'({b}) is not managed by libvirt. Remove it manually."]
    assert "st" not in _names(qemush, u)
    assert a.read_bytes() == b"\0" * 4096 and b.exists()


def test_undefine_storage_by_target_and_path(daemon: DaemonProcess, qemush: Qemush,
                                             tmp_path: Path) -> None:
    u = daemon.uri
    a, b, devices = _disks(tmp_path)
    _define(qemush, u, tmp_path, "st", devices)
    # a name that matches no disk: refused before anything is done
    _fails(qemush("-c", u, "undefine", "st", "--storage", f"vda,{tmp_path}/nosuch.img"),
           f"Volume '{tmp_path}/nosuch.img' was not found in domain's definition.")
    assert "st" in _names(qemush, u)
    proc = qemush("-c", u, "undefine", "st", "--storage", f"{b},vda")
    assert proc.returncode == 0 and proc.stdout == "Domain 'st' has been undefined\n"
    assert proc.stderr.splitlines() == [
        f"error: Storage volume 'vda'({a}) is not managed by libvirt. Remove it manually.",
        f"error: Storage volume 'vdb'({b}) is not managed by libvirt. Remove it manually."]
    assert "st" not in _names(qemush, u) and a.exists() and b.exists()


def test_undefine_storage_option_checks(daemon: DaemonProcess, qemush: Qemush,
                                        tmp_path: Path) -> None:
    """virsh's refusals, each leaving the domain defined."""
    u = daemon.uri
    _, _, devices = _disks(tmp_path)
    _define(qemush, u, tmp_path, "st", devices)
    _fails(qemush("-c", u, "undefine", "st", "--wipe-storage"),
           "'--wipe-storage' requires '--storage <string>' or '--remove-all-storage'")
    _fails(qemush("-c", u, "undefine", "st", "--delete-storage-volume-snapshots"),
           "Option --remove-all-storage is required by option "
           "--delete-storage-volume-snapshots")
    _fails(qemush("-c", u, "undefine", "st", "--storage", "vda", "--remove-all-storage"),
           "Specified both --storage and --remove-all-storage")
    assert "st" in _names(qemush, u)


# -- a running domain: domdisplay --all, dumpxml --migratable, undefine refusing ---------

RUNNING_DEVICES = (
    "<controller type='usb' index='0'/>"
    "<controller type='pci' index='0' model='pci-root'/>"
    "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
    "<serial type='pty'/><console type='pty'/>")


def test_running_domain(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    u = daemon.uri
    _define(qemush, u, tmp_path, "run", RUNNING_DEVICES)
    ok(qemush("-c", u, "start", "run"))
    try:
        _check_domdisplay(qemush, u)
        _check_migratable(qemush, u)
        _fails(qemush("-c", u, "undefine", "run", "--remove-all-storage"),
               "Storage volume deletion is supported only on stopped domains")
        assert "run" in _names(qemush, u)
    finally:
        qemush("-c", u, "destroy", "run")


def _check_domdisplay(qemush: Qemush, u: str) -> None:
    """virsh's URI form (vnc://HOST:DISPLAY); --all lists every display, one a line: a
    qemud domain has one, so the same line; with --all, --type filters nothing."""
    live = ET.fromstring(ok(qemush("-c", u, "dumpxml", "run")))
    port = int(_attr(live, "devices/graphics", "port"))
    uri = f"vnc://127.0.0.1:{port - 5900}\n"
    assert port >= 5900
    assert ok(qemush("-r", "-c", u, "domdisplay", "run")) == uri
    assert ok(qemush("-r", "-c", u, "domdisplay", "run", "--all")) == uri
    assert ok(qemush("-r", "-c", u, "domdisplay", "run", "--all", "--type", "spice")) == uri
    _fails(qemush("-r", "-c", u, "domdisplay", "run", "--type", "spice"),
           "No graphical display with type 'spice' found")


def _attr(root: ET.Element, path: str, name: str) -> str:
    el = root.find(path)
    assert el is not None, path
    return el.get(name, "")


def _shape(el: ET.Element) -> list[tuple[str, dict[str, str], str]]:
    """An element tree as (tag, attributes, text) in document order, whitespace aside."""
    return [(e.tag, dict(e.attrib), (e.text or "").strip()) for e in el.iter()]


def _check_migratable(qemush: Qemush, u: str) -> None:
    """libvirt's migratable XML: the live XML (id, aliases, VNC port, pty paths kept, as
    a migration destination needs them) without the lone default USB controller and
    pci-root; --inactive --migratable is the persistent XML without them."""
    live = ok(qemush("-c", u, "dumpxml", "run"))
    text = ok(qemush("-r", "-c", u, "dumpxml", "run", "--migratable"))
    full, mig = ET.fromstring(live), ET.fromstring(text)
    assert [c.get("type") for c in full.iter("controller")] == ["usb", "pci"]
    assert mig.findall("devices/controller") == []
    assert mig.get("id") == full.get("id") and mig.get("id", "").isdigit()
    assert _attr(mig, "devices/graphics", "port") == _attr(full, "devices/graphics", "port")
    assert _attr(mig, "devices/serial/source", "path").startswith("/dev/pts/")
    devices = full.find("devices")
    assert devices is not None
    for el in list(devices.iter("controller")):
        devices.remove(el)
    assert _shape(mig) == _shape(full)
    inactive = ET.fromstring(ok(qemush("-c", u, "dumpxml", "run", "--inactive",
                                       "--migratable")))
    assert inactive.get("id") is None and inactive.findall("devices/controller") == []
    assert _attr(inactive, "devices/graphics", "port") == "-1"


def test_get_xml_flags(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    """DOMAIN_GET_XML takes libvirt's SECURE, INACTIVE, UPDATE_CPU and MIGRATABLE;
    UPDATE_CPU (no host-model CPU to update) gives the XML without it, and so does
    dumpxml --update-cpu; another bit is refused in libvirt's words instead of being
    ignored."""
    _define(qemush, daemon.uri, tmp_path, "fl", "<controller type='usb' index='0'/>")
    with connect(daemon.uri) as conn:
        dom = conn.lookup_by_name("fl")
        assert "<controller" in dom.xml(2) and "<controller" not in dom.xml(2 | 8)
        plain = dom.xml(0)
        assert dom.xml(4) == plain and dom.xml(2 | 4) == dom.xml(2)
        assert dom.xml(2 | 4 | 8) == dom.xml(2 | 8)
        with pytest.raises(InvalidArgError) as info:
            dom.xml(16)
        assert info.value.message == \
            "invalid argument: unsupported flags (0x10) in function qemuDomainGetXMLDesc"
    assert ok(qemush("-c", daemon.uri, "dumpxml", "fl", "--update-cpu")) == \
        ok(qemush("-c", daemon.uri, "dumpxml", "fl")) == plain.rstrip("\n") + "\n"
