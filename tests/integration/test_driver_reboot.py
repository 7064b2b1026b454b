"""Reboots, shutdowns and pauses as a client sees them, against real QEMU and the test
guest (TCG), compared with what libvirt's QEMU driver does.

libvirt's fake reboot (qemuDomainReboot, qemuProcessShutdownOrReboot,
qemuProcessFakeReboot): the ACPI power button, and when the guest powers off, a
``system_reset`` and ``cont`` in the same QEMU. The guest's pause in between is not
shown; libvirt sends a ``reboot`` event for every QEMU RESET (qemuProcessHandleReset).
On QEMU 7.2 a reboot usually has two: the host's ``system_reset``, then SeaBIOS resets
the machine once more right after the continue (RESET, ``guest: true``), sometimes a
third or a fourth time, so a client sees ``reboot`` events only, one per reset, two or
more, with libvirt as with qemud (the tests count the resets in the daemon's QMP log).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import (
    DomainState,
    LifecycleEvent,
    PausedReason,
    ResumedDetail,
    RunningReason,
    ShutdownDetail,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
)
from tests.helpers.daemon import DaemonProcess, serving
from tests.helpers.procs import kill_qemus, qemu_pids
from tests.integration.domains import READY, bare_xml, guest_xml
from tests.integration.lifecycle import resets_since
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

LIFE, REBOOT = client.EventId.LIFECYCLE, client.EventId.REBOOT
#: (event id, event, detail) of a reboot event
REBOOTED = (REBOOT, 0, 0)


def is_a_reboot(seen: list[tuple[object, ...]], resets: int) -> bool:
    """What a client sees of one reboot (an admin's, the guest's own, or a power-off
    with on_poweroff=restart): ``reboot`` events only, one per reset (``resets``, from
    :func:`resets_since`: the host's, if any, then the guest's and the firmware's, whose
    number varies: SeaBIOS resets once or twice more, now and then three times), at
    least two, and no lifecycle event."""
    return 2 <= len(seen) == resets and all(event == REBOOTED for event in seen)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-reboot")
    daemon = DaemonProcess(root, {"limits": {"keepalive_interval": 2}})
    with serving(daemon):
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


class Events:
    """The lifecycle and reboot events of one domain, as its callbacks got them."""

    def __init__(self, conn: client.Connection, dom: client.Domain) -> None:
        self.seen: list[tuple[int, int, int]] = []
        self._cond = threading.Condition()
        for event_id in (LIFE, REBOOT):
            conn.register_event(event_id, self._got, domain=dom)

    def _got(self, record: client.EventRecord) -> None:
        with self._cond:
            self.seen.append((record.event_id, record.event, record.detail))
            self._cond.notify_all()

    def take(self, quiet: float = 2.0, timeout: float = 60.0,
             until: tuple[int, int, int] | None = None) -> list[tuple[int, int, int]]:
        """The events so far, once ``until`` was seen (if given) and then none came for
        ``quiet`` seconds (the firmware's reset comes ~0.1 s after a reboot)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while until is not None and until not in self.seen:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{until} not seen; events: {self.seen}")
            count = -1
            while count != len(self.seen) and time.monotonic() < deadline:
                count = len(self.seen)
                self._cond.wait(quiet)
            seen, self.seen = self.seen, []
        return seen


def boot(conn: client.Connection, xml: str, sock: Path) -> tuple[client.Domain, Events,
                                                                 SerialPort]:
    dom = conn.define_xml(xml)
    events = Events(conn, dom)
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    assert events.take(quiet=0.5) == [(LIFE, LifecycleEvent.STARTED, StartedDetail.BOOTED)]
    return dom, events, serial


def test_admin_reboot_hides_the_reset_pause(conn: client.Connection, qemud: DaemonProcess,
                                            test_guest, tmp_path: Path) -> None:
    """An admin's reboot: no SUSPENDED/RESUMED for the pause between the guest's
    power-off and the reset (libvirt's qemuProcessHandleStop skips it while
    pausedShutdown is set), the same QEMU, and ``running (booted)`` after it, every
    time."""
    sock = tmp_path / "s.sock"
    dom, events, serial = boot(conn, guest_xml("rb-admin", test_guest, sock), sock)
    try:
        domain_id = dom.refresh().id
        pids = qemu_pids("rb-admin", qemud.run_dir)
        for _ in range(2):
            mark, log_mark = serial.mark(), len(qemud.log_text())
            dom.reboot()
            serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)  # the ACPI button
            serial.wait_for(READY, start=mark)
            seen = events.take()
            assert is_a_reboot(seen, resets_since(qemud, "rb-admin", log_mark)), seen
            assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            assert dom.refresh().id == domain_id
            assert qemu_pids("rb-admin", qemud.run_dir) == pids
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()
        kill_qemus(qemud, "rb-admin")


