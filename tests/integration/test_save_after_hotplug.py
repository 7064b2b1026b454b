"""No save of a guest an older qemud started, whose PCI devices changed since its QEMU
started, on a real daemon and the test guest.

An older qemud kept no PCI addresses: its QEMU placed the devices in command-line order,
and a restore, whose command line places them in that order again, could not put a
device hot-plugged or unplugged since where the running guest has it (the hot-plugged NIC
went to the first free slot; on the restore's command line it comes first). QEMU then
refuses the saved state. So for such a guest (found again through its status record,
which says nothing of addresses) a device plugged in still goes where QEMU chooses, and a
save and a managed save are refused, before anything is written, naming what changed
and the way out (a fresh QEMU: destroy and start), also after a daemon restart. An
unplug of the last PCI device changes no slot (see test_unplug_guards.py: that managed
save goes through). A guest qemud starts now keeps its slots, and such saves succeed:
test_pci_slots.py.

The older qemud's guest is this daemon's, its status record rewritten as an older qemud
wrote it while the daemon is stopped (the guest runs on): without the ``pci_addressed``
marker, its live XML without addresses.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, RunningReason
from tests.appliance.snapshot_guests import disk_xml, make_image
from tests.helpers.daemon import DaemonProcess, qemush
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY
from tests.integration.guest import BootedGuest

pytestmark = pytest.mark.integration

USER_NIC = "<interface type='user'><model type='virtio'/></interface>"
PCI_ADDRESS = re.compile(r"<address type=.pci.[^>]*/>\s*")
PCI_09 = "<address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>"
LIVE = client.AFFECT_LIVE


def refusal(name: str, changes: str) -> str:
    return (f"domain '{name}' cannot be saved: its PCI devices changed since it started "
            f"({changes}), and a restore could not place them as they are now: shut it "
            "down and start it again first")


def macs(xml: str) -> list[str]:
    return re.findall(r"<mac address=['\"]([0-9a-f:]+)['\"]", xml)


class Guest(BootedGuest):
    """A booted test guest (the x86 default balloon after its other PCI devices), and
    its managed save image."""

    def __init__(self, daemon: DaemonProcess, conn: client.Connection,
                 test_guest: TestGuest, name: str, tmp: Path, extra: str = "") -> None:
        self.daemon = daemon
        super().__init__(conn, test_guest, name, tmp, extra=extra)

    @property
    def image(self) -> Path:
        return self.daemon.state_dir / "save" / f"{self.dom.name}.save"

    def restart(self) -> None:
        """A fresh QEMU (destroy, start), booted."""
        self.dom.destroy()
        self.dom.create()
        self.reconnect()
        self.serial.wait_for(READY)

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


def as_an_older_qemud_left_it(daemon: DaemonProcess, guest: Guest) -> None:
    """Stop ``daemon`` (the guest runs on), rewrite the guest's status record as a qemud
    that kept no PCI addresses wrote it, start the daemon again: it finds the guest
    again through that record."""
    daemon.stop()
    path = daemon.run_dir / "qemu" / f"{guest.dom.name}.status.json"
    record = json.loads(path.read_text())
    assert record.pop("pci_addressed") is True
    record["live_xml"], found = PCI_ADDRESS.subn("", record["live_xml"])
    assert found
    path.write_text(json.dumps(record))
    daemon.start()


@contextlib.contextmanager
def legacy_guest(daemon: DaemonProcess, test_guest: TestGuest, tmp: Path, name: str,
                 extra: str = "") -> Iterator[Guest]:
    """The test guest, running as an older qemud left it."""
    with daemon.connect() as conn:
        guest = Guest(daemon, conn, test_guest, name, tmp, extra=extra)
        try:
            as_an_older_qemud_left_it(daemon, guest)
        except BaseException:
            guest.close()
            raise
    conn = daemon.connect()
    try:
        guest.dom = conn.lookup_by_name(name)
        assert guest.dom.is_active()
        assert not PCI_ADDRESS.search(guest.dom.xml())
        yield guest
    finally:
        conn.close()
        with daemon.connect() as conn:  # (the test may have restarted the daemon)
            guest.dom = conn.lookup_by_name(name)
            guest.close()


def test_nic_attach_refuses_save_until_restarted(daemon: DaemonProcess,
                                                 test_guest: TestGuest,
                                                 tmp_path: Path) -> None:
    with legacy_guest(daemon, test_guest, tmp_path, "pcisave-nic") as guest:
        proc = qemush(daemon, "attach-interface", guest.dom.name, "user", "--model",
                      "virtio")
        assert proc.returncode == 0, proc.stderr
        [mac] = macs(guest.dom.xml())
        assert not PCI_ADDRESS.search(guest.dom.xml())  # (QEMU chose its slot)
        guest.refused(refusal(guest.dom.name, f"hot-plugged interface {mac}"), tmp_path)
        # a second NIC is named too
        guest.dom.attach_device(USER_NIC, LIVE)
        second = [m for m in macs(guest.dom.xml()) if m != mac]
        guest.refused(refusal(guest.dom.name, f"hot-plugged interface {mac}, "
                                              f"hot-plugged interface {second[0]}"), tmp_path)
        # no slot can be asked for: nothing says which ones that QEMU has free
        with pytest.raises(client.ConfigUnsupportedError,
                           match="was started by an older qemud, which let QEMU place"):
            guest.dom.attach_device(USER_NIC.replace("</interface>", PCI_09 + "</interface>"),
                                    LIVE)
        assert len(macs(guest.dom.xml())) == 2

        # the way out: a fresh QEMU (the live-only NICs are gone with the old one), which
        # keeps the slots of the devices plugged in
        guest.restart()
        assert macs(guest.dom.xml()) == []
        guest.dom.attach_device(USER_NIC, LIVE)
        assert len(PCI_ADDRESS.findall(guest.dom.xml())) == 2  # (the balloon's, the NIC's)
        guest.dom.managed_save()
        assert guest.image.is_file() and not guest.dom.is_active()
        guest.dom.create()  # restored from the image
        assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
        assert not guest.image.exists()
        assert len(macs(guest.dom.xml())) == 1
        guest.resumed()


def test_disk_attach_refuses_save(daemon: DaemonProcess, test_guest: TestGuest,
                                  tmp_path: Path) -> None:
    with legacy_guest(daemon, test_guest, tmp_path, "pcisave-disk") as guest:
        vdb = make_image(tmp_path / "vdb.qcow2")
        guest.dom.attach_device(disk_xml(vdb, dev="vdb"), LIVE)
        assert "vdb" in guest.dom.xml()
        guest.refused(refusal(guest.dom.name, "hot-plugged disk vdb"), tmp_path)


def test_unplug_before_another_pci_device_refuses_save(daemon: DaemonProcess,
                                                       test_guest: TestGuest,
                                                       tmp_path: Path) -> None:
    """A NIC the guest started with, with the balloon after it: once the guest released
    it, a restore would put the balloon in the NIC's slot."""
    with legacy_guest(daemon, test_guest, tmp_path, "pcisave-unplug",
                      extra=USER_NIC) as guest:
        [mac] = macs(guest.dom.xml())
        guest.dom.detach_device(f"<interface type='user'><mac address='{mac}'/>"
                                "</interface>", LIVE)
        assert macs(guest.dom.xml()) == []
        guest.refused(refusal(guest.dom.name, f"hot-unplugged interface {mac}"), tmp_path)


def test_refusal_survives_a_daemon_restart(daemon: DaemonProcess, test_guest: TestGuest,
                                           tmp_path: Path) -> None:
    """The daemon stops with the guest running and starts again: still refused. A stop
    of the guest ends it, and the next daemon does not bring it back."""
    name = "pcisave-restart"
    with legacy_guest(daemon, test_guest, tmp_path, name) as guest:
        guest.dom.attach_device(USER_NIC, LIVE)
        [mac] = macs(guest.dom.xml())
        daemon.stop()  # the guest runs on
        daemon.start()
        with daemon.connect() as conn:
            guest.dom = conn.lookup_by_name(name)
            assert guest.dom.is_active() and macs(guest.dom.xml()) == [mac]
            guest.refused(refusal(name, f"hot-plugged interface {mac}"), tmp_path)
            guest.restart()
        daemon.stop()
        daemon.start()
        with daemon.connect() as conn:
            guest.dom = conn.lookup_by_name(name)
            guest.dom.managed_save()
            assert guest.image.is_file()
