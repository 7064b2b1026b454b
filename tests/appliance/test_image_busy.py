"""Calls refused while an image operation runs on a VM: start (also through create-xml
and restore: any start but the operation's own), define over it, rename, undefine,
save, managed save, snapshot create, revert and delete, and every ``--config`` change (the
update's define, made from the definition before it, would drop it).

An update (or rollback, or factory reset) stops the VM, builds the new disks with
``qemu-img`` and defines the VM on them, then starts it again itself. A client's start
or undefine in the middle would run the old system disk while the scratch disk is
replaced under it, or have the update define the VM again; a snapshot's overlays would
be dropped by the update's define, made from the definition before them. The update's ``qemu-img``
is held (a wrapper first on the daemon's PATH) so the test can call in the middle.
Real qemu-img, the appliances of test_images.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client import appliance_images as images
from client.errors import OperationInvalid
from protocol.constants import DomainState, MetadataType
from tests.helpers.daemon import DaemonProcess, remove_domain, serving, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg

from .appliances import origin
from .appliances import stored as stored  # the appliances 1.0, 2.0, 3.0
from .appliances import work as work

pytestmark = pytest.mark.integration


#: what the --config calls mid-update would add and remove
_NIC = "<interface type='user'><model type='virtio'/></interface>"
_DATA_DISK = ("<disk type='file' device='disk'><source file='{vmdir}/vdb.qcow2'/>"
              "<target dev='vdb' bus='virtio'/></disk>")


@pytest.fixture(scope="module")
def held_img(tmp_path_factory: pytest.TempPathFactory) -> HeldQemuImg:
    return HeldQemuImg.install(tmp_path_factory.mktemp("held-img"))


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, held_img: HeldQemuImg
          ) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img-busy"),
                           env={"PATH": held_img.path_env()})
    with serving(daemon):
        yield daemon


def test_calls_that_would_change_the_vm_are_refused_during_an_update(
        conn: client.Connection, qemud: DaemonProcess, stored: dict[str, Path],
        held_img: HeldQemuImg, tmp_path: Path) -> None:
    dom = images.deploy(conn, "demo", "vm-busy", "1.0")
    try:
        held_img.start_holding()
        outcome: list[BaseException | None] = []

        def update() -> None:
            try:
                with qemud.connect() as other:
                    images.update(other, other.lookup_by_name("vm-busy"), "2.0")
            except BaseException as exc:  # noqa: BLE001 (handed to the test)
                outcome.append(exc)
            else:
                outcome.append(None)
        updating = threading.Thread(target=update)
        updating.start()
        try:
            wait_for(held_img.held.exists, timeout=60, message="the update's qemu-img held")
            busy = "domain 'vm-busy' is busy: update to demo:2.0 in progress"
            xml = dom.xml(client.XML_INACTIVE)
            vmdir = qemud.state_dir / "vms" / "vm-busy"
            for call in (dom.create, dom.undefine, dom.managed_save,
                         lambda: dom.save(str(tmp_path / "vm.save")),
                         lambda: dom.snapshot_create("mid-update"),
                         lambda: dom.snapshot_delete("mid-update"),
                         lambda: dom.snapshot_revert("mid-update"),
                         lambda: conn.create_xml(xml),  # (starts the defined VM)
                         lambda: conn.define_xml(xml),
                         lambda: dom.rename("vm-renamed"),
                         # --config changes, which the update's define would drop
                         lambda: dom.attach_device(_NIC, client.AFFECT_CONFIG),
                         lambda: dom.detach_device(_DATA_DISK.format(vmdir=vmdir),
                                                   client.AFFECT_CONFIG),
                         lambda: dom.set_metadata(MetadataType.DESCRIPTION, "mid-update",
                                                  client.AFFECT_CONFIG),
                         lambda: dom.set_memory(96 * 1024, client.AFFECT_CONFIG),
                         lambda: dom.set_vcpus(1, client.AFFECT_CONFIG)):
                with pytest.raises(OperationInvalid, match=busy):
                    call()
            assert dom.state()[0] == DomainState.SHUTOFF
            assert dom.snapshots() == []
            assert dom.xml(client.XML_INACTIVE) == xml
        finally:
            held_img.release()
            updating.join(120)
        assert outcome == [None]
        assert origin(dom.xml(client.XML_INACTIVE)) == ("demo", "2.0")
        dom.create()  # once the update is done
        assert dom.state()[0] == DomainState.RUNNING
    finally:
        held_img.release()
        remove_domain(dom)
