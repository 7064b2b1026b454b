"""Save images and PCI slots: an image says whether its QEMU had qemud's PCI addresses
(the header's ``pci`` line), and a restore starts the new QEMU the same way. An image of
an older qemud (no such line) is restored with QEMU placing the devices itself, as that
version started them, and such a guest keeps the old guard: once a device is
hot-plugged, a save is refused (its layout would not come back). Real QEMU under TCG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, serving
from tests.integration.conftest import TestGuest
from tests.integration.guest import BootedGuest

pytestmark = pytest.mark.integration

#: the balloon pinned to slot 2, where QEMU's own placement puts the first PCI device of
#: this guest too: so an image can stand for an older qemud's, whose guests QEMU laid out
BALLOON_IN_SLOT_2 = """<memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </memballoon>"""
NIC = "<interface type='user'><mac address='52:54:00:5a:0e:01'/><model type='virtio'/>" \
      "</interface>"


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-save-pci"))) as daemon:
        yield daemon


def pci_slots(dom: client.Domain) -> dict[str, int]:
    """QEMU's own view: qdev id -> slot of every device on bus 0 that has an id."""
    reply = json.loads(dom.qemu_monitor_command('{"execute": "query-pci"}'))
    return {d["qdev_id"]: d["slot"] for d in reply["return"][0]["devices"] if d["qdev_id"]}


def test_an_image_records_that_its_devices_had_qemuds_slots(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    with qemud.connect() as conn:
        guest = BootedGuest(conn, test_guest, "image-pci", tmp_path, extra=BALLOON_IN_SLOT_2)
        try:
            assert pci_slots(guest.dom) == {"balloon0": 2}
            image = tmp_path / "g.sav"
            guest.dom.save(str(image))
            assert image.read_bytes().split(b"\n")[:3] == [b"QEMUD-SAVE-2", b"running", b"pci"]
            conn.restore(str(image))
            guest.resumed()
            assert pci_slots(guest.dom) == {"balloon0": 2}
        finally:
            guest.close()


def test_an_older_qemuds_image_restores_and_keeps_the_old_save_guard(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """The image without its ``pci`` line is what an older qemud wrote: the restore lets
    QEMU place the devices (here it puts the balloon in slot 2 too), and a NIC plugged
    in afterwards goes where QEMU puts it, so a save is refused, as it was then."""
    with qemud.connect() as conn:
        guest = BootedGuest(conn, test_guest, "image-old", tmp_path, extra=BALLOON_IN_SLOT_2)
        try:
            image = tmp_path / "g.sav"
            guest.dom.save(str(image))
            magic, state, pci, rest = image.read_bytes().split(b"\n", 3)
            assert (magic, state, pci) == (b"QEMUD-SAVE-2", b"running", b"pci")
            image.write_bytes(b"QEMUD-SAVE-1\n" + rest)  # (no state, no pci line)
            conn.restore(str(image))
            guest.resumed()
            assert pci_slots(guest.dom) == {"balloon0": 2}
            guest.dom.attach_device(NIC)
            with pytest.raises(client.OperationInvalid, match="its PCI devices changed"):
                guest.dom.save(str(tmp_path / "again.sav"))
            assert guest.dom.state()[0] == DomainState.RUNNING
            guest.answers("still-running")
        finally:
            guest.close()
