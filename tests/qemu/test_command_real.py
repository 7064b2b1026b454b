"""The argv the builder produces is accepted by the real emulators.

For every architecture: a minimal diskless guest and a guest with the usual
devices (disks, cdroms, NIC, serial, channel, VNC...) are started under TCG
with ``-S``; QMP must answer ``prelaunch`` and list the devices under the
names the builder promised.  That proves the per-arch table defaults and
device wiring are valid for the installed QEMU, not just plausible.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qemud.qemu.arch import get_strategy
from qemud.qemu.capabilities import Capabilities, probe_capabilities
from qemud.qemu.command import GuestPaths, build_argv
from qemud.qemu.errors import AccelUnavailable
from tests.qemu.qmpclient import QMPTestClient, wait_for_socket

conf = pytest.importorskip("qemud.conf")

pytestmark = pytest.mark.integration

ARCHS = ("x86_64", "aarch64", "ppc64")
GUEST_DIR = Path(os.environ.get("QEMUD_GUEST_DIR", Path.home() / ".cache" / "qemud" / "test-guest"))


@pytest.fixture(scope="module")
def caps(tmp_path_factory: pytest.TempPathFactory) -> Capabilities:
    return probe_capabilities(tmp_path_factory.mktemp("caps"))


def need(caps: Capabilities, arch: str) -> None:
    if caps.emulator(arch) is None:
        pytest.skip(f"no emulator for {arch}")


def free_vnc_port() -> int:
    """A VNC port (5901..25900) free on 127.0.0.1 now: other tests' guests (daemons
    allocate VNC ports upwards from 5900) and other runs on the machine use that range
    too, so a port is only taken once binding it succeeded."""
    for _ in range(200):
        port = random.randrange(5901, 25901)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free VNC port")


class Running:
    """A QEMU started from a built argv, with a negotiated QMP client."""

    def __init__(self, argv: list[str], paths: GuestPaths) -> None:
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        paths.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log = paths.log_file.open("wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.paths = paths
        try:
            wait_for_socket(paths.qmp_socket, self.proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{paths.log_file.read_text()}") from None
        self.qmp = QMPTestClient(paths.qmp_socket)
        self.qmp.execute("qmp_capabilities")

    def quit(self) -> None:
        try:
            self.qmp.execute("quit")
        except ConnectionError:
            pass
        self.qmp.close()
        assert self.proc.wait(timeout=10) == 0

    def close(self) -> None:
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def run(argv: list[str], paths: GuestPaths) -> Running:
        running = Running(argv, paths)
        started.append(running)
        return running

    yield run
    for running in started:
        running.close()


def paths_for(tmp_path: Path, name: str) -> GuestPaths:
    return GuestPaths.under(tmp_path / "run", tmp_path / "log", name)


MINIMAL = """
<domain type='qemu'>
  <name>min-{arch}</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='{arch}'>hvm</type></os>
</domain>
"""


@pytest.mark.parametrize("arch", ARCHS)
def test_minimal_guest_starts_paused(
    arch: str, caps: Capabilities, tmp_path: Path, start: Any
) -> None:
    need(caps, arch)
    dom = conf.parse_domain_xml(MINIMAL.format(arch=arch))
    dom.assign_missing_ids()
    paths = paths_for(tmp_path, dom.name)
    guest = start(build_argv(dom, get_strategy(arch), caps, paths), paths)
    status = guest.qmp.execute("query-status")
    assert (status["status"], status["running"]) == ("prelaunch", False)
    guest.quit()
    assert "warning" not in paths.log_file.read_text().lower()


RICH = """
<domain type='qemu'>
  <name>rich-{arch}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os><type arch='{arch}'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{tmp}/root.qcow2'/>
      <target dev='vda'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{tmp}/data.img'/>
      <target dev='sdb' bus='scsi'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='{tmp}/media.iso'/>
      <target dev='{cd1}'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='{cd2}'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{tmp}/stick.img'/>
      <target dev='sdz' bus='usb'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <console type='pty'><target type='virtio' port='1'/></console>
    <channel type='unix'><target type='virtio' name='org.qemud.heartbeat.0'/></channel>
    <graphics type='vnc' port='{vnc}' autoport='no' listen='127.0.0.1'/>
    {extra}
  </devices>
