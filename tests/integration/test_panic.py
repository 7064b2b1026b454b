"""``<panic model='isa'/>`` and ``<on_crash>``, with the real test guest panicking.

The guest's serial command ``panic`` crashes its kernel (sysrq ``c``); its pvpanic driver
tells QEMU, whose GUEST_PANICKED the daemon turns into the crashed (panicked) state and
event, then applies ``<on_crash>``. The panic device comes from the definition alone (no
``<qemu:commandline>``): without it QEMU reports no panic and nothing below happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import (
    CrashedDetail,
    CrashedReason,
    DomainState,
    LifecycleEvent,
    PausedReason,
    ResumedDetail,
    RunningReason,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
)
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.helpers.procs import qemu_pids
from tests.integration.domains import READY, guest_xml
from tests.integration.lifecycle import lifecycle_events as events
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

CRASHED = (LifecycleEvent.CRASHED, CrashedDetail.PANICKED)
STARTED = (LifecycleEvent.STARTED, StartedDetail.BOOTED)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-panic"))
    with serving(daemon):
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


def panic_xml(name: str, test_guest: object, sock: Path, on_crash: str,
              panic: str = "<panic model='isa'/>") -> str:
    xml = guest_xml(name, test_guest, sock, extra=panic)
    return xml.replace("<on_crash>destroy</on_crash>", f"<on_crash>{on_crash}</on_crash>")


def boot(conn: client.Connection, dom: client.Domain, sock: Path) -> SerialPort:
    """Start ``dom`` and wait for the test guest's ready marker."""
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    assert events(conn, dom, 1) == [STARTED]
    return serial


def domstate(qemud: DaemonProcess, name: str) -> str:
    proc = qemush(qemud, "domstate", "--reason", name)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("policy", ["destroy", "coredump-destroy"])
def test_on_crash_destroy_stops_the_guest_as_crashed(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path,
        policy: str) -> None:
    name = f"panic-{policy}"
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(panic_xml(name, test_guest, sock, policy))
    assert "<panic model='isa'/>" in dom.xml()
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    serial = boot(conn, dom, sock)
    log_mark = len(qemud.log_text())

    serial.send("panic")
    assert events(conn, dom, 2) == [CRASHED, (LifecycleEvent.STOPPED, StoppedDetail.CRASHED)]
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.CRASHED)
    assert domstate(qemud, name) == "shut off (crashed)"
    assert qemu_pids(name, qemud.run_dir) == []
    assert conn.next_event(1.0) is None  # not started again
    warning = "writes no core dump of the guest's memory; destroying it without one"
    assert (warning in qemud.log_text()[log_mark:]) == (policy == "coredump-destroy")
    serial.close()
    dom.undefine()


