"""A NIC detach whose daemon is killed while it waits for the guest: the next daemon,
which never sent the unplug, still removes the NIC (its netdev too) from the live
definition when the guest releases it: on the DEVICE_DELETED that comes after it
re-attached, or, when the guest released it while no daemon listened (the event lost),
on re-attaching. Real daemon processes and the test guest, whose second QMP monitor
(see test_nic_hotplug) shows what QEMU holds and resumes the guest while no daemon runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY
from tests.integration.nic_monitor import USER_NIC, Qemu, domain_xml, ids, macs
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

#: device_del -> ACPI unplug in the guest -> DEVICE_DELETED, under TCG
RELEASE_TIMEOUT = 60.0


def log_count(daemon: DaemonProcess, arrow: str, command: str, device: str) -> int:
    """How many ``command`` lines naming ``device`` the daemon logged (``-->`` sent,
    ``<--`` answered)."""
    return sum(1 for line in daemon.log_text().splitlines()
               if f"{arrow} {command} " in line and device in line)


def answered(daemon: DaemonProcess, command: str) -> int:
    return sum(1 for line in daemon.log_text().splitlines() if f"<-- {command} " in line)


def kill_during_detach(daemon: DaemonProcess, dom: client.Domain, mac: str) -> None:
    """Detach the NIC ``mac`` of the paused ``dom`` and kill -9 the daemon once QEMU
    has the unplug request."""
    device = ids(mac)[0]
    before = answered(daemon, "device_del")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(dom.detach_device, f"<interface type='user'><mac address="
                              f"'{mac}'/></interface>", client.AFFECT_LIVE)
        wait_for(lambda: log_count(daemon, "-->", "device_del", device) == 1,
                 message="device_del sent")
        # ... and answered (the daemon logs a command just before writing it)
        wait_for(lambda: answered(daemon, "device_del") == before + 1,
                 message="device_del answered")
        daemon.kill()
        with pytest.raises(client.ConnectionLost):
            pending.result(timeout=60)


@pytest.mark.parametrize("released", ["after_restart", "while_no_daemon"])
def test_nic_released_across_a_daemon_restart(test_guest: TestGuest, tmp_path: Path,
                                              released: str) -> None:
    name = f"nic-restart-{released.replace('_', '-')}"
    serial_sock, qmp_sock = tmp_path / "s.sock", tmp_path / "q.sock"
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    qemu: Qemu | None = None
    try:
        with daemon.connect() as first:
            dom = first.define_xml(domain_xml(name, test_guest, serial_sock, qmp_sock,
                                              extra=USER_NIC))
            dom.create()
            SerialPort(serial_sock).wait_for(READY)
            qemu = Qemu(qmp_sock)
            [mac] = macs(dom.xml())
            device, netdev = ids(mac)
            dom.suspend()  # the guest cannot release the NIC until resumed
            kill_during_detach(daemon, dom, mac)
        if released == "while_no_daemon":
            qemu.qmp.execute("cont")
            wait_for(lambda: device not in qemu.devices(), timeout=RELEASE_TIMEOUT,
                     message="NIC released")
        daemon.start()
        with daemon.connect() as second:
            dom = second.lookup_by_name(name)
            if released == "after_restart":
                assert macs(dom.xml()) == [mac]  # re-attached: still there
                assert device in qemu.devices()
                dom.resume()
            wait_for(lambda: macs(dom.xml()) == [], timeout=RELEASE_TIMEOUT,
                     message="NIC removed from the live XML")
            assert device not in qemu.devices()
            wait_for(lambda: netdev not in qemu.netdevs(), message="netdev deleted")
            assert macs(dom.xml(client.XML_INACTIVE)) == [mac]  # a live-only detach
            dom.destroy()
            dom.undefine()
    finally:
        if qemu is not None:
            qemu.close()
        stop_destroying_guests(daemon)
