"""CPU pinning of real TCG guests: ``<vcpu cpuset>``, ``<vcpupin>``, ``<emulatorpin>``,
``vcpupin`` and ``emulatorpin``, read back from the kernel (``Cpus_allowed_list`` of each
QEMU thread in /proc; QEMU names its vCPU threads ``CPU N/TCG``: ``-name
debug-threads=on``). The host has at least 2 CPUs (0 and 1); "all of them" is
:data:`ALL` (``0-1`` on the 2-CPU reference machine)."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import client
from client.domain import AFFECT_CONFIG, AFFECT_LIVE, Domain
from tests.helpers.daemon import DaemonProcess, qemush
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE
#: how many CPUs the host has, and all of them as the kernel lists them
HOST_CPUS = os.cpu_count() or 1
ALL = f"0-{HOST_CPUS - 1}"
PINNED = bare_xml("pinned").replace(
    "<vcpu>1</vcpu>",
    "<vcpu cpuset='1'>2</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/>"
    "<emulatorpin cpuset='0'/></cputune>")
_VCPU_THREAD = re.compile(r"CPU (\d+)/(?:TCG|KVM)")


def qemu_pid(daemon: DaemonProcess, name: str) -> int:
    status = json.loads((daemon.run_dir / "qemu" / f"{name}.status.json").read_text())
    return int(status["pid"])


def allowed(pid: int, tid: int) -> str:
    """The thread's Cpus_allowed_list, as the kernel has it."""
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for thread {tid}")


def affinities(daemon: DaemonProcess, name: str) -> tuple[dict[int, str], set[str]]:
    """({vCPU number: its CPUs}, {the CPUs of each other thread}) of the running guest."""
    pid = qemu_pid(daemon, name)
    vcpus: dict[int, str] = {}
    others: set[str] = set()
    for entry in os.listdir(f"/proc/{pid}/task"):
        tid = int(entry)
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            cpus = allowed(pid, tid)
        except FileNotFoundError:
            continue  # a worker thread that just ended
        match = _VCPU_THREAD.fullmatch(comm)
        if match:
            vcpus[int(match.group(1))] = cpus
        else:
            others.add(cpus)
    return vcpus, others


def pins(dom: Domain, flags: int = 0) -> tuple[str | None, dict[str, str], str | None]:
    """(<vcpu cpuset>, {vcpu: cpuset of its <vcpupin>}, <emulatorpin cpuset>) of an XML."""
    root = ET.fromstring(dom.xml(flags))
    vcpu = root.find("vcpu")
    assert vcpu is not None
    emulator = root.find("cputune/emulatorpin")
    return (vcpu.get("cpuset"),
            {str(p.get("vcpu")): str(p.get("cpuset")) for p in root.findall("cputune/vcpupin")},
            None if emulator is None else emulator.get("cpuset"))


def cpumap(*cpus: int) -> bytes:
    data = bytearray(1)
    for cpu in cpus:
        data[0] |= 1 << cpu
    return bytes(data)


