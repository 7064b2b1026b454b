"""Live attach and detach on a q35 guest, on a real daemon and the test guest (TCG).

q35's root bus (pcie.0) takes no hot-plugged device and gives none back, and qemud adds
no pcie-root-port, so every live attach or detach of a PCI device (a NIC, a virtio disk)
is refused with a message that names the cause and the way out, before QEMU or a
definition is touched: no ``netdev_add``, ``blockdev-add`` or ``device_del`` reaches
QEMU (the daemon's debug log), and with --config too the persistent definition stays as
it was. A config-only change works as on any machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from tests.appliance.test_snapshots import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

USER_NIC = "<interface type='user'><model type='virtio'/></interface>"
LIVE, CONFIG = client.AFFECT_LIVE, client.AFFECT_CONFIG
NO_SLOT = ("No more available PCI slots: cannot hot-plug {what}: machine 'q35' has no "
           "free PCIe hotplug slot (its root bus pcie.0 takes no hot-plugged device, and "
           "qemud adds no pcie-root-port); attach it with --config to have it at the next "
           "start, or use machine 'pc'")
NO_UNPLUG = ("cannot hot-unplug {what}: on machine 'q35' it sits on the PCIe root bus "
             "pcie.0, which takes no device out while the guest runs (qemud adds no "
             "pcie-root-port); detach it with --config to have it gone at the next start, "
             "or use machine 'pc'")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-q35"))) as daemon:
        yield daemon


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)


def sent(qemud: DaemonProcess, command: str) -> int:
    """How many ``command`` the daemon has sent to a QEMU (its debug log)."""
    return sum(1 for line in qemud.log_text().splitlines() if f"--> {command} " in line)


def test_q35_hotplug_refused_before_qemu(qemud: DaemonProcess, test_guest: TestGuest,
                                         tmp_path: Path) -> None:
    name, serial = "q35-hotplug", tmp_path / "s.sock"
    xml = guest_xml(name, test_guest, serial, extra=USER_NIC).replace(
        "<type arch='x86_64'>", "<type arch='x86_64' machine='q35'>")
    with qemud.connect() as conn:
        dom = conn.define_xml(xml)
        try:
            dom.create()
            SerialPort(serial).wait_for(READY)
            [mac] = macs(dom.xml())
            before = {c: sent(qemud, c) for c in ("netdev_add", "blockdev-add",
                                                   "device_add", "device_del")}
            vdb = make_image(tmp_path / "vdb.qcow2")

            for flags in (LIVE, LIVE | CONFIG):
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.attach_device("<interface type='user'><mac address="
                                      "'52:54:00:00:35:01'/></interface>", flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_SLOT.format(what="interface 52:54:00:00:35:01")
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.attach_device(disk_xml(vdb, dev="vdb"), flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_SLOT.format(what="disk vdb")
                with pytest.raises(client.ConfigUnsupportedError) as refused:
                    dom.detach_device(f"<interface type='user'><mac address='{mac}'/>"
                                      "</interface>", flags)
                assert str(refused.value) == "unsupported configuration: " + \
                    NO_UNPLUG.format(what=f"interface {mac}")

            proc = qemush(qemud, "attach-interface", name, "user", "--live")
            assert proc.returncode == 1
            assert proc.stderr.startswith("error: Failed to attach interface\nerror: "
                                          "unsupported configuration: No more available "
                                          "PCI slots: cannot hot-plug interface 52:54:00:")
            assert "machine 'q35' has no free PCIe hotplug slot" in proc.stderr

            # nothing reached QEMU, nothing changed
            assert {c: sent(qemud, c) for c in before} == before
            assert macs(dom.xml()) == [mac] and "vdb" not in dom.xml()
            inactive = dom.xml(client.XML_INACTIVE)
            assert macs(inactive) == [mac] and "vdb" not in inactive

            # the config alone changes as on any machine
            dom.attach_device(disk_xml(vdb, dev="vdb"), CONFIG)
            dom.detach_device(f"<interface type='user'><mac address='{mac}'/></interface>",
                              CONFIG)
            inactive = dom.xml(client.XML_INACTIVE)
            assert macs(inactive) == [] and "vdb" in inactive
            assert macs(dom.xml()) == [mac] and "vdb" not in dom.xml()
        finally:
            if dom.is_active():
                dom.destroy()
            dom.undefine()
