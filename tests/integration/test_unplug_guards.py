"""What a NIC being unplugged (a live detach waiting for the guest's DEVICE_DELETED)
holds off, on a real daemon and the test guest.

The guest is paused, so it cannot release the NIC: the detach times out (a daemon with a
3 s unplug timeout) and the unplug stays requested. A save or managed save is refused
meanwhile, naming the interface: the saved guest would come back with the NIC, its
unplug lost. A disk-only snapshot is not: a NIC's unplug touches no block graph. Once
the guest releases the NIC, the managed save goes through and the restored guest has no
NIC.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import client
from qemud.driver.devices import UNPLUG_TIMEOUT_ENV
from tests.appliance.snapshot_guests import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush, serving, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

USER_NIC = "<interface type='user'><model type='virtio'/></interface>"
LIVE = client.AFFECT_LIVE


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)


def test_nic_unplug_in_progress_refuses_save_not_snapshot(test_guest: TestGuest,
                                                          tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", env={UNPLUG_TIMEOUT_ENV: "3"})
    with serving(daemon), daemon.connect() as conn:
        name, serial = "nic-unplug-guard", tmp_path / "s.sock"
        vda = make_image(tmp_path / "vda.qcow2")
        # the NIC is the last PCI device (no balloon after it): the restore's command
        # line places the devices as QEMU did at start, so one after an unplugged NIC
        # would take its slot and the saved state would not load
        dom = conn.define_xml(guest_xml(name, test_guest, serial, extra=disk_xml(vda)
                                        + USER_NIC + "<memballoon model='none'/>"))
        dom.create()
        SerialPort(serial).wait_for(READY)
        [mac] = macs(dom.xml())
        nic = f"<interface type='user'><mac address='{mac}'/></interface>"
        dom.suspend()  # the guest cannot release the NIC until resumed
        with pytest.raises(client.OperationTimeout,
                           match=f"did not release interface {mac} within 3 s"):
            dom.detach_device(nic, LIVE)

        busy = (f"domain '{name}' is busy: detach of interface {mac} in progress "
                "(waiting for the guest to release it)")
        with pytest.raises(client.OperationInvalid) as refused:
            dom.managed_save()
        assert busy in str(refused.value)
        assert not dom.has_managed_save()
        image = tmp_path / "saved.img"
        with pytest.raises(client.OperationInvalid) as refused:
            dom.save(str(image))
        assert busy in str(refused.value)
        assert not image.exists()
        proc = qemush(daemon, "managedsave", name)
        assert proc.returncode == 1 and busy in proc.stderr, proc.stderr
        assert dom.is_active() and macs(dom.xml()) == [mac]  # nothing changed

        # a disk-only snapshot records the disks (and the <domain> as it is now)
        dom.snapshot_create("s1")
        assert [s.name for s in dom.snapshots()] == ["s1"]
        assert mac in dom.snapshot_xml("s1")

        dom.resume()
        wait_for(lambda: macs(dom.xml()) == [], timeout=60, message="NIC released")
        dom.managed_save()
        assert dom.has_managed_save() and not dom.is_active()
        dom.create()  # restored from the managed save: without the NIC
        assert macs(dom.xml()) == []
        assert macs(dom.xml(client.XML_INACTIVE)) == [mac]  # a live-only detach
        dom.destroy()
