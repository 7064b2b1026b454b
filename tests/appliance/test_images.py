"""Appliance images: descriptor checks, import (and refusals), deploy, list, A/B update with
confirmation and rollback, factory reset — against a real daemon; guest tests boot the
test guest (TCG) from an appliance built here out of it.

The appliances are built in the test: the test guest's kernel/initrd, a small qcow2 system
disk whose first bytes are a marker (``SYSTEM-V1``...), a data disk and a scratch disk.
The guest reads/writes the first bytes of a disk on serial commands (``read-disk``,
``write-disk``); its heartbeat (virtio-serial) is watched by the heartbeat duty because the
descriptor gives a heartbeat policy; version 3.0 boots with ``qemud.noheartbeat``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import client
from client import appliance_images as images
from client.errors import (
    DomainExistsError,
    InvalidArgError,
    OperationInvalid,
    ReadOnlyError,
)
from protocol.constants import DomainState
from qemud.appliance.images.descriptor import (
    DescriptorError,
    load_descriptor_text,
    parse_descriptor,
    version_key,
)
from tests.helpers.daemon import DaemonProcess, qemush, serving, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import bare_xml
from tests.integration.serial import SerialPort

from .appliances import build_appliance, descriptor, disk_sources, origin
from .appliances import stored as stored  # demo 1.0, 2.0 and 3.0, imported
from .appliances import work as work  # the module's directory for tarballs
from .conftest import BOOT_TIMEOUT, EventLog, wait_state

REPO = Path(__file__).resolve().parents[2]
#: seconds a switched guest has to send its first heartbeat (short: the rollback test
#: waits it out; the test guest boots in ~7-15 s under TCG)
UPDATE_DEADLINE = 30.0


# -- building appliances ---------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_sums(qemud: DaemonProcess, version: str) -> dict[str, str]:
    directory = qemud.state_dir / "images" / "demo" / version
    return {p.name: sha256(p) for p in directory.rglob("*") if p.is_file()}


def backing_of(path: str) -> str:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                                     capture_output=True, text=True, check=True).stdout)
    return str(info.get("full-backing-filename") or info.get("backing-filename") or "")


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img"),
                           {"appliance": {"update_deadline": UPDATE_DEADLINE}})
    with serving(daemon):
        yield daemon


# -- the descriptor (no daemon) --------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"arch": None}, "field 'arch' is missing"),
    ({"name": "bad/name"}, "name: 'bad/name' may only hold"),
    ({"memory": "lots"}, "memory: must be a size"),
    ({"vcpus": 0}, "vcpus: must be a number"),
    ({"colour": "red"}, "colour: unknown field"),
    ({"disks": []}, "disks: must be a non-empty list"),
    ({"disks": [{"file": "s.qcow2", "class": "data", "target": "vda"}]},
     "at least one disk of class 'system'"),
    ({"disks": [{"file": "s.qcow2", "class": "gold", "target": "vda"}]},
     "disks[0].class: must be one of system, data, scratch"),
    ({"disks": [{"file": "../etc/passwd", "class": "system", "target": "vda"}]},
     "disks[0].file: '../etc/passwd' must be a relative path"),
    ({"disks": [{"file": "/etc/passwd", "class": "system", "target": "vda"}]},
     "must be a relative path"),
    ({"disks": [{"file": "s.img", "class": "system", "format": "vmdk", "target": "vda"}]},
     "disks[0].format: must be qcow2 or raw"),
    ({"disks": [{"file": "s.img", "class": "system", "target": "xyz"}]},
     "disks[0].target: must be a guest disk name"),
    ({"disks": [{"file": "s.img", "class": "system", "target": "vda"},
                {"class": "scratch", "target": "vdb"}]}, "disks[1].size: a scratch disk"),
    ({"disks": [{"file": "s.img", "class": "system", "target": "vda"},
                {"file": "t.img", "class": "data", "target": "vda"}]}, "used by two disks"),
    ({"boot": {"initrd": "i"}}, "field 'boot.kernel' is missing"),
    ({"boot": {"disk": "vdz"}}, "boot.disk: 'vdz' is not a system or data disk"),
    ({"heartbeat": {"interval": -1}}, "heartbeat.interval: must be a positive number"),
    ({"heartbeat": {"action": "hook"}}, "'hook' cannot come from an appliance"),
])
def test_descriptor_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    desc = descriptor()
    for key, value in change.items():
        if value is None:
            desc.pop(key)
        else:
            desc[key] = value
    with pytest.raises(DescriptorError) as err:
        parse_descriptor(desc)
    assert message in err.value.message
    assert err.value.detail.startswith("appliance.json: ")


def test_descriptor_defaults_toml_and_versions() -> None:
    desc = load_descriptor_text("""