</domain>
"""
# The second cdrom letter differs so it lands on a free unit of each arch's cdrom bus.
RICH_VARIANTS = {
    "x86_64": {"cd1": "sdc", "cd2": "sdd", "extra": "<watchdog model='i6300esb' action='pause'/>"},
    "aarch64": {"cd1": "sdc", "cd2": "sdd", "extra": ""},
    "ppc64": {"cd1": "sdc", "cd2": "sdd", "extra": ""},
}


def make_images(tmp_path: Path) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img not installed")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(tmp_path / "root.qcow2"),
                    "64M"], check=True)  # fmt: skip
    for name in ("data.img", "media.iso", "stick.img"):
        with (tmp_path / name).open("wb") as image:
            image.truncate(4 << 20)


@pytest.mark.parametrize("arch", ARCHS)
def test_guest_with_devices_starts_and_ids_are_addressable(
    arch: str, caps: Capabilities, tmp_path: Path, start: Any
) -> None:
    need(caps, arch)
    make_images(tmp_path)
    xml = RICH.format(arch=arch, tmp=tmp_path, vnc=free_vnc_port(),
                      **RICH_VARIANTS[arch])  # fmt: skip
    dom = conf.parse_domain_xml(xml)
    dom.assign_missing_ids()
    strategy = get_strategy(arch)
    strategy.fill_defaults(dom)
    paths = paths_for(tmp_path, dom.name)
    guest = start(build_argv(dom, strategy, caps, paths), paths)

    status = guest.qmp.execute("query-status")
    assert (status["status"], status["running"]) == ("prelaunch", False)

    nodes = {n["node-name"] for n in guest.qmp.execute("query-named-block-nodes")}
    for dev in ("vda", "sdb", "sdc", "sdz"):
        assert {f"drive-{dev}-storage", f"drive-{dev}-format"} <= nodes
    # qdev is the device id, or its QOM path (/machine/peripheral/ID/virtio-backend)
    blocks = {
        b["qdev"].removeprefix("/machine/peripheral/").split("/")[0]: b
        for b in guest.qmp.execute("query-block")
    }
    assert blocks["disk-vda"]["inserted"]["node-name"] == "drive-vda-format"
    assert blocks["disk-sdb"]["inserted"]["ro"] is True
    assert "inserted" not in blocks["disk-sdd"]  # empty tray
    chardevs = {c["label"] for c in guest.qmp.execute("query-chardev")}
    assert {"charserial0", "charconsole1", "charchannel0", "charmonitor"} <= chardevs
    assert (paths.run_dir / "charchannel0.sock").exists()
    assert guest.qmp.execute("query-vnc")["enabled"] is True
    mac = dom.interfaces[0].mac.replace(":", "")
    tree = guest.qmp.execute("qom-list", {"path": "/machine/peripheral"})
    peripherals = {p["name"] for p in tree}
    assert f"net-{mac}" in peripherals and "channel0" in peripherals

    # A hotplug addresses devices by the same names: eject the cdrom by id.
    guest.qmp.execute("eject", {"id": "disk-sdc", "force": True})
    guest.quit()
    assert "warning" not in paths.log_file.read_text().lower()


def test_kvm_guest_only_when_the_probe_says_so(
    caps: Capabilities, tmp_path: Path, start: Any
) -> None:
    need(caps, "x86_64")
    xml = MINIMAL.format(arch="x86_64").replace("type='qemu'", "type='kvm'")
    dom = conf.parse_domain_xml(xml)
    dom.assign_missing_ids()
    paths = paths_for(tmp_path, dom.name)
    if not caps.kvm_usable:
        with pytest.raises(AccelUnavailable) as info:
            build_argv(dom, get_strategy("x86_64"), caps, paths)
        assert info.value.reason == caps.kvm_reason
        return
    guest = start(build_argv(dom, get_strategy("x86_64"), caps, paths), paths)
    assert guest.qmp.execute("query-kvm") == {"enabled": True, "present": True}
    guest.quit()


@pytest.mark.skipif(
    not (GUEST_DIR / "VERSION").exists(), reason="test guest not built (contrib/build-test-guest)"
)
def test_x86_64_default_machine_boots_the_test_guest(
    caps: Capabilities, tmp_path: Path, start: Any
) -> None:
    """The table's x86_64 defaults (pc, qemu64, isa-serial) boot a real kernel, and ACPI
    power-off is seen."""
    need(caps, "x86_64")
    serial_log = tmp_path / "serial.log"
    dom = conf.parse_domain_xml(f"""
<domain type='qemu'>
  <name>boot</name>
  <memory unit='MiB'>256</memory>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{GUEST_DIR / "vmlinuz"}</kernel>
    <initrd>{GUEST_DIR / "initramfs.img"}</initrd>
    <cmdline>console=ttyS0 quiet qemud.noheartbeat</cmdline>
  </os>
  <devices>
    <serial type='file'><source path='{serial_log}'/><target port='0'/></serial>
  </devices>
</domain>""")
    dom.assign_missing_ids()
    paths = paths_for(tmp_path, dom.name)
    guest = start(build_argv(dom, get_strategy("x86_64"), caps, paths), paths)
    guest.qmp.execute("cont")

    def wait_serial(marker: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while marker not in (serial_log.read_text(errors="replace") if serial_log.exists() else ""):
            assert time.monotonic() < deadline, f"no {marker} on the serial port"
            time.sleep(0.1)

    wait_serial("QEMUD-GUEST-READY")
    status = guest.qmp.execute("query-status")
    assert (status["status"], status["running"]) == ("running", True)
    guest.qmp.execute("system_powerdown")
    event = guest.qmp.wait_event("SHUTDOWN")
    assert event.data["guest"] is True
    wait_serial("QEMUD-GUEST-POWEROFF", 10)
    # -no-shutdown: QEMU stays, paused in 'shutdown', for the daemon to decide.
    assert guest.qmp.execute("query-status")["status"] == "shutdown"
    guest.quit()
