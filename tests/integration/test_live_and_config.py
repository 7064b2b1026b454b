"""``--live --config`` calls: the persistent half comes after QEMU's, and is made to the
persistent definition as it is then.

setmem, setvcpus, vcpupin, emulatorpin, a NIC or disk attach and change-media with
``--live --config`` change the persistent definition once QEMU has made the live change
(as libvirt: a change QEMU refuses changes neither definition). That change must be
made to the definition as it is then: a copy taken before the QMP round trip would undo
what another client changed during it. QEMU is stopped (SIGSTOP) so that the round trip
lasts until the test has made its change; the guests are real TCG QEMUs booting to
firmware.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import client
from client.domain import AFFECT_CONFIG, AFFECT_LIVE, MEM_MAXIMUM, Domain
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.helpers.procs import qemu_pids
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

BOTH = AFFECT_LIVE | AFFECT_CONFIG
TITLE = 1  # VIR_DOMAIN_METADATA_TITLE


def stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


@contextmanager
def qemu_held(daemon: DaemonProcess, name: str) -> Iterator[None]:
    """QEMU of ``name`` stopped: its QMP answers wait until the block ends."""
    [pid] = qemu_pids(name, daemon.run_dir)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: stopped(pid), message=f"QEMU {pid} stopped")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def while_waiting(daemon: DaemonProcess, name: str, command: str,
                  call: Callable[[Domain], Any], meanwhile: Callable[[Domain], Any]
                  ) -> BaseException | None:
    """``call`` on one connection, ``meanwhile`` on another once the daemon has sent
    QEMU ``command`` for it (the debug log says so) and waits for the answer; then QEMU
    answers. Returns the error ``call`` raised (None: it succeeded)."""
    sent = f"--> {command}"
    before = daemon.log_text().count(sent)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            with daemon.connect() as conn:
                call(conn.lookup_by_name(name))
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome.append(exc)
        else:
            outcome.append(None)
    with daemon.connect() as conn:
        other = conn.lookup_by_name(name)
        with qemu_held(daemon, name):
            caller = threading.Thread(target=run)
            caller.start()
            wait_for(lambda: daemon.log_text().count(sent) > before,
                     message=f"the daemon sent {command}")
            assert not outcome, "the call did not wait for QEMU"
            meanwhile(other)
        caller.join(timeout=30)
    assert not caller.is_alive(), "the call did not end once QEMU answered"
    [result] = outcome
    return result


@pytest.fixture
def running(daemon: DaemonProcess) -> Iterator[Domain]:
    """Guest ``meanwhile``, 2 vCPUs at most (1 at start), running."""
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("meanwhile").replace(
            "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"))
        dom.create()
        yield dom
    with daemon.connect() as conn:  # (a new one: a test may restart the daemon)
        dom = conn.lookup_by_name("meanwhile")
        dom.destroy()
        dom.undefine()


def inactive(dom: Domain) -> ET.Element:
    return ET.fromstring(dom.xml(client.XML_INACTIVE))


def current_memory(root: ET.Element) -> int:
    """<currentMemory> in KiB (no element: all of <memory>)."""
    node = root.find("currentMemory")
    if node is None:
        node = root.find("memory")
    assert node is not None and node.text is not None and node.get("unit") == "KiB"
    return int(node.text)


def test_setmem_keeps_a_title_set_meanwhile(daemon: DaemonProcess, running: Domain) -> None:
    error = while_waiting(daemon, "meanwhile", "balloon",
                          lambda dom: dom.set_memory(65536, BOTH),
                          lambda dom: dom.set_metadata(TITLE, "set meanwhile", AFFECT_CONFIG))
    assert error is None
    root = inactive(running)
    assert root.findtext("title") == "set meanwhile"
    assert current_memory(root) == 65536
    assert current_memory(ET.fromstring(running.xml())) == 65536
    daemon.stop()  # and from the file
    daemon.start()
    with daemon.connect() as conn:
        root = inactive(conn.lookup_by_name("meanwhile"))
    assert root.findtext("title") == "set meanwhile" and current_memory(root) == 65536


def test_setmem_refused_for_the_config_when_the_maximum_was_lowered_meanwhile(
        daemon: DaemonProcess, running: Domain) -> None:
    error = while_waiting(daemon, "meanwhile", "balloon",
                          lambda dom: dom.set_memory(98304, BOTH),
                          lambda dom: dom.set_memory(65536, AFFECT_CONFIG | MEM_MAXIMUM))
    assert isinstance(error, client.OperationInvalid)
    assert str(error) == ("Requested operation is not valid: the live change was made, "
                          "not the persistent one: cannot set memory higher than max memory")
    assert current_memory(ET.fromstring(running.xml())) == 98304  # the balloon's
    root = inactive(running)
    assert root.findtext("memory") == "65536" and current_memory(root) == 65536


def test_setvcpus_keeps_a_title_set_meanwhile(daemon: DaemonProcess,
                                              running: Domain) -> None:
    error = while_waiting(daemon, "meanwhile", "query-hotpluggable-cpus",
                          lambda dom: dom.set_vcpus(2, BOTH),
                          lambda dom: dom.set_metadata(TITLE, "set meanwhile", AFFECT_CONFIG))
    assert error is None
    root = inactive(running)
    assert root.findtext("title") == "set meanwhile"
    vcpu = root.find("vcpu")
    assert vcpu is not None and (vcpu.get("current"), vcpu.text) == (None, "2")


def test_vcpupin_and_emulatorpin_keep_a_title_set_meanwhile(
        daemon: DaemonProcess, running: Domain) -> None:
    for n, pin in enumerate((lambda dom: dom.pin_vcpu(0, b"\x01", BOTH),
                             lambda dom: dom.pin_emulator(b"\x01", BOTH))):
        error = while_waiting(
            daemon, "meanwhile", "query-cpus-fast", pin,
            lambda dom, title=f"title {n}": dom.set_metadata(TITLE, title, AFFECT_CONFIG))
        assert error is None
        assert inactive(running).findtext("title") == f"title {n}"
    cputune = inactive(running).find("cputune")
    assert cputune is not None
    assert [(e.tag, e.get("cpuset")) for e in cputune] == [("vcpupin", "0"),
                                                           ("emulatorpin", "0")]


def test_setmem_on_a_guest_undefined_meanwhile(daemon: DaemonProcess,
                                               running: Domain) -> None:
    error = while_waiting(daemon, "meanwhile", "balloon",
                          lambda dom: dom.set_memory(65536, BOTH),
                          lambda dom: dom.undefine())
    assert isinstance(error, client.OperationInvalid)
    assert str(error) == ("Requested operation is not valid: the live change was made, "
                          "not the persistent one: domain 'meanwhile' was undefined "
                          "meanwhile")
    with daemon.connect() as conn:
        [listed] = conn.list_all()
        assert (listed.name, listed.listed_persistent) == ("meanwhile", False)
    assert current_memory(ET.fromstring(running.xml())) == 65536  # it runs on, transient
    assert not (daemon.config_dir / "domains" / "meanwhile.xml").exists()
    running.destroy()
    with daemon.connect() as conn:  # (for the fixture's destroy and undefine)
        conn.define_xml(bare_xml("meanwhile")).create()


def test_nic_attach_keeps_a_title_set_meanwhile(daemon: DaemonProcess,
                                                running: Domain) -> None:
    nic = "<interface type='user'><mac address='52:54:00:0a:0b:0c'/></interface>"
    error = while_waiting(daemon, "meanwhile", "netdev_add",
                          lambda dom: dom.attach_device(nic, BOTH),
                          lambda dom: dom.set_metadata(TITLE, "set meanwhile", AFFECT_CONFIG))
    assert error is None
    for root in (inactive(running), ET.fromstring(running.xml())):
        assert [m.get("address") for m in root.iterfind("devices/interface/mac")] == [
            "52:54:00:0a:0b:0c"]
    assert inactive(running).findtext("title") == "set meanwhile"


def test_update_device_sets_the_live_link_before_the_persistent_one(
        daemon: DaemonProcess, running: Domain) -> None:
    """``update-device --live --config`` of a NIC's link, as libvirt's
    qemuDomainUpdateDeviceLiveAndConfig: the persistent definition changes once QEMU
    has set the link (before, it was saved first, and kept the change when set_link
    failed), made to it as it is then (a title set meanwhile stays)."""
    nic = "<interface type='user'><mac address='52:54:00:0a:0b:0d'/></interface>"
    running.attach_device(nic, BOTH)
    down = nic.replace("</interface>", "<link state='down'/></interface>")
    seen: list[str | None] = []

    def meanwhile(dom: Domain) -> None:
        link = inactive(dom).find("devices/interface/link")
        seen.append(None if link is None else link.get("state"))
        dom.set_metadata(TITLE, "set meanwhile", AFFECT_CONFIG)
    error = while_waiting(daemon, "meanwhile", "set_link",
                          lambda dom: dom.update_device(down, BOTH), meanwhile)
    assert error is None
    assert seen == [None]  # still up in the definition while QEMU had not answered
    for root in (inactive(running), ET.fromstring(running.xml())):
        link = root.find("devices/interface/link")
        assert link is not None and link.get("state") == "down"
    assert inactive(running).findtext("title") == "set meanwhile"


def test_a_media_change_is_one_at_a_time(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A media change is several QMP steps (new nodes, tray, old nodes): while one waits
    for QEMU, a second change of the domain's media, a save or a snapshot is refused as
    busy (two that overlapped emptied the drive and left the old medium open)."""
    one, two = tmp_path / "one.iso", tmp_path / "two.iso"
    for path in (one, two):
        path.write_bytes(b"\0" * 65536)
    cdrom = ("<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/>"
             "</disk>")
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("media").replace("<os>",
                                                        f"<devices>{cdrom}</devices><os>"))
        dom.create()
        try:
            refusals: list[str] = []

            def meanwhile(other: Domain) -> None:
                for call in (lambda: other.change_media("sda", str(two), AFFECT_LIVE),
                             lambda: other.managed_save()):
                    with pytest.raises(client.OperationInvalid) as info:
                        call()
                    refusals.append(str(info.value))
            error = while_waiting(daemon, "media", "query-block",
                                  lambda d: d.change_media("sda", str(one), AFFECT_LIVE),
                                  meanwhile)
            assert error is None
            assert refusals == ["Requested operation is not valid: domain 'media' is "
                                "busy: media change in progress"] * 2
            assert f"<source file='{one}'/>" in dom.xml()
            dom.change_media("sda", str(two), AFFECT_LIVE)  # (the job is over)
            assert f"<source file='{two}'/>" in dom.xml()
        finally:
            dom.destroy()
            dom.undefine()


