"""``<interface>`` attach and detach, live and config, on a real daemon and the test guest.

The test guest does not report its network devices on the serial line, so what QEMU
holds is asked of QEMU itself: the guest gets a second QMP monitor for the test
(``<qemu:commandline>``), where ``qom-list /machine/peripheral`` lists the devices with
an id and ``info network`` the netdevs. What a user sees is asked of the daemon: the live
and inactive XML, and qemush's ``domiflist`` / ``attach-interface`` / ``detach-interface``
output.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from qemud.driver.devices import UNPLUG_TIMEOUT_ENV
from tests.helpers.daemon import DaemonProcess, qemush, serving, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY
from tests.integration.nic_monitor import USER_NIC, Qemu, domain_xml, ids, macs
from tests.integration.serial import SerialPort
from tests.qemu.qmpclient import QMPTestClient

pytestmark = pytest.mark.integration

MAC_RE = re.compile(r"52:54:00(:[0-9a-f]{2}){3}\Z")
LIVE, CONFIG = client.AFFECT_LIVE, client.AFFECT_CONFIG


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-nics"))) as daemon:
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


@pytest.fixture
def running(conn: client.Connection, test_guest: TestGuest, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[tuple[client.Domain, Qemu]]:
    """A defined test guest, booted, with its test monitor."""
    serial_sock, qmp_sock = tmp_path / "s.sock", tmp_path / "q.sock"
    name = request.node.name.replace("test_", "nic-")[:40]
    dom = conn.define_xml(domain_xml(name, test_guest, serial_sock, qmp_sock))
    dom.create()
    serial = SerialPort(serial_sock)
    serial.wait_for(READY)
    qemu = Qemu(qmp_sock)
    try:
        yield dom, qemu
    finally:
        qemu.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_live_attach_and_detach(running: tuple[client.Domain, Qemu],
                                qemud: DaemonProcess) -> None:
    dom, qemu = running
    before = qemu.devices()
    dom.attach_device(USER_NIC, LIVE)
    [mac] = macs(dom.xml())
    assert MAC_RE.match(mac)
    assert macs(dom.xml(client.XML_INACTIVE)) == []  # live only
    device, netdev = ids(mac)
    assert qemu.devices() - before == {device}
    assert device in qemu.pci_ids()  # a PCI device, placed by QEMU as at start
    assert netdev in qemu.netdevs()
    proc = qemush(qemud, "domiflist", dom.name)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"^ -\s+user\s+-\s+virtio\s+{mac}$", proc.stdout, re.M), proc.stdout

    dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>", LIVE)
    assert macs(dom.xml()) == []
    assert qemu.devices() == before
    assert netdev not in qemu.netdevs()
    # its MAC is free again: the same NIC plugs in again under the same ids
    dom.attach_device(f"<interface type='user'><mac address='{mac}'/></interface>", LIVE)
    assert macs(dom.xml()) == [mac] and device in qemu.devices()


def test_config_attach_is_there_at_next_start(running: tuple[client.Domain, Qemu],
                                              tmp_path: Path) -> None:
    dom, qemu = running
    dom.attach_device(USER_NIC, CONFIG)
    assert macs(dom.xml()) == []  # the running guest is not changed
    [mac] = macs(dom.xml(client.XML_INACTIVE))
    assert MAC_RE.match(mac) and ids(mac)[0] not in qemu.devices()
    inactive = ET.fromstring(dom.xml(client.XML_INACTIVE))
    assert inactive.find("./devices/interface/model").get("type") == "virtio"  # type: ignore[union-attr]

    qemu.close()
    dom.destroy()
    dom.create()
    qemu.qmp = QMPTestClient(tmp_path / "q.sock")
    qemu.qmp.execute("qmp_capabilities")
    assert macs(dom.xml()) == [mac]
    assert ids(mac)[0] in qemu.devices() and ids(mac)[1] in qemu.netdevs()

    dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>", CONFIG)
    assert macs(dom.xml(client.XML_INACTIVE)) == []
    assert macs(dom.xml()) == [mac] and ids(mac)[0] in qemu.devices()  # live unchanged


def test_shell_persistent_attach_and_detach(running: tuple[client.Domain, Qemu],
                                            qemud: DaemonProcess) -> None:
    dom, qemu = running
    proc = qemush(qemud, "attach-interface", dom.name, "user", "--persistent")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "Interface attached successfully\n", "")
    [mac] = macs(dom.xml())
    assert macs(dom.xml(client.XML_INACTIVE)) == [mac]  # one MAC for both
    assert ids(mac)[0] in qemu.devices()

    proc = qemush(qemud, "detach-interface", dom.name, "user", "--persistent")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "Interface detached successfully\n", "")
    assert macs(dom.xml()) == [] and macs(dom.xml(client.XML_INACTIVE)) == []
    assert ids(mac)[0] not in qemu.devices() and ids(mac)[1] not in qemu.netdevs()


def test_detach_errors(running: tuple[client.Domain, Qemu], qemud: DaemonProcess,
                       tmp_path: Path) -> None:
    dom, qemu = running
    unknown = "<interface type='user'><mac address='52:54:00:de:ad:00'/></interface>"
    for flags in (LIVE, CONFIG):
        with pytest.raises(client.OperationFailed) as info:
            dom.detach_device(unknown, flags)
        assert str(info.value) == \
            "operation failed: no device matching MAC address 52:54:00:de:ad:00 found"
    for _ in range(2):
        dom.attach_device(USER_NIC, LIVE)
    with pytest.raises(client.OperationFailed) as info:
        dom.detach_device("<interface type='user'/>", LIVE)
    assert str(info.value) == "operation failed: multiple matching devices found"
    assert len(macs(dom.xml())) == 2

    proc = qemush(qemud, "detach-interface", dom.name, "user")
    assert proc.returncode == 1
    assert proc.stderr == ("error: Domain has 2 interfaces. Please specify which one to "
                           "detach using --mac\nerror: Failed to detach interface\n")
    device_file = tmp_path / "nic.xml"
    device_file.write_text(unknown)
    proc = qemush(qemud, "detach-device", dom.name, str(device_file))
    assert proc.returncode == 1
    assert proc.stderr == (f"error: Failed to detach device from {device_file}\n"
                           "error: operation failed: no device matching MAC address "
                           "52:54:00:de:ad:00 found\n")
    # not a device the daemon attaches: refused, naming the element
    with pytest.raises(client.QemudClientError) as refused:
        dom.attach_device("<watchdog model='i6300esb' action='reset'/>", LIVE)
    assert "live attach of device 'watchdog' is not supported" in str(refused.value)
    assert len(macs(dom.xml())) == 2 and qemu.devices() >= {ids(m)[0] for m in macs(dom.xml())}


def test_late_release_removes_the_nic(test_guest: TestGuest, tmp_path: Path) -> None:
    """A guest that releases the NIC only after the detach timed out: the call fails,
    a second detach is refused meanwhile, and the release still removes the device's
    backend and the interface from the live XML (a daemon with a 3 s unplug timeout)."""
    daemon = DaemonProcess(tmp_path / "d", env={UNPLUG_TIMEOUT_ENV: "3"})
    with serving(daemon), daemon.connect() as conn:
        serial_sock, qmp_sock = tmp_path / "s.sock", tmp_path / "q.sock"
        dom = conn.create_xml(domain_xml("nic-late", test_guest, serial_sock, qmp_sock,
                                         extra=USER_NIC))
        SerialPort(serial_sock).wait_for(READY)
        qemu = Qemu(qmp_sock)
        try:
            [mac] = macs(dom.xml())
            nic = f"<interface type='user'><mac address='{mac}'/></interface>"
            dom.suspend()  # the guest cannot release the NIC until resumed
            with pytest.raises(client.OperationTimeout,
                               match=f"did not release interface {mac} within 3 s"):
                dom.detach_device(nic, LIVE)
            with pytest.raises(client.OperationInvalid, match="already being detached"):
                dom.detach_device(nic, LIVE)
            assert macs(dom.xml()) == [mac]
            dom.resume()
            wait_for(lambda: macs(dom.xml()) == [], timeout=60, message="NIC removed")
            assert ids(mac)[0] not in qemu.devices()
            wait_for(lambda: ids(mac)[1] not in qemu.netdevs(), message="netdev deleted")
        finally:
            qemu.close()