name = "router"
version = "1.10"
arch = "x86_64"
memory = "1G"
boot = { disk = "sda" }
[[disks]]
file = "root.img"
class = "system"
target = "sda"
bus = "sata"
[[disks]]
class = "scratch"
size = "64M"
target = "sdb"
""", "appliance.toml")
    assert (desc.name, desc.version, desc.memory_mib, desc.vcpus) == ("router", "1.10", 1024, 1)
    assert desc.disks[0].format == "raw"  # not *.qcow2: raw
    assert desc.disks[1].size == 64 * 1024 * 1024
    assert desc.boot.disk == "sda" and desc.heartbeat is None
    assert parse_descriptor(desc.to_json()) == desc  # the stored form reads back the same
    with pytest.raises(DescriptorError, match=r"appliance\.toml: not valid TOML"):
        load_descriptor_text("name = ", "appliance.toml")
    with pytest.raises(DescriptorError, match=r"appliance\.json: not valid JSON: key "
                                              r"'version' appears twice in one object"):
        load_descriptor_text('{"name": "r", "version": "1", "version": "2"}',
                             "appliance.json")
    assert sorted(["1.10", "1.9", "2.0", "1.9a"], key=version_key) == \
        ["1.9", "1.9a", "1.10", "2.0"]


# -- import ----------------------------------------------------------------------------


def test_import_refusals(conn: client.Connection, qemud: DaemonProcess, work: Path,
                         test_guest: TestGuest) -> None:
    def refused(desc: dict[str, Any], **kwargs: Any) -> str:
        path = build_appliance(work, test_guest, desc, **kwargs)
        with pytest.raises(client.QemudClientError) as err:
            images.import_appliance(conn, str(path))
        return err.value.message

    msg = refused(descriptor(name="odd", arch="s390x"))
    assert "arch 's390x'" in msg and "no emulator" in msg
    caps = conn.capabilities()
    if "domain type='kvm'" not in caps:
        msg = refused(descriptor(name="fast", features=["virtio", "kvm"]))
        assert "requires feature 'kvm'" in msg and "cannot provide: " in msg
        reason = msg.split("cannot provide: ", 1)[1]
        assert reason and reason in qemud.log_text()  # caps.kvm_reason, as logged at start
    assert "requires unknown feature 'teleport'" in refused(
        descriptor(name="magic", features=["teleport"]))
    assert "disks[1].file: file 'data.qcow2' is not in the tarball" in refused(
        descriptor(name="partial"), omit=("data.qcow2",))
    assert "boot.initrd: file 'boot/initramfs.img' is not in the tarball" in refused(
        descriptor(name="noinitrd"), omit=("boot/initramfs.img",))
    assert "field 'arch' is missing" in refused(
        {k: v for k, v in descriptor(name="noarch").items() if k != "arch"})
    with pytest.raises(InvalidArgError, match="no appliance.json"):
        images.import_appliance(conn, str(build_appliance(work, test_guest, descriptor(
            name="nodesc"), omit=("appliance.json",))))
    # a raw image declared as qcow2, and a qcow2 pointing at a host file
    assert "says format raw but the image is qcow2" in refused(descriptor(name="lies", disks=[
        {"file": "system.qcow2", "class": "system", "format": "raw", "target": "vda"}]))
    sneaky = work / "sneaky.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    "/etc/passwd", str(sneaky)], check=True)
    msg = refused(descriptor(name="sneaky", disks=[
        {"file": "sneaky.qcow2", "class": "system", "target": "vda"}]),
        extra={"sneaky.qcow2": sneaky.read_bytes()})
    assert "has a backing file ('/etc/passwd')" in msg
    # not a tarball at all; a relative path; a missing file
    junk = work / "junk.tar"
    junk.write_bytes(b"this is not a tarball\n" * 100)
    with pytest.raises(InvalidArgError, match="cannot unpack appliance tarball .*junk.tar"):
        images.import_appliance(conn, str(junk))
    with pytest.raises(InvalidArgError, match="must be absolute"):
        images.import_appliance(conn, "demo.tar")
    with pytest.raises(InvalidArgError, match="No such file"):
        images.import_appliance(conn, str(work / "nope.tar"))
    # a symlink member
    link_dir = work / "linked"
    link_dir.mkdir()
    (link_dir / "appliance.json").write_text(json.dumps(descriptor(name="linked")))
    (link_dir / "system.qcow2").symlink_to("/etc/shadow")
    with tarfile.open(work / "linked.tar", "w") as tar:
        tar.add(link_dir, arcname=".")
    with pytest.raises(InvalidArgError, match="member 'system.qcow2' is a symlink"):
        images.import_appliance(conn, str(work / "linked.tar"))
    # nothing of the refused ones stays behind: each staging tree is renamed away at
    # once and removed by a child
    store = qemud.state_dir / "images"
    assert not list(store.glob(".staging-*"))
    wait_for(lambda: not list(store.glob(".*.qemud-discard-*")),
             message="the refused imports' staging trees to be removed")
    names = {i.name for i in images.list_appliances(conn)}
    assert not names & {"odd", "fast", "magic", "partial", "lies", "sneaky", "linked"}
    # read-only connections may not import
    with qemud.connect(readonly=True) as ro, pytest.raises(ReadOnlyError):
        images.import_appliance(ro, str(junk))


def test_import_stores_read_only(conn: client.Connection, qemud: DaemonProcess,
                                 stored: dict[str, Path]) -> None:
    listed = [(i.name, i.version, i.arch) for i in images.list_appliances(conn)
              if i.name == "demo"]
    assert listed == [("demo", "1.0", "x86_64"), ("demo", "2.0", "x86_64"),
                      ("demo", "3.0", "x86_64")]
    directory = qemud.state_dir / "images" / "demo" / "2.0"  # from a tarball's top dir
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {p.relative_to(directory).as_posix() for p in files} >= {
        "appliance.json", "system.qcow2", "data.qcow2", "boot/vmlinuz", "boot/initramfs.img"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o444, p
    # flushed to disk before the import was answered (a power loss keeps it)
    assert f"running sync -f {directory}\n" in qemud.log_text()
    with pytest.raises(OperationInvalid, match="already imported"):
        images.import_appliance(conn, str(stored["1.0"]))


def test_import_read_only_and_closed_directories(conn: client.Connection, work: Path,
                                                 qemud: DaemonProcess,
                                                 test_guest: TestGuest) -> None:
    """A tarball may carry directories that are read-only, or unreadable: the store's
    copy is 0755 directories and 0444 files all the same, made so by a child."""
    path = build_appliance(work, test_guest, descriptor(name="closed"), top_dir=True,
                           extra={"docs/a/notes.txt": b"n"},
                           modes={"boot": 0o555, "docs/a": 0, "docs": 0o500})
    assert images.import_appliance(conn, str(path)) == "closed:1.0"
    directory = qemud.state_dir / "images" / "closed" / "1.0"
    modes = {p.relative_to(directory).as_posix(): stat.S_IMODE(p.lstat().st_mode)
             for p in directory.rglob("*")}
    assert modes["boot"] == modes["docs"] == modes["docs/a"] == 0o755
    assert modes["docs/a/notes.txt"] == modes["boot/vmlinuz"] == 0o444
    assert {m for name, m in modes.items() if (directory / name).is_file()} == {0o444}


# -- deploy ----------------------------------------------------------------------------


def test_deploy_two_vms_and_list(conn: client.Connection, qemud: DaemonProcess,
                                 stored: dict[str, Path]) -> None:
    a = images.deploy(conn, "demo", "dep-a", "1.0")
    b = images.deploy(conn, "demo", "dep-b", "1.0")
    newest = images.deploy(conn, "demo", "dep-new")
    try:
        assert origin(newest.xml()) == ("demo", "3.0")  # "" = the newest version
        by_version = {i.version: i.vms for i in images.list_appliances(conn)
                      if i.name == "demo"}
        assert {"dep-a", "dep-b"} <= set(by_version["1.0"])
        assert "dep-new" in by_version["3.0"]
        for dom in (a, b):
            xml = dom.xml(client.XML_INACTIVE)
            assert origin(xml) == ("demo", "1.0")
            vmdir = qemud.state_dir / "vms" / dom.name
            src = disk_sources(xml)
            assert src == {"vda": str(vmdir / "vda.a.qcow2"), "vdb": str(vmdir / "vdb.qcow2"),
                           "vdc": str(vmdir / "vdc.scratch.qcow2")}
            store = qemud.state_dir / "images" / "demo" / "1.0"
            assert backing_of(src["vda"]) == str(store / "system.qcow2")
            assert backing_of(src["vdb"]) == str(store / "data.qcow2")
            assert backing_of(src["vdc"]) == ""
            assert "qemud:disk target=\"vdb\" class=\"data\"" in xml
            assert "<qemud:heartbeat" in xml
        with pytest.raises(DomainExistsError, match="dep-a"):
            images.deploy(conn, "demo", "dep-a", "1.0")
        with pytest.raises(InvalidArgError, match="no version '9.9'.*1.0, 2.0, 3.0"):
            images.deploy(conn, "demo", "dep-c", "9.9")
        with pytest.raises(InvalidArgError, match="no appliance 'nosuch'"):
            images.deploy(conn, "nosuch", "dep-c")
        with pytest.raises(InvalidArgError, match="VM name"):
            images.deploy(conn, "demo", "../escape")
    finally:
        for dom in (a, b, newest):
            dom.undefine()
    assert not {"dep-a", "dep-b"} & {vm for i in images.list_appliances(conn) for vm in i.vms}


@pytest.mark.integration
def test_update_refusals_and_update_while_off(conn: client.Connection, qemud: DaemonProcess,
                                              stored: dict[str, Path], work: Path,
                                              test_guest: TestGuest) -> None:
    plain = conn.define_xml(bare_xml("not-an-appliance"))
    dom = images.deploy(conn, "demo", "off-vm", "1.0")
    try:
        with pytest.raises(OperationInvalid, match="not deployed from an appliance"):
            images.update(conn, plain, "2.0")
        with pytest.raises(OperationInvalid, match="not deployed from an appliance"):
            images.factory_reset(conn, plain)
        with pytest.raises(OperationInvalid, match="already runs demo 1.0"):
            images.update(conn, dom, "1.0")
        with pytest.raises(InvalidArgError, match="no version '7.0'"):
            images.update(conn, dom, "7.0")
        # another disk layout cannot be an update
        other = descriptor("1.5")
        other["disks"] = other["disks"][:2]
        images.import_appliance(conn, str(build_appliance(work, test_guest, other)))
        with pytest.raises(OperationInvalid, match="other disks .* keeps the disk layout"):
            images.update(conn, dom, "1.5")
        # a shut-off VM is switched at once; its heartbeat is due at the next start
        events = EventLog(conn)
        conn.register_event(client.EventId.APPLIANCE)
        images.update(conn, dom, "2.0")
        applied = events.wait("off-vm", "update-applied", timeout=10)[0]
        assert "1.0 -> 2.0" in applied.text and "next start" in applied.text
        xml = dom.xml(client.XML_INACTIVE)
        assert origin(xml) == ("demo", "2.0")
        vmdir = qemud.state_dir / "vms" / "off-vm"
        assert disk_sources(xml)["vda"] == str(vmdir / "vda.b.qcow2")
        assert (vmdir / "vda.a.qcow2").is_file()  # A/B: the previous slot is kept
        assert "/demo/2.0/boot/vmlinuz" in xml
        with pytest.raises(OperationInvalid, match="waiting for the guest's heartbeat"):
            images.update(conn, dom, "3.0")
        with pytest.raises(OperationInvalid, match="waiting for the guest's heartbeat"):
            images.factory_reset(conn, dom)
        assert dom.state()[0] == DomainState.SHUTOFF
    except BaseException:
        plain.undefine()
        dom.undefine()
        raise
    plain.undefine()
    # the pending update outlives a daemon restart; the next start's heartbeat confirms it
    qemud.stop()
    qemud.start()
    with qemud.connect() as again:
        events = EventLog(again)
        again.register_event(client.EventId.APPLIANCE)
        dom = again.lookup_by_name("off-vm")
        try:
            dom.create()
            confirmed = events.wait("off-vm", "update-confirmed",
                                    timeout=UPDATE_DEADLINE + 10)[0]
            # confirmed by the heartbeat duty's event (emitted with the first beat, before
            # any stats poll could see it), not by the counters fallback
            assert "demo 1.0 -> 2.0: appliance event 'heartbeat-seen'" in confirmed.text
            images.update(again, dom, "1.0")  # confirmed: it may be updated again (back)
            assert origin(dom.xml()) == ("demo", "1.0")
        finally:
            dom.destroy()
            dom.undefine()


# -- the guest: originals, update, rollback, factory reset -------------------------------


class Vm:
    """A deployed VM with a serial line (the driver's socket of its serial port 0)."""

    def __init__(self, qemud: DaemonProcess, dom: client.Domain) -> None:
        self.dom = dom
        self.sock = qemud.guest_run_dir(dom.name) / "charserial0.sock"
        self.serial: SerialPort | None = None

    def attach(self) -> Vm:
        """Connect to the (new) QEMU's serial socket and wait until the guest answers: its
        READY marker, or a ping's answer when it finished booting before we connected."""
        wait_state(self.dom, DomainState.RUNNING, BOOT_TIMEOUT)
        if self.serial is not None:
            self.serial.close()
        self.serial = SerialPort(self.sock)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            mark = self.serial.mark()
            self.serial.send("ping")
            try:
                self.serial.wait_for(r"QEMUD-GUEST-READY|QEMUD-PONG", 3, start=mark)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def command(self, line: str, answer: str) -> str:
        assert self.serial is not None
        mark = self.serial.mark()
        self.serial.send(line)
        return self.serial.wait_for(answer, 30, start=mark).group(0)

    def write(self, dev: str, text: str) -> None:
        self.command(f"write-disk {dev} {text}", rf"QEMUD-WROTE {dev}")

    def read(self, dev: str, n: int) -> str:
        line = self.command(f"read-disk {dev} {n}", rf"QEMUD-READ {dev} [^\n]*\n")
        return line.rstrip("\n").split(" ", 2)[2]

    def close(self) -> None:
        if self.serial is not None:
            self.serial.close()


@pytest.mark.integration
def test_update_confirm_rollback_and_reset(conn: client.Connection, qemud: DaemonProcess,
                                           stored: dict[str, Path]) -> None:
    sums = {v: store_sums(qemud, v) for v in ("1.0", "2.0", "3.0")}
    events = EventLog(conn)
    conn.register_event(client.EventId.APPLIANCE)
    a = Vm(qemud, images.deploy(conn, "demo", "vm-a", "1.0", start=True))
    b = Vm(qemud, images.deploy(conn, "demo", "vm-b", "1.0", start=True))
    try:
        # two VMs from one appliance, each with its own overlays
        a.attach()
        assert a.read("vda", 11) == "SYSTEM-V1.0"
        assert a.read("vdb", 13) == "DATA-ORIGINAL"
        a.write("vda", "VM-A-SYSTEM")
        a.write("vdb", "VM-A-DATA")
        a.write("vdc", "VM-A-SCRATCH")
        b.attach()
        assert b.read("vda", 11) == "SYSTEM-V1.0"  # vm-a's write is not in vm-b's disk
        assert b.read("vdb", 9) == "DATA-ORIG"
        b.dom.destroy()
        b.close()
        assert store_sums(qemud, "1.0") == sums["1.0"]  # originals never written

        # A/B update of the running guest to 2.0: data kept, scratch new, confirmed by
        # its heartbeat
        images.update(conn, a.dom, "2.0")
        a.attach()
        confirmed = events.wait("vm-a", "update-confirmed", timeout=UPDATE_DEADLINE)[0]
        assert "demo 1.0 -> 2.0" in confirmed.text
        assert a.read("vda", 11) == "SYSTEM-V2.0"
        assert a.read("vdb", 9) == "VM-A-DATA"
        assert a.read("vdc", 12) == "............"  # recreated empty
        assert origin(a.dom.xml()) == ("demo", "2.0")
        vmdir = qemud.state_dir / "vms" / "vm-a"
        assert disk_sources(a.dom.xml())["vda"] == str(vmdir / "vda.b.qcow2")
        assert (vmdir / "vda.a.qcow2").is_file()  # the previous system overlay is kept
        assert events.appliance("vm-a", "update-rolled-back") == []

        # 3.0 never sends a heartbeat: rolled back to 2.0 by the daemon itself
        images.update(conn, a.dom, "3.0")
        assert "qemud.noheartbeat" in a.dom.xml()
        rolled = events.wait("vm-a", "update-rolled-back", timeout=UPDATE_DEADLINE + 60)[0]
        assert "3.0 -> back to 2.0" in rolled.text and "no heartbeat within" in rolled.text
        assert events.appliance("vm-a", "update-confirmed")[1:] == []
        a.attach()  # started again, on 2.0
        assert a.read("vda", 11) == "SYSTEM-V2.0"
        assert a.read("vdb", 9) == "VM-A-DATA"
        xml = a.dom.xml(client.XML_INACTIVE)
        assert origin(xml) == ("demo", "2.0") and "qemud.noheartbeat" not in xml
        assert disk_sources(xml)["vda"] == str(vmdir / "vda.b.qcow2")
        assert not (vmdir / "vda.a.qcow2").exists()  # the failed 3.0 overlay is gone
        assert "vm-a" in {i.version: i.vms for i in images.list_appliances(conn)
                          if i.name == "demo"}["2.0"]

        # factory reset: system changes gone, data kept, guest running again
        a.write("vda", "DIRTY-SYSTEM")
        images.factory_reset(conn, a.dom)
        reset = events.wait("vm-a", "factory-reset", timeout=10)[0]
        assert "back to demo:2.0" in reset.text
        a.attach()
        assert a.read("vda", 11) == "SYSTEM-V2.0"
        assert a.read("vdb", 9) == "VM-A-DATA"
        for version in ("1.0", "2.0", "3.0"):
            assert store_sums(qemud, version) == sums[version], version
    finally:
        for vm in (a, b):
            vm.close()
            try:
                if vm.dom.is_active():
                    vm.dom.destroy()
                vm.dom.undefine()
            except client.QemudClientError:
                pass


# -- the shell and the demo script -----------------------------------------------------


def test_shell_commands(qemud: DaemonProcess, stored: dict[str, Path], work: Path,
                        test_guest: TestGuest) -> None:
    path = build_appliance(work, test_guest, descriptor("4.0", name="shelled"))
    r = qemush(qemud, "appliance-import", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Appliance shelled:4.0 imported"
    assert r.stderr == ""  # no progress drawn when stderr is not a terminal
    r = qemush(qemud, "appliance-deploy", "shelled", "--as", "sh-vm")
    assert r.returncode == 0, r.stderr
    r = qemush(qemud, "appliance-list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {(i["name"], i["version"]): i for i in json.loads(r.stdout)}
    assert listed[("shelled", "4.0")]["vms"] == ["sh-vm"]
    r = qemush(qemud, "appliance-list")
    assert "shelled" in r.stdout and "sh-vm" in r.stdout
    r = qemush(qemud, "appliance-update", "sh-vm")
    assert r.returncode == 1 and "requires --to <version>" in r.stderr
    r = qemush(qemud, "appliance-import", str(path))
    assert r.returncode == 1
    assert "error: Failed to import appliance" in r.stderr and "already imported" in r.stderr
    r = qemush(qemud, "appliance-reset", "sh-vm")
    assert r.returncode == 0, r.stderr
    r = qemush(qemud, "undefine", "sh-vm")
    assert r.returncode == 0, r.stderr


def test_make_demo_appliance(conn: client.Connection, tmp_path: Path,
                             test_guest: TestGuest) -> None:
    out = tmp_path / "demo-appliance.tar.gz"
    env = dict(os.environ, QEMUD_GUEST_DIR=str(test_guest.dir))
    r = subprocess.run([str(REPO / "contrib" / "make-demo-appliance"), "--out", str(out),
                        "--name", "demo-contrib", "--version", "0.1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert images.import_appliance(conn, str(out)) == "demo-contrib:0.1"
