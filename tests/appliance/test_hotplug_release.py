"""udev hotplug: disks that leave their guest without the duty's own detach.

An admin's ``detach-disk``, or the late release of a detach that timed out (the driver
still closes the disk then): the duty forgets the device (``hotplug.json``, the save
check, ``hotplug-list``), says ``hotplug-detached``, and the rules in force decide what
happens next. Real daemon, real loop devices and uevents, the TCG test guest, as in
test_hotplug.py.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import Domain
from tests.helpers.daemon import DaemonProcess, serving, wait_for

from .conftest import EventLog
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

ROLES = ("admin", "late", "gone", "empty")
NO_DISK = r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n"
#: the driver's unplug timeout (its default) plus the auto-clear poll and some slack
UNPLUG_FAILS = 40.0


@pytest.fixture(scope="module")
def loops() -> Iterator[dict[str, str]]:
    yield from loop_devices(ROLES)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory, loops: dict[str, str]) -> Path:
    path = tmp_path_factory.mktemp("rules") / "hotplug.toml"
    path.write_text(rule("admin-a", loops["admin"], "hr-a") +
                    rule("late", loops["late"], "hr-late"))
    return path


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, rules_file: Path,
          loops: dict[str, str]) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-hotplug-release"),
                           {"appliance": {"hotplug_rules": str(rules_file)}})
    with serving(daemon):
        yield daemon


def state(daemon: DaemonProcess) -> list[tuple[str, str, str]]:
    """hotplug.json: (device, domain uuid, target) of what the rules attached."""
    entries = json.loads((daemon.run_dir / "hotplug.json").read_text())
    return sorted((e["device"], e["uuid"], e["target"]) for e in entries)


def disk_xml(dev: str, target: str) -> str:
    return (f"<disk type='block' device='disk'><source dev='{dev}'/>"
            f"<target dev='{target}' bus='virtio'/></disk>")


def managed_save_works(dom: Domain) -> None:
    """A managed save is no longer refused; the guest is then started from it again."""
    dom.managed_save()
    assert not dom.is_active()
    dom.create()


def test_an_admins_detach_is_followed(conn: client.Connection, events: EventLog, test_guest,
                                      qemud: DaemonProcess, rules_file: Path,
                                      loops: dict[str, str], tmp_path: Path) -> None:
    dev = loops["admin"]
    ctl = loopctl(loops)
    a, serial_a = boot(conn, "hr-a", test_guest, tmp_path / "a.sock")
    b, serial_b = boot(conn, "hr-b", test_guest, tmp_path / "b.sock")
    mark = serial_a.mark()
    ctl.bind(dev, image(tmp_path / "disk.img", 8))
    serial_a.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
    assert events.wait("hr-a", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"

    # the rules now give it to hr-b: it stays with hr-a (retired)
    rules_file.write_text(rule("admin-b", dev, "hr-b") +
                          rule("late", loops["late"], "hr-late"))
    qemud.signal(signal.SIGHUP)
    wait_for(lambda: f"hotplug: {dev} is attached to hr-a under rule admin-a, which no "
             "longer gives it there" in qemud.log_text(), timeout=10, message="retired")

    # an admin detaches it from hr-a: forgotten there, and the rules in force send it on
    mark_a, mark_b = serial_a.mark(), serial_b.mark()
    a.detach_device(disk_xml(dev, "vda"), client.AFFECT_LIVE)
    serial_a.wait_for(NO_DISK, start=mark_a, timeout=DETACH_TIMEOUT)
    assert events.wait("hr-a", "hotplug-detached", timeout=20)[0].text == f"{dev} as vda"
    serial_b.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark_b, timeout=ATTACH_TIMEOUT)
    assert events.wait("hr-b", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"
    assert dev not in a.xml() and f"<source dev='{dev}'" in b.xml()
    info = row(conn, dev)
    assert info is not None
    assert (info.rule, info.domain, info.target, info.attached) == ("admin-b", "hr-b", "vda",
                                                                    True)
    assert state(qemud) == [(dev, b.uuid, "vda")]
    audit = qemud.audit_file.read_text()
    assert (f"appliance hotplug domain='hr-a' uuid={a.uuid} rule='admin-a' device={dev} "
            "target=vda action=detach result=ok") in audit
    managed_save_works(a)  # nothing of the rules' left in hr-a

    # detached by an admin from the guest the rules give it to: it is not attached
    # again behind the admin's back, only at its next uevent
    mark = serial_b.mark()
    b.detach_device(disk_xml(dev, "vda"), client.AFFECT_LIVE)
    serial_b.wait_for(NO_DISK, start=mark, timeout=DETACH_TIMEOUT)
    assert events.wait("hr-b", "hotplug-detached", timeout=20)[0].text == f"{dev} as vda"
    events.drain(3.0)
    assert [r.kind for r in events.appliance("hr-b")] == ["hotplug-attached",
                                                          "hotplug-detached"]
    assert dev not in b.xml()
    info = row(conn, dev)
    assert info is not None and (info.rule, info.domain, info.attached) == ("admin-b",
                                                                            "hr-b", False)
    assert state(qemud) == []
    # a synthetic change uevent (what udevd's inotify watch writes when QEMU closes the
    # node) changes nothing: the admin's detach stands
    seen = qemud.log_text().count(f"hotplug: change {dev} ")
    Path(f"/sys/class/block/{os.path.basename(dev)}/uevent").write_text("change")
    wait_for(lambda: qemud.log_text().count(f"hotplug: change {dev} ") > seen, timeout=10,
             message="the synthetic change uevent")
    events.drain(3.0)
    assert [r.kind for r in events.appliance("hr-b")] == ["hotplug-attached",
                                                          "hotplug-detached"]
    assert dev not in b.xml()
    # its next real uevent (`losetup -c`) matches it again
    mark = serial_b.mark()
    ctl.refresh(dev)
    serial_b.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
    assert events.wait("hr-b", "hotplug-attached", count=2, timeout=10)[1].text == \
        f"{dev} as vda"
    assert state(qemud) == [(dev, b.uuid, "vda")]

    mark = serial_b.mark()
    ctl.unbind(dev)
    serial_b.wait_for(NO_DISK, start=mark, timeout=DETACH_TIMEOUT)
    events.wait("hr-b", "hotplug-detached", count=2, timeout=20)
    assert events.appliance("hr-a", "hotplug-failed") == []
    assert events.appliance("hr-b", "hotplug-failed") == []
    a.destroy()
    b.destroy()


def test_a_late_release_after_the_detach_timed_out(
        conn: client.Connection, events: EventLog, test_guest, qemud: DaemonProcess,
        loops: dict[str, str], tmp_path: Path) -> None:
    """The guest releases the disk after the detach timed out: the driver still closes
    it then, and the duty follows: no second (false) failure, the device forgotten."""
    dev = loops["late"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hr-late", test_guest, tmp_path / "serial.sock")
    mark = serial.mark()
    ctl.bind(dev, image(tmp_path / "disk.img", 8))
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
    events.wait("hr-late", "hotplug-attached", timeout=10)

    # a paused guest cannot release it: the detach times out (the unplug stays asked)
    dom.suspend()
    ctl.unbind(dev)  # auto-clear only: QEMU holds it
    failed = events.wait("hr-late", "hotplug-failed", timeout=UNPLUG_FAILS)[0]
    assert failed.text.startswith(f"detach {dev} as vda: ") and \
        "did not release disk vda" in failed.text
    assert dev in dom.xml()
    # a uevent meanwhile (the backing file grows): no second detach is asked
    os.truncate(tmp_path / "disk.img", 12 << 20)
    ctl.refresh(dev)
    wait_for(lambda: f"hotplug: change {dev} (rule late, 24576 sectors)" in qemud.log_text(),
             timeout=10, message="the uevent handled")
    events.drain(2.0)
    assert len(events.appliance("hr-late", "hotplug-failed")) == 1
    assert f"hotplug: {dev} as vda of hr-late is being unplugged already" in qemud.log_text()

    mark = serial.mark()
    dom.resume()
    serial.wait_for(NO_DISK, start=mark, timeout=DETACH_TIMEOUT)
    assert events.wait("hr-late", "hotplug-detached", timeout=20)[0].text == f"{dev} as vda"
    wait_for(lambda: dev not in dom.xml(), timeout=10, message="gone from the live XML")
    wait_for(lambda: not ctl.bound(dev), timeout=20, message=f"{dev} unbound")
    events.drain(3.0)  # (the size-0 uevent of the finished `losetup -d` came meanwhile)
    assert [r.kind for r in events.appliance("hr-late")] == [
        "hotplug-attached", "hotplug-failed", "hotplug-detached"]
    assert qemud.log_text().count(f"hotplug: cannot detach {dev}") == 1
    assert row(conn, dev) is None
    assert state(qemud) == []
    managed_save_works(dom)
    dom.destroy()


@pytest.mark.parametrize(("name", "rules_then"), [
    ("hr-gone", rule("elsewhere", "/dev/qemud-test-no-such-device", "hr-nobody")),
    ("hr-gone-norules", "# no rules at all\n"),
], ids=["other-rules", "no-rules"])
def test_gone_while_the_daemon_was_down_and_the_rules_changed(
        conn: client.Connection, test_guest, qemud: DaemonProcess, rules_file: Path,
        loops: dict[str, str], tmp_path: Path, name: str, rules_then: str) -> None:
    """Devices the last daemon attached (hotplug.json) that went while no daemon ran are
    detached at its start, also when the rules no longer name their guest, or are
    none at all."""
    gone, empty = loops["gone"], loops["empty"]
    ctl = loopctl(loops)
    try:
        rules_file.write_text(rule("gone", gone, name) + rule("empty", empty, name))
        seen = qemud.log_text().count("SIGHUP: hotplug rules reloaded")
        qemud.signal(signal.SIGHUP)
        wait_for(lambda: qemud.log_text().count("SIGHUP: hotplug rules reloaded") > seen,
                 timeout=10, message="rules reloaded")
        dom, serial = boot(conn, name, test_guest, tmp_path / "serial.sock")
        mark = serial.mark()
        ctl.bind(gone, image(tmp_path / "gone.img", 8))
        serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
        mark = serial.mark()
        ctl.bind(empty, image(tmp_path / "empty.img", 4))
        serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvdb\b", start=mark, timeout=ATTACH_TIMEOUT)
        assert state(qemud) == [(gone, dom.uuid, "vda"), (empty, dom.uuid, "vdb")]

        # the daemon dies; meanwhile one device is detached on the host, the other loses
        # its medium (size 0), and the rules are edited to no longer name the guest
        conn.close()
        qemud.kill()
        ctl.unbind(gone)  # (auto-clear only: QEMU holds it)
        os.truncate(tmp_path / "empty.img", 0)
        ctl.refresh(empty)
        rules_file.write_text(rules_then)
        mark = serial.mark()
        qemud.start()
        serial.wait_for(NO_DISK, start=mark, timeout=DETACH_TIMEOUT)
        for dev, target in ((gone, "vda"), (empty, "vdb")):
            wait_for(lambda d=dev, t=target: f"hotplug-detached: {d} as {t}" in qemud.log_text(),
                     timeout=20, message=f"hotplug-detached of {dev}")
        wait_for(lambda: not ctl.bound(gone), timeout=10, message=f"{gone} unbound")
        assert state(qemud) == []
        with qemud.connect() as again:
            dom = again.lookup_by_name(name)
            assert gone not in dom.xml() and empty not in dom.xml()
            assert row(again, gone) is None and row(again, empty) is None
            managed_save_works(dom)
            dom.destroy()
    finally:  # (a failure here must not leave them bound for the next run)
        for dev in (gone, empty):
            if ctl.bound(dev):
                ctl.unbind(dev)
