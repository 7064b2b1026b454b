"""Pieces of the stats code and the exporter that need no daemon: QMP answer mapping,
block/net params of a definition, metric conversion, reconnect logic."""

from __future__ import annotations

from typing import Any

import pytest

import client
from client.exporter import QemudCollector, domain_metrics, node_metrics, parse_listen
from protocol.constants import DomainState
from qemud.conf import parse_domain_xml
from qemud.driver.domain import DomainObj
from qemud.driver.stats import _disk_target, block_stats, net_stats, vcpu_threads

XML = """<domain type='qemu'><name>u</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><source file='/img/a'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/img/b'/><target dev='hda' bus='ide'/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
<interface type='user'><mac address='52:54:00:00:00:01'/></interface>
</devices></domain>"""


def _params(params: list[Any]) -> dict[str, Any]:
    return {p.name: p.int_value if p.kind == 1 else p.str_value for p in params}


@pytest.mark.parametrize(("entry", "target"), [
    ({"qdev": "/machine/peripheral/disk-vda/virtio-backend", "node-name": "x"}, "vda"),
    ({"qdev": "disk-hda", "node-name": "drive-hda-format"}, "hda"),  # IDE: a bare id
    ({"qdev": "", "node-name": "drive-sdb-storage"}, "sdb"),
    ({"device": "drive-vdc"}, "vdc"),
    ({"device": ""}, ""),
])
def test_disk_target(entry: dict[str, str], target: str) -> None:
    assert _disk_target(entry) == target


def test_vcpu_threads_in_vcpu_order() -> None:
    answer = [  # query-cpus-fast of a guest whose vCPU 2 was plugged before vCPU 1
        {"cpu-index": 0, "thread-id": 101, "qom-path": "/machine/unattached/device[0]"},
        {"cpu-index": 2, "thread-id": 303, "qom-path": "/machine/peripheral/vcpu2"},
        {"cpu-index": 1, "thread-id": 202, "qom-path": "/machine/peripheral/vcpu1"},
    ]
    threads = vcpu_threads(answer)
    assert threads == {0: 101, 1: 202, 2: 303}
    assert list(threads) == [0, 1, 2]


@pytest.mark.parametrize("answer", [
    None, {}, "x", [None, "cpu"], [{"cpu-index": 0}], [{"cpu-index": 0, "thread-id": "7"}],
])
def test_vcpu_threads_of_an_odd_answer(answer: Any) -> None:
    assert vcpu_threads(answer) == {}


def test_block_stats_follow_the_definition() -> None:
    dom = DomainObj(parse_domain_xml(XML, validate_schema=False), persistent=True)
    answer = [  # query-blockstats order differs from the definition's
        {"qdev": "disk-hda", "stats": {"rd_bytes": 7, "rd_operations": 1}},
        {"qdev": "/machine/peripheral/disk-vda/virtio-backend",
         "stats": {"rd_bytes": 512, "wr_bytes": 1024, "flush_operations": 3,
                   "rd_total_time_ns": 9}},
        {"qdev": "disk-hdc", "stats": {}},
    ]
    p = _params(block_stats(dom, answer))
    assert p["block.count"] == 3
    assert [p[f"block.{i}.name"] for i in range(3)] == ["vda", "hda", "hdc"]
    assert (p["block.0.path"], p["block.1.path"]) == ("/img/a", "/img/b")
    assert "block.2.path" not in p  # empty cdrom
    assert (p["block.0.rd.bytes"], p["block.0.wr.bytes"], p["block.0.fl.reqs"],
            p["block.0.rd.times"]) == (512, 1024, 3, 9)
    assert (p["block.1.rd.bytes"], p["block.1.rd.reqs"]) == (7, 1)
    assert p["block.2.rd.bytes"] == 0
    inactive = _params(block_stats(dom, None))  # names and paths only
    assert inactive["block.count"] == 3 and "block.0.rd.bytes" not in inactive
    assert net_stats(dom) == []  # not running: no net.*