def test_a_media_change_qemu_does_not_answer_ends_at_its_timeout(tmp_path: Path) -> None:
    """QEMU does not answer a step of a media change (stopped here; a medium on a hung
    mount blocks its blockdev-add): the step's timeout (cut to 2 s by the test hook)
    fails the call and ends the job, which otherwise held off saves, snapshots and the
    heartbeat duty for as long as QEMU stayed stuck."""
    from qemud.driver.devices import MEDIA_QMP_TIMEOUT_ENV
    daemon = DaemonProcess(tmp_path / "d", env={MEDIA_QMP_TIMEOUT_ENV: "2"})
    daemon.start()
    medium = tmp_path / "m.iso"
    medium.write_bytes(b"\0" * 65536)
    cdrom = ("<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/>"
             "</disk>")
    try:
        with daemon.connect() as conn:
            dom = conn.define_xml(bare_xml("stuck-media").replace(
                "<os>", f"<devices>{cdrom}</devices><os>"))
            dom.create()
            with qemu_held(daemon, "stuck-media"):
                with pytest.raises(client.OperationTimeout):
                    dom.change_media("sda", str(medium), AFFECT_LIVE)
                assert "<source" not in dom.xml()
            dom.change_media("sda", str(medium), AFFECT_LIVE)  # the job ended with it
            assert f"<source file='{medium}'/>" in dom.xml()
            dom.destroy()
            dom.undefine()
    finally:
        stop_destroying_guests(daemon)


