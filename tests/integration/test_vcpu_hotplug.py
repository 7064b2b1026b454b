"""Live vCPU hotplug (``setvcpus --live``) on a real daemon and the test guest, through
qemush as a user runs it: the count ``vcpucount``, ``dominfo``, ``vcpuinfo`` and
``dumpxml`` show, QEMU's own view (``query-cpus-fast``), the guest's (its kernel, booted
without ``quiet``, announces each CPU it was given on the serial line), the refusals, and
a save and a managed save after a plug.

The guests are TCG guests (domain type 'qemu'): their vCPUs are plugged, never unplugged
(QEMU 7.2 under TCG crashes at the next plug after an unplug), so the unplug path runs
on a daemon given the test hook ``QEMUD_TCG_VCPU_UNPLUG=1``, and never plugs after it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import DaemonProcess, qemush, stop_destroying_guests
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, bare_xml, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

CPUS_FAST = '{"execute":"query-cpus-fast"}'
PONG = r"QEMUD-PONG uptime=(\d+(?:\.\d+)?)"
UNPLUG_TIMED_OUT = ("Timed out during operation: vcpu unplug request timed out. Unplug "
                    "result must be manually inspected in the domain")
#: the boot CPU, and a CPU qemud plugged (its id: libvirt's alias)
BOOT_CPU = "/machine/unattached/device[0]"


def plugged(n: int) -> str:
    return f"/machine/peripheral/vcpu{n}"


def ok(daemon: DaemonProcess, *args: str) -> str:
    proc = qemush(daemon, *args)
    assert proc.returncode == 0, f"qemush {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def refused(daemon: DaemonProcess, *args: str) -> str:
    proc = qemush(daemon, *args)
    assert proc.returncode == 1, f"qemush {' '.join(args)} succeeded: {proc.stdout}"
    return proc.stderr


def qemu_cpus(daemon: DaemonProcess, name: str) -> list[str]:
    """QEMU's vCPUs (their QOM paths), by cpu-index."""
    answer = json.loads(ok(daemon, "qemu-monitor-command", name, CPUS_FAST))["return"]
    return [c["qom-path"] for c in sorted(answer, key=lambda c: c["cpu-index"])]


def live_count(daemon: DaemonProcess, name: str) -> int:
    return int(ok(daemon, "vcpucount", name, "--live").strip())


def config_count(daemon: DaemonProcess, name: str) -> int:
    return int(ok(daemon, "vcpucount", name, "--config").strip())


def shown_everywhere(daemon: DaemonProcess, name: str, count: int, maximum: int) -> None:
    """``count`` live vCPUs in vcpucount, dominfo, vcpuinfo and dumpxml."""
    assert live_count(daemon, name) == count
    assert re.search(rf"^CPU\(s\):\s+{count}$", ok(daemon, "dominfo", name), re.M)
    numbers = re.findall(r"^VCPU:\s+(\d+)$", ok(daemon, "vcpuinfo", name), re.M)
    assert numbers == [str(n) for n in range(count)]
    vcpu = re.search(r"<vcpu[^>]*>\d+</vcpu>", ok(daemon, "dumpxml", name))
    assert vcpu is not None
    if count < maximum:
        assert f"current='{count}'" in vcpu.group(0)
    else:
        assert "current" not in vcpu.group(0)
    assert vcpu.group(0).endswith(f">{maximum}</vcpu>")