def test_domain_metrics_conversion() -> None:
    stats = {"state.state": int(DomainState.PAUSED), "cpu.time": 2_500_000_000,
             "cpu.user": 2_000_000_000, "cpu.system": 500_000_000,
             "balloon.current": 1024, "balloon.maximum": 2048, "balloon.rss": 10,
             "vcpu.current": 2, "vcpu.0.time": 1_000_000_000,
             "block.count": 1, "block.0.name": "vda", "block.0.rd.bytes": 4096,
             "block.0.rd.times": 500_000_000,
             "net.count": 2, "net.0.name": "tap0", "net.0.rx.bytes": 100,
             "net.1.name": "hostnet-525400000001"}  # user NIC: no counters
    families = {f.name: f for f in domain_metrics([("d", "u-u", stats)])}
    sample = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}
    dom = (("domain", "d"), ("uuid", "u-u"))
    assert sample[("libvirt_domain_info_state", dom)] == 3
    assert sample[("libvirt_domain_info_cpu_time_seconds_total", dom)] == 2.5
    assert sample[("qemud_domain_cpu_seconds_total",
                   (("domain", "d"), ("mode", "user"), ("uuid", "u-u")))] == 2.0
    assert sample[("libvirt_domain_info_maximum_memory_bytes", dom)] == 2048 * 1024
    assert sample[("libvirt_domain_info_memory_usage_bytes", dom)] == 1024 * 1024
    assert sample[("qemud_domain_memory_rss_bytes", dom)] == 10 * 1024
    assert sample[("libvirt_domain_info_virtual_cpus", dom)] == 2
    assert sample[("libvirt_domain_vcpu_time_seconds_total",
                   (("domain", "d"), ("vcpu", "0")))] == 1.0
    disk = (("domain", "d"), ("target_device", "vda"))
    assert sample[("libvirt_domain_block_stats_read_bytes_total", disk)] == 4096
    assert sample[("libvirt_domain_block_stats_read_time_seconds_total", disk)] == 0.5
    nic = (("domain", "d"), ("target_device", "tap0"))
    assert sample[("libvirt_domain_interface_stats_receive_bytes_total", nic)] == 100
    assert not any(("target_device", "hostnet-525400000001") in k[1] for k in sample)
    node = {s.name: s for f in node_metrics({"cpu.idle": 3_000_000_000, "cpu.count": 4,
                                             "memory.total": 8}) for s in f.samples}
    assert node["qemud_node_cpu_seconds_total"].labels == {"mode": "idle"}
    assert node["qemud_node_cpu_seconds_total"].value == 3.0
    assert node["qemud_node_memory_total_bytes"].value == 8192
    assert node["qemud_node_cpus"].value == 4


class FakeConn:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.is_alive = True
        self.closed = False

    def domain_stats(self) -> list[Any]:
        if self.fail:
            self.is_alive = False
            raise client.ConnectionLost("connection lost")
        return []

    def node_stats(self) -> dict[str, int]:
        return {"memory.total": 1}

    def close(self) -> None:
        self.closed = True


def test_collector_reconnects_once_per_scrape() -> None:
    made: list[FakeConn] = []
    down = [False]

    def connector(uri: Any, readonly: bool, **kwargs: Any) -> FakeConn:
        assert readonly is True
        if down[0]:
            raise client.ConnectFailed("no daemon")
        made.append(FakeConn(False))
        return made[-1]

    collector = QemudCollector("qemud:///session", connector=connector)  # type: ignore[arg-type]
    assert collector.snapshot().up and len(made) == 1
    assert collector.snapshot().up and len(made) == 1  # the connection is kept
    made[0].fail = True  # the daemon restarted: the old connection fails...
    snap = collector.snapshot()
    assert snap.up and len(made) == 2 and made[0].closed  # ...a new one answers at once
    made[1].fail = True
    down[0] = True  # the daemon is gone
    snap = collector.snapshot()
    assert not snap.up and "no daemon" in snap.error and made[1].closed
    assert not collector.snapshot().up  # still down, no exception
    down[0] = False
    assert collector.snapshot().up and len(made) == 3


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9177") == ("127.0.0.1", 9177)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(Exception, match="invalid listen address"):
        parse_listen("localhost")