def ignored_reboot(conn: client.Connection, name: str, test_guest, sock: Path
                   ) -> tuple[client.Domain, Events, SerialPort]:
    """Start ``name`` paused and reboot it then: the ACPI power button is pressed before
    the guest's kernel handles it, so the guest ignores it (its acpid, the only thing
    that acts on the button, starts last) and boots normally once resumed."""
    dom = conn.define_xml(guest_xml(name, test_guest, sock))
    events = Events(conn, dom)
    dom.create(flags=1)  # paused
    dom.reboot()
    dom.resume()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    mark = serial.mark()
    serial.send("ping")
    serial.wait_for("QEMUD-PONG", start=mark)
    assert "QEMUD-GUEST-POWEROFF" not in serial.text
    assert events.take() == [(LIFE, LifecycleEvent.STARTED, StartedDetail.BOOTED),
                             (LIFE, LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED),
                             (LIFE, LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED)]
    return dom, events, serial


def test_shutdown_after_an_ignored_reboot_shuts_down(conn: client.Connection,
                                                     qemud: DaemonProcess, test_guest,
                                                     tmp_path: Path) -> None:
    """libvirt's qemuDomainShutdownFlagsMonitor clears the pending fake reboot: the
    guest's power-off after a shutdown stops it, even though an earlier reboot request
    was never acted on."""
    sock = tmp_path / "s.sock"
    dom, events, serial = ignored_reboot(conn, "rb-ignored", test_guest, sock)
    try:
        mark = serial.mark()
        dom.shutdown()
        serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
        assert events.take(until=(LIFE, LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)) == [
            (LIFE, LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST),
            (LIFE, LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)]
        assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
        assert READY not in serial.text[mark:]
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()
        kill_qemus(qemud, "rb-ignored")


def test_guest_reset_ends_an_ignored_reboot(conn: client.Connection, qemud: DaemonProcess,
                                            test_guest, tmp_path: Path) -> None:
    """libvirt's qemuProcessHandleReset clears the pending fake reboot: once the guest
    rebooted by itself, its own power-off (``<on_poweroff>destroy``) stops it."""
    sock = tmp_path / "s.sock"
    dom, events, serial = ignored_reboot(conn, "rb-reset", test_guest, sock)
    try:
        mark, log_mark = serial.mark(), len(qemud.log_text())
        serial.send("reboot")
        serial.wait_for(READY, start=mark)
        seen = events.take()  # the guest's reset and the firmware's
        assert is_a_reboot(seen, resets_since(qemud, "rb-reset", log_mark)), seen
        mark = serial.mark()
        serial.send("poweroff")
        serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
        assert events.take(until=(LIFE, LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)) == [
            (LIFE, LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST),
            (LIFE, LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)]
        assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()
        kill_qemus(qemud, "rb-reset")


