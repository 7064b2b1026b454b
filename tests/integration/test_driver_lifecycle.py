"""The QEMU driver against real QEMU and the real test guest, under TCG.

One daemon serves the module (starting one costs a capabilities probe); each test uses
its own guest name so they do not interfere.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import (
    DomainState,
    ErrorCode,
    ErrorDomain,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutdownDetail,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
)
from tests.helpers.daemon import DaemonProcess, serving, wait_for
from tests.helpers.procs import kill_qemus, qemu_pids, wait_exited
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, bare_xml, guest_xml
from tests.integration.lifecycle import lifecycle_events, resets_since
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-driver")
    daemon = DaemonProcess(root, {"limits": {"keepalive_interval": 2}})
    with serving(daemon):
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


def test_full_lifecycle(conn: client.Connection, qemud: DaemonProcess, test_guest,
                        tmp_path: Path) -> None:
    sock = tmp_path / "serial.sock"
    dom = conn.define_xml(guest_xml("life", test_guest, sock))
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    assert lifecycle_events(conn, dom, 0) == []
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.UNKNOWN)

    dom.create()
    assert dom.refresh().id > 0
    assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
    serial = SerialPort(sock)
    serial.wait_for(READY)
    assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STARTED, StartedDetail.BOOTED)]

    dom.suspend()
    assert dom.state() == (DomainState.PAUSED, PausedReason.USER)
    dom.resume()
    assert dom.state() == (DomainState.RUNNING, RunningReason.UNPAUSED)
    assert lifecycle_events(conn, dom, 2) == [(LifecycleEvent.SUSPENDED, 0),
                                              (LifecycleEvent.RESUMED, 0)]

    mark = serial.mark()
    dom.shutdown()  # ACPI power button: the guest powers itself off
    serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
    assert lifecycle_events(conn, dom, 2) == [
        (LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST),
        (LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)]
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert dom.refresh().id == -1
    serial.close()

    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    conn.register_event(client.EventId.REBOOT, domain=dom)
    mark = serial.mark()
    serial.send("reboot")  # the guest reboots itself
    serial.wait_for(READY, start=mark)
    reboot = wait_for(lambda: conn.next_event(1.0), timeout=30, message="reboot event")
    # the STARTED event of this boot may be queued first: skip lifecycle events
    while reboot.event_id != client.EventId.REBOOT:
        reboot = wait_for(lambda: conn.next_event(1.0), timeout=30, message="reboot event")
    assert reboot.domain.name == "life"
    assert dom.state()[0] == DomainState.RUNNING

    dom.destroy()
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
    assert qemu_pids("life", qemud.run_dir) == []
    dom.undefine()
    with pytest.raises(client.NoDomainError):
        conn.lookup_by_name("life")


def events_until_stopped(conn: client.Connection) -> list[tuple[int, int, int]]:
    """(event id, event, detail) of each event ``conn`` gets, up to a STOPPED one."""
    seen: list[tuple[int, int, int]] = []
    while not seen or seen[-1][1] != LifecycleEvent.STOPPED:
        record = wait_for(lambda: conn.next_event(1.0), timeout=30, message="STOPPED event")
        seen.append((record.event_id, record.event, record.detail))
    return seen


def boot_destroying_reboots(conn: client.Connection, name: str, test_guest: TestGuest,
                            tmp_path: Path) -> tuple[client.Domain, SerialPort]:
    """The test guest ``name`` with ``<on_reboot>destroy``, booted, its lifecycle and
    reboot events registered on ``conn`` (the STARTED one read)."""
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(guest_xml(name, test_guest, sock, on_reboot="destroy"))
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    conn.register_event(client.EventId.REBOOT, domain=dom)
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STARTED, StartedDetail.BOOTED)]
    return dom, serial


def assert_shut_down(conn: client.Connection, qemud: DaemonProcess, dom: client.Domain,
                     detail: ShutdownDetail) -> None:
    """``dom`` was shut down (SHUTDOWN with ``detail``, STOPPED:SHUTDOWN, no REBOOT
    event), its QEMU is gone, and nothing restarts it (on_poweroff=destroy)."""
    assert events_until_stopped(conn) == [
        (client.EventId.LIFECYCLE, LifecycleEvent.SHUTDOWN, detail),
        (client.EventId.LIFECYCLE, LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)]
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SHUTDOWN)
    assert qemu_pids(dom.name, qemud.run_dir) == []
    assert conn.next_event(1.0) is None


def test_reboot_of_on_reboot_destroy_guest_shuts_it_down(conn: client.Connection,
                                                         qemud: DaemonProcess, test_guest,
                                                         tmp_path: Path) -> None:
    """libvirt 9.0's virDomainReboot (qemuDomainReboot) of a guest with
    ``<on_reboot>destroy`` (or preserve) does no fake reboot: it presses the ACPI power
    button and lets the guest power off, then ``<on_poweroff>`` applies. libvirtd 9.0 on
    the test guest: SHUTDOWN:GUEST, STOPPED:SHUTDOWN, no REBOOT event, SHUTOFF:SHUTDOWN."""
    dom, serial = boot_destroying_reboots(conn, "reboot-destroy", test_guest, tmp_path)
    mark = serial.mark()
    dom.reboot()
    serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
    assert_shut_down(conn, qemud, dom, ShutdownDetail.GUEST)
    serial.close()
    dom.undefine()


def test_reset_of_on_reboot_destroy_guest_shuts_it_down(conn: client.Connection,
                                                        qemud: DaemonProcess, test_guest,
                                                        tmp_path: Path) -> None:
    """virDomainReset of a guest with ``<on_reboot>destroy``: QEMU, started with ``-action
    reboot=shutdown``, turns the ``system_reset`` into a shutdown (SHUTDOWN, ``guest:
    false``, reason host-qmp-system-reset) and holds the guest paused in it, as libvirt's
    qemuProcessHandleShutdown then has it: SHUTDOWN:HOST, STOPPED:SHUTDOWN, no REBOOT
    event, SHUTOFF:SHUTDOWN. Before, the guest stayed paused for good ("Resetting the
    Virtual Machine is required" on resume) and a REBOOT event was sent."""
    dom, serial = boot_destroying_reboots(conn, "reset-destroy", test_guest, tmp_path)
    dom.reset()
    assert_shut_down(conn, qemud, dom, ShutdownDetail.HOST)
    serial.close()
    dom.undefine()


def test_reboot_and_shutdown_modes(conn: client.Connection, qemud: DaemonProcess, test_guest,
                                  tmp_path: Path) -> None:
    """libvirt's mode flags, as libvirtd 9.0's QEMU driver takes them (checked by hand; the
    error codes also in tests/conformance/): ACPI or none presses the power button; AGENT
    alone fails, as qemud guests have no agent ("not configured"); AGENT with ACPI falls
    back to the button; INITCTL, SIGNAL, PARAVIRT and unknown bits are refused before the
    domain is looked at. A refused call leaves the guest alone."""
    R, S = client.RebootFlags, client.ShutdownFlags
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(guest_xml("modes", test_guest, sock))
    with pytest.raises(client.InvalidArgError,
                       match=r"^invalid argument: unsupported flags \(0x4\) in reboot: "
                             r"mode 'initctl' "):
        dom.reboot(R.INITCTL)
    with pytest.raises(client.OperationInvalid, match="not running"):
        dom.shutdown(flags=S.GUEST_AGENT)  # libvirt: running is checked before the agent
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    conn.register_event(client.EventId.REBOOT, domain=dom)
    dom.create()
    try:
        serial = SerialPort(sock)
        serial.wait_for(READY)
        assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STARTED,
                                                   StartedDetail.BOOTED)]
        refused: list[tuple[Callable[[], None], type[client.RemoteError], str]] = [
            (lambda: dom.reboot(R.GUEST_AGENT), client.NotSupportedError,
             r"QEMU guest agent is not configured .*'agent' reboot mode"),
            (lambda: dom.shutdown(flags=S.GUEST_AGENT), client.NotSupportedError,
             r"QEMU guest agent is not configured .*'agent' shutdown mode"),
            (lambda: dom.reboot(R.SIGNAL | R.ACPI_POWER_BTN), client.InvalidArgError,
             r"\(0x8\) in reboot: mode 'signal' "),
            (lambda: dom.shutdown(flags=S.INITCTL | S.PARAVIRT), client.InvalidArgError,
             r"\(0x14\) in shutdown: mode 'initctl', mode 'paravirt' "),
            (lambda: dom.shutdown(flags=S.ACPI_POWER_BTN | 1 << 5), client.InvalidArgError,
             r"\(0x20\) in shutdown: unknown flag 0x20 "),
            # shutdown's own DESTROY_ON_TIMEOUT is no reboot flag
            (lambda: dom.reboot(int(S.DESTROY_ON_TIMEOUT)), client.InvalidArgError,
             r"\(0x10000\) in reboot: unknown flag 0x10000 "),
        ]
        for call, error, message in refused:
            with pytest.raises(error, match=message) as info:
                call()
            assert info.value.domain == ErrorDomain.QEMU
            if error is client.NotSupportedError:  # libvirt's code for a missing agent
                assert info.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
        mark = serial.mark()
        serial.send("ping")
        serial.wait_for("QEMUD-PONG", start=mark)  # the guest noticed nothing
        assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
        assert conn.next_event(1.0) is None

        mark, log_mark = serial.mark(), len(qemud.log_text())
        dom.reboot(R.GUEST_AGENT | R.ACPI_POWER_BTN)  # no agent: the ACPI button
        serial.wait_for(READY, start=mark)
        assert dom.state()[0] == DomainState.RUNNING
        rebooted = []  # the host's reset and the firmware's (test_driver_reboot.py)
        while (record := conn.next_event(1.0)) is not None:
            rebooted.append(record.event_id)
        # one per reset; how many times the firmware resets varies (test_driver_reboot.py)
        assert 2 <= len(rebooted) == resets_since(qemud, "modes", log_mark), rebooted
        assert set(rebooted) == {client.EventId.REBOOT}

        mark = serial.mark()
        dom.shutdown(flags=S.ACPI_POWER_BTN)
        serial.wait_for("QEMUD-GUEST-POWEROFF", start=mark)
        assert lifecycle_events(conn, dom, 2) == [
            (LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST),
            (LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN)]
        serial.close()
    finally:
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_wrong_state_errors_name_the_cause(conn: client.Connection, test_guest,
                                          tmp_path: Path) -> None:
    dom = conn.define_xml(guest_xml("wrongstate", test_guest, tmp_path / "s.sock"))
    with pytest.raises(client.OperationInvalid, match="not running"):
        dom.destroy()
    with pytest.raises(client.OperationInvalid, match="not running"):
        dom.suspend()
    dom.create()
    with pytest.raises(client.OperationInvalid, match="already running"):
        dom.create()
    with pytest.raises(client.OperationInvalid, match="already running"):
        dom.resume()  # (libvirt's words)
    dom.destroy()
    dom.undefine()


