"""Memory and vCPUs of real TCG guests: setmem, setmaxmem, dommemstat, setvcpus, vcpuinfo.

The guests are diskless and boot to firmware (tests/integration/domains.py bare_xml):
enough for QEMU to run its vCPU threads and its virtio balloon, which an x86_64 guest
defined without ``<memballoon>`` gets, as in libvirt (``<memballoon model='none'>``: none).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import client
from client.domain import AFFECT_CONFIG, AFFECT_LIVE, MEM_MAXIMUM, VCPU_MAXIMUM, Domain
from protocol.constants import ErrorCode
from tests.helpers.daemon import DaemonProcess
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

NO_BALLOON = "</os><devices><memballoon model='none'/></devices>"
VCPU_GUEST = 8  # libvirt's VIR_DOMAIN_VCPU_GUEST


def memory(dom: Domain, flags: int = 0) -> tuple[int, int]:
    """(<memory>, <currentMemory>) in KiB of the live (0) or inactive XML."""
    root = ET.fromstring(dom.xml(flags))

    def kib(tag: str) -> int | None:
        node = root.find(tag)
        if node is None or node.text is None:
            return None
        return int(node.text) * {"KiB": 1, "MiB": 1024}[node.get("unit", "KiB")]
    total = kib("memory")
    assert total is not None
    return total, kib("currentMemory") or total


def vcpus(dom: Domain, flags: int = 0) -> tuple[int, int]:
    """(current, maximum) vCPUs of the live (0) or inactive XML."""
    node = ET.fromstring(dom.xml(flags)).find("vcpu")
    assert node is not None and node.text is not None
    return int(node.get("current", node.text)), int(node.text)


INACTIVE = client.XML_INACTIVE


def test_setmem_and_setmaxmem_of_the_persistent_definition(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("mem"))  # 128 MiB
        assert memory(dom) == (131072, 131072)
        dom.set_memory(65536, AFFECT_CONFIG)
        assert memory(dom) == (131072, 65536)
        dom.set_memory(98304, 0)  # the current state of a shut-off domain: its definition
        assert memory(dom) == (131072, 98304)
        with pytest.raises(client.InvalidArgError, match="cannot set memory higher than max"):
            dom.set_memory(131073, AFFECT_CONFIG)
        with pytest.raises(client.InvalidArgError, match="must not be zero"):
            dom.set_memory(0, AFFECT_CONFIG)
        with pytest.raises(client.OperationInvalid, match="not running"):
            dom.set_memory(65536)  # virsh's setmem without options: the running domain
        assert memory(dom) == (131072, 98304)

        dom.set_max_memory(49152)  # currentMemory is lowered with it
        assert memory(dom) == (49152, 49152)
        dom.set_memory(196608, AFFECT_CONFIG | MEM_MAXIMUM)
        assert memory(dom) == (196608, 49152)
        assert dom.info().max_mem_kib == 196608
        # libvirt's bound (2^63 - 1 bytes): OVERFLOW "input too large", nothing changed
        # (2^54 was an internal error, 2^53 was stored and the start then failed)
        for kib in (2**53 - 1, 2**54, 2**64 - 1):
            for flags in (AFFECT_CONFIG | MEM_MAXIMUM, AFFECT_CONFIG):
                with pytest.raises(client.InvalidArgError) as info:
                    dom.set_memory(kib, flags)
                assert str(info.value) == f"value too large: input too large: {kib}"
                assert info.value.code == ErrorCode.OVERFLOW
        dom.set_memory(2**53 - 2, AFFECT_CONFIG | MEM_MAXIMUM)  # the largest it takes
        assert memory(dom)[0] == 2**53 - 2


def qemu_argv(daemon: DaemonProcess, name: str) -> list[str]:
    """The running guest's QEMU command line (its pid from the daemon's status file)."""
    status = json.loads((daemon.run_dir / "qemu" / f"{name}.status.json").read_text())
    return Path(f"/proc/{status['pid']}/cmdline").read_bytes().decode().split("\0")


def balloons(dom: Domain, flags: int = 0) -> list[dict[str, str]]:
    """The <memballoon> elements of the live (0) or inactive XML, as attribute dicts."""
    return [dict(b.attrib) for b in ET.fromstring(dom.xml(flags)).iterfind("devices/memballoon")]


def test_running_domain_with_memballoon_none(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("mem").replace("</os>", NO_BALLOON))
        assert balloons(dom) == [{"model": "none"}]  # no default in its place
        dom.set_memory(98304, AFFECT_CONFIG)
        dom.create()
        with pytest.raises(client.OperationInvalid,
                           match="Unable to change memory of active domain without the "
                                 "balloon device and guest OS balloon driver"):
            dom.set_memory(65536, AFFECT_LIVE | AFFECT_CONFIG)
        assert memory(dom, INACTIVE) == (131072, 98304)  # the refused call changed nothing
        with pytest.raises(client.OperationInvalid,
                           match="cannot resize the maximum memory on an active domain"):
            dom.set_max_memory(65536)
        with pytest.raises(client.InvalidArgError, match="higher than max memory"):
            dom.set_memory(131073, AFFECT_LIVE)

        # the persistent definition changes, the running guest keeps its memory
        dom.set_memory(262144, AFFECT_CONFIG | MEM_MAXIMUM)
        dom.set_memory(65536, AFFECT_CONFIG)
        assert memory(dom, INACTIVE) == (262144, 65536)
        assert memory(dom) == (131072, 98304)
        assert not any(arg.startswith("virtio-balloon") for arg in qemu_argv(daemon, "mem"))

        stats = dom.memory_stats()  # libvirt without a balloon: the RSS only
        assert list(stats) == ["rss"] and stats["rss"] > 0
        dom.destroy()
        with pytest.raises(client.OperationInvalid, match="not running"):
            dom.memory_stats()
        assert memory(dom) == (262144, 65536)  # the next definition applies now


def test_setmem_live_through_the_default_balloon(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("bal"))
        # libvirt's default, written at define: dumpxml --inactive shows it
        assert balloons(dom, INACTIVE) == [{"model": "virtio"}]
        dom.create()
        assert balloons(dom) == [{"model": "virtio"}]
        argv = qemu_argv(daemon, "bal")
        # (in its slot: the first free one, 00:03.0 on pc)
        assert argv[argv.index("virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3") - 1] \
            == "-device"
        dom.set_memory(65536)  # virsh setmem's default: live
        assert memory(dom) == (131072, 65536)
        assert dom.info().memory_kib == 65536
        assert memory(dom, INACTIVE) == (131072, 131072)
        dom.set_memory(98304, AFFECT_LIVE | AFFECT_CONFIG)
        assert memory(dom) == (131072, 98304)
        assert memory(dom, INACTIVE) == (131072, 98304)

        stats = dom.memory_stats()
        names = list(stats)
        # the firmware has no balloon driver: the balloon stays empty, the guest sent no
        # stats (QEMU's -1s are left out), last_update is 0
        assert names[0] == "actual" and stats["actual"] == 131072
        assert names[-1] == "rss" and stats["rss"] > 0
        assert set(names) <= {"actual", "last_update", "rss"}, stats
        assert "<-- balloon error" not in daemon.log_text()


def test_balloon_target_and_stats_period_are_set_before_the_guest_runs(
        daemon: DaemonProcess) -> None:
    """libvirt's qemuProcessSetupBalloon: qom-set of the polling interval, then the
    balloon target <currentMemory>, both before ``cont``."""
    with daemon.connect() as conn:
        xml = bare_xml("period").replace(
            "</os>", "</os><devices><memballoon model='virtio'><stats period='3'/>"
                     "</memballoon></devices>").replace(
            "<vcpu>", "<currentMemory unit='MiB'>96</currentMemory><vcpu>")
        dom = conn.define_xml(xml)
        dom.create()
        log = daemon.log_text()
        polled = log.index("--> qom-set {'path': '/machine/peripheral/balloon0', "
                           "'property': 'guest-stats-polling-interval', 'value': 3}")
        target = log.index(f"--> balloon {{'value': {96 * 1024 * 1024}}}")
        assert polled < target < log.index("--> cont", target)
        assert "<-- qom-set ok" in log and "<-- balloon ok" in log
        assert memory(dom) == (131072, 98304)
        root = ET.fromstring(dom.xml(INACTIVE))
        stats = root.find("devices/memballoon/stats")
        assert stats is not None and stats.get("period") == "3"
        assert "actual" in dom.memory_stats()


def test_setvcpus_of_the_persistent_definition(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("cpu").replace("<vcpu>1</vcpu>",
                                                      "<vcpu current='1'>2</vcpu>"))
        dom.set_vcpus(2, AFFECT_CONFIG)
        assert vcpus(dom) == (2, 2) and dom.info().vcpus == 2
        with pytest.raises(client.InvalidArgError,
                           match=r"greater than max allowable vcpus for the persistent "
                                 r"domain: 3 > 2"):
            dom.set_vcpus(3, AFFECT_CONFIG)
        dom.set_vcpus(4, AFFECT_CONFIG | VCPU_MAXIMUM)
        assert vcpus(dom) == (2, 4)
        dom.set_vcpus(1, AFFECT_CONFIG | VCPU_MAXIMUM)  # the count is lowered with it
        assert vcpus(dom) == (1, 1)
        assert 'current=' not in dom.xml()
        dom.set_vcpus(2, AFFECT_CONFIG | VCPU_MAXIMUM)
        assert vcpus(dom) == (1, 2)
        dom.set_vcpus(2, 0)  # the current state of a shut-off domain: its definition
        assert vcpus(dom) == (2, 2)

        with pytest.raises(client.InvalidArgError, match="requires flag"):
            dom.set_vcpus(2, VCPU_MAXIMUM)
        with pytest.raises(client.InvalidArgError, match="must not be zero"):
            dom.set_vcpus(0, AFFECT_CONFIG)
        with pytest.raises(client.InvalidArgError, match=r"unsupported flags \(0x40\)"):
            dom.set_vcpus(1, AFFECT_CONFIG | 0x40)
        with pytest.raises(client.NotSupportedError,
                           match=r"^argument unsupported: hot-pluggable vCPUs in the "
                                 r"persistent definition \(VIR_DOMAIN_VCPU_HOTPLUGGABLE"):
            dom.set_vcpus(1, AFFECT_CONFIG | 16)  # (was accepted, and ignored)
        assert vcpus(dom) == (2, 2)
        with pytest.raises(client.OperationInvalid, match="not running"):
            dom.set_vcpus(1)  # virsh's setvcpus without options: the running domain
        with pytest.raises(client.OperationInvalid,
                           match="cannot retrieve vcpu information for inactive domain"):
            dom.vcpus()
        assert vcpus(dom) == (2, 2)


def test_vcpuinfo_and_live_setvcpus(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("cpu").replace("<vcpu>1</vcpu>",
                                                      "<vcpu current='2'>3</vcpu>"))
        dom.create()
        info = dom.vcpus()
        assert [v.number for v in info] == [0, 1]
        host_cpus = os.cpu_count() or 1
        for v in info:
            assert v.state == 1  # running
            assert 0 <= v.cpu < host_cpus
            assert len(v.cpumap) == (host_cpus + 7) // 8 and any(v.cpumap)

        dom.set_vcpus(2)  # what it runs: nothing to do (plugs: test_vcpu_hotplug.py)
        with pytest.raises(client.NotSupportedError,
                           match="maximum vcpu count of a live domain can't be modified"):
            dom.set_vcpus(4, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM)
        with pytest.raises(client.InvalidArgError,
                           match=r"greater than max allowable vcpus for the live domain: "
                                 r"4 > 3"):
            dom.set_vcpus(4, AFFECT_LIVE)
        with pytest.raises(client.NotSupportedError, match="guest agent is not configured"):
            dom.set_vcpus(1, VCPU_GUEST)
        assert vcpus(dom) == (2, 3)

        dom.set_vcpus(4, AFFECT_CONFIG | VCPU_MAXIMUM)
        dom.set_vcpus(1, AFFECT_CONFIG)
        assert vcpus(dom, INACTIVE) == (1, 4)
        assert vcpus(dom) == (2, 3) and dom.info().vcpus == 2
        dom.destroy()
        dom.create()
        assert [v.number for v in dom.vcpus()] == [0]
        dom.destroy()


def test_read_only_connections_may_read_but_not_set(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        conn.define_xml(bare_xml("ro")).create()
        transient = conn.create_xml(bare_xml("tr"))
        with pytest.raises(client.OperationInvalid,
                           match="transient domains do not have any persistent config"):
            transient.set_memory(65536, AFFECT_CONFIG)
        with pytest.raises(client.OperationInvalid,
                           match="transient domains do not have any persistent config"):
            transient.set_vcpus(1, AFFECT_CONFIG)
        with daemon.connect(readonly=True) as ro:
            dom = ro.lookup_by_name("ro")
            with pytest.raises(client.ReadOnlyError):
                dom.set_memory(65536, AFFECT_CONFIG)
            with pytest.raises(client.ReadOnlyError):
                dom.set_max_memory(65536)
            with pytest.raises(client.ReadOnlyError):
                dom.set_vcpus(1, AFFECT_CONFIG)
            assert "rss" in dom.memory_stats()
            assert [v.number for v in dom.vcpus()] == [0]
        assert memory(conn.lookup_by_name("ro"), INACTIVE) == (131072, 131072)