def test_on_poweroff_restart_reboots_in_the_same_qemu(conn: client.Connection,
                                                      qemud: DaemonProcess, test_guest,
                                                      tmp_path: Path) -> None:
    """``<on_poweroff>restart``: libvirt's qemuProcessShutdownOrReboot does a fake
    reboot, for an admin's shutdown and for the guest's own power-off alike: no
    SHUTDOWN, STOPPED or STARTED event, the same id and QEMU, ``running (booted)``. A
    shutdown that waits for the power-off (``timeout``) returns then, nothing destroyed."""
    sock = tmp_path / "s.sock"
    dom, events, serial = boot(conn, guest_xml("rb-poweroff", test_guest, sock,
                                               on_poweroff="restart"), sock)
    try:
        domain_id = dom.refresh().id
        pids = qemu_pids("rb-poweroff", qemud.run_dir)
        for power_off in (dom.shutdown, lambda: serial.send("poweroff"),
                          lambda: dom.shutdown(timeout=60)):
            mark, log_mark = serial.mark(), len(qemud.log_text())
            power_off()
            serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
            serial.wait_for(READY, start=mark)
            seen = events.take()
            assert is_a_reboot(seen, resets_since(qemud, "rb-poweroff", log_mark)), seen
            assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            assert dom.refresh().id == domain_id
            assert qemu_pids("rb-poweroff", qemud.run_dir) == pids
    finally:
        serial.close()
        if dom.is_active():
            dom.destroy()
        dom.undefine()
        kill_qemus(qemud, "rb-poweroff")


def test_suspend_of_a_paused_domain_is_a_no_op(conn: client.Connection,
                                               qemud: DaemonProcess) -> None:
    """libvirt's qemuDomainSuspend stops the CPUs only when the domain is not paused
    and succeeds either way (no event, the reason kept); qemuDomainResume of a running
    domain fails with OPERATION_INVALID "domain is already running"."""
    dom = conn.define_xml(bare_xml("rb-pause"))
    events = Events(conn, dom)
    try:
        dom.create(flags=1)  # paused (starting paused: reason USER)
        assert events.take(quiet=0.5) == [
            (LIFE, LifecycleEvent.STARTED, StartedDetail.BOOTED),
            (LIFE, LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED)]
        dom.suspend()
        dom.suspend()
        assert dom.state() == (DomainState.PAUSED, PausedReason.USER)
        dom.resume()
        assert dom.state() == (DomainState.RUNNING, RunningReason.UNPAUSED)
        with pytest.raises(client.OperationInvalid, match="already running"):
            dom.resume()
        dom.suspend()
        dom.suspend()
        assert dom.state() == (DomainState.PAUSED, PausedReason.USER)
        assert events.take(quiet=1.0) == [
            (LIFE, LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED),
            (LIFE, LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED)]
    finally:
        if dom.is_active():
            dom.destroy()
        dom.undefine()
        kill_qemus(qemud, "rb-pause")


def test_a_reboot_in_progress_survives_a_daemon_restart(qemud: DaemonProcess,
                                                        test_guest, tmp_path: Path) -> None:
    """The daemon is killed (``kill -9``) right after an admin's reboot pressed the ACPI
    button: the guest powers off while no daemon listens (QEMU waits, -no-shutdown).
    The reboot in progress is in the status record, so the next daemon resets the
    guest, as the one that was asked would have; it used to apply <on_poweroff>
    (destroy) instead, and the guest stayed off."""
    sock = tmp_path / "s.sock"
    with qemud.connect() as conn:
        dom, events, serial = boot(conn, guest_xml("reboot-kill", test_guest, sock), sock)
        serial.close()
        dom.reboot()
        qemud.kill()  # (the guest takes a moment to power off: no daemon hears it)
    qemud.start()
    try:
        serial = SerialPort(sock)
        serial.wait_for(READY)  # booted again
        with qemud.connect() as conn:
            dom = conn.lookup_by_name("reboot-kill")
            assert dom.state()[0] == DomainState.RUNNING
        serial.close()
    finally:
        with qemud.connect() as conn:
            dom = conn.lookup_by_name("reboot-kill")
            if dom.is_active():
                dom.destroy()
            dom.undefine()
