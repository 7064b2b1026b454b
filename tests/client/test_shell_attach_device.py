"""qemush attach-device / detach-device / attach-interface / detach-interface end to end
(subprocess + real daemon) on a shut-off domain: the default (--current) is then its
persistent definition, so no QEMU is needed. The live paths are in
tests/integration/test_nic_hotplug.py."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

TINY = ("<domain type='qemu'><name>t1</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")


@pytest.fixture
def defined(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> str:
    path = tmp_path / "t1.xml"
    path.write_text(TINY)
    ok(qemush("-c", daemon.uri, "define", str(path)))
    return daemon.uri


def interfaces(qemush: Qemush, uri: str) -> list[ET.Element]:
    xml = ok(qemush("-c", uri, "dumpxml", "t1", "--inactive"))
    return ET.fromstring(xml).findall("./devices/interface")


def test_attach_and_detach_device_from_file(defined: str, qemush: Qemush,
                                            tmp_path: Path) -> None:
    image = tmp_path / "data.raw"
    image.write_bytes(b"\0" * 65536)
    disk = tmp_path / "disk.xml"
    disk.write_text(f"<disk type='file' device='disk'><source file='{image}'/>"
                    "<target dev='vdb' bus='virtio'/></disk>")
    assert ok(qemush("-c", defined, "attach-device", "t1", str(disk))) == \
        "Device attached successfully\n"
    assert str(image) in ok(qemush("-c", defined, "domblklist", "t1"))
    assert ok(qemush("-c", defined, "detach-device", "t1", str(disk), "--config")) == \
        "Device detached successfully\n"
    assert str(image) not in ok(qemush("-c", defined, "domblklist", "t1"))

    nic = tmp_path / "nic.xml"
    nic.write_text("<interface type='user'><mac address='52:54:00:AB:CD:01'/>"
                   "<model type='e1000'/></interface>")
    assert ok(qemush("-c", defined, "attach-device", "t1", str(nic), "--current")) == \
        "Device attached successfully\n"
    [row] = [line for line in ok(qemush("-c", defined, "domiflist", "t1")).splitlines()
             if "52:54:00" in line]
    assert row.split() == ["-", "user", "-", "e1000", "52:54:00:ab:cd:01"]
    assert ok(qemush("-c", defined, "detach-device", "t1", str(nic))) == \
        "Device detached successfully\n"
    assert interfaces(qemush, defined) == []


def test_attach_device_errors(defined: str, qemush: Qemush, tmp_path: Path) -> None:
    graphics = tmp_path / "vnc.xml"
    graphics.write_text("<graphics type='vnc'/>")
    proc = qemush("-c", defined, "attach-device", "t1", str(graphics))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (f"error: Failed to attach device from {graphics}\n"
                           "error: Operation not supported: persistent attach of device "
                           "'graphics' is not supported\n")
    # --live on a shut-off domain, as virsh: the daemon says why
    nic = tmp_path / "nic.xml"
    nic.write_text("<interface type='user'/>")
    proc = qemush("-c", defined, "attach-device", "t1", str(nic), "--live")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: Failed to attach device from {nic}\nerror: ")
    assert "is not running" in proc.stderr
    proc = qemush("-c", defined, "attach-device", "t1", str(tmp_path / "missing.xml"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: Failed to attach device from {tmp_path}/missing")
    proc = qemush("-c", defined, "detach-device", "t1", str(nic), "--current", "--live")
    assert (proc.returncode, proc.stderr) == (
        1, "error: Options --current and --live/--config are mutually exclusive\n")
    assert interfaces(qemush, defined) == []


def test_attach_and_detach_interface(defined: str, qemush: Qemush) -> None:
    assert ok(qemush("-c", defined, "attach-interface", "t1", "user")) == \
        "Interface attached successfully\n"
    [nic] = interfaces(qemush, defined)
    mac = str(nic.find("mac").get("address"))  # type: ignore[union-attr]
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]  # default
    assert ok(qemush("-c", defined, "attach-interface", "t1", "user", "--config",
                     "--mac", "52:54:00:00:00:02", "--model", "rtl8139")) == \
        "Interface attached successfully\n"
    proc = qemush("-c", defined, "attach-interface", "t1", "user", "--mac",
                  "52:54:00:00:00:02")
    assert proc.returncode == 1
    assert proc.stderr == ("error: Failed to attach interface\nerror: invalid argument: "
                           "domain 't1' already has an interface with MAC address "
                           "52:54:00:00:00:02\n")

    proc = qemush("-c", defined, "detach-interface", "t1", "user")
    assert (proc.returncode, proc.stderr) == (
        1, "error: Domain has 2 interfaces. Please specify which one to detach using "
           "--mac\nerror: Failed to detach interface\n")
    proc = qemush("-c", defined, "detach-interface", "t1", "user", "--mac",
                  "52:54:00:00:00:99")
    assert (proc.returncode, proc.stderr) == (
        1, "error: No interface with MAC address 52:54:00:00:00:99 was found\n"
           "error: Failed to detach interface\n")
    proc = qemush("-c", defined, "detach-interface", "t1", "bridge")
    assert (proc.returncode, proc.stderr) == (
        1, "error: No interface found whose type is bridge\n"
           "error: Failed to detach interface\n")
    assert ok(qemush("-c", defined, "detach-interface", "t1", "user", "--mac",
                     "52:54:00:00:00:02", "--config")) == "Interface detached successfully\n"
    assert ok(qemush("-c", defined, "detach-interface", "t1", "user")) == \
        "Interface detached successfully\n"
    assert interfaces(qemush, defined) == []


def test_attach_interface_print_xml_and_usage(qemush: Qemush) -> None:
    assert ok(qemush("attach-interface", "t1", "bridge", "br0", "--mac", "52:54:00:00:00:03",
                     "--model", "virtio", "--print-xml")) == (
        "<interface type='bridge'>\n  <source bridge='br0'/>\n"
        "  <mac address='52:54:00:00:00:03'/>\n  <model type='virtio'/>\n</interface>\n")
    proc = qemush("attach-interface", "t1", "vhostuser", "/tmp/sock", "--print-xml")
    assert (proc.returncode, proc.stderr) == (
        1, "error: No support for vhostuser in command 'attach-interface'\n")
    proc = qemush("attach-interface", "t1", "bridge", "--print-xml")
    assert (proc.returncode, proc.stderr) == (
        1, "error: interface type 'bridge' needs a <source>\n")
