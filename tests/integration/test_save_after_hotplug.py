"""No save of a guest whose PCI devices changed since its QEMU started, on a real daemon
and the test guest.

qemud keeps no PCI addresses: a restore starts QEMU from the saved live XML, whose
command line places the devices in other slots than the running guest has them after a
live attach (the hot-plugged NIC went to the first free slot, after the balloon; on the
restore's command line it comes before it) or the unplug of a device with another after
it; QEMU then refuses the saved state. So a save and a managed save are refused, before
anything is written, naming what changed and the way out (a fresh QEMU: destroy and
start), also after a daemon restart. An unplug of the last PCI device changes no slot
(see test_unplug_guards.py: that managed save goes through).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, RunningReason
from tests.appliance.test_snapshots import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush, remove_domain, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

USER_NIC = "<interface type='user'><model type='virtio'/></interface>"
LIVE = client.AFFECT_LIVE
PONG = r"QEMUD-PONG uptime=(\d+(?:\.\d+)?)"


def refusal(name: str, changes: str) -> str:
    return (f"domain '{name}' cannot be saved: its PCI devices changed since it started "
            f"({changes}), and a restore could not place them as they are now: shut it "
            "down and start it again first")


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)


class Guest:
    """A defined test guest (the x86 default balloon after its other PCI devices),
    booted, its serial line answering."""

    def __init__(self, daemon: DaemonProcess, conn: client.Connection,
                 test_guest: TestGuest, name: str, tmp: Path, extra: str = "") -> None:
        self.daemon = daemon
        self.sock = tmp / "s.sock"  # short: a unix socket path has 107 bytes at most
        self.dom = conn.define_xml(guest_xml(name, test_guest, self.sock, extra=extra))
        self.dom.create()
        self.serial = SerialPort(self.sock)
        self.serial.wait_for(READY)

    @property
    def image(self) -> Path:
        return self.daemon.state_dir / "save" / f"{self.dom.name}.save"

    def uptime(self) -> float:
        mark = self.serial.mark()
        self.serial.send("ping")
        return float(self.serial.wait_for(PONG, timeout=30, start=mark).group(1))

    def restart(self) -> None:
        """A fresh QEMU (destroy, start), booted."""
        self.dom.destroy()
        self.dom.create()
        self.reconnect()
        self.serial.wait_for(READY)

    def reconnect(self) -> None:
        self.serial.close()
        self.serial = SerialPort(self.sock)

    def refused(self, message: str, tmp: Path) -> None:
        """Managed save, save (API and qemush) are refused with ``message``; nothing is
        written and the guest runs on."""
        with pytest.raises(client.OperationInvalid) as info:
            self.dom.managed_save()
        assert message in str(info.value)
        assert not self.dom.has_managed_save()
        target = tmp / "saved.img"
        with pytest.raises(client.OperationInvalid) as info:
            self.dom.save(str(target))
        assert message in str(info.value)
        proc = qemush(self.daemon, "managedsave", self.dom.name)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        proc = qemush(self.daemon, "save", self.dom.name, str(target))
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert not target.exists() and not self.image.exists()
        assert [p.name for p in tmp.iterdir() if "save" in p.name] == []
        save_dir = self.image.parent
        assert not save_dir.exists() or list(save_dir.iterdir()) == []
        assert self.dom.state()[0] == DomainState.RUNNING
        self.uptime()  # (answers: it ran on)

    def close(self) -> None:
        self.serial.close()
        remove_domain(self.dom, client.domain.UNDEFINE_MANAGED_SAVE)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-pcisave"))) as daemon:
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


def test_nic_attach_refuses_save_until_restarted(qemud: DaemonProcess,
                                                 conn: client.Connection,
                                                 test_guest: TestGuest,
                                                 tmp_path: Path) -> None:
    guest = Guest(qemud, conn, test_guest, "pcisave-nic", tmp_path)
    try:
        proc = qemush(qemud, "attach-interface", guest.dom.name, "user", "--model",
                      "virtio")
        assert proc.returncode == 0, proc.stderr
        [mac] = macs(guest.dom.xml())
        guest.refused(refusal(guest.dom.name, f"hot-plugged interface {mac}"), tmp_path)
        # a second NIC is named too
        guest.dom.attach_device(USER_NIC, LIVE)
        second = [m for m in macs(guest.dom.xml()) if m != mac]
        guest.refused(refusal(guest.dom.name, f"hot-plugged interface {mac}, "
                                              f"hot-plugged interface {second[0]}"), tmp_path)

        # the way out: a fresh QEMU (the live-only NICs are gone with the old one)
        guest.restart()
        assert macs(guest.dom.xml()) == []
        guest.dom.managed_save()
        assert guest.image.is_file() and not guest.dom.is_active()
        guest.dom.create()  # restored from the image
        assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
        assert not guest.image.exists()
        guest.reconnect()
        guest.uptime()  # it answers, and has not booted again to do so: resumed
        assert "QEMUD-GUEST-READY" not in guest.serial.text
    finally:
        guest.close()


def test_disk_attach_refuses_save(qemud: DaemonProcess, conn: client.Connection,
                                  test_guest: TestGuest, tmp_path: Path) -> None:
    guest = Guest(qemud, conn, test_guest, "pcisave-disk", tmp_path)
    try:
        vdb = make_image(tmp_path / "vdb.qcow2")
        guest.dom.attach_device(disk_xml(vdb, dev="vdb"), LIVE)
        assert "vdb" in guest.dom.xml()
        guest.refused(refusal(guest.dom.name, "hot-plugged disk vdb"), tmp_path)
    finally:
        guest.close()


def test_unplug_before_another_pci_device_refuses_save(qemud: DaemonProcess,
                                                       conn: client.Connection,
                                                       test_guest: TestGuest,
                                                       tmp_path: Path) -> None:
    """A NIC the guest started with, with the balloon after it: once the guest released
    it, a restore would put the balloon in the NIC's slot."""
    guest = Guest(qemud, conn, test_guest, "pcisave-unplug", tmp_path, extra=USER_NIC)
    try:
        [mac] = macs(guest.dom.xml())
        guest.dom.detach_device(f"<interface type='user'><mac address='{mac}'/>"
                                "</interface>", LIVE)
        assert macs(guest.dom.xml()) == []
        guest.refused(refusal(guest.dom.name, f"hot-unplugged interface {mac}"), tmp_path)
    finally:
        guest.close()


def test_refusal_survives_a_daemon_restart(test_guest: TestGuest, tmp_path: Path) -> None:
    """The daemon stops with the guest running and starts again: still refused. A stop
    of the guest ends it, and the next daemon does not bring it back."""
    name = "pcisave-restart"
    daemon = DaemonProcess(tmp_path / "d")
    with serving(daemon):
        with daemon.connect() as conn:
            guest = Guest(daemon, conn, test_guest, name, tmp_path)
            guest.dom.attach_device(USER_NIC, LIVE)
            [mac] = macs(guest.dom.xml())
        daemon.stop()  # the guest runs on
        daemon.start()
        with daemon.connect() as conn:
            guest.dom = conn.lookup_by_name(name)
            try:
                assert guest.dom.is_active() and macs(guest.dom.xml()) == [mac]
                guest.refused(refusal(name, f"hot-plugged interface {mac}"), tmp_path)
                guest.restart()
            except BaseException:
                guest.close()
                raise
        daemon.stop()
        daemon.start()
        with daemon.connect() as conn:
            guest.dom = conn.lookup_by_name(name)
            try:
                guest.dom.managed_save()
                assert guest.image.is_file()
            finally:
                guest.close()
