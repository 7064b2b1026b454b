"""Fixtures for the monitoring tests: one daemon with one running test guest that has a
virtio disk, a tap NIC with a known host name, a tap NIC QEMU names itself and a
user-mode NIC; and helpers to run/scrape ``qemud-exporter``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.daemon import DaemonProcess, env_without_daemon_vars, stop_destroying_guests
from tests.helpers.tap import make_tap
from tests.integration.conftest import test_guest  # noqa: F401  (session fixture)
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

REPO_ROOT = Path(__file__).resolve().parents[2]
GUEST = "mon-guest"
DISK_TEXT = "QEMUD-MONITOR-DISK"
MAC_TAP, MAC_AUTO, MAC_USER = "52:54:00:aa:01:01", "52:54:00:aa:01:02", "52:54:00:aa:01:03"


@dataclass
class Monitored:
    daemon: DaemonProcess
    serial: SerialPort
    image: Path
    tap: str | None  # host tap with a known name (None: cannot create taps here)
    uuid: str


@pytest.fixture(scope="session")
def monitored(tmp_path_factory: pytest.TempPathFactory,
              test_guest) -> Iterator[Monitored]:  # noqa: F811
    root = tmp_path_factory.mktemp("qemud-monitoring")
    image = root / "disk.img"
    image.write_bytes(DISK_TEXT.encode() + bytes(1024 * 1024 - len(DISK_TEXT)))
    tap = f"qmon{os.getpid() % 100000}"
    if not make_tap(tap):
        tap = None
    nics = f"<interface type='user'><mac address='{MAC_USER}'/><model type='virtio'/>" \
        "</interface>"
    if tap is not None:
        # rtl8139: QEMU reads (and drops) what the host sends even though the guest never
        # brings the NIC up (virtio-net/e1000 would leave it queued, uncounted, in the tap)
        nics = (f"<interface type='ethernet'><mac address='{MAC_TAP}'/><target dev='{tap}'/>"
                "<model type='rtl8139'/></interface>"
                f"<interface type='ethernet'><mac address='{MAC_AUTO}'/>"
                "<model type='virtio'/></interface>" + nics)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>")
    sock = root / "serial.sock"
    daemon = DaemonProcess(root / "daemon")
    daemon.start()
    serial = None
    try:
        with daemon.connect() as conn:
            dom = conn.define_xml(guest_xml(GUEST, test_guest, sock, extra=disk + nics))
            dom.create()
            serial = SerialPort(sock)
            serial.wait_for(READY, timeout=120)
            uuid = dom.uuid
        yield Monitored(daemon, serial, image, tap, uuid)
    finally:
        if serial is not None:
            serial.close()
        try:
            stop_destroying_guests(daemon)
        finally:
            if tap is not None:
                subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)


def domain_stats(daemon: DaemonProcess, name: str = GUEST) -> dict[str, int | float | str]:
    with daemon.connect(readonly=True) as conn:
        for _dom, stats in conn.domain_stats([conn.lookup_by_name(name)]):
            return stats
    raise AssertionError(f"no stats for {name}")


def block_index(stats: dict[str, int | float | str], target: str) -> int:
    for i in range(int(stats["block.count"])):
        if stats[f"block.{i}.name"] == target:
            return i
    raise AssertionError(f"no block.N.name={target} in {stats}")


# -- the exporter as a subprocess ---------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Exporter:
    """``python -m client.exporter`` on a free port; ``scrape()`` parses /metrics."""

    def __init__(self, uri: str, *extra: str) -> None:
        env = env_without_daemon_vars()
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client.exporter", "--uri", uri, "--listen", "127.0.0.1:0",
             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            cwd=REPO_ROOT)
        self.log: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(20) or not self.url:
            self.stop()
            raise AssertionError(f"exporter did not start: {self.log}")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))
            match = re.search(r"serving (http://\S+/metrics)", line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=30) as reply:
            assert reply.status == 200
            return reply.read().decode()

    def scrape(self) -> Samples:
        samples: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def exporter_factory() -> Iterator[type[Exporter]]:
    started: list[Exporter] = []

    class Tracked(Exporter):
        def __init__(self, uri: str, *extra: str) -> None:
            super().__init__(uri, *extra)
            started.append(self)

    yield Tracked
    for e in started:
        e.stop()


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exported; have " + \
        ", ".join(sorted({n for n, _ in samples}))
    return samples[key]


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}