@pytest.mark.parametrize("policy", ["restart", "coredump-restart"])
def test_on_crash_restart_boots_the_guest_again(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path,
        policy: str) -> None:
    name = f"panic-{policy}"
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(panic_xml(name, test_guest, sock, policy))
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    serial = boot(conn, dom, sock)
    (first_pid,) = qemu_pids(name, qemud.run_dir)
    log_mark = len(qemud.log_text())
    try:
        serial.send("panic")
        # qemud restarts in a new QEMU (libvirt: a reset in the same one; CONFORMANCE.md)
        assert events(conn, dom, 3) == [
            CRASHED, (LifecycleEvent.STOPPED, StoppedDetail.CRASHED), STARTED]
        serial.close()
        serial = SerialPort(sock)
        serial.wait_for(READY)
        assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
        assert first_pid not in qemu_pids(name, qemud.run_dir)
        warning = "writes no core dump of the guest's memory; restarting it without one"
        assert (warning in qemud.log_text()[log_mark:]) == (policy == "coredump-restart")

        mark = serial.mark()
        serial.send("ping")
        serial.wait_for("QEMUD-PONG", start=mark)  # the new boot has its panic device too
        serial.send("panic")
        assert events(conn, dom, 3) == [
            CRASHED, (LifecycleEvent.STOPPED, StoppedDetail.CRASHED), STARTED]
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_on_crash_preserve_keeps_the_crashed_guest_for_reset_or_destroy(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path) -> None:
    """libvirt's preserve: QEMU stays, the guest stopped in its panic, crashed (panicked)
    as virsh shows it. ``reset`` makes it paused (crashed) (libvirt's qemuDomainReset),
    ``resume`` boots it again in the same QEMU; ``destroy`` ends a crashed one."""
    name = "panic-preserve"
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(panic_xml(name, test_guest, sock, "preserve"))
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    serial = boot(conn, dom, sock)
    pids = qemu_pids(name, qemud.run_dir)
    try:
        serial.send("panic")
        assert events(conn, dom, 1) == [CRASHED]
        assert conn.next_event(1.0) is None  # no STOPPED: kept as it is
        assert dom.state() == (DomainState.CRASHED, CrashedReason.PANICKED)
        assert domstate(qemud, name) == "crashed (panicked)"
        assert qemu_pids(name, qemud.run_dir) == pids
        assert dom.is_active()
        # qemud refuses at once (libvirt sends QEMU a `cont`, which QEMU refuses)
        with pytest.raises(client.OperationInvalid, match="is not paused"):
            dom.resume()

        mark = serial.mark()
        proc = qemush(qemud, "reset", name)
        assert proc.returncode == 0, proc.stderr
        assert dom.state() == (DomainState.PAUSED, PausedReason.CRASHED)
        assert domstate(qemud, name) == "paused (crashed)"
        dom.resume()
        assert events(conn, dom, 1) == [(LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED)]
        serial.wait_for(READY, start=mark)  # booted again, in the same QEMU
        assert dom.state() == (DomainState.RUNNING, RunningReason.UNPAUSED)
        assert qemu_pids(name, qemud.run_dir) == pids

        serial.send("panic")
        assert events(conn, dom, 1) == [CRASHED]
        assert dom.state() == (DomainState.CRASHED, CrashedReason.PANICKED)
        dom.destroy()
        assert events(conn, dom, 1) == [(LifecycleEvent.STOPPED, StoppedDetail.DESTROYED)]
        assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
        assert qemu_pids(name, qemud.run_dir) == []
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_a_preserved_crash_is_still_one_after_a_daemon_restart(
        qemud: DaemonProcess, test_guest, tmp_path: Path) -> None:
    """The crashed (panicked) state is in the status record, and QEMU's own status says
    so too: a daemon killed after the panic and restarted shows it as before, not as
    the pause QEMU's STOP left in the record."""
    name = "panic-restart"
    sock = tmp_path / "s.sock"
    with qemud.connect() as conn:
        dom = conn.define_xml(panic_xml(name, test_guest, sock, "preserve"))
        conn.register_event(client.EventId.LIFECYCLE, domain=dom)
        serial = boot(conn, dom, sock)
        serial.send("panic")
        assert events(conn, dom, 1) == [CRASHED]
        serial.close()
    try:
        qemud.kill()  # (a clean stop writes every guest's status anyway)
        qemud.start()
        assert domstate(qemud, name) == "crashed (panicked)"
    finally:
        with qemud.connect() as conn:
            dom = conn.lookup_by_name(name)
            if dom.is_active():
                dom.destroy()
            dom.undefine()


def test_panic_at_another_io_port_still_reports_the_crash(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path) -> None:
    """The guest's pvpanic driver finds the device where ``iobase`` put it (ACPI tells it),
    and a ``<panic>`` without model is x86's isa: written at define, as libvirt does."""
    name = "panic-ioport"
    sock = tmp_path / "s.sock"
    panic = "<panic><address type='isa' iobase='0x506'/></panic>"
    dom = conn.define_xml(panic_xml(name, test_guest, sock, "destroy", panic))
    assert "<panic model='isa'>" in dom.xml()
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    serial = boot(conn, dom, sock)
    serial.send("panic")
    assert events(conn, dom, 2) == [CRASHED, (LifecycleEvent.STOPPED, StoppedDetail.CRASHED)]
    serial.close()
    dom.undefine()


def test_refused_panic_names_the_cause(conn: client.Connection, test_guest,
                                       tmp_path: Path) -> None:
    xml = panic_xml("panic-hyperv", test_guest, tmp_path / "s.sock", "destroy",
                    "<panic model='hyperv'/>")
    with pytest.raises(client.RemoteError,
                       match=r"panic model 'hyperv' is not supported on x86_64 \(supported: "
                             r"isa\)"):
        conn.define_xml(xml)
    with pytest.raises(client.NoDomainError):
        conn.lookup_by_name("panic-hyperv")
