"""udev hotplug against a real daemon, real kernel uevents and the real test guest (TCG).

The host devices are loop devices of our own: created at unused numbers through
/dev/loop-control (LOOP_CTL_ADD raises a real ``add`` uevent, with size 0), bound to files
in tmp with ``losetup`` (a ``change`` uevent with the size), unbound with ``losetup -d``
and removed again at the end, whatever happens. The rules match each one by its exact
DEVNAME, so no other loop device of the host is ever touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, serving, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg

from .conftest import EventLog, wait_state
from .hotplug_loops import (
    ATTACH_TIMEOUT,
    DETACH_TIMEOUT,
    boot,
    image,
    loop_devices,
    loopctl,
    row,
    rule,
)

pytestmark = pytest.mark.integration

ROLES = ("live", "boot", "cd", "bad", "other", "grow", "grow-ro", "job")
#: the guest kernel's virtio-blk notices (KERN_NOTICE) on the serial console: its size
#: of the disk when it appears and after a capacity change, i.e. /sys/block/vdX/size
NOTICES = "console=ttyS0 loglevel=6"
CDROM = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
         "<target dev='hdc' bus='ide'/><readonly/></disk>")


def grow(path: Path, mib: int) -> None:
    os.truncate(path, mib << 20)


@pytest.fixture(scope="module")
def loops() -> Iterator[dict[str, str]]:
    yield from loop_devices(ROLES)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, loops: dict[str, str]
          ) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-hotplug")
    rules = root / "hotplug.toml"
    rules.write_text(f"""
[[rule]]
name = "live"
match = {{ SUBSYSTEM = "block", DEVTYPE = "disk", DEVNAME = "{loops['live']}" }}
domain = "hp-live"
target = "virtio-disk"

[[rule]]
name = "boot"
match = {{ DEVNAME = "{loops['boot']}" }}
domain = "hp-boot"

[[rule]]
name = "cd"
match = {{ DEVNAME = "{loops['cd']}" }}
domain = "hp-cd"
target = "cdrom:hdc"