def test_a_disk_qemu_refuses_changes_neither_definition(running: Domain,
                                                        tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.qcow2", tmp_path / "good.img"
    bad.write_bytes(b"\0" * (1 << 20))  # not a qcow2 image: QEMU's blockdev-add refuses it
    good.write_bytes(b"\0" * (1 << 20))

    def disk(path: Path, fmt: str) -> str:
        return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
                f"<source file='{path}'/><target dev='vdb' bus='virtio'/></disk>")
    with pytest.raises(client.QemudClientError, match="qcow2"):
        running.attach_device(disk(bad, "qcow2"), BOTH)
    for root in (inactive(running), ET.fromstring(running.xml())):
        assert root.find("devices/disk") is None
    running.attach_device(disk(good, "raw"), BOTH)
    slots = []
    for root in (inactive(running), ET.fromstring(running.xml())):
        [added] = root.findall("devices/disk")
        source, address = added.find("source"), added.find("address")
        assert source is not None and source.get("file") == str(good)
        assert address is not None
        slots.append(address.get("slot"))
    assert slots[0] == slots[1]  # the slot the live attach chose, in both


def test_a_disk_without_a_bus_gets_the_same_one_live_and_in_the_config(
        running: Domain, tmp_path: Path) -> None:
    """No ``bus``: the one its name implies (``sdX``: scsi), else the arch's default
    (virtio), for the live attach as for the definition. An ``sdb`` is therefore
    refused live (only virtio disks hot-plug) before anything changes; before, it was
    plugged as a virtio disk while the definition said scsi, so the guest got another
    kind of disk at its next start."""
    image = tmp_path / "d.img"
    image.write_bytes(b"\0" * (1 << 20))

    def disk(dev: str) -> str:
        return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                f"<source file='{image}'/><target dev='{dev}'/></disk>")
    with pytest.raises(client.errors.ConfigUnsupportedError,
                       match=r"only virtio disks can be hot-plugged \(got device=disk "
                             r"bus=scsi\)"):
        running.attach_device(disk("sdb"), BOTH)
    for root in (inactive(running), ET.fromstring(running.xml())):
        assert root.find("devices/disk") is None
    running.attach_device(disk("vdb"), BOTH)
    for root in (inactive(running), ET.fromstring(running.xml())):
        [target] = root.findall("devices/disk/target")
        assert (target.get("dev"), target.get("bus")) == ("vdb", "virtio")
    running.attach_device(disk("sdc"), AFFECT_CONFIG)
    targets = {t.get("dev"): t.get("bus") for t in inactive(running).iterfind(
        "devices/disk/target")}
    assert targets == {"vdb": "virtio", "sdc": "scsi"}