class Guest:
    """The test guest with ``<vcpu current=CURRENT>MAXIMUM</vcpu>``, booted, its serial
    line answering; its kernel logs (no ``quiet``) tell which CPUs it was given."""

    def __init__(self, daemon: DaemonProcess, test_guest: TestGuest, name: str, tmp: Path,
                 current: int, maximum: int) -> None:
        self.daemon = daemon
        self.name = name
        self.sock = tmp / f"{name}.sock"  # short: a unix socket path has 107 bytes at most
        xml = guest_xml(name, test_guest, self.sock, cmdline="console=ttyS0").replace(
            "<vcpu>1</vcpu>", f"<vcpu current='{current}'>{maximum}</vcpu>")
        with daemon.connect() as conn:
            conn.define_xml(xml)
        ok(daemon, "start", name)
        self.serial = SerialPort(self.sock)
        self.serial.wait_for(READY)

    def uptime(self) -> float:
        mark = self.serial.mark()
        self.serial.send("ping")
        return float(self.serial.wait_for(PONG, timeout=30, start=mark).group(1))

    def reconnect(self) -> None:
        self.serial.close()
        self.serial = SerialPort(self.sock)

    def resumed(self) -> None:
        """Running on from the saved state, not booted again: it answers without the
        READY a boot prints first. (Its uptime is not compared: under TCG a restored
        guest's clock can read earlier than before the save, see guest.py ``resumed``.)"""
        self.reconnect()
        self.uptime()
        assert READY not in self.serial.text


