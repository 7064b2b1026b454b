"""qemush domblkstat, domifstat, vcpucount, domdisplay, ttyconsole, maxvcpus, nodememstats
and nodecpustats: virsh's output and refusals, against a real daemon (and a real running
test guest where the numbers matter)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.shell.commands.monitor import (
    block_counters,
    console_tty,
    cpu_percent,
    display_uri,
    interface_index,
    libvirt_cpu_times,
    machine_max_cpus,
    vcpu_counts,
)
from client.shell.registry import CommandError
from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.helpers.tap import make_tap, send_frames
from tests.integration.conftest import test_guest  # noqa: F401  (session fixture)
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

MAC_TAP, MAC_USER = "52:54:00:ab:02:01", "52:54:00:ab:02:02"
DISK_TEXT = "QEMUSH-MONITOR-DISK"
PASSWORD = "s3cret"

# a shut-off domain: 1 of at most 2 vCPUs, a disk and a user-mode NIC
OFF_XML = ("<domain type='qemu'><name>off</name><memory unit='MiB'>64</memory>"
           "<vcpu current='1'>2</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
           "<disk type='file' device='disk'><source file='/var/tmp/off.img'/>"
           "<target dev='vda' bus='virtio'/></disk>"
           f"<interface type='user'><mac address='{MAC_USER}'/></interface>"
           "</devices></domain>\n")


# -- the pure parts ----------------------------------------------------------------------

STATS: dict[str, int | float | str] = {
    "state.state": 1, "block.count": 2,
    "block.0.name": "vda", "block.0.path": "/img/a.qcow2", "block.0.rd.reqs": 3,
    "block.0.rd.bytes": 1536, "block.0.wr.reqs": 1, "block.0.fl.times": 9,
    "block.1.name": "vdb", "block.1.rd.reqs": 4, "block.1.rd.bytes": 2048,
    "net.count": 2, "net.0.name": "tap0", "net.0.mac": "52:54:00:AB:02:01",
    "net.0.rx.bytes": 10, "net.1.name": "hostnet-x", "net.1.mac": "52:54:00:ab:02:02",
}


def test_block_counters_by_target_path_and_in_total() -> None:
    assert block_counters(STATS, "vda") == {"rd.reqs": 3, "rd.bytes": 1536, "wr.reqs": 1,
                                            "fl.times": 9}
    assert block_counters(STATS, "/img/a.qcow2") == block_counters(STATS, "vda")
    assert block_counters(STATS, "") == {"rd.reqs": 7, "rd.bytes": 3584, "wr.reqs": 1,
                                         "fl.times": 9}
    assert block_counters(STATS, "vdz") is None


def test_interface_by_name_or_mac() -> None:
    assert interface_index(STATS, "tap0") == 0
    assert interface_index(STATS, "52:54:00:ab:02:01") == 0  # MACs compare as numbers
    assert interface_index(STATS, "52:54:0:AB:2:2") == 1
    assert interface_index(STATS, "52:54:00:ab:02:03") is None
    assert interface_index(STATS, "eth0") is None


def test_vcpu_counts() -> None:
    assert vcpu_counts("<domain><vcpu current='1'>4</vcpu></domain>") == (4, 1)
    assert vcpu_counts("<domain><vcpu>2</vcpu></domain>") == (2, 2)
    assert vcpu_counts("<domain/>") == (1, 1)


def test_display_uri() -> None:
    def gfx(attrs: str, child: str = "") -> str:
        return f"<domain><devices><graphics {attrs}>{child}</graphics></devices></domain>"
    assert display_uri(gfx("type='vnc' port='5901' listen='127.0.0.1'")) == \
        "vnc://127.0.0.1:1"
    assert display_uri(gfx("type='vnc' port='5900' listen='127.0.0.1' passwd='pw'")) == \
        "vnc://:pw@127.0.0.1:0"
    # a wildcard: the connection's host, else localhost (as virsh)
    wild = gfx("type='vnc' port='5902' listen='0.0.0.0'")
    assert display_uri(wild) == "vnc://localhost:2"
    assert display_uri(wild, server="host.example") == "vnc://host.example:2"
    assert display_uri(gfx("type='vnc' port='5903'",
                           "<listen type='address' address='::1'/>")) == "vnc://[::1]:3"
    assert display_uri(gfx("type='vnc' port='5903' listen='127.0.0.1'"), "spice") is None
    assert display_uri(gfx("type='vnc' port='-1' autoport='yes'")) is None
    assert display_uri("<domain><devices/></domain>") is None


def test_console_tty() -> None:
    assert console_tty("<domain><devices><serial type='pty'><source path='/dev/pts/7'/>"
                       "</serial><console type='pty' tty='/dev/pts/7'/></devices>"
                       "</domain>") == "/dev/pts/7"
    assert console_tty("<domain><devices><serial type='pty'><source path='/dev/pts/8'/>"
                       "</serial></devices></domain>") == "/dev/pts/8"
    assert console_tty("<domain><devices><serial type='unix'><source path='/s'/>"
                       "</serial></devices></domain>") is None


def test_machine_max_cpus() -> None:
    caps = ("<capabilities><host><cpu><arch>x86_64</arch></cpu></host>"
            "<guest><arch name='aarch64'><machine maxCpus='512'>virt</machine>"
            "<domain type='qemu'/></arch></guest>"
            "<guest><arch name='x86_64'><machine>none</machine>"
            "<machine maxCpus='255'>pc-i440fx-7.2</machine><domain type='qemu'/></arch>"
            "</guest></capabilities>")
    assert machine_max_cpus(caps, None) == machine_max_cpus(caps, "qemu") == 255
    with pytest.raises(CommandError, match=r"^unknown type 'kvm' \(this host offers: "
                                           r"qemu\)$"):
        machine_max_cpus(caps, "kvm")
    assert machine_max_cpus(caps.replace(" maxCpus='255'", ""), "qemu") is None


def test_cpu_times_and_percent() -> None:
    times = libvirt_cpu_times({"user": 15, "kernel": 10, "idle": 70, "iowait": 5,
                               "utilization": 0.5})
    assert times == {"user": 15, "system": 10, "idle": 70, "iowait": 5}
    later = {"user": 45, "system": 20, "idle": 130, "iowait": 5}
    assert cpu_percent(times, later) == [("usage", 40.0), ("user", 30.0),
                                         ("system", 10.0), ("idle", 60.0),
                                         ("iowait", 0.0)]
    assert libvirt_cpu_times({"user": 1, "iowait": "n/a"}) == {"user": 1}
    # a mode the daemon left out (of either sample) is no time, not a KeyError
    partial = libvirt_cpu_times({"user": 15, "kernel": 10, "idle": 70})
    assert cpu_percent(partial, later) == [("usage", 40.0), ("user", 30.0),
                                           ("system", 10.0), ("idle", 60.0),
                                           ("iowait", 0.0)]
    assert dict(cpu_percent(times, {"user": 45, "idle": 130}))["system"] == 0.0


# -- against a daemon --------------------------------------------------------------------

def _fails(proc: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout,
                                                         proc.stderr)
    assert proc.stderr.splitlines() == [f"error: {line}" for line in lines], proc.stderr


def test_option_checks(daemon: DaemonProcess, qemush: Qemush) -> None:
    """virsh's refusals, made before the domain is looked up."""
    for argv, message in (
            (["--maximum", "--active"], "Options --active and --maximum are mutually "
                                        "exclusive"),
            (["--maximum", "--current", "--live"], "Options --current and --live are "
                                                   "mutually exclusive"),
            (["--active", "--current", "--config"], "Options --current and --config are "
                                                    "mutually exclusive")):
        _fails(qemush("-c", daemon.uri, "vcpucount", "nosuch", *argv), message)