[[rule]]
name = "bad"
match = {{ DEVNAME = "{loops['bad']}" }}
domain = "hp-live"
target = "cdrom:hdd"
""" + rule("grow", loops["grow"], "hp-grow") +
                     rule("grow-ro", loops["grow-ro"], "hp-grow", "readonly = true\n") +
                     rule("job", loops["job"], "hp-job"))
    qemu_img = HeldQemuImg.install(root)  # runs the real one unless a test holds it
    daemon = DaemonProcess(root, {"appliance": {"hotplug_rules": str(rules)}},
                           env={"PATH": qemu_img.path_env()})
    with serving(daemon):
        yield daemon


def test_hot_add_and_remove_a_loop_device(conn: client.Connection, events: EventLog,
                                          test_guest, qemud: DaemonProcess,
                                          loops: dict[str, str], tmp_path: Path) -> None:
    dev, other = loops["live"], loops["other"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hp-live", test_guest, tmp_path / "serial.sock")
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n")  # no disk at all
    assert row(conn, dev) is None  # the loop device exists, but has no medium: size 0

    mark = serial.mark()
    ctl.bind(dev, image(tmp_path / "disk.img", 8))
    ctl.bind(other, image(tmp_path / "other.img", 8))  # matches no rule
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
    attached = events.wait("hp-live", "hotplug-attached", timeout=10)[0]
    assert attached.text == f"{dev} as vda"
    info = row(conn, dev)
    assert info is not None
    assert (info.rule, info.domain, info.target, info.attached) == ("live", "hp-live", "vda",
                                                                    True)
    xml = dom.xml()
    assert f"<source dev='{dev}'" in xml
    assert other not in xml and row(conn, other) is None
    # (its own uevent, handled apart from the attach waited for above)
    wait_for(lambda: f"{other} matches no rule: ignored" in qemud.log_text(), timeout=10,
             message="the device matching no rule ignored")

    # no save while it holds the device: a restore would reopen it by its name
    for call in (dom.managed_save, lambda: dom.save(str(tmp_path / "saved"))):
        with pytest.raises(client.OperationInvalid,
                           match=f"holds host devices the hotplug rules attached "
                                 f"\\({dev} as vda\\)"):
            call()
    assert dom.is_active()

    # the guest really writes to the host's device
    serial.send("write-disk vda HELLO-FROM-THE-GUEST")
    serial.wait_for("QEMUD-WROTE vda")
    assert (tmp_path / "disk.img").read_bytes()[:20] == b"HELLO-FROM-THE-GUEST"

    # a failure is reported with its cause, and not retried in a loop
    bad = loops["bad"]
    ctl.bind(bad, image(tmp_path / "bad.img", 1))
    failed = events.wait("hp-live", "hotplug-failed", timeout=10)[0]
    assert failed.text == (f"attach {bad} as hdd: invalid argument: no CD-ROM with target 'hdd' "
                           "in domain 'hp-live'")
    events.drain(2.0)
    assert len(events.appliance("hp-live", "hotplug-failed")) == 1
    info = row(conn, bad)
    assert info is not None and (info.rule, info.attached) == ("bad", False)
    assert f"hotplug: cannot attach {bad} as hdd of hp-live (rule bad)" in qemud.log_text()
    assert f"device={bad} target=hdd action=attach result=error" in \
        qemud.audit_file.read_text()
    ctl.unbind(bad)

    # the shell shows it too
    shell = subprocess.run([sys.executable, "-m", "client.shell", "-c", qemud.uri,
                            "hotplug-list", "--json"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    assert shell.returncode == 0, shell.stderr
    assert {"rule": "live", "device": dev, "domain": "hp-live", "target": "vda",
            "attached": True} in json.loads(shell.stdout)
    text = subprocess.run([sys.executable, "-m", "client.shell", "-c", qemud.uri,
                           "hotplug-list"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL).stdout
    assert any(line.split()[:5] == [dev, "live", "hp-live", "vda", "yes"]
               for line in text.splitlines())

    # losetup -d while QEMU holds it: the kernel only sets auto-clear (no uevent yet)
    mark = serial.mark()
    ctl.unbind(dev)
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n", start=mark, timeout=DETACH_TIMEOUT)
    detached = events.wait("hp-live", "hotplug-detached", timeout=20)[0]
    assert detached.text == f"{dev} as vda"
    assert dev not in dom.xml()
    wait_for(lambda: row(conn, dev) is None, timeout=10, message="device gone from the list")
    # QEMU closed it, so the kernel finished the detach
    wait_for(lambda: not ctl.bound(dev), timeout=10, message=f"{dev} unbound")
    assert [r.kind for r in events.appliance("hp-live")] == [
        "hotplug-attached", "hotplug-failed", "hotplug-detached"]
    audit = qemud.audit_file.read_text()
    assert (f"appliance hotplug domain='hp-live' uuid={dom.uuid} rule='live' device={dev} "
            "target=vda action=attach result=ok") in audit
    assert f"device={dev} target=vda action=detach result=ok" in audit
    ctl.unbind(other)
    dom.destroy()


def test_device_present_before_start_and_daemon_restart(
        conn: client.Connection, events: EventLog, test_guest, qemud: DaemonProcess,
        loops: dict[str, str], tmp_path: Path) -> None:
    dev = loops["boot"]
    ctl = loopctl(loops)
    ctl.bind(dev, image(tmp_path / "boot.img", 4))
    # matched and listed, not attached: its guest does not run yet
    info = wait_for(lambda: row(conn, dev), timeout=10, message="device listed")
    assert (info.rule, info.domain, info.target, info.attached) == ("boot", "hp-boot", "",
                                                                    False)
    dom, serial = boot(conn, "hp-boot", test_guest, tmp_path / "serial.sock")
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", timeout=ATTACH_TIMEOUT)
    assert events.wait("hp-boot", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"
    assert row(conn, dev).attached  # type: ignore[union-attr]

    # a restarted daemon finds the attachment in the live definition and keeps it
    conn.close()
    qemud.stop()
    qemud.start()
    with qemud.connect() as again:
        again.register_event(client.EventId.APPLIANCE)
        log = EventLog(again)
        info = wait_for(lambda: row(again, dev), timeout=10, message="device listed")
        assert (info.target, info.attached) == ("vda", True)
        log.drain(1.5)
        assert log.appliance("hp-boot") == []  # nothing attached twice

    # the host lets go of it while the daemon is down: detached when it is back
    qemud.stop()
    mark = serial.mark()
    ctl.unbind(dev)
    qemud.start()
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n", start=mark, timeout=DETACH_TIMEOUT)
    wait_for(lambda: not ctl.bound(dev), timeout=10, message=f"{dev} unbound")
    # the event follows the guest's release once QEMU closed the disk's block nodes
    wait_for(lambda: "hotplug-detached: " + f"{dev} as vda" in qemud.log_text(), timeout=10,
             message="hotplug-detached event")
    with qemud.connect() as again:
        again.register_event(client.EventId.APPLIANCE)
        log = EventLog(again)
        assert row(again, dev) is None
        dom = again.lookup_by_name("hp-boot")

        # hot-added again; a guest stopping takes its devices along: listed as not attached
        mark = serial.mark()
        ctl.bind(dev, image(tmp_path / "boot2.img", 4))
        serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
        assert log.wait("hp-boot", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"
        dom.destroy()
        wait_state(dom, DomainState.SHUTOFF)
        info = wait_for(lambda: (r := row(again, dev)) is not None and not r.attached and r,
                        timeout=10, message="listed as not attached")
        assert info.target == ""
        ctl.unbind(dev)
        wait_for(lambda: row(again, dev) is None, timeout=10, message="device unlisted")
    assert json.loads((qemud.run_dir / "hotplug.json").read_text()) == []


def test_cdrom_medium_mirrored(conn: client.Connection, events: EventLog, test_guest,
                               loops: dict[str, str], tmp_path: Path) -> None:
    dev = loops["cd"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hp-cd", test_guest, tmp_path / "serial.sock", extra=CDROM)
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*sr0:0\b")
    # a "drive" with no medium is listed (it is a drive), not attached
    info = row(conn, dev)
    assert info is not None and (info.target, info.attached) == ("", False)

    mark = serial.mark()
    ctl.bind(dev, image(tmp_path / "disc.iso", 4, b"\1"))
    serial.wait_for(r"sr0:8192\b", start=mark, timeout=ATTACH_TIMEOUT)  # 4 MiB
    assert events.wait("hp-cd", "hotplug-attached", timeout=10)[0].text == f"{dev} as hdc"
    info = row(conn, dev)
    assert info is not None and (info.target, info.attached) == ("hdc", True)
    assert dev in dom.xml()

    # the medium grows on the host: a CD-ROM has no resize, the medium is inserted again
    mark = serial.mark()
    grow(tmp_path / "disc.iso", 6)
    ctl.refresh(dev)
    serial.wait_for(r"sr0:12288\b", start=mark, timeout=ATTACH_TIMEOUT)  # 6 MiB
    assert events.wait("hp-cd", "hotplug-resized", timeout=10)[0].text == \
        f"{dev} as hdc: 4194304 -> 6291456 bytes"

    mark = serial.mark()
    ctl.unbind(dev)
    serial.wait_for(r"sr0:0\b", start=mark, timeout=DETACH_TIMEOUT)
    assert events.wait("hp-cd", "hotplug-detached", timeout=20)[0].text == f"{dev} as hdc"
    assert dev not in dom.xml()
    wait_for(lambda: not ctl.bound(dev), timeout=10, message=f"{dev} unbound")
    assert events.appliance("hp-cd", "hotplug-failed") == []
    dom.destroy()


def test_size_change_reaches_the_guest(conn: client.Connection, events: EventLog, test_guest,
                                       qemud: DaemonProcess, loops: dict[str, str],
                                       tmp_path: Path) -> None:
    dev, ro = loops["grow"], loops["grow-ro"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hp-grow", test_guest, tmp_path / "serial.sock", cmdline=NOTICES)
    mark = serial.mark()
    ctl.bind(dev, image(tmp_path / "grow.img", 8))
    serial.wait_for(r"\[vda\] 16384 512-byte logical blocks", start=mark,
                    timeout=ATTACH_TIMEOUT)
    assert events.wait("hp-grow", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"
    mark = serial.mark()
    ctl.bind(ro, image(tmp_path / "grow-ro.img", 4))
    serial.wait_for(r"\[vdb\] 8192 512-byte logical blocks", start=mark,
                    timeout=ATTACH_TIMEOUT)
    events.wait("hp-grow", "hotplug-attached", count=2, timeout=10)

    # the backing file grows and `losetup -c` tells the kernel: a `change` uevent
    mark = serial.mark()
    grow(tmp_path / "grow.img", 16)
    ctl.refresh(dev)
    serial.wait_for(r"\[vda\] new size: 32768 512-byte logical blocks", start=mark,
                    timeout=ATTACH_TIMEOUT)
    resized = events.wait("hp-grow", "hotplug-resized", timeout=10)[0]
    assert resized.text == f"{dev} as vda: 8388608 -> 16777216 bytes"
    audit = (f"appliance hotplug domain='hp-grow' uuid={dom.uuid} rule='grow' device={dev} "
             "target=vda action=resize result=ok")
    wait_for(lambda: audit in qemud.audit_file.read_text(), timeout=5, message="audit line")
    assert f"hotplug: resize {dev} as vda of hp-grow (rule grow)" in qemud.log_text()
    state = json.loads((qemud.run_dir / "hotplug.json").read_text())
    assert {(e["device"], e["target"], e["size"]) for e in state} == {(dev, "vda", 32768),
                                                                      (ro, "vdb", 8192)}
    # the disk keeps working after the resize
    serial.send("write-disk vda GROWN")
    serial.wait_for("QEMUD-WROTE vda")
    assert (tmp_path / "grow.img").read_bytes()[:5] == b"GROWN"

    # QEMU cannot resize a read-only node: reported once, the disk stays as it was
    grow(tmp_path / "grow-ro.img", 8)
    ctl.refresh(ro)
    failed = events.wait("hp-grow", "hotplug-failed", timeout=10)[0]
    assert failed.text.startswith(f"resize {ro} as vdb: QEMU cannot resize a read-only disk")
    events.drain(2.0)
    assert len(events.appliance("hp-grow", "hotplug-failed")) == 1
    assert len(events.appliance("hp-grow", "hotplug-resized")) == 1
    info = row(conn, ro)
    assert info is not None and (info.target, info.attached) == ("vdb", True)
    assert "[vdb] new size" not in serial.text

    mark = serial.mark()
    ctl.unbind(dev)
    ctl.unbind(ro)
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n", start=mark, timeout=DETACH_TIMEOUT)
    events.wait("hp-grow", "hotplug-detached", count=2, timeout=20)
    dom.destroy()


def test_device_arriving_during_a_snapshot_waits_for_it(
        conn: client.Connection, events: EventLog, test_guest, qemud: DaemonProcess,
        loops: dict[str, str], tmp_path: Path) -> None:
    """The driver refuses a live attach while a snapshot runs; a device that appears
    then is attached once the snapshot is done, not reported as failed."""
    from concurrent.futures import ThreadPoolExecutor

    from .snapshot_guests import disk_xml, make_image

    dev = loops["job"]
    ctl = loopctl(loops)
    qemu_img = HeldQemuImg(qemud.root / "bin", qemud.root / "hold", qemud.root / "held",
                           qemud.root / "fail")
    dom, serial = boot(conn, "hp-job", test_guest, tmp_path / "serial.sock",
                       extra=disk_xml(make_image(tmp_path / "vda.qcow2")))
    try:
        qemu_img.start_holding()
        with qemud.connect() as other, ThreadPoolExecutor(1) as pool:
            snapshot = pool.submit(other.lookup_by_name("hp-job").snapshot_create, "s1")
            try:
                wait_for(lambda: qemu_img.held.exists() or snapshot.done(), timeout=60,
                         message="snapshot under way")
                assert not snapshot.done(), snapshot.result()  # (raises its error)
                mark = serial.mark()
                ctl.bind(dev, image(tmp_path / "disk.img", 8))
                wait_for(lambda: f"hotplug: {dev} waits for the snapshot of hp-job to end"
                         in qemud.log_text(), timeout=20, message="the change held off")
                events.drain(2.0)
                assert events.appliance("hp-job") == []  # neither attached nor failed
                info = row(conn, dev)
                assert info is not None and not info.attached
                assert not snapshot.done()
            finally:
                qemu_img.release()
            assert snapshot.result(timeout=120) == "s1"
        serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvdb\b", start=mark, timeout=ATTACH_TIMEOUT)
        attached = events.wait("hp-job", "hotplug-attached", timeout=10)[0]
        assert attached.text == f"{dev} as vdb"
        assert [r.kind for r in events.appliance("hp-job")] == ["snapshot-created",
                                                                "hotplug-attached"]
    finally:
        qemu_img.release()
        ctl.unbind(dev)
        dom.destroy()
