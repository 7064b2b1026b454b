"""Power-cycle following against a real daemon and the real test guest (TCG).

One daemon serves the module, with restart_budget=1 (per guest) and harmless scripts as
the host shutdown/reboot commands; every test uses its own guest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import Domain
from protocol.constants import DomainState, ShutoffReason
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, serving, stop_destroying_guests, wait_for
from tests.helpers.procs import wait_pidfd
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

from .conftest import BOOT_TIMEOUT, EventLog, wait_state

pytestmark = pytest.mark.integration

NS = "http://qemud.org/xmlns/appliance/1"


def power_metadata(shutdown: str = "default", reboot: str = "default", hook: str = "") -> str:
    hook_attr = f" hook='{hook}'" if hook else ""
    return (f"<metadata><qemud:appliance xmlns:qemud='{NS}'><qemud:power "
            f"guest-shutdown='{shutdown}' guest-reboot='{reboot}'{hook_attr}/>"
            "</qemud:appliance></metadata>")


def script(path: Path, out: Path) -> Path:
    """An executable that appends its arguments and QEMUD_* variables to ``out``."""
    path.write_text("#!/bin/sh\n"
                    f'echo "$* event=$QEMUD_EVENT domain=$QEMUD_DOMAIN uuid=$QEMUD_UUID '
                    f'action=$QEMUD_ACTION" >> {out}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("power-scripts")
    out = root / "host-commands.log"
    return {"dir": root, "host_out": out,
            "host": script(root / "host-command", out)}


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, scripts: dict[str, Path]
          ) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-power")
    daemon = DaemonProcess(root, {"appliance": {
        "restart_budget": 1, "restart_window": 600.0,
        "shutdown_host_command": [str(scripts["host"]), "shutdown-host"],
        "reboot_host_command": [str(scripts["host"]), "reboot-host"]}})
    with serving(daemon):
        yield daemon




def boot(conn: client.Connection, name: str, guest: object, sock: Path,
         metadata: str) -> tuple[Domain, SerialPort]:
    dom = conn.define_xml(guest_xml(name, guest, sock, metadata=metadata))
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    return dom, serial


def qemu_pid(qemud: DaemonProcess, name: str) -> int:
    return int((qemud.guest_run_dir(name) / "qemu.pid").read_text())


def test_restart_after_poweroff_then_budget_exhausted(conn: client.Connection,
                                                      events: EventLog, test_guest,
                                                      qemud: DaemonProcess,
                                                      tmp_path: Path) -> None:
    sock = tmp_path / "serial.sock"
    dom, serial = boot(conn, "pw-restart", test_guest, sock, power_metadata(shutdown="restart"))
    first_pid = qemu_pid(qemud, "pw-restart")
    first_qemu = os.pidfd_open(first_pid)  # that process, whatever its pid is reused for
    serial.send("poweroff")
    serial.wait_for("QEMUD-GUEST-POWEROFF")
    action = events.wait("pw-restart", "power-action")[0]
    assert action.text == "restart after guest shutdown"
    # a new QEMU boots the guest again: the new boot's ready marker
    wait_pidfd(first_qemu, 30, "the first QEMU")
    wait_state(dom, DomainState.RUNNING)
    serial.close()
    serial = SerialPort(sock, timeout=30)
    serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    assert qemu_pid(qemud, "pw-restart") != first_pid
    assert dom.state()[0] == DomainState.RUNNING

    # restart_budget=1: the second power-off in the window leaves it off
    serial.send("poweroff")
    serial.wait_for("QEMUD-GUEST-POWEROFF")
    events.wait("pw-restart", "power-action", count=2)
    budget = events.wait("pw-restart", "restart-budget-exhausted")[0]
    assert "1 automatic restarts" in budget.text
    wait_state(dom, DomainState.SHUTOFF)
    events.drain(1.0)
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    audit = qemud.audit_file.read_text()
    assert "appliance power domain='pw-restart'" in audit
    assert "result=refused (restart budget exhausted" in audit
    serial.close()


def test_reboot_policy_none_leaves_guest_off(conn: client.Connection, events: EventLog,
                                            test_guest, qemud: DaemonProcess,
                                            scripts: dict[str, Path], tmp_path: Path) -> None:
    """Policy guest-reboot=none (QEMU told set-action reboot=shutdown at start): a host
    reboot (qemush reboot) reboots it in place, a guest reboot stops it. Next to it a
    guest with <on_reboot>destroy (-action reboot=shutdown on the command line) and
    guest-shutdown=shutdown-host: a host reboot powers it off, as libvirt's does, and
    that power-off is the admin's, so the policy does not apply; a guest reboot stops it
    (its on_reboot), with no policy either."""
    out = scripts["host_out"]
    before = out.read_text() if out.exists() else ""
    sock, other_sock = tmp_path / "serial.sock", tmp_path / "other.sock"
    dom = conn.define_xml(guest_xml("pw-none", test_guest, sock,
                                    metadata=power_metadata(reboot="none")))
    other = conn.define_xml(guest_xml("pw-destroy", test_guest, other_sock,
                                      on_reboot="destroy",
                                      metadata=power_metadata(shutdown="shutdown-host")))
    dom.create()
    other.create()
    serial, other_serial = SerialPort(sock), SerialPort(other_sock)
    serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    other_serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    pid = qemu_pid(qemud, "pw-none")
    marks = serial.mark(), other_serial.mark()
    dom.reboot()
    other.reboot()
    serial.wait_for(READY, start=marks[0], timeout=BOOT_TIMEOUT)
    other_serial.wait_for("QEMUD-GUEST-POWEROFF", start=marks[1])
    wait_state(other, DomainState.SHUTOFF)
    assert dom.state()[0] == DomainState.RUNNING
    assert other.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert qemu_pid(qemud, "pw-none") == pid
    assert events.appliance("pw-none") == []
    other_serial.close()
    other.create()
    other_serial = SerialPort(other_sock)
    other_serial.wait_for(READY, timeout=BOOT_TIMEOUT)

    serial.send("reboot")
    other_serial.send("reboot")
    serial.wait_for("QEMUD-GUEST-REBOOT")
    action = events.wait("pw-none", "power-action")[0]
    assert action.text.startswith("none after guest reboot")
    wait_state(dom, DomainState.SHUTOFF)
    wait_state(other, DomainState.SHUTOFF)
    events.drain(1.5)  # and it stays off
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert other.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert events.appliance("pw-destroy") == []
    assert "domain=pw-destroy" not in (out.read_text() if out.exists() else "")[len(before):]
    serial.close()
    other_serial.close()


def test_hook_runs_with_event_in_env(conn: client.Connection, events: EventLog, test_guest,
                                     qemud: DaemonProcess, scripts: dict[str, Path],
                                     tmp_path: Path) -> None:
    out = tmp_path / "hook.log"
    hook = script(tmp_path / "hook", out)
    sock = tmp_path / "serial.sock"
    dom, serial = boot(conn, "pw-hook", test_guest, sock,
                       power_metadata(shutdown="hook", reboot="hook", hook=str(hook)))
    pid = qemu_pid(qemud, "pw-hook")

    # guest reboot: the hook runs, the guest reboots in place (on_reboot=restart)
    mark = serial.mark()
    serial.send("reboot")
    serial.wait_for(READY, start=mark, timeout=BOOT_TIMEOUT)
    wait_for(lambda: out.exists() and "guest-reboot" in out.read_text(), timeout=10,
             message="hook ran for the reboot")
    assert f"event=guest-reboot domain=pw-hook uuid={dom.uuid}" in out.read_text()
    assert qemu_pid(qemud, "pw-hook") == pid
    assert dom.state()[0] == DomainState.RUNNING

    # guest power-off: the hook runs, the guest stays off (on_poweroff=destroy)
    serial.send("poweroff")
    wait_for(lambda: "guest-shutdown" in out.read_text(), timeout=30,
             message="hook ran for the power-off")
    assert f"event=guest-shutdown domain=pw-hook uuid={dom.uuid}" in out.read_text()
    wait_state(dom, DomainState.SHUTOFF)
    texts = [r.text for r in events.wait("pw-hook", "power-action", count=2)]
    assert texts[0].startswith("hook after guest reboot")
    assert texts[1].startswith("hook after guest shutdown")
    wait_for(lambda: "exited with 0" in qemud.log_text() and "power hook" in qemud.log_text(),
             timeout=10, message="hook exit logged")
    serial.close()


def test_shutdown_and_reboot_host_commands(conn: client.Connection, events: EventLog,
                                           test_guest, qemud: DaemonProcess,
                                           scripts: dict[str, Path], tmp_path: Path) -> None:
    out = scripts["host_out"]
    socks = {name: tmp_path / f"{name}.sock" for name in ("pw-host-r", "pw-host-s")}
    meta = power_metadata(shutdown="shutdown-host", reboot="reboot-host")
    doms = {name: conn.define_xml(guest_xml(name, test_guest, sock, metadata=meta))
            for name, sock in socks.items()}
    for dom in doms.values():
        dom.create()
    serials = {name: SerialPort(sock) for name, sock in socks.items()}
    for serial in serials.values():
        serial.wait_for(READY, timeout=BOOT_TIMEOUT)

    serials["pw-host-r"].send("reboot")
    wait_for(lambda: out.exists() and "reboot-host event=guest-reboot domain=pw-host-r" in
             out.read_text(), timeout=30, message="reboot_host_command ran")
    assert doms["pw-host-r"].state()[0] == DomainState.SHUTOFF  # the guest was stopped first
    assert events.wait("pw-host-r", "power-action")[0].text == \
        "reboot-host after guest reboot"

    serials["pw-host-s"].send("poweroff")
    wait_for(lambda: "shutdown-host event=guest-shutdown domain=pw-host-s" in out.read_text(),
             timeout=30, message="shutdown_host_command ran")
    assert doms["pw-host-s"].state()[0] == DomainState.SHUTOFF
    assert "action=shutdown-host" in out.read_text()
    assert events.wait("pw-host-s", "power-action")[0].text == \
        "shutdown-host after guest shutdown"
    wait_for(lambda: "action=shutdown-host" in qemud.audit_file.read_text(), timeout=10,
             message="the power action audited")
    for serial in serials.values():
        serial.close()


def test_admin_shutdown_does_not_follow_the_power_policy(conn: client.Connection,
                                                         events: EventLog, test_guest,
                                                         scripts: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """`qemush shutdown` is the admin's decision, not the guest's: a guest whose policy is
    shutdown-host must not take the host down with it."""
    out = scripts["host_out"]
    before = out.read_text() if out.exists() else ""
    dom, serial = boot(conn, "pw-admin", test_guest, tmp_path / "serial.sock",
                       power_metadata(shutdown="shutdown-host"))
    dom.shutdown()
    serial.wait_for("QEMUD-GUEST-POWEROFF")
    wait_state(dom, DomainState.SHUTOFF)
    events.drain(1.0)
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert "domain=pw-admin" not in (out.read_text() if out.exists() else "")[len(before):]
    assert events.appliance("pw-admin", "power-action") == []
    serial.close()


def test_admin_reset_reboots_a_guest_whose_reboots_stop_it(conn: client.Connection,
                                                           events: EventLog, test_guest,
                                                           qemud: DaemonProcess,
                                                           tmp_path: Path) -> None:
    """`qemush reset` of a guest whose policy runs it with set-action reboot=shutdown: the
    duty lets the reset through first (reboot=reset until the firmware's resets are
    over), so the guest boots again in the same QEMU and no policy applies; its own
    reboot afterwards still follows the policy. Before, QEMU turned the reset into a
    shutdown and the guest stayed paused for good."""
    dom, serial = boot(conn, "pw-reset", test_guest, tmp_path / "serial.sock",
                       power_metadata(reboot="none"))
    pid = qemu_pid(qemud, "pw-reset")
    mark = serial.mark()
    dom.reset()
    serial.wait_for(READY, start=mark, timeout=BOOT_TIMEOUT)
    assert dom.state() == (DomainState.RUNNING, 1)  # running (booted)
    assert qemu_pid(qemud, "pw-reset") == pid
    assert events.appliance("pw-reset") == []
    sent = "pw-reset: --> set-action {'reboot': 'shutdown'}"
    wait_for(lambda: qemud.log_text().count(sent) == 2, timeout=10,
             message="reboot=shutdown set again after the reset")
    serial.send("reboot")
    serial.wait_for("QEMUD-GUEST-REBOOT")
    action = events.wait("pw-reset", "power-action")[0]
    assert action.text.startswith("none after guest reboot")
    wait_state(dom, DomainState.SHUTOFF)
    serial.close()


def test_a_daemon_killed_within_a_reset_sets_reboots_to_stop_again(
        daemon_factory: DaemonFactory, test_guest, tmp_path: Path) -> None:
    """Around a reset of its own the daemon runs the guest with reboot=reset for a few
    seconds, in memory only. A daemon killed then, the next one sets reboot=shutdown
    again when it re-attaches: the guest's next reboot stops it before it runs on, and
    its policy applies (none: it stays off). Before, QEMU kept reboot=reset: every
    later reboot was caught only after QEMU had reset the guest (its RESET event)."""
    d = daemon_factory()
    try:
        with d.connect() as conn:
            dom, serial = boot(conn, "pw-settle", test_guest, tmp_path / "serial.sock",
                               power_metadata(reboot="none"))
            mark = serial.mark()
            dom.reset()
            d.kill()  # (within the settling window: QEMU is at reboot=reset)
        serial.wait_for(READY, start=mark, timeout=BOOT_TIMEOUT)
        d.start()
        sent = "pw-settle: --> set-action {'reboot': 'shutdown'}"
        wait_for(lambda: sent in d.log_text(), timeout=30,
                 message="reboot=shutdown set again at re-attach")
        with d.connect() as conn:
            dom = conn.lookup_by_name("pw-settle")
            serial.send("reboot")
            serial.wait_for("QEMUD-GUEST-REBOOT")
            wait_state(dom, DomainState.SHUTOFF)
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
        text = d.log_text()
        assert "domain pw-settle: guest reboot (guest-reset), policy none" in text
        assert "pw-settle: guest reset before set-action applied" not in text
        serial.close()
    finally:
        stop_destroying_guests(d)