def test_transient_guest_is_never_written(conn: client.Connection, qemud: DaemonProcess,
                                          test_guest, tmp_path: Path) -> None:
    dom = conn.create_xml(guest_xml("transient1", test_guest, tmp_path / "s.sock"))
    assert dom.state()[0] == DomainState.RUNNING
    assert not (qemud.config_dir / "domains" / "transient1.xml").exists()
    with pytest.raises(client.OperationInvalid, match="transient"):
        dom.undefine()
    with pytest.raises(client.OperationInvalid, match="transient"):
        dom.set_autostart(True)
    dom.destroy()
    with pytest.raises(client.NoDomainError):
        conn.lookup_by_name("transient1")


def test_guest_killed_from_outside_is_reported_crashed(conn: client.Connection,
                                                       qemud: DaemonProcess, test_guest,
                                                       tmp_path: Path) -> None:
    dom = conn.define_xml(guest_xml("victim", test_guest, tmp_path / "s.sock"))
    conn.register_event(client.EventId.LIFECYCLE, domain=dom)
    dom.create()
    assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STARTED, StartedDetail.BOOTED)]
    (pid,) = qemu_pids("victim", qemud.run_dir)
    os.kill(pid, signal.SIGKILL)
    assert lifecycle_events(conn, dom, 1) == [(LifecycleEvent.STOPPED, StoppedDetail.FAILED)]
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.CRASHED)
    dom.undefine()


