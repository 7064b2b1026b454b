"""SIGHUP reloads the udev hotplug rules: real loop devices, kernel uevents, a TCG guest.

Loop devices, images and guests as in test_hotplug.py; this module's daemon starts with a
rules file that matches nothing, and the tests rewrite it and send SIGHUP.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from tests.conftest import DaemonFactory
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

ROLES = ("reload", "other", "late")
NOTHING = """
[[rule]]
name = "nothing"
match = { DEVNAME = "/dev/qemud-test-no-such-device" }
domain = "hp-reload"
"""


@pytest.fixture(scope="module")
def loops() -> Iterator[dict[str, str]]:
    yield from loop_devices(ROLES)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "hotplug.toml"
    path.write_text(NOTHING)
    return path


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, rules_file: Path,
          loops: dict[str, str]) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-hotplug-reload"),
                           {"appliance": {"hotplug_rules": str(rules_file)}})
    with serving(daemon):
        yield daemon


def reload(daemon: DaemonProcess, expect: str) -> None:
    """SIGHUP, then wait for the (n+1)th log line containing ``expect``."""
    seen = daemon.log_text().count(expect)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log_text().count(expect) > seen, timeout=10,
             message=f"{expect!r} logged")


def test_sighup_reloads_the_rules(conn: client.Connection, events: EventLog, test_guest,
                                  qemud: DaemonProcess, rules_file: Path,
                                  loops: dict[str, str], tmp_path: Path) -> None:
    dev, other = loops["reload"], loops["other"]
    ctl = loopctl(loops)
    ctl.bind(dev, image(tmp_path / "disk.img", 8))
    dom, serial = boot(conn, "hp-reload", test_guest, tmp_path / "serial.sock")
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n")
    assert row(conn, dev) is None  # present, with a medium, but no rule matches it

    # a rule for it appears: it is attached at once, as at start-up
    mark = serial.mark()
    rules_file.write_text(NOTHING + rule("disk", dev, "hp-reload"))
    reload(qemud, f"SIGHUP: hotplug rules reloaded from {rules_file}: 2 rule(s)")
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*\bvda\b", start=mark, timeout=ATTACH_TIMEOUT)
    assert events.wait("hp-reload", "hotplug-attached", timeout=10)[0].text == f"{dev} as vda"
    info = row(conn, dev)
    assert info is not None and (info.rule, info.target, info.attached) == ("disk", "vda", True)

    # a bad file changes nothing: not even its good rules apply; the error names the key
    ctl.bind(other, image(tmp_path / "other.img", 4))
    rules_file.write_text(rule("disk", dev, "hp-reload") + rule("other", other, "hp-reload") +
                          rule("broken", "/dev/sr9", "hp-reload", 'target = "floppy"\n'))
    reload(qemud, "SIGHUP: hotplug rules not reloaded (the 2 rule(s) in force are kept)")
    assert (f"hotplug rules {rules_file}: rule #3 ('broken'): key 'target' must be "
            "'virtio-disk' or 'cdrom:<CD-ROM target dev>' such as 'cdrom:hdc', got 'floppy'"
            ) in qemud.log_text()
    rules_file.write_text("[[rule]\n")  # not TOML at all
    reload(qemud, "SIGHUP: hotplug rules not reloaded")
    assert re.search(rf"hotplug rules {re.escape(str(rules_file))}: .*line 1",
                     qemud.log_text())
    events.drain(2.0)
    assert [r.kind for r in events.appliance("hp-reload")] == ["hotplug-attached"]
    assert row(conn, other) is None
    info = row(conn, dev)
    assert info is not None and (info.rule, info.target, info.attached) == ("disk", "vda", True)
    assert qemud.proc.poll() is None

    # the rules now give it to another guest: it stays with the running one until released
    rules_file.write_text(NOTHING + rule("elsewhere", dev, "hp-elsewhere"))
    reload(qemud, f"SIGHUP: hotplug rules reloaded from {rules_file}: 2 rule(s)")
    wait_for(lambda: f"hotplug: {dev} is attached to hp-reload under rule disk, which no "
             "longer gives it there: it stays until it is released" in qemud.log_text(),
             timeout=10, message="kept attachment logged")
    events.drain(2.0)
    assert [r.kind for r in events.appliance("hp-reload")] == ["hotplug-attached"]
    info = row(conn, dev)
    assert info is not None and (info.rule, info.target, info.attached) == ("disk", "vda", True)
    assert dev in dom.xml()

    # released on the host: detached; from then on the rules in force say where it goes
    mark = serial.mark()
    ctl.unbind(dev)
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n", start=mark, timeout=DETACH_TIMEOUT)
    assert events.wait("hp-reload", "hotplug-detached", timeout=20)[0].text == \
        f"{dev} as vda"
    wait_for(lambda: not ctl.bound(dev), timeout=10, message=f"{dev} unbound")
    ctl.bind(dev, image(tmp_path / "again.img", 4))
    info = wait_for(lambda: (r := row(conn, dev)) is not None and r.rule == "elsewhere" and r,
                    timeout=10, message="device listed under its new rule")
    assert (info.domain, info.attached) == ("hp-elsewhere", False)
    events.drain(2.0)
    assert dev not in dom.xml()
    assert [r.kind for r in events.appliance("hp-reload")] == ["hotplug-attached",
                                                               "hotplug-detached"]
    ctl.unbind(dev)
    ctl.unbind(other)
    dom.destroy()


def test_sighup_starts_hotplug_without_rules_at_start(daemon_factory: DaemonFactory,
                                                      loops: dict[str, str],
                                                      tmp_path: Path) -> None:
    dev = loops["late"]
    ctl = loopctl(loops)
    daemon = daemon_factory()  # <config_dir>/hotplug.toml does not exist: not listening
    assert "hotplug: no rules" in daemon.log_text()
    (daemon.config_dir / "hotplug.toml").write_text(rule("late", dev, "hp-nobody"))
    reload(daemon, "hotplug: 1 rule(s), ")
    # the device matches already (tracked with size 0: it has no medium yet)
    assert re.search(r"hotplug: 1 rule\(s\), (udev|kernel) uevents, 1 matching device",
                     daemon.log_text())
    with daemon.connect() as conn:
        # uevents now reach the daemon: the device is listed once it has a medium
        ctl.bind(dev, image(tmp_path / "late.img", 4))
        info = wait_for(lambda: row(conn, dev), timeout=10, message="device listed")
        assert (info.rule, info.domain, info.attached) == ("late", "hp-nobody", False)
        ctl.unbind(dev)
        wait_for(lambda: row(conn, dev) is None, timeout=10, message="device unlisted")