@pytest.fixture
def unplugging_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon that unplugs vCPUs of TCG guests (the test hook), and gives a guest 8 s
    to release one."""
    own = DaemonProcess(tmp_path / "d", env={"QEMUD_TCG_VCPU_UNPLUG": "1",
                                             "QEMUD_UNPLUG_TIMEOUT": "8"})
    own.start()
    yield own
    try:
        if own.proc is not None and own.proc.poll() is None:
            stop_destroying_guests(own)
    finally:
        for status in (own.run_dir / "qemu").glob("*.status.json"):
            try:
                os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


def test_plug_vcpus_into_a_running_guest(daemon: DaemonProcess, test_guest: TestGuest,
                                          tmp_path: Path) -> None:
    guest = Guest(daemon, test_guest, "plug", tmp_path, current=1, maximum=4)
    shown_everywhere(daemon, "plug", 1, 4)
    assert qemu_cpus(daemon, "plug") == [BOOT_CPU]

    ok(daemon, "setvcpus", "plug", "2", "--current")  # a running domain: its live count
    ok(daemon, "setvcpus", "plug", "3", "--live")
    shown_everywhere(daemon, "plug", 3, 4)
    assert qemu_cpus(daemon, "plug") == [BOOT_CPU, plugged(1), plugged(2)]
    guest.serial.wait_for(r"CPU1 has been hot-added", timeout=30)
    guest.serial.wait_for(r"CPU2 has been hot-added", timeout=30)
    assert config_count(daemon, "plug") == 1  # --live leaves the persistent definition

    ok(daemon, "setvcpus", "plug", "4", "--live", "--config")
    shown_everywhere(daemon, "plug", 4, 4)
    assert config_count(daemon, "plug") == 4
    assert qemu_cpus(daemon, "plug")[-1] == plugged(3)
    guest.serial.wait_for(r"CPU3 has been hot-added", timeout=30)

    error = refused(daemon, "setvcpus", "plug", "5", "--live")
    assert "greater than max allowable vcpus for the live domain: 5 > 4" in error
    # a TCG guest's vCPUs are not taken out: refused before anything changes
    error = refused(daemon, "setvcpus", "plug", "2", "--live")
    assert "cannot unplug vCPUs of domain 'plug': it runs under TCG" in error
    shown_everywhere(daemon, "plug", 4, 4)
    assert len(qemu_cpus(daemon, "plug")) == 4
    guest.uptime()  # the guest runs on

    # the live count is in the status record: a new daemon finds it as it was
    daemon.stop()
    daemon.start()
    shown_everywhere(daemon, "plug", 4, 4)
    assert config_count(daemon, "plug") == 4


def test_unplug_only_what_was_plugged(unplugging_daemon: DaemonProcess,
                                      test_guest: TestGuest, tmp_path: Path) -> None:
    daemon = unplugging_daemon
    guest = Guest(daemon, test_guest, "unplug", tmp_path, current=2, maximum=4)
    ok(daemon, "setvcpus", "unplug", "4", "--live")
    shown_everywhere(daemon, "unplug", 4, 4)

    # vCPU 1 was there when QEMU started: not hot-pluggable, nothing changes
    error = refused(daemon, "setvcpus", "unplug", "1", "--live")
    assert ("unsupported configuration: failed to find appropriate hotpluggable vcpus to "
            "reach the desired target vcpu count: vCPU 1 was not hot-plugged") in error
    shown_everywhere(daemon, "unplug", 4, 4)
    assert len(qemu_cpus(daemon, "unplug")) == 4

    ok(daemon, "setvcpus", "unplug", "3", "--live")  # answers once the guest released it
    shown_everywhere(daemon, "unplug", 3, 4)
    cpus = qemu_cpus(daemon, "unplug")
    assert len(cpus) == 3 and cpus[0] == BOOT_CPU and cpus[-1] == plugged(2)
    assert config_count(daemon, "unplug") == 2
    guest.uptime()

    # a guest that does not release the vCPU (paused): libvirt's time-out, the count
    # stays what QEMU has; the request stays too, and the release once it runs counts
    ok(daemon, "suspend", "unplug")
    error = refused(daemon, "setvcpus", "unplug", "2", "--live")
    assert UNPLUG_TIMED_OUT in error
    shown_everywhere(daemon, "unplug", 3, 4)
    assert len(qemu_cpus(daemon, "unplug")) == 3
    ok(daemon, "resume", "unplug")
    deadline = time.monotonic() + 60
    while live_count(daemon, "unplug") != 2:
        assert time.monotonic() < deadline, "the late release was not counted"
        time.sleep(0.2)
    shown_everywhere(daemon, "unplug", 2, 4)
    assert plugged(2) not in qemu_cpus(daemon, "unplug")
    guest.uptime()
    # (no plug after the unplug: QEMU 7.2 under TCG would crash, see the docstring)


def test_save_and_restore_after_a_plug(daemon: DaemonProcess, test_guest: TestGuest,
                                       tmp_path: Path) -> None:
    guest = Guest(daemon, test_guest, "saved", tmp_path, current=1, maximum=3)
    ok(daemon, "setvcpus", "saved", "2", "--live")
    guest.serial.wait_for(r"CPU1 has been hot-added", timeout=30)

    image = tmp_path / "saved.img"
    ok(daemon, "save", "saved", str(image))
    ok(daemon, "restore", str(image))  # QEMU: -smp 2,maxcpus=3, then the saved state
    guest.resumed()  # the same guest, running on
    shown_everywhere(daemon, "saved", 2, 3)
    assert len(qemu_cpus(daemon, "saved")) == 2

    ok(daemon, "setvcpus", "saved", "3", "--live")  # the next socket is still free
    guest.serial.wait_for(r"CPU2 has been hot-added", timeout=30)
    shown_everywhere(daemon, "saved", 3, 3)
    assert qemu_cpus(daemon, "saved")[-1] == plugged(2)

    ok(daemon, "managedsave", "saved")
    ok(daemon, "start", "saved")
    guest.resumed()
    shown_everywhere(daemon, "saved", 3, 3)
    assert len(qemu_cpus(daemon, "saved")) == 3
    assert config_count(daemon, "saved") == 1


def test_machine_without_hotpluggable_cpus(daemon: DaemonProcess) -> None:
    """QEMU 7.2's aarch64 ``virt`` lists no hot-pluggable CPUs."""
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("arm", "aarch64").replace(
            "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"))
        dom.create(flags=1)  # VIR_DOMAIN_START_PAUSED
        machine = re.search(r"machine=['\"]([^'\"]+)", dom.xml())
        assert machine is not None
    error = refused(daemon, "setvcpus", "arm", "2", "--live")
    assert (f"vCPU hotplug is not supported by machine '{machine.group(1)}' of domain "
            "'arm': QEMU lists no hot-pluggable CPUs") in error
    assert live_count(daemon, "arm") == 1
    ok(daemon, "setvcpus", "arm", "1", "--live")  # not left busy
    ok(daemon, "resume", "arm")
    assert re.search(r"^State:\s+running$", ok(daemon, "dominfo", "arm"), re.M)