def test_failed_start_returns_qemu_error_and_leaves_nothing(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-disk.img"
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{missing}'/><target dev='vda' bus='virtio'/></disk>")
    dom = conn.define_xml(guest_xml("broken", test_guest, tmp_path / "s.sock", extra=disk))
    with pytest.raises(client.OperationFailed) as info:
        dom.create()
    assert "no-such-disk.img" in str(info.value)  # QEMU's own text
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.FAILED)
    assert qemu_pids("broken", qemud.run_dir) == []
    assert not list(qemud.guest_run_dir("broken").glob("*.sock"))
    dom.undefine()


def test_hotplug_disk_is_seen_by_the_guest(conn: client.Connection, test_guest,
                                           tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    image = tmp_path / "extra.img"
    image.write_bytes(b"\0" * (8 << 20))
    dom = conn.create_xml(guest_xml("hotplug", test_guest, sock))
    serial = SerialPort(sock)
    serial.wait_for(READY)
    mark = serial.mark()
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{image}'/><target dev='vdb' bus='virtio'/></disk>")
    dom.attach_device(disk)
    serial.wait_for(r"QEMUD-BLOCK: [^\n]*vda", start=mark)  # the first virtio disk is vda
    assert "vdb" in dom.xml() and str(image) in dom.xml()
    mark = serial.mark()
    dom.detach_device(disk)
    serial.wait_for(r"QEMUD-BLOCK: (?![^\n]*vd)[^\n]*\n", start=mark)
    assert str(image) not in dom.xml()
    dom.destroy()


def test_cdrom_media_change(conn: client.Connection, test_guest, tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    media = tmp_path / "media.iso"
    media.write_bytes(b"\1" * (2 << 20))
    cdrom = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             "<target dev='hdc' bus='ide'/><readonly/></disk>")
    dom = conn.create_xml(guest_xml("cdrom", test_guest, sock, extra=cdrom))
    serial = SerialPort(sock)
    serial.wait_for(READY)
    mark = serial.mark()
    dom.change_media("hdc", str(media))
    serial.wait_for(r"sr0:4096", start=mark)  # 2 MiB = 4096 sectors of 512 bytes
    assert str(media) in dom.xml()
    mark = serial.mark()
    dom.change_media("hdc", None)
    serial.wait_for(r"sr0:0", start=mark)
    assert str(media) not in dom.xml()
    dom.destroy()


def open_files(pid: int) -> set[str]:
    """The files QEMU ``pid`` has open."""
    fds = Path(f"/proc/{pid}/fd")
    names = set()
    for fd in fds.iterdir():
        try:
            names.add(os.readlink(fd))
        except FileNotFoundError:
            pass
    return names


def test_a_medium_change_closes_the_old_medium_and_a_bad_one_keeps_it(
        conn: client.Connection, qemud: DaemonProcess, test_guest, tmp_path: Path) -> None:
    """The drive's medium is swapped through its block nodes: QEMU closes the old
    medium's file (it had kept it open, and locked, until the guest stopped); a medium
    QEMU cannot open fails the change and the one in the drive stays, for the guest
    too; an eject closes the last one."""
    sock = tmp_path / "s.sock"
    old, new = tmp_path / "old.iso", tmp_path / "new.iso"
    old.write_bytes(b"\1" * (1 << 20))
    new.write_bytes(b"\2" * (2 << 20))
    cdrom = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             f"<source file='{old}'/><target dev='hdc' bus='ide'/><readonly/></disk>")
    dom = conn.create_xml(guest_xml("cdswap", test_guest, sock, extra=cdrom))
    try:
        serial = SerialPort(sock)
        serial.wait_for(READY)
        (pid,) = qemu_pids("cdswap", qemud.run_dir)
        assert str(old) in open_files(pid)
        mark = serial.mark()
        dom.change_media("hdc", str(new))
        serial.wait_for(r"sr0:4096", start=mark)  # 2 MiB = 4096 sectors of 512 bytes
        assert str(new) in open_files(pid) and str(old) not in open_files(pid)
        # a medium QEMU cannot open changes nothing, also for the guest (no tray move),
        # even with the medium in the drive gone from the host meanwhile (its nodes are
        # still open: nothing reopens it by its path)
        new.unlink()
        missing = tmp_path / "missing.iso"
        mark = serial.mark()
        with pytest.raises(client.RemoteError, match=str(missing)):
            dom.change_media("hdc", str(missing))
        assert str(new) in dom.xml() and f"{new} (deleted)" in open_files(pid)
        [drive] = [d for d in json.loads(dom.qemu_monitor_command(
            '{"execute": "query-block"}'))["return"] if d["qdev"].endswith("disk-hdc")]
        assert drive["tray_open"] is False and drive["inserted"]["file"] == str(new)
        serial.send("ping")  # (the guest's next line comes after any media event)
        serial.wait_for(r"QEMUD-PONG", start=mark)
        assert "sr0:" not in serial.text[mark:]
        mark = serial.mark()
        dom.change_media("hdc", None)
        serial.wait_for(r"sr0:0", start=mark)
        assert str(new) not in dom.xml()
        assert not any(name.startswith(str(tmp_path)) and name.endswith(".iso")
                       for name in open_files(pid))
        mark = serial.mark()
        dom.change_media("hdc", str(old))  # into the empty drive
        serial.wait_for(r"sr0:2048", start=mark)
        assert str(old) in dom.xml()
    finally:
        dom.destroy()