def test_a_hot_plugged_disk_is_plugged_as_one_the_guest_started_with(
        running: Domain, tmp_path: Path) -> None:
    """Its boot order is QEMU's bootindex (a reboot in place boots by it), as the start
    gives every disk; its nodes are named as the start names them."""
    image = tmp_path / "b.img"
    image.write_bytes(b"\0" * (1 << 20))
    running.attach_device(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{image}'/><target dev='vdb' bus='virtio'/><boot order='2'/>"
        "</disk>", AFFECT_LIVE)

    def qmp(command: str, **arguments: Any) -> Any:
        return json.loads(running.qemu_monitor_command(json.dumps(
            {"execute": command, "arguments": arguments})))["return"]
    assert qmp("qom-get", path="/machine/peripheral/disk-vdb", property="bootindex") == 2
    [storage] = [n for n in qmp("query-named-block-nodes")
                 if n["node-name"] == "drive-vdb-storage"]
    assert storage["file"] == str(image)
    assert qmp("qom-get", path="/machine/peripheral/disk-vdb", property="drive") == \
        "drive-vdb-format"


def disk_on(bus: str, path: Path, dev: str) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='{dev}' bus='{bus}'/></disk>")


def disk_targets(root: ET.Element) -> list[str | None]:
    return [t.get("dev") for t in root.iterfind("devices/disk/target")]


