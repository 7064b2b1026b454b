"""qemud-exporter as a subprocess against real daemons, scraped over HTTP (urllib)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from client.exporter import parse_listen
from tests.conftest import DaemonFactory
from tests.helpers.daemon import wait_for
from tests.monitoring.conftest import (
    GUEST,
    REPO_ROOT,
    Exporter,
    Monitored,
    block_index,
    domain_stats,
    names,
    value,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_metrics_of_a_running_guest(monitored: Monitored,
                                    exporter_factory: type[Exporter]) -> None:
    exporter = exporter_factory(monitored.daemon.uri)
    samples = exporter.scrape()
    assert value(samples, "libvirt_up") == 1
    dom = {"domain": GUEST, "uuid": monitored.uuid}
    assert value(samples, "libvirt_domain_info_state", **dom) == 1
    assert value(samples, "libvirt_domain_info_maximum_memory_bytes", **dom) == 256 * MiB
    assert value(samples, "libvirt_domain_info_memory_usage_bytes", **dom) == 256 * MiB
    assert value(samples, "libvirt_domain_info_virtual_cpus", **dom) == 1
    cpu = value(samples, "libvirt_domain_info_cpu_time_seconds_total", **dom)
    assert 0 < cpu < 3600
    assert value(samples, "qemud_domain_memory_rss_bytes", **dom) > 10 * MiB
    assert value(samples, "libvirt_domain_vcpu_time_seconds_total", domain=GUEST,
                 vcpu="0") > 0

    disk = {"domain": GUEST, "target_device": "vda"}
    stats = domain_stats(monitored.daemon)
    i = block_index(stats, "vda")
    read = value(samples, "libvirt_domain_block_stats_read_bytes_total", **disk)
    assert 0 < read <= stats[f"block.{i}.rd.bytes"]  # the guest scanned the disk at boot
    assert value(samples, "libvirt_domain_block_stats_read_requests_total", **disk) > 0
    assert value(samples, "libvirt_domain_block_stats_write_bytes_total", **disk) >= 0
    assert value(samples, "libvirt_domain_block_stats_write_requests_total", **disk) >= 0
    assert value(samples, "libvirt_domain_block_stats_flush_requests_total", **disk) >= 0
    assert value(samples, "libvirt_domain_block_stats_read_time_seconds_total", **disk) > 0

    if monitored.tap is not None:
        nic = {"domain": GUEST, "target_device": monitored.tap}
        for name in ("receive_bytes", "receive_packets", "transmit_bytes", "transmit_packets",
                     "receive_errors", "receive_drops", "transmit_errors", "transmit_drops"):
            assert value(samples, f"libvirt_domain_interface_stats_{name}_total", **nic) >= 0
    # the user-mode NIC has no counters: no interface sample names it
    assert not any(dict(labels).get("target_device", "").startswith("hostnet-")
                   for _, labels in samples)

    for name in ("total", "free", "available", "buffers", "cached"):
        assert value(samples, f"qemud_node_memory_{name}_bytes") >= 0
    assert value(samples, "qemud_node_memory_total_bytes") >= \
        value(samples, "qemud_node_memory_available_bytes") > 0
    for mode in ("user", "system", "idle", "iowait"):
        assert value(samples, "qemud_node_cpu_seconds_total", mode=mode) >= 0
    assert value(samples, "qemud_node_cpu_seconds_total", mode="idle") > 0

    # counters are fresh on every scrape (no --interval)
    later = wait_for(lambda: (s := exporter.scrape()) and value(
        s, "libvirt_domain_info_cpu_time_seconds_total", **dom) > cpu and s, timeout=15,
        message="cpu time grows between scrapes")
    assert value(later, "libvirt_up") == 1

    # the text format declares the libvirt-exporter families with their types
    text = exporter.text()
    # (prometheus_client < 0.22 writes the counter's TYPE line without "_total")
    assert re.search(r"^# TYPE libvirt_domain_info_cpu_time_seconds(_total)? counter$", text,
                     re.M)
    assert "# TYPE libvirt_domain_info_state gauge" in text
    assert exporter.proc.poll() is None
    assert not [line for line in exporter.log if "WARNING" in line or "ERROR" in line]


def test_exporter_is_read_only(monitored: Monitored,
                               exporter_factory: type[Exporter]) -> None:
    exporter = exporter_factory(monitored.daemon.uri)
    samples = exporter.scrape()
    # everything it needs is allowed on a read-only connection: full data, no errors
    assert value(samples, "libvirt_up") == 1
    assert ("libvirt_domain_info_state", frozenset({"domain": GUEST,
                                                    "uuid": monitored.uuid}.items())) in samples
    with monitored.daemon.connect() as admin:
        mine = [c for c in admin.client_list() if f"pid={exporter.proc.pid} " in
                c.identity + " "]
    assert len(mine) == 1, [(c.transport, c.identity) for c in mine]
    # the URI's socket= is used as given, with the read-only HELLO (the derived
    # qemud-sock-ro is for URIs without socket=: test_exporter_bounded.py covers both)
    assert mine[0].transport == "unix" and mine[0].readonly
    assert mine[0].calls >= 3  # hello + DOMAIN_STATS + NODE_STATS


def test_daemon_stop_and_restart(daemon_factory: DaemonFactory,
                                 exporter_factory: type[Exporter]) -> None:
    daemon = daemon_factory()
    with daemon.connect() as conn:
        uuid = conn.define_xml("<domain type='qemu'><name>idle</name><memory unit='MiB'>64"
                               "</memory><os><type arch='x86_64'>hvm</type></os></domain>").uuid
    exporter = exporter_factory(daemon.uri)
    samples = exporter.scrape()
    assert value(samples, "libvirt_up") == 1
    assert value(samples, "libvirt_domain_info_state", domain="idle", uuid=uuid) == 5
    assert value(samples, "libvirt_domain_info_cpu_time_seconds_total", domain="idle",
                 uuid=uuid) == 0

    daemon.stop()
    down = exporter.scrape()
    assert value(down, "libvirt_up") == 0
    assert not {n for n in names(down) if n.startswith(("libvirt_domain", "qemud_node"))}
    assert exporter.proc.poll() is None
    assert value(exporter.scrape(), "libvirt_up") == 0

    daemon.start()
    # reconnects by itself (the read-only socket comes up just after the one the test
    # helper waits for, so allow a scrape or two)
    again = wait_for(lambda: (s := exporter.scrape()) and value(s, "libvirt_up") == 1 and s,
                     timeout=10, interval=0.1, message="libvirt_up back to 1")
    assert "libvirt_domain_info_state" in names(again)
    assert any("qemud unreachable" in line for line in exporter.log)
    assert exporter.stop() == 0  # SIGTERM: a clean exit


def test_interval_reuses_answers(daemon_factory: DaemonFactory,
                                 exporter_factory: type[Exporter]) -> None:
    daemon = daemon_factory()
    exporter = exporter_factory(daemon.uri, "--interval", "3600")
    assert value(exporter.scrape(), "libvirt_up") == 1
    daemon.stop()
    assert value(exporter.scrape(), "libvirt_up") == 1  # the cached answer


def test_help_and_bad_arguments() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.exporter", *args],
                              capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    help_text = run("--help")
    assert help_text.returncode == 0
    for option in ("--uri", "--listen", "--interval", "--connect-timeout", "READ-ONLY",
                   "127.0.0.1:9177"):
        assert option in help_text.stdout
    bad = run("--listen", "nowhere")
    assert bad.returncode == 2 and "invalid listen address" in bad.stderr
    assert run("--interval", "-1").returncode == 2
    assert parse_listen("[::1]:9177") == ("::1", 9177)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
