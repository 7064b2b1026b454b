"""DOMAIN_STATS / NODE_STATS against a real running test guest, and qemush's domstats /
nodestats --json (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.constants import DomainState
from tests.helpers.daemon import env_without_daemon_vars, wait_for
from tests.helpers.tap import send_frames
from tests.monitoring.conftest import (
    DISK_TEXT,
    GUEST,
    MAC_AUTO,
    MAC_TAP,
    MAC_USER,
    REPO_ROOT,
    Monitored,
    block_index,
    domain_stats,
)

pytestmark = pytest.mark.integration


def test_state_cpu_balloon_vcpu(monitored: Monitored) -> None:
    first = domain_stats(monitored.daemon)
    assert first["state.state"] == DomainState.RUNNING
    assert first["cpu.time"] == first["cpu.user"] + first["cpu.system"]
    assert first["balloon.maximum"] == first["balloon.current"] == 256 * 1024
    assert 0 < first["balloon.rss"] < 4 * 1024 * 1024
    assert first["vcpu.current"] == first["vcpu.maximum"] == 1
    assert first["vcpu.0.state"] == 1
    # the guest idles in TCG, which still burns host CPU: cpu.time grows
    second = wait_for(lambda: (s := domain_stats(monitored.daemon))["cpu.time"] >
                      first["cpu.time"] and s, timeout=15, message="cpu.time grows")
    assert second["cpu.time"] > first["cpu.time"]
    assert second["vcpu.0.time"] >= first["vcpu.0.time"] > 0
    assert second["cpu.time"] >= second["vcpu.0.time"]


def test_block_stats_grow_when_the_guest_reads(monitored: Monitored) -> None:
    before = domain_stats(monitored.daemon)
    assert before["block.count"] == 1
    i = block_index(before, "vda")
    assert before[f"block.{i}.path"] == str(monitored.image)
    for key in ("rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times",
                "fl.reqs", "fl.times"):
        assert isinstance(before[f"block.{i}.{key}"], int)
    mark = monitored.serial.mark()
    monitored.serial.send("read-disk vda 16")
    monitored.serial.wait_for(f"QEMUD-READ vda {DISK_TEXT[:16]}", start=mark, timeout=30)
    after = domain_stats(monitored.daemon)
    assert after[f"block.{i}.rd.reqs"] > before[f"block.{i}.rd.reqs"]
    assert after[f"block.{i}.rd.bytes"] >= before[f"block.{i}.rd.bytes"] + 512
    assert after[f"block.{i}.wr.bytes"] >= before[f"block.{i}.wr.bytes"]


def test_net_stats(monitored: Monitored) -> None:
    stats = domain_stats(monitored.daemon)
    if monitored.tap is None:
        assert stats["net.count"] == 1
        assert stats["net.0.type"] == "user" and "net.0.rx.bytes" not in stats
        pytest.skip("cannot create tap devices here (needs root and /dev/net/tun)")
    assert stats["net.count"] == 3
    # a tap with a known name
    assert stats["net.0.name"] == monitored.tap
    assert (stats["net.0.type"], stats["net.0.mac"]) == ("ethernet", MAC_TAP)
    # a tap QEMU named itself: found through QEMU's open tun fds
    auto = stats["net.1.name"]
    assert (stats["net.1.type"], stats["net.1.mac"]) == ("ethernet", MAC_AUTO)
    assert isinstance(auto, str) and auto != monitored.tap and \
        Path(f"/sys/class/net/{auto}/tun_flags").exists()
    assert isinstance(stats["net.1.rx.bytes"], int)
    # user-mode networking: no host device and no QMP counters in QEMU 7.2
    assert (stats["net.2.type"], stats["net.2.mac"]) == ("user", MAC_USER)
    assert stats["net.2.name"] == "hostnet-" + MAC_USER.replace(":", "")
    assert not any(k.startswith("net.2.") and k.endswith(("bytes", "pkts")) for k in stats)

    # what the host sends into the tap is what the guest receives (rx/tx swapped)
    host_tx = int(Path(f"/sys/class/net/{monitored.tap}/statistics/tx_bytes").read_text())
    assert stats["net.0.rx.bytes"] <= host_tx
    send_frames(monitored.tap, 10, 100)
    after = wait_for(lambda: (s := domain_stats(monitored.daemon))["net.0.rx.pkts"] >=
                     stats["net.0.rx.pkts"] + 10 and s, timeout=10, message="rx.pkts grows")
    assert after["net.0.rx.bytes"] >= stats["net.0.rx.bytes"] + 1000
    assert after["net.0.tx.bytes"] >= stats["net.0.tx.bytes"]
    host_rx = int(Path(f"/sys/class/net/{monitored.tap}/statistics/rx_bytes").read_text())
    assert after["net.0.tx.bytes"] <= host_rx


def test_inactive_domain(monitored: Monitored) -> None:
    xml = (f"<domain type='qemu'><name>mon-off</name><memory unit='MiB'>64</memory>"
           f"<currentMemory unit='MiB'>32</currentMemory><vcpu>2</vcpu>"
           f"<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' "
           f"device='disk'><source file='{monitored.image}'/><target dev='vdb' "
           f"bus='virtio'/></disk></devices></domain>")
    with monitored.daemon.connect() as conn:
        dom = conn.define_xml(xml)
        try:
            stats = domain_stats(monitored.daemon, "mon-off")
            everything = dict(conn.domain_stats())
        finally:
            dom.undefine()
    assert stats["state.state"] == DomainState.SHUTOFF
    assert (stats["balloon.current"], stats["balloon.maximum"]) == (32 * 1024, 64 * 1024)
    assert stats["vcpu.current"] == stats["vcpu.maximum"] == 2
    assert (stats["block.count"], stats["block.0.name"], stats["block.0.path"]) == \
        (1, "vdb", str(monitored.image))
    assert not any(k.startswith(("cpu.", "net.", "balloon.rss", "vcpu.0.")) or
                   k.endswith(".rd.bytes") for k in stats)
    assert {d.name for d in everything} == {GUEST, "mon-off"}


def _proc_stat_ns() -> dict[str, int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    names = ("user", "nice", "system", "idle", "iowait")
    return {n: int(v) * 1_000_000_000 // tick for n, v in zip(names, fields, strict=False)}


def test_node_stats(monitored: Monitored) -> None:
    with monitored.daemon.connect(readonly=True) as conn:
        before = _proc_stat_ns()
        first = conn.node_stats()
        time.sleep(0.3)
        second = conn.node_stats()
    for mode in ("user", "system", "idle", "iowait"):
        assert isinstance(first[f"cpu.{mode}"], int) and first[f"cpu.{mode}"] >= 0
        assert first[f"cpu.{mode}"] >= before[mode]
    assert first["cpu.user"] > 0 and first["cpu.system"] > 0
    total_cpu = sum(v for k, v in second.items() if k.startswith("cpu.") and k != "cpu.count")
    assert total_cpu > sum(v for k, v in first.items()
                           if k.startswith("cpu.") and k != "cpu.count")
    assert first["cpu.count"] == os.cpu_count()
    meminfo = {line.split(":")[0]: int(line.split()[1])
               for line in Path("/proc/meminfo").read_text().splitlines()}
    assert first["memory.total"] == meminfo["MemTotal"]
    total = first["memory.total"]
    assert isinstance(total, int)
    for key in ("free", "available", "buffers", "cached"):
        assert 0 <= first[f"memory.{key}"] <= total, key
    assert first["memory.free"] <= first["memory.available"]


def _qemush(*args: str) -> str:
    env = env_without_daemon_vars()
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "client.shell", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr)
    return proc.stdout


def test_qemush_domstats_nodestats_json(monitored: Monitored) -> None:
    uri = monitored.daemon.uri
    data = json.loads(_qemush("-r", "-c", uri, "domstats", "--json", GUEST))
    assert [(d["domain"], d["uuid"]) for d in data] == [(GUEST, monitored.uuid)]
    stats = data[0]["stats"]
    assert stats["state.state"] == DomainState.RUNNING and stats["cpu.time"] > 0
    i = block_index(stats, "vda")
    assert stats[f"block.{i}.rd.bytes"] > 0 and stats[f"block.{i}.path"] == \
        str(monitored.image)
    assert stats["net.count"] == (3 if monitored.tap else 1)
    text = _qemush("-c", uri, "domstats", GUEST)
    assert text.startswith(f"Domain: '{GUEST}'\n  state.state=1\n")
    assert f"  block.{i}.name=vda\n" in text
    node = json.loads(_qemush("-r", "-c", uri, "nodestats", "--json"))
    assert {"cpu.user", "cpu.system", "cpu.idle", "cpu.iowait", "memory.total",
            "memory.free", "memory.available", "memory.buffers", "memory.cached"} <= set(node)
    assert all(isinstance(v, int) for v in node.values())


def _read_syscalls(pid: int) -> int:
    """How many read syscalls process ``pid`` made (``syscr`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscr in /proc/{pid}/io")


def test_a_domain_named_many_times_is_collected_once(monitored: Monitored) -> None:
    """DOMAIN_STATS naming the same domain 2,000 times (through name and UUID lookups)
    gets 2,000 records, in order, all the same, from one collection: the daemon's debug
    log shows the domain collected once, and the daemon makes no more read syscalls than
    for one ref (each collection reads ~40 /proc files; 2,000 would be 80,000 reads)."""
    daemon = monitored.daemon
    assert daemon.proc is not None
    pid = daemon.proc.pid
    collecting = f"DOMAIN_STATS: collecting domain {GUEST}"
    with daemon.connect(readonly=True) as conn:
        by_name, by_uuid = conn.lookup_by_name(GUEST), conn.lookup_by_uuid(monitored.uuid)
        reads = _read_syscalls(pid)
        conn.domain_stats([by_name])
        one = _read_syscalls(pid) - reads
        before = daemon.log_text().count(collecting)
        reads = _read_syscalls(pid)
        records = conn.domain_stats([by_name, by_uuid] * 1000)
        many = _read_syscalls(pid) - reads
    assert len(records) == 2000
    assert {(dom.name, dom.uuid) for dom, _ in records} == {(GUEST, monitored.uuid)}
    first = records[0][1]
    assert first["state.state"] == DomainState.RUNNING and "block.0.rd.reqs" in first
    assert all(stats == first for _, stats in records)
    log = daemon.log_text()
    assert log.count(collecting) - before == 1
    assert "DOMAIN_STATS: 2000 domain refs name 1 distinct domains" in log
    # one collection's reads, give or take the loop's own (a keepalive, an event)
    assert many < one + 1000, (one, many)