def test_unknown_domain(daemon: DaemonProcess, qemush: Qemush) -> None:
    for argv in (["domblkstat", "nosuch"], ["domifstat", "nosuch", "eth0"],
                 ["vcpucount", "nosuch"], ["domdisplay", "nosuch"],
                 ["ttyconsole", "nosuch"]):
        proc = qemush("-c", daemon.uri, *argv)
        assert proc.returncode == 1 and proc.stdout == "", argv
        assert proc.stderr.splitlines()[0] == "error: failed to get domain 'nosuch'", \
            (argv, proc.stderr)


def test_shut_off_domain(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    u = daemon.uri
    path = tmp_path / "off.xml"
    path.write_text(OFF_XML)
    ok(qemush("-c", u, "define", str(path)))
    _fails(qemush("-c", u, "domblkstat", "off", "vda"), "domain 'off' is not running")
    _fails(qemush("-c", u, "domifstat", "off", MAC_USER),
           f"Failed to get interface stats off {MAC_USER}", "domain 'off' is not running")
    # only the config rows, as virsh prints them for a shut-off domain
    assert ok(qemush("-c", u, "vcpucount", "off")) == \
        "maximum      config         2\ncurrent      config         1\n"
    assert ok(qemush("-r", "-c", u, "vcpucount", "off", "--maximum")) == "2\n"
    assert ok(qemush("-c", u, "vcpucount", "off", "--current")) == "1\n"
    assert ok(qemush("-c", u, "vcpucount", "off", "--config", "--active")) == "1\n"
    _fails(qemush("-c", u, "vcpucount", "off", "--live"), "domain 'off' is not running")
    _fails(qemush("-c", u, "vcpucount", "off", "--live", "--config"),
           "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' are mutually "
           "exclusive")
    _fails(qemush("-c", u, "domdisplay", "off"), "Domain is not running")
    _fails(qemush("-c", u, "ttyconsole", "off"), "domain 'off' is not running")


def test_node_memory_and_cpu_stats(daemon: DaemonProcess, qemush: Qemush) -> None:
    u = daemon.uri
    text = ok(qemush("-r", "-c", u, "nodememstats"))
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["total  ", "free   ", "buffers",
                                                      "cached "], text
    assert all(re.fullmatch(r"[a-z ]{7}: {1,20}\d+ KiB", line) and len(line) == 33
               for line in lines), text
    meminfo = {line.split(":")[0]: int(line.split()[1])
               for line in Path("/proc/meminfo").read_text().splitlines()}
    assert int(lines[0].split()[-2]) == meminfo["MemTotal"]

    tick = os.sysconf("SC_CLK_TCK")
    before = [int(v) * 1_000_000_000 // tick
              for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    text = ok(qemush("-r", "-c", u, "nodecpustats"))
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["user:", "system:", "idle:", "iowait:"]
    assert all(re.fullmatch(r"[a-z:]+ +\d+", line) and len(line) == 36 for line in lines)
    values = {line.split()[0][:-1]: int(line.split()[1]) for line in lines}
    # libvirt's sums of /proc/stat (user + nice, system + irq + softirq), which only grow
    user, nice, system, idle, iowait, irq, softirq = before[:7]
    assert values["user"] >= user + nice and values["system"] >= system + irq + softirq
    assert values["idle"] >= idle and values["iowait"] >= iowait

    text = ok(qemush("-r", "-c", u, "nodecpustats", "--percent"))
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["usage:", "user:", "system:", "idle:",
                                                   "iowait:"], text
    assert all(re.fullmatch(r"[a-z:]+ +[ \d]{3}\d\.\d%", line) and len(line) == 22
               for line in lines), text
    share = {line.split()[0][:-1]: float(line.split()[1][:-1]) for line in lines}
    assert abs(share["usage"] - share["user"] - share["system"]) <= 0.2  # rounding
    assert 99.7 <= share["user"] + share["system"] + share["idle"] + share["iowait"] <= 100.3


def test_maxvcpus_gives_the_default_machines_limit(daemon: DaemonProcess,
                                                   qemush: Qemush) -> None:
    """The capabilities carry QEMU's cpu-max per machine (<machine maxCpus>), the default
    machine first, as libvirt's: maxvcpus is the limit of the machine guests get by
    default (i440FX: 255)."""
    u = daemon.uri
    caps = ET.fromstring(ok(qemush("-c", u, "capabilities")))
    x86 = next(a for a in caps.iter("arch") if a.get("name") == "x86_64")
    first = x86.find("machine")
    assert first is not None and first.text in ("pc", "pc-i440fx-7.2")
    assert first.get("maxCpus") == "255"
    assert ok(qemush("-r", "-c", u, "maxvcpus")) == "255\n"
    proc = qemush("-c", u, "maxvcpus", "--type", "xen")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown type 'xen' (this host offers: "), proc.stderr


# -- a running test guest ----------------------------------------------------------------

def _counters(text: str, device: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        dev, name, value = line.split(" ")
        assert dev == device, line
        out[name] = int(value)
    return out


BLOCK_NAMES = ["rd_req", "rd_bytes", "wr_req", "wr_bytes", "flush_operations",
               "rd_total_times", "wr_total_times", "flush_total_times"]
NET_NAMES = ["rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets",
             "tx_errs", "tx_drop"]


@pytest.mark.integration
def test_running_guest(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path,
                       test_guest) -> None:  # noqa: F811
    u = daemon.uri
    images = []
    for name in ("a", "b"):
        image = tmp_path / f"{name}.img"
        image.write_bytes(DISK_TEXT.encode() + bytes(1024 * 1024 - len(DISK_TEXT)))
        images.append(image)
    disks = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                    f"<source file='{image}'/><target dev='vd{t}' bus='virtio'/></disk>"
                    for image, t in zip(images, "ab", strict=True))
    tap = f"qsh{os.getpid() % 100000}"
    has_tap = make_tap(tap)
    # rtl8139: QEMU reads (and counts) what the host sends though the guest never brings
    # the NIC up (see tests/monitoring/conftest.py)
    nics = (f"<interface type='ethernet'><mac address='{MAC_TAP}'/><target dev='{tap}'/>"
            "<model type='rtl8139'/></interface>" if has_tap else "") + \
        f"<interface type='user'><mac address='{MAC_USER}'/></interface>"
    graphics = f"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' " \
        f"passwd='{PASSWORD}'/>"
    path = tmp_path / "mon.xml"
    path.write_text(guest_xml("mon", test_guest, None, extra=disks + nics + graphics))
    serial = None
    try:
        ok(qemush("-c", u, "define", str(path)))
        ok(qemush("-c", u, "start", "mon"))
        # the next boot may have 2 vCPUs: the config rows differ from the live ones
        ok(qemush("-c", u, "setvcpus", "mon", "2", "--config", "--maximum"))

        # ttyconsole: the console's pty, which is the guest's serial line
        tty_path = ok(qemush("-r", "-c", u, "ttyconsole", "mon")).strip()
        assert re.fullmatch(r"/dev/pts/\d+", tty_path)
        assert stat.S_ISCHR(os.stat(tty_path).st_mode)
        serial = SerialPort(Path(tty_path), pty=True)
        serial.wait_for(READY, timeout=180)
        mark = serial.mark()
        serial.send("ping")
        serial.wait_for("QEMUD-PONG", start=mark, timeout=30)

        # domblkstat: the kernel read both disks' partition tables at boot
        vda = _counters(ok(qemush("-r", "-c", u, "domblkstat", "mon", "vda")), "vda")
        assert list(vda) == BLOCK_NAMES
        assert vda["rd_req"] > 0 and vda["rd_bytes"] >= 512 and vda["rd_total_times"] > 0
        vdb = _counters(ok(qemush("-c", u, "domblkstat", "mon", "--device", "vdb")), "vdb")
        assert vdb["rd_req"] > 0
        total = _counters(ok(qemush("-c", u, "domblkstat", "mon")), "")
        assert total == {k: vda[k] + vdb[k] for k in BLOCK_NAMES}
        by_path = _counters(ok(qemush("-c", u, "domblkstat", "mon", str(images[0]))),
                            str(images[0]))
        assert by_path == vda
        mark = serial.mark()
        serial.send("read-disk vda 16")
        serial.wait_for(f"QEMUD-READ vda {DISK_TEXT[:16]}", start=mark, timeout=30)
        after = _counters(ok(qemush("-c", u, "domblkstat", "mon", "vda")), "vda")
        assert after["rd_req"] > vda["rd_req"] and after["rd_bytes"] >= vda["rd_bytes"] + 512
        human = ok(qemush("-c", u, "domblkstat", "mon", "vdb", "--human"))
        assert human.splitlines()[:3] == [
            "Device: vdb", f" number of read operations:      {vdb['rd_req']}",
            f" number of bytes read:           {vdb['rd_bytes']}"], human
        assert len(human.splitlines()) == 9
        _fails(qemush("-c", u, "domblkstat", "mon", "vdz"), "invalid path: vdz")

        # domifstat
        _fails(qemush("-c", u, "domifstat", "mon", "eth9"),
               "Failed to get interface stats mon eth9", "'eth9' is not a known interface")
        _fails(qemush("-c", u, "domifstat", "mon", MAC_USER),
               f"Failed to get interface stats mon {MAC_USER}",
               f"no statistics for interface '{MAC_USER}': a user-mode interface has no "
               "host device and QEMU keeps no counters for it")
        if has_tap:
            first = _counters(ok(qemush("-r", "-c", u, "domifstat", "mon", tap)), tap)
            assert list(first) == NET_NAMES
            send_frames(tap, 10)
            upper = MAC_TAP.upper()
            grown = wait_for(lambda: (c := _counters(ok(qemush(
                "-c", u, "domifstat", "mon", upper)), upper))["rx_packets"] >=
                first["rx_packets"] + 10 and c, timeout=15, message="rx_packets grows")
            assert grown["rx_bytes"] >= first["rx_bytes"] + 1000

        # vcpucount: the running domain and its next boot
        assert ok(qemush("-c", u, "vcpucount", "mon")) == (
            "maximum      config         2\nmaximum      live           1\n"
            "current      config         1\ncurrent      live           1\n")
        assert ok(qemush("-c", u, "vcpucount", "mon", "--maximum")) == "1\n"
        assert ok(qemush("-c", u, "vcpucount", "mon", "--maximum", "--config")) == "2\n"
        assert ok(qemush("-c", u, "vcpucount", "mon", "--active", "--live")) == "1\n"

        # domdisplay: the VNC display QEMU got; the password only when asked for, and
        # never on a read-only connection
        gfx = ET.fromstring(ok(qemush("-c", u, "dumpxml", "mon"))).find("devices/graphics")
        assert gfx is not None and gfx.get("passwd") is None
        port = int(gfx.get("port", "0"))
        assert port >= 5900
        assert ok(qemush("-r", "-c", u, "domdisplay", "mon")) == \
            f"vnc://127.0.0.1:{port - 5900}\n"
        assert ok(qemush("-c", u, "domdisplay", "mon", "--include-password")) == \
            f"vnc://:{PASSWORD}@127.0.0.1:{port - 5900}\n"
        assert ok(qemush("-c", u, "domdisplay", "mon", "--type", "vnc")) == \
            f"vnc://127.0.0.1:{port - 5900}\n"
        _fails(qemush("-r", "-c", u, "domdisplay", "mon", "--include-password"),
               "operation forbidden: virDomainGetXMLDesc with secure flag")
        _fails(qemush("-c", u, "domdisplay", "mon", "--type", "spice"),
               "No graphical display with type 'spice' found")
    finally:
        if serial is not None:
            serial.close()
        stop_destroying_guests(daemon)
        if has_tap:
            subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