def test_save_and_restore(conn: client.Connection, qemud: DaemonProcess, test_guest,
                          tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    dom = conn.define_xml(guest_xml("saver", test_guest, sock))
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY)
    state_file = tmp_path / "saver.state"
    dom.save(str(state_file))
    assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
    assert state_file.stat().st_size > 1 << 20
    assert qemu_pids("saver", qemud.run_dir) == []
    serial.close()
    restored = conn.restore(str(state_file))
    assert restored.name == "saver"
    assert dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
    serial = SerialPort(sock)
    serial.send("hello-after-restore")  # the guest's init answers unknown commands
    serial.wait_for("QEMUD-UNKNOWN hello-after-restore", timeout=30)
    dom.destroy()
    dom.undefine()


@pytest.mark.parametrize("arch", ["aarch64", "ppc64"])
def test_other_architectures_start_paused(conn: client.Connection, arch: str) -> None:
    dom = conn.define_xml(bare_xml(f"arch-{arch}", arch))
    dom.create(flags=1)  # VIR_DOMAIN_START_PAUSED
    assert dom.state() == (DomainState.PAUSED, PausedReason.USER)
    xml = dom.xml()
    assert f"arch='{arch}'" in xml
    dom.destroy()
    dom.undefine()


def test_arch_rejects_unsupported_bus(conn: client.Connection) -> None:
    xml = bare_xml("ppc-ide", "ppc64").replace(
        "</os>", "</os><devices><disk type='file' device='disk'><source file='/dev/null'/>"
        "<target dev='hda' bus='ide'/></disk></devices>")
    with pytest.raises(client.ConfigUnsupportedError, match="ide"):
        conn.define_xml(xml)


