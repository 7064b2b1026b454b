"""udev hotplug: two host drives the rules give to one guest CD-ROM.

A CD-ROM has one medium: the second drive is refused (``hotplug-failed`` naming the
drive that holds it) and goes in once the first one's medium is gone. Real daemon, real
loop devices and uevents, the TCG test guest, as in test_hotplug.py.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
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

ROLES = ("first", "second")
CDROM = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
         "<target dev='hdc' bus='ide'/><readonly/></disk>")


@pytest.fixture(scope="module")
def loops() -> Iterator[dict[str, str]]:
    yield from loop_devices(ROLES)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, loops: dict[str, str]
          ) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-hotplug-cdrom")
    rules = root / "hotplug.toml"
    rules.write_text(rule("cd1", loops["first"], "hc-cd", 'target = "cdrom:hdc"\n') +
                     rule("cd2", loops["second"], "hc-cd", 'target = "cdrom:hdc"\n'))
    daemon = DaemonProcess(root, {"appliance": {"hotplug_rules": str(rules)}})
    with serving(daemon):
        yield daemon


def recorded(daemon: DaemonProcess) -> list[tuple[str, str]]:
    """hotplug.json: (device, target) of what the rules attached."""
    entries = json.loads((daemon.run_dir / "hotplug.json").read_text())
    return sorted((e["device"], e["target"]) for e in entries)


def listed(conn: client.Connection, dev: str) -> tuple[str, str, bool]:
    info = row(conn, dev)
    assert info is not None, dev
    return info.rule, info.target, info.attached


def test_two_drives_for_one_cdrom(conn: client.Connection, events: EventLog, test_guest,
                                  qemud: DaemonProcess, loops: dict[str, str],
                                  tmp_path: Path) -> None:
    first, second = loops["first"], loops["second"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hc-cd", test_guest, tmp_path / "serial.sock", extra=CDROM)
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*sr0:0\b")
    mark = serial.mark()
    ctl.bind(first, image(tmp_path / "first.iso", 4, b"\1"))
    serial.wait_for(r"sr0:8192\b", start=mark, timeout=ATTACH_TIMEOUT)  # 4 MiB
    assert events.wait("hc-cd", "hotplug-attached", timeout=10)[0].text == f"{first} as hdc"

    # a second drive for the same CD-ROM: refused, naming the drive that holds it
    mark = serial.mark()
    ctl.bind(second, image(tmp_path / "second.iso", 6, b"\2"))
    failed = events.wait("hc-cd", "hotplug-failed", timeout=ATTACH_TIMEOUT)[0]
    assert failed.text == (f"attach {second} as hdc: CD-ROM hdc holds the medium of {first}, "
                           "another drive of the rules: a CD-ROM takes one drive at a time "
                           "(this one goes in when it is emptied)")
    events.drain(3.0)
    assert [r.kind for r in events.appliance("hc-cd")] == ["hotplug-attached",
                                                           "hotplug-failed"]
    assert "sr0:12288" not in serial.text[mark:]  # the first drive's medium stays
    assert f"<source dev='{first}'" in dom.xml() and second not in dom.xml()
    assert listed(conn, first) == ("cd1", "hdc", True)
    assert listed(conn, second) == ("cd2", "", False)
    assert recorded(qemud) == [(first, "hdc")]

    # the first drive goes: ejected, and the second one's medium goes in
    mark = serial.mark()
    ctl.unbind(first)
    serial.wait_for(r"sr0:12288\b", start=mark, timeout=DETACH_TIMEOUT + ATTACH_TIMEOUT)
    assert events.wait("hc-cd", "hotplug-detached", timeout=10)[0].text == f"{first} as hdc"
    assert events.wait("hc-cd", "hotplug-attached", count=2, timeout=10)[1].text == \
        f"{second} as hdc"
    assert f"<source dev='{second}'" in dom.xml() and first not in dom.xml()
    assert listed(conn, second) == ("cd2", "hdc", True)
    assert recorded(qemud) == [(second, "hdc")]
    wait_for(lambda: not ctl.bound(first), timeout=10, message=f"{first} unbound")

    # and then that one goes: the CD-ROM is empty, nothing of the rules' left in it
    mark = serial.mark()
    ctl.unbind(second)
    serial.wait_for(r"sr0:0\b", start=mark, timeout=DETACH_TIMEOUT)
    assert events.wait("hc-cd", "hotplug-detached", count=2, timeout=20)[1].text == \
        f"{second} as hdc"
    assert recorded(qemud) == []
    assert len(events.appliance("hc-cd", "hotplug-failed")) == 1
    dom.managed_save()  # not refused
    dom.managed_save_remove()


def test_an_admins_eject_stands(conn: client.Connection, events: EventLog, test_guest,
                                qemud: DaemonProcess, loops: dict[str, str],
                                tmp_path: Path) -> None:
    """Two drives for one CD-ROM, the first's medium in it: an admin ejects it
    (change-media). The duty forgets the first drive, puts neither in again behind the
    admin's back, and a save, which looks at what the rules hold first, is not refused
    (as busy with a media change it would have started itself)."""
    first, second = loops["first"], loops["second"]
    ctl = loopctl(loops)
    dom, serial = boot(conn, "hc-eject", test_guest, tmp_path / "serial.sock", extra=CDROM)
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*sr0:0\b")
    try:
        # (the module's rules give both drives to hc-cd: this guest's come from a reload)
        rules = qemud.config["appliance"]["hotplug_rules"]
        original = Path(rules).read_text()
        Path(rules).write_text(original.replace('"hc-cd"', '"hc-eject"'))
        qemud.signal(signal.SIGHUP)
        mark = serial.mark()
        ctl.bind(first, image(tmp_path / "first.iso", 4, b"\1"))
        serial.wait_for(r"sr0:8192\b", start=mark, timeout=ATTACH_TIMEOUT)
        ctl.bind(second, image(tmp_path / "second.iso", 6, b"\2"))
        events.wait("hc-eject", "hotplug-failed", timeout=ATTACH_TIMEOUT)

        mark = serial.mark()
        dom.change_media("hdc", None)  # the admin's eject
        serial.wait_for(r"sr0:0\b", start=mark, timeout=DETACH_TIMEOUT)
        # a uevent of the first drive before anything noticed the eject (a synthetic
        # change: `udevadm trigger`): the eject is followed up first, not undone
        seen = qemud.log_text().count(f"hotplug: change {first} ")
        Path(f"/sys/class/block/{Path(first).name}/uevent").write_text("change")
        wait_for(lambda: qemud.log_text().count(f"hotplug: change {first} ") > seen,
                 timeout=10, message="the synthetic change uevent")
        events.drain(3.0)
        assert first not in dom.xml()
        dom.managed_save()  # not refused: nothing of the rules' in it, no job started
        assert not dom.is_active()
        events.drain(3.0)
        kinds = [r.kind for r in events.appliance("hc-eject")]
        assert kinds == ["hotplug-attached", "hotplug-failed", "hotplug-detached"], kinds
        assert recorded(qemud) == []
        dom.managed_save_remove()
    finally:
        Path(rules).write_text(original)
        qemud.signal(signal.SIGHUP)
        ctl.unbind(first)
        ctl.unbind(second)
        if dom.is_active():
            dom.destroy()