def test_a_guest_starts_with_its_pins(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(PINNED)
        dom.create()
        vcpus, others = affinities(daemon, "pinned")
        # vCPU 0 its <vcpupin>, vCPU 1 <vcpu cpuset>, every other thread <emulatorpin>
        assert vcpus == {0: "0", 1: "1"}
        assert others == {"0"}
        assert pins(dom) == ("1", {"0": "0"}, "0")

        out = qemush(daemon, "vcpupin", "pinned")
        assert out.returncode == 0, out.stderr
        assert out.stdout == (" VCPU   CPU Affinity\n"
                              "----------------------\n"
                              " 0      0\n"
                              " 1      1\n\n")
        out = qemush(daemon, "vcpupin", "pinned", "1")
        assert out.stdout.splitlines()[2:] == [" 1      1", ""]
        out = qemush(daemon, "emulatorpin", "pinned")
        assert out.stdout == ("emulator: CPU Affinity\n"
                              "----------------------------------\n"
                              "       *: 0\n")
        out = qemush(daemon, "vcpuinfo", "pinned", "--pretty")
        assert out.returncode == 0, out.stderr
        assert re.findall(r"CPU Affinity:\s+(.*)", out.stdout) == [f"0 (out of {HOST_CPUS})",
                                                                   f"1 (out of {HOST_CPUS})"]
        dom.destroy()
        # shut off, vcpuinfo shows what the definition gives each vCPU
        out = qemush(daemon, "vcpuinfo", "pinned")
        assert re.findall(r"CPU Affinity:\s+(.*)", out.stdout) == ["y-", "-y"]


def test_live_and_config_pins(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("moving").replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"))
        dom.create()
        assert affinities(daemon, "moving") == ({0: ALL, 1: ALL}, {ALL})
        assert [m[:1] for m in dom.vcpu_pin_info()] == [cpumap(0, 1), cpumap(0, 1)]

        # the shell without --live/--config: the running domain, as virsh
        out = qemush(daemon, "vcpupin", "moving", "1", "1")
        assert out.returncode == 0 and out.stdout == "", out.stderr
        assert affinities(daemon, "moving")[0] == {0: ALL, 1: "1"}
        assert pins(dom) == (None, {"1": "1"}, None)
        assert pins(dom, INACTIVE) == (None, {}, None)

        # --config: the persistent definition only
        out = qemush(daemon, "vcpupin", "moving", "0", "1", "--config")
        assert out.returncode == 0, out.stderr
        assert affinities(daemon, "moving")[0] == {0: ALL, 1: "1"}
        assert pins(dom, INACTIVE) == (None, {"0": "1"}, None)
        assert qemush(daemon, "vcpupin", "moving", "--config").stdout.splitlines()[2:4] == \
            [" 0      1", f" 1      {ALL}"]

        # emulatorpin, live then config (0-1,^1 is CPU 0)
        out = qemush(daemon, "emulatorpin", "moving", "0-1,^1", "--live")
        assert out.returncode == 0, out.stderr
        assert affinities(daemon, "moving") == ({0: ALL, 1: "1"}, {"0"})
        assert pins(dom) == (None, {"1": "1"}, "0")
        dom.pin_emulator(cpumap(1), AFFECT_CONFIG)
        assert pins(dom, INACTIVE) == (None, {"0": "1"}, "1")
        assert affinities(daemon, "moving")[1] == {"0"}

        # both at once, through the library
        dom.pin_vcpu(0, cpumap(0), AFFECT_LIVE | AFFECT_CONFIG)
        assert affinities(daemon, "moving")[0] == {0: "0", 1: "1"}
        assert pins(dom)[1] == {"0": "0", "1": "1"}
        assert pins(dom, INACTIVE)[1] == {"0": "0"}

        # 'r': every host CPU again
        assert qemush(daemon, "vcpupin", "moving", "0", "r").returncode == 0
        assert affinities(daemon, "moving")[0][0] == ALL

        # the next start applies the persistent definition
        dom.destroy()
        dom.create()
        assert affinities(daemon, "moving") == ({0: "0", 1: ALL}, {"1"})
        dom.destroy()


def test_pins_survive_a_daemon_restart(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(PINNED)
        dom.create()
        dom.pin_vcpu(1, cpumap(0))
    before = affinities(daemon, "pinned")
    assert before == ({0: "0", 1: "0"}, {"0"})
    daemon.stop()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("pinned")
        assert dom.is_active()
        assert affinities(daemon, "pinned") == before
        assert pins(dom) == ("1", {"0": "0", "1": "0"}, "0")
        dom.destroy()


def test_a_plugged_vcpu_gets_its_pin(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("plug").replace(
            "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"
            "<cputune><vcpupin vcpu='1' cpuset='1'/></cputune>"))
        dom.create()
        assert affinities(daemon, "plug")[0] == {0: ALL}
        # an offline vCPU's live pin is recorded, and applied when it comes
        dom.pin_vcpu(1, cpumap(0))
        dom.set_vcpus(2)
        assert affinities(daemon, "plug")[0] == {0: ALL, 1: "0"}
        dom.destroy()
        # a vCPU without a pin gets every host CPU, not the <emulatorpin> of the QEMU
        # thread that made it (libvirt's qemuProcessSetupPid)
        dom = conn.define_xml(bare_xml("plug-emu").replace(
            "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"
            "<cputune><emulatorpin cpuset='0'/></cputune>"))
        dom.create()
        dom.set_vcpus(2)
        vcpus, others = affinities(daemon, "plug-emu")
        assert (vcpus, others) == ({0: ALL, 1: ALL}, {"0"})
        dom.destroy()


def test_a_restricted_daemon_does_not_restrict_its_guests(daemon: DaemonProcess) -> None:
    """A daemon that may run on CPU 0 only (taskset, a systemd CPUAffinity=): its QEMU
    inherits that, and each thread of a guest that asks for no pinning still gets every
    host CPU, as libvirt sets them."""
    assert daemon.proc is not None
    os.sched_setaffinity(daemon.proc.pid, {0})
    try:
        with daemon.connect() as conn:
            dom = conn.define_xml(bare_xml("free").replace("<vcpu>1</vcpu>",
                                                           "<vcpu>2</vcpu>"))
            dom.create()
            assert affinities(daemon, "free") == ({0: ALL, 1: ALL}, {ALL})
            dom.destroy()
    finally:
        os.sched_setaffinity(daemon.proc.pid, range(HOST_CPUS))


def test_errors(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("bad").replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"))
        # virsh refuses a CPU the host does not have before calling
        out = qemush(daemon, "vcpupin", "bad", "0", "7", "--config")
        assert out.returncode == 1
        assert f"error: CPU 7 in cpulist '7' exceed the maxcpu {HOST_CPUS}" in out.stderr
        out = qemush(daemon, "emulatorpin", "bad", "0,x")
        assert "error: Invalid cpulist '0,x'" in out.stderr
        with pytest.raises(client.InvalidArgError,
                           match="vcpu 2 is out of range of persistent cpu count 2"):
            dom.pin_vcpu(2, cpumap(0), AFFECT_CONFIG)
        with pytest.raises(client.InvalidArgError, match="Empty cpu list for pinning"):
            dom.pin_vcpu(0, b"\0", AFFECT_CONFIG)
        with pytest.raises(client.OperationInvalid, match="not running"):
            dom.pin_vcpu(0, cpumap(0))  # the live domain, as virDomainPinVcpu
        out = qemush(daemon, "vcpupin", "bad", "5")
        assert "error: vcpu 5 is out of range of persistent cpu count 2" in out.stderr

        # a definition naming a CPU the host lacks: the start fails, nothing runs
        dom.pin_vcpu(1, cpumap(7), AFFECT_CONFIG)
        with pytest.raises(client.QemudClientError,
                           match="Invalid value '7' for 'cpuset.cpus': Invalid argument"):
            dom.create()
        assert not dom.is_active()
        dom.pin_vcpu(1, cpumap(1), AFFECT_CONFIG)
        dom.create()
        with pytest.raises(client.QemudClientError,
                           match="Invalid value '0,7' for 'cpuset.cpus'"):
            dom.pin_emulator(cpumap(0, 7), AFFECT_LIVE)
        with pytest.raises(client.InvalidArgError,
                           match="vcpu 3 is out of range of live cpu count 2"):
            dom.pin_vcpu(3, cpumap(0))
        assert affinities(daemon, "bad")[1] == {ALL}
        dom.destroy()

        # bad XML is refused at define, naming the element
        for cputune, words in (
                ("<vcpupin vcpu='2' cpuset='0'/>", "cputune/vcpupin: vcpupin for vCPU 2"),
                ("<vcpupin vcpu='0' cpuset='0-'/>", "Failed to parse bitmap '0-'"),
                ("<emulatorpin cpuset='0,^0'/>", "Invalid value of 'cpuset': 0,^0")):
            with pytest.raises(client.QemudClientError, match=re.escape(words)):
                conn.define_xml(bare_xml("worse").replace(
                    "<vcpu>1</vcpu>", f"<vcpu>2</vcpu><cputune>{cputune}</cputune>"))