def test_a_detach_qemu_refuses_changes_neither_definition(daemon: DaemonProcess,
                                                          tmp_path: Path) -> None:
    """An IDE disk cannot be hot-unplugged: QEMU refuses the ``device_del``. As in
    libvirt, the persistent definition keeps the disk too (before, it lost it although
    the call failed)."""
    image = tmp_path / "ide.img"
    image.write_bytes(b"\0" * (1 << 20))
    ide = disk_on("ide", image, "hdb")
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("no-unplug").replace(
            "<os>", f"<devices>{ide}</devices><os>"))
        dom.create()
        try:
            with pytest.raises(client.QemudClientError, match="hotplug"):
                dom.detach_device(ide, BOTH)
            assert disk_targets(inactive(dom)) == ["hdb"]
            assert disk_targets(ET.fromstring(dom.xml())) == ["hdb"]
        finally:
            dom.destroy()
    daemon.stop()  # and in the file
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("no-unplug")
        assert disk_targets(inactive(dom)) == ["hdb"]
        dom.undefine()


@pytest.mark.parametrize("device", ["disk", "interface"])
def test_a_detach_the_guest_does_not_release_in_time_says_the_config_changed(
        tmp_path: Path, device: str) -> None:
    """A guest booted to firmware never releases a device (no OS answers the unplug):
    the call times out, and since QEMU had taken the unplug request the persistent
    definition has lost the device (libvirt's order), which the error says."""
    from qemud.driver.devices import UNPLUG_TIMEOUT_ENV
    daemon = DaemonProcess(tmp_path / "d", env={UNPLUG_TIMEOUT_ENV: "1"})
    daemon.start()
    image = tmp_path / "vdb.img"
    image.write_bytes(b"\0" * (1 << 20))
    mac = "52:54:00:0a:0b:0d"
    xml = disk_on("virtio", image, "vdb") if device == "disk" else \
        f"<interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>"
    try:
        with daemon.connect() as conn:
            dom = conn.define_xml(bare_xml("unreleased").replace(
                "<os>", f"<devices>{xml}</devices><os>"))
            dom.create()
            with pytest.raises(client.OperationTimeout) as raised:
                dom.detach_device(xml, BOTH)
            what = "disk vdb" if device == "disk" else f"interface {mac}"
            assert str(raised.value).endswith(
                f"the guest did not release {what} within 1 s (the unplug request "
                f"stays: the {device} is removed when the guest releases it); the "
                "persistent definition no longer has it")
            path = "devices/disk" if device == "disk" else "devices/interface"
            assert inactive(dom).find(path) is None
            assert ET.fromstring(dom.xml()).find(path) is not None  # (not released)
            if device == "interface":  # its link cannot change while it is unplugged
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain 'unreleased' is busy: detach of "
                                         f"interface {mac} in progress"):
                    dom.update_device(xml.replace("</interface>",
                                                  "<link state='down'/></interface>"),
                                      AFFECT_LIVE)
            dom.destroy()
            dom.undefine()
    finally:
        stop_destroying_guests(daemon)  # (also after a failure: no QEMU left behind)
