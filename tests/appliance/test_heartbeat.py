"""Heartbeat watchdog against a real daemon and the real test guest (TCG)."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client import appliance
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, serving, wait_for
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

from .conftest import BOOT_TIMEOUT, EventLog, wait_state

pytestmark = pytest.mark.integration

NS = "http://qemud.org/xmlns/appliance/1"


def heartbeat_metadata(action: str = "restart", hook: str = "", grace: int = 60,
                       interval: int = 1) -> str:
    hook_attr = f" hook='{hook}'" if hook else ""
    return (f"<metadata><qemud:appliance xmlns:qemud='{NS}'><qemud:heartbeat "
            f"interval='{interval}' misses='2' action='{action}' grace='{grace}'{hook_attr}/>"
            "</qemud:appliance></metadata>")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-hb")
    daemon = DaemonProcess(root, {"appliance": {"restart_budget": 1,
                                                "restart_window": 600.0}})
    with serving(daemon):
        yield daemon




def qemu_pid(qemud: DaemonProcess, name: str) -> int:
    return int((qemud.guest_run_dir(name) / "qemu.pid").read_text())


def written_qemu_pid(qemud: DaemonProcess, name: str) -> int | None:
    """The pid in ``name``'s pid file once QEMU wrote it, else None: QEMU creates the
    file, then writes it (a read in between sees it empty)."""
    try:
        return int((qemud.guest_run_dir(name) / "qemu.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_silent_guest_restarted_healthy_one_left_alone(conn: client.Connection,
                                                      events: EventLog, test_guest,
                                                      qemud: DaemonProcess,
                                                      tmp_path: Path) -> None:
    sick_sock, healthy_sock = tmp_path / "sick.sock", tmp_path / "healthy.sock"
    sick = conn.define_xml(guest_xml(
        "hb-sick", test_guest, sick_sock, metadata=heartbeat_metadata(),
        cmdline="console=ttyS0 quiet qemud.heartbeat_stop_after=3"))
    # The test guest beats every second. The healthy one is watched with a 2 s interval
    # (1 s of slack): a TCG guest starved for half a second while the sick one reboots
    # beside it is still healthy, and a watchdog that ignored its beats after the first
    # would still report it within the 3 s it then allows, long before this test ends.
    healthy = conn.define_xml(guest_xml("hb-healthy", test_guest, healthy_sock,
                                        metadata=heartbeat_metadata(interval=2)))
    sick.create()
    healthy.create()
    # the channel is added to the live definition only
    assert "org.qemud.heartbeat.0" in sick.xml()
    assert "org.qemud.heartbeat.0" not in sick.xml(client.XML_INACTIVE)
    sick_serial, healthy_serial = SerialPort(sick_sock), SerialPort(healthy_sock)
    sick_serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    healthy_serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    first_pid, healthy_pid = qemu_pid(qemud, "hb-sick"), qemu_pid(qemud, "hb-healthy")
    wait_for(lambda: appliance.heartbeat_stats(conn, sick).get("heartbeat.count", 0) >= 1,
             timeout=30, message="first heartbeat of hb-sick")

    # three heartbeats, then silence: two misses (~2.5 s) -> destroyed and started again
    missed = events.wait("hb-sick", "heartbeat-missed", count=2, timeout=30)
    assert missed[0].text.startswith("1 of 2 heartbeats missed")
    assert missed[1].text.startswith("2 of 2 heartbeats missed")
    action = events.wait("hb-sick", "heartbeat-action")[0]
    assert action.text.startswith("restart: 2 heartbeats missed")
    wait_for(lambda: written_qemu_pid(qemud, "hb-sick") not in (None, first_pid), timeout=30,
             message="new QEMU")
    sick_serial.close()
    sick_serial = SerialPort(sick_sock, timeout=30)
    sick_serial.wait_for(READY, timeout=BOOT_TIMEOUT)  # the second boot's ready marker
    assert sick.state()[0] == DomainState.RUNNING

    # over the same time the healthy guest was never restarted nor reported
    assert qemu_pid(qemud, "hb-healthy") == healthy_pid
    # only the informational first-beat event: no miss, no action
    assert [r.kind for r in events.appliance("hb-healthy")] == ["heartbeat-seen"]
    stats = appliance.heartbeat_stats(conn, healthy)
    assert stats["heartbeat.count"] >= 5
    assert stats["heartbeat.missed"] == 0
    assert stats["heartbeat.connected"] == 1
    # last_seconds_ago counts from the latest beat: one that came after `asked` was
    # sent is at most the time since then old (timed by order, not by a fixed bound)
    asked = time.monotonic()
    seen = appliance.heartbeat_stats(conn, healthy)["heartbeat.count"]
    wait_for(lambda: appliance.heartbeat_stats(conn, healthy)["heartbeat.count"] > seen,
             timeout=30, message="another heartbeat of hb-healthy")
    ago = float(appliance.heartbeat_stats(conn, healthy)["heartbeat.last_seconds_ago"])
    assert 0 <= ago <= time.monotonic() - asked + 0.001, ago  # (rounded to ms)
    assert "appliance heartbeat domain='hb-sick'" in qemud.audit_file.read_text()
    sick.destroy()
    healthy.destroy()
    sick_serial.close()
    healthy_serial.close()


def test_hook_action_and_resume(conn: client.Connection, events: EventLog, test_guest,
                                qemud: DaemonProcess, tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$QEMUD_EVENT $QEMUD_DOMAIN $QEMUD_MISSED" >> {out}\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    sock = tmp_path / "serial.sock"
    dom = conn.define_xml(guest_xml("hb-hook", test_guest, sock,
                                    metadata=heartbeat_metadata("hook", str(hook))))
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    pid = qemu_pid(qemud, "hb-hook")
    wait_for(lambda: appliance.heartbeat_stats(conn, dom).get("heartbeat.count", 0) >= 2,
             timeout=30, message="heartbeats of hb-hook")
    serial.send("stop-heartbeat")
    serial.wait_for("QEMUD-HEARTBEAT-STOPPED")
    assert events.wait("hb-hook", "heartbeat-action", timeout=30)[0].text.startswith("hook:")
    wait_for(lambda: out.exists() and "heartbeat-missed hb-hook 2" in out.read_text(),
             timeout=10, message="heartbeat hook ran")
    assert appliance.heartbeat_stats(conn, dom)["heartbeat.missed"] >= 2
    serial.send("start-heartbeat")
    resumed = events.wait("hb-hook", "heartbeat-resumed", timeout=30)[0]
    assert "missed" in resumed.text
    wait_state(dom, DomainState.RUNNING)
    assert qemu_pid(qemud, "hb-hook") == pid  # a hook does not restart the guest
    assert out.read_text().count("heartbeat-missed") == 1  # once per outage
    dom.destroy()
    serial.close()