def test_daemon_killed_and_restarted_reconnects_running_guests(
        tmp_path: Path, test_guest) -> None:
    daemon = DaemonProcess(tmp_path / "d", {"limits": {"keepalive_interval": 2}})
    daemon.start()
    try:
        with daemon.connect() as conn:
            persistent = conn.define_xml(guest_xml("keep1", test_guest, tmp_path / "1.sock"))
            persistent.create()
            conn.create_xml(guest_xml("keep2", test_guest, tmp_path / "2.sock"))
            ids = {d.name: d.refresh().id for d in conn.list_domains()}
        daemon.kill()  # kill -9: no chance to clean up
        assert qemu_pids("keep1", daemon.run_dir) and qemu_pids("keep2", daemon.run_dir)
        daemon.start()
        with daemon.connect() as conn:
            running = {d.name: d for d in conn.list_domains(client.ListFlags.ACTIVE)}
            assert set(running) == {"keep1", "keep2"}
            assert {n: d.id for n, d in running.items()} == ids
            keep1 = running["keep1"]
            wait_for(lambda: keep1.state()[0] == DomainState.RUNNING, message="keep1 running")
            keep1.suspend()
            assert keep1.state()[0] == DomainState.PAUSED
            keep1.resume()
            for dom in running.values():
                dom.destroy()
            assert qemu_pids("keep1", daemon.run_dir) == []
            assert qemu_pids("keep2", daemon.run_dir) == []
            assert conn.lookup_by_name("keep1").state()[0] == DomainState.SHUTOFF
            with pytest.raises(client.NoDomainError):
                conn.lookup_by_name("keep2")  # transient: gone once stopped
    finally:
        kill_qemus(daemon, "keep1", "keep2")
        daemon.stop()


def test_guest_that_died_while_daemon_was_down_is_marked_crashed(
        tmp_path: Path, test_guest) -> None:
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    try:
        with daemon.connect() as conn:
            conn.define_xml(guest_xml("gone", test_guest, tmp_path / "g.sock")).create()
        daemon.kill()
        pids = qemu_pids("gone", daemon.run_dir)
        assert pids, "QEMU outlives the daemon"
        kill_qemus(daemon, "gone")
        # by pidfd: a killed process's command line reads empty (so pgrep no longer finds
        # it) once its memory is gone, before its sockets and files are closed
        wait_exited(pids, 10)
        daemon.start()
        with daemon.connect() as conn:
            assert conn.lookup_by_name("gone").state() == (DomainState.SHUTOFF,
                                                          ShutoffReason.CRASHED)
    finally:
        daemon.stop()


