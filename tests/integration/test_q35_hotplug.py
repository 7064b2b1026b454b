"""Live attach and detach on a q35 guest, on a real daemon and the test guest (TCG).

q35's root bus (pcie.0) takes no hot-plugged device and gives none back: only a
pcie-root-port does. Define puts each PCIe device behind a port of the definition, or
one it adds (as libvirt does); spare ports (``<controller type='pci'
model='pcie-root-port'/>``, as virt-install writes them) take hot-plugged devices: a NIC
or a virtio disk plugs into a free port and comes out again (the detach returns once
the guest released it, DEVICE_DELETED), and a device started behind a port comes out
too. Without a free port, or for a device on pcie.0,
the attach or detach is refused with a message that names the cause and the way out,
before QEMU or a definition is touched: no ``netdev_add``, ``blockdev-add`` or
``device_del`` reaches QEMU (the daemon's debug log), and with --config too the
persistent definition stays as it was. A config-only change works as on any machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client
from tests.appliance.snapshot_guests import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY
from tests.integration.nic_monitor import Qemu, domain_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

USER_NIC = "<interface type='user'><model type='virtio'/></interface>"
PORT = "<controller type='pci' model='pcie-root-port'/>"
LIVE, CONFIG = client.AFFECT_LIVE, client.AFFECT_CONFIG
NO_PORT = ("devices: No more available PCI slots: cannot hot-plug {what}: machine 'q35' takes "
           "devices in and out while it runs only behind a pcie-root-port, and every one "
           "of this domain's is taken; define it with a spare <controller type='pci' "
           "model='pcie-root-port'/> (taken at its next start), or attach the device with "
           "--config")
NO_UNPLUG = ("cannot hot-unplug {what}: on machine 'q35' it sits on the PCIe root bus "
             "pcie.0, which takes no device out while the guest runs; detach it with "
             "--config to have it gone at the next start (a device behind a "
             "pcie-root-port of its own can be unplugged live)")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-q35"))) as daemon:
        yield daemon


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)


def sent(qemud: DaemonProcess, command: str) -> int:
    """How many ``command`` the daemon has sent to a QEMU (its debug log)."""
    return sum(1 for line in qemud.log_text().splitlines() if f"--> {command} " in line)


def buses(qemu: Qemu) -> dict[str, int]:
    """qdev id -> PCI bus number of every device QEMU has, behind bridges too."""
    found: dict[str, int] = {}

    def walk(devices: Any) -> None:
        for dev in devices:
            found[str(dev.get("qdev_id"))] = int(dev["bus"])
            walk(dev.get("pci_bridge", {}).get("devices", []))

    for bus in qemu.qmp.execute("query-pci"):  # type: ignore[union-attr]
        walk(bus["devices"])
    return found


def q35(name: str, guest: TestGuest, tmp_path: Path, extra: str) -> str:
    xml = domain_xml(name, guest, tmp_path / "s.sock", tmp_path / "q.sock", extra=extra)
    return xml.replace("<type arch='x86_64'>", "<type arch='x86_64' machine='q35'>")


def test_devices_plug_into_spare_pcie_root_ports_and_come_out(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    name = "q35-ports"
    with qemud.connect() as conn:
        dom = conn.define_xml(q35(name, test_guest, tmp_path, PORT * 3 + USER_NIC))
        try:
            xml = dom.xml(client.XML_INACTIVE)
            # libvirt's layout: the ports in one slot's functions, the NIC and the
            # balloon behind ports 1 and 2, port 3 spare
            assert "slot='0x02' function='0x0' multifunction='on'" in xml.replace('"', "'")
            dom.create()
            SerialPort(tmp_path / "s.sock").wait_for(READY)
            qemu = Qemu(tmp_path / "q.sock")
            try:
                [mac] = macs(dom.xml())
                nic_id = f"net-{mac.replace(':', '')}"
                assert buses(qemu)[nic_id] == 1
                vdb = make_image(tmp_path / "vdb.qcow2")

                dom.attach_device(disk_xml(vdb, dev="vdb"), LIVE)
                assert buses(qemu)["disk-vdb"] == 3
                assert "bus='0x03' slot='0x00'" in dom.xml().replace('"', "'")
                # every port taken: refused before QEMU, naming the way out
                before = sent(qemud, "netdev_add")
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.attach_device(USER_NIC, LIVE)
                assert re.fullmatch("unsupported configuration: " + re.escape(
                    NO_PORT.format(what="MAC")).replace("MAC", "interface 52:54:00:[0-9a-f:]+"),
                    str(refused.value)), str(refused.value)
                assert sent(qemud, "netdev_add") == before

                # the NIC it was started with comes out (the guest released it)...
                dom.detach_device(f"<interface type='user'><mac address='{mac}'/>"
                                  "</interface>", LIVE)
                assert nic_id not in buses(qemu) and macs(dom.xml()) == []
                # ...and its port takes the next device
                proc = qemush(qemud, "attach-interface", name, "user", "--model", "virtio",
                              "--live")
                assert proc.returncode == 0, proc.stderr
                [new_mac] = macs(dom.xml())
                assert buses(qemu)[f"net-{new_mac.replace(':', '')}"] == 1
            finally:
                qemu.close()
            # a managed save restores every device behind its port: the restore's
            # command line has the ports and the live XML's buses
            dom.managed_save()
            assert dom.has_managed_save() and not dom.is_active()
            dom.create()
            assert not dom.has_managed_save()
            qemu = Qemu(tmp_path / "q.sock")
            try:
                assert buses(qemu)["disk-vdb"] == 3
                assert buses(qemu)[f"net-{new_mac.replace(':', '')}"] == 1
                dom.detach_device(disk_xml(vdb, dev="vdb"), LIVE)
                assert "disk-vdb" not in buses(qemu)
            finally:
                qemu.close()
            assert macs(dom.xml(client.XML_INACTIVE)) == [mac]  # live only

            # a spare port for the next start: persistent only, as libvirt takes it
            with pytest.raises(client.RemoteError,
                               match="'pci' controller cannot be hot plugged"):
                dom.attach_device(PORT, LIVE)
            dom.attach_device(PORT, CONFIG)
            inactive = dom.xml(client.XML_INACTIVE).replace('"', "'")
            assert "<controller type='pci' index='4' model='pcie-root-port'>" in inactive
            assert "<target chassis='4' port='0x18'/>" in inactive  # (slot 3, function 0)
            assert "index='4'" not in dom.xml()  # the running guest is not changed
            with pytest.raises(client.OperationFailed, match=(
                    r"device cannot be detached: controller 'pci' model 'pcie-root-port' "
                    rf"index 1 is busy: interface '{mac}' sits on its bus 0x01")):
                dom.detach_device("<controller type='pci' index='1' model='pcie-root-port'/>",
                                  CONFIG)
            dom.detach_device("<controller type='pci' index='4' model='pcie-root-port'/>",
                              CONFIG)
            assert "index='4'" not in dom.xml(client.XML_INACTIVE).replace('"', "'")
        finally:
            if dom.is_active():
                dom.destroy()
            dom.undefine()


def test_q35_hotplug_without_a_free_port_refused_before_qemu(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """One NIC pinned to pcie.0, one without an address (behind the root port define
    adds for it, as libvirt adds one), no balloon: no port is free."""
    name = "q35-hotplug"
    pinned = ("<interface type='user'><mac address='52:54:00:00:35:00'/><model "
              "type='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x05' "
              "function='0x0'/></interface>")
    extra = pinned + USER_NIC + "<memballoon model='none'/>"
    with qemud.connect() as conn:
        dom = conn.define_xml(q35(name, test_guest, tmp_path, extra))
        try:
            [mac, ported] = macs(dom.xml())
            assert mac == "52:54:00:00:35:00"
            assert "model='pcie-root-port'" in dom.xml(client.XML_INACTIVE).replace('"', "'")
            dom.create()
            SerialPort(tmp_path / "s.sock").wait_for(READY)
            before = {c: sent(qemud, c) for c in ("netdev_add", "blockdev-add",
                                                   "device_add", "device_del")}
            vdb = make_image(tmp_path / "vdb.qcow2")

            for flags in (LIVE, LIVE | CONFIG):
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.attach_device("<interface type='user'><mac address="
                                      "'52:54:00:00:35:01'/></interface>", flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_PORT.format(what="interface 52:54:00:00:35:01")
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.attach_device(disk_xml(vdb, dev="vdb"), flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_PORT.format(what="disk vdb")
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.detach_device(f"<interface type='user'><mac address='{mac}'/>"
                                      "</interface>", flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_UNPLUG.format(what=f"interface {mac}")

            proc = qemush(qemud, "attach-interface", name, "user", "--live")
            assert proc.returncode == 1
            assert proc.stderr.startswith("error: Failed to attach interface\nerror: "
                                          "unsupported configuration: devices: No more "
                                          "available PCI slots: cannot hot-plug interface "
                                          "52:54:00:")
            assert "define it with a spare <controller type='pci' model='pcie-root-port'/>" \
                in proc.stderr

            # nothing reached QEMU, nothing changed
            assert {c: sent(qemud, c) for c in before} == before
            assert macs(dom.xml()) == [mac, ported] and "vdb" not in dom.xml()
            inactive = dom.xml(client.XML_INACTIVE)
            assert macs(inactive) == [mac, ported] and "vdb" not in inactive

            # the config alone changes as on any machine
            dom.attach_device(disk_xml(vdb, dev="vdb"), CONFIG)
            dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>",
                              CONFIG)
            inactive = dom.xml(client.XML_INACTIVE)
            assert macs(inactive) == [ported] and "vdb" in inactive
            assert macs(dom.xml()) == [mac, ported] and "vdb" not in dom.xml()

            # the NIC behind the port define added comes out while the guest runs
            dom.detach_device(f"<interface type='user'><mac address='{ported}'/>"
                              "</interface>", LIVE)
            assert macs(dom.xml()) == [mac]
        finally:
            if dom.is_active():
                dom.destroy()
            dom.undefine()