def test_autostart_guests_start_with_the_daemon(tmp_path: Path, test_guest) -> None:
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    try:
        with daemon.connect() as conn:
            auto = conn.define_xml(guest_xml("auto1", test_guest, tmp_path / "a.sock"))
            conn.define_xml(guest_xml("manual1", test_guest, tmp_path / "m.sock"))
            auto.set_autostart(True)
            assert auto.autostart()
            assert (daemon.config_dir / "autostart" / "auto1").exists()
        daemon.stop()
        # the host reboots: its run directory (tmpfs) is empty again
        (daemon.run_dir / "autostarted").unlink()
        daemon.start()
        with daemon.connect() as conn:
            auto = conn.lookup_by_name("auto1")
            wait_for(lambda: auto.state()[0] == DomainState.RUNNING, timeout=30,
                     message="autostarted guest running")
            auto.destroy()  # an admin stops it
        # the daemon restarts (a crash, an upgrade), the host does not: autostart is
        # once per host boot, as libvirt's, so the guest stays as the admin left it
        daemon.kill()
        daemon.start()
        assert "autostart: already done since the host started" in daemon.log_text()
        with daemon.connect() as conn:
            auto = conn.lookup_by_name("auto1")
            assert auto.state()[0] == DomainState.SHUTOFF
            auto.create()
            assert conn.lookup_by_name("manual1").state()[0] == DomainState.SHUTOFF
            listed = conn.list_domains(client.ListFlags.AUTOSTART)
            assert [d.name for d in listed] == ["auto1"]
            auto.set_autostart(False)
            assert not (daemon.config_dir / "autostart" / "auto1").exists()
            auto.destroy()
    finally:
        kill_qemus(daemon, "auto1")
        daemon.stop()


def test_event_order_start_suspend_resume_destroy(conn: client.Connection, test_guest,
                                                  tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    done = __import__("threading").Event()

    def callback(record: client.EventRecord) -> None:
        seen.append((record.domain.name, record.event, record.detail))
        if record.event == LifecycleEvent.STOPPED:
            done.set()

    dom = conn.define_xml(guest_xml("ordered", test_guest, tmp_path / "o.sock"))
    conn.register_event(client.EventId.LIFECYCLE, callback, domain=dom)
    dom.create()
    dom.suspend()
    dom.resume()
    dom.destroy()
    assert done.wait(30)
    assert seen == [("ordered", LifecycleEvent.STARTED, StartedDetail.BOOTED),
                    ("ordered", LifecycleEvent.SUSPENDED, 0),
                    ("ordered", LifecycleEvent.RESUMED, 0),
                    ("ordered", LifecycleEvent.STOPPED, StoppedDetail.DESTROYED)]
    dom.undefine()


def test_listing_follows_starts_stops_and_autostart(conn: client.Connection) -> None:
    """The daemon keeps its listing order and each domain's summary between calls:
    both must change the moment a guest starts, stops or changes its autostart flag."""
    names = ["list-c", "list-a", "list-b"]
    doms = {n: conn.define_xml(bare_xml(n)) for n in names}

    def listed() -> list[tuple[str, int, DomainState, bool]]:
        return [(d.name, d.id, DomainState(d.summary.state), d.summary.autostart)
                for d in conn.list_domains(0) if d.name in names]

    try:
        assert listed() == [(n, -1, DomainState.SHUTOFF, False)
                            for n in ("list-a", "list-b", "list-c")]
        started = doms["list-c"].create(flags=1)  # paused: no firmware boot needed
        doms["list-a"].set_autostart(True)
        assert listed() == [("list-c", started.id, DomainState.PAUSED, False),
                            ("list-a", -1, DomainState.SHUTOFF, True),
                            ("list-b", -1, DomainState.SHUTOFF, False)]
        assert [d.name for d in conn.list_domains(client.ListFlags.ACTIVE)
                if d.name in names] == ["list-c"]
        doms["list-c"].destroy()
        doms["list-a"].set_autostart(False)
        assert listed() == [(n, -1, DomainState.SHUTOFF, False)
                            for n in ("list-a", "list-b", "list-c")]
    finally:
        for dom in doms.values():
            if dom.state()[0] != DomainState.SHUTOFF:
                dom.destroy()
            dom.undefine()
