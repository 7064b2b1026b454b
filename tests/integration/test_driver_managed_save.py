"""Managed save (virsh managedsave, managedsave-remove, managedsave-dumpxml, start
--force-boot, undefine --managed-save, list --managed-save, dominfo): a real daemon and
real TCG guests, driven through qemush where a user would type the command.

The guest's state after a start from the image is checked on its serial line: it
answers at once, without booting again (no ``QEMUD-GUEST-READY``), and its uptime goes
on from where it was saved."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import SAVE_RUNNING
from protocol.constants import (
    DomainState,
    PausedReason,
    RunningReason,
    ShutoffReason,
    UndefineFlags,
)
from tests.helpers.daemon import (
    DaemonProcess,
    after_discards,
    qemush,
    remove_domain,
    serving,
    stop_destroying_guests,
    wait_for,
)
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import in_thread
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.guest import BootedGuest as Guest
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-msave"))
    with serving(daemon):
        yield daemon


def on_slow_state(tmp_path: Path, slowfs: SlowFS) -> DaemonProcess:
    """A daemon whose state directory (the managed save images in ``save/``) is on the
    FUSE file system, whose writes past a file's first byte the test holds or fails
    (QEMU's, of the image, after the daemon's header)."""
    return DaemonProcess(tmp_path / "d", {"paths": {"state_dir": str(slowfs.mount / "state")}})


def image(daemon: DaemonProcess, name: str) -> Path:
    return daemon.state_dir / "save" / f"{name}.save"


def shell(daemon: DaemonProcess, *args: str, ok: bool = True) -> str:
    """qemush's stdout (``ok``) or stderr (a failing command)."""
    done = qemush(daemon, *args)
    assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
    return done.stdout if ok else done.stderr


def list_state(daemon: DaemonProcess, name: str, *flags: str) -> str | None:
    """The State column of ``name`` in ``qemush list FLAGS`` (None: not listed)."""
    for line in shell(daemon, "list", *flags).splitlines():
        cells = line.split(None, 2)
        if len(cells) == 3 and cells[1] == name:
            return cells[2].strip()
    return None


@pytest.fixture
def guest(qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Guest]:
    name = "ms-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[5:40].strip("-")
    with qemud.connect() as conn:
        g = Guest(conn, test_guest, name, tmp_path)
        try:
            yield g
        finally:
            g.close()


def test_managedsave_then_start_resumes_the_guest(qemud: DaemonProcess, guest: Guest
                                                   ) -> None:
    name = guest.dom.name
    guest.uptime()  # (it answers before the save)
    assert shell(qemud, "managedsave", name) == f"Domain '{name}' state saved by qemud\n"
    assert guest.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
    assert image(qemud, name).is_file()
    assert re.search(r"^Managed save: +yes$", shell(qemud, "dominfo", name), re.M)
    assert json.loads(shell(qemud, "dominfo", name, "--json"))["managed_save"] is True
    assert list_state(qemud, name, "--all", "--managed-save") == "saved"
    assert list_state(qemud, name, "--all") == "shut off"
    dumped = shell(qemud, "managedsave-dumpxml", name)
    assert f"<name>{name}</name>" in dumped and guest.dom.uuid in dumped

    assert shell(qemud, "start", name) == f"Domain '{name}' started\n"
    assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
    assert not image(qemud, name).exists()
    assert not guest.dom.has_managed_save()
    assert re.search(r"^Managed save: +no$", shell(qemud, "dominfo", name), re.M)
    guest.resumed()


def test_paused_guest_comes_back_paused_unless_saved_running(
        qemud: DaemonProcess, guest: Guest) -> None:
    name = guest.dom.name
    guest.uptime()  # (it answers before the save)
    guest.dom.suspend()
    guest.dom.managed_save()
    guest.dom.create()
    assert guest.dom.state() == (DomainState.PAUSED, PausedReason.USER)
    assert not image(qemud, name).exists()
    assert shell(qemud, "managedsave", name, "--running",
                 "--bypass-cache").endswith("saved by qemud\n")
    assert guest.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
    guest.dom.create()
    assert guest.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
    guest.resumed()
    # and --paused, the other way round: start --paused also keeps it paused
    guest.dom.managed_save(client.domain.SAVE_PAUSED)
    guest.dom.create()
    assert guest.dom.state()[0] == DomainState.PAUSED
    guest.dom.resume()
    guest.resumed()
    err = shell(qemud, "managedsave", name, "--running", "--paused", ok=False)
    assert "Options --running and --paused are mutually exclusive" in err
    with pytest.raises(client.InvalidArgError, match="mutually exclusive"):
        guest.dom.managed_save(SAVE_RUNNING | client.domain.SAVE_PAUSED)


def test_force_boot_discards_the_image(qemud: DaemonProcess, guest: Guest) -> None:
    name = guest.dom.name
    guest.dom.managed_save()
    guest.serial.close()
    assert shell(qemud, "start", name, "--force-boot") == f"Domain '{name}' started\n"
    assert guest.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
    assert not image(qemud, name).exists()
    assert not guest.dom.has_managed_save()
    guest.serial = SerialPort(guest.sock)
    guest.serial.wait_for(READY)  # a fresh boot


def test_managedsave_remove_and_the_list_filters(
        qemud: DaemonProcess, guest: Guest, test_guest: TestGuest, tmp_path: Path) -> None:
    name = guest.dom.name
    with qemud.connect() as conn:
        other = conn.define_xml(guest_xml("ms-never-started", test_guest, None))
        try:
            guest.dom.managed_save()
            assert list_state(qemud, "ms-never-started", "--all",
                              "--with-managed-save") is None
            assert list_state(qemud, name, "--all", "--without-managed-save") is None
            assert list_state(qemud, "ms-never-started", "--all",
                              "--without-managed-save") == "shut off"
            assert list_state(qemud, name, "--with-managed-save") is None  # (not active)
            assert list_state(qemud, name, "--all", "--with-managed-save") == "shut off"

            assert shell(qemud, "managedsave-remove", name) == \
                f"Removed managedsave image for domain '{name}'\n"
            assert not image(qemud, name).exists()
            # the same listing again, nothing listed in between: the daemon's cached
            # reply must not be served
            assert list_state(qemud, name, "--all", "--with-managed-save") is None
            assert shell(qemud, "managedsave-remove", name) == \
                f"Domain '{name}' has no manage save image; removal skipped\n"
            assert list_state(qemud, name, "--all", "--without-managed-save") == "shut off"
            assert list_state(qemud, name, "--all", "--managed-save") == "shut off"
            err = shell(qemud, "managedsave-dumpxml", name, ok=False)
            assert "Requested operation is not valid: domain does not have managed save " \
                   "image" in err
            with pytest.raises(client.RemoteError,
                               match="Failed to remove managed save file"):
                guest.dom.managed_save_remove()
            guest.serial.close()
            guest.dom.create()  # the image is gone: a fresh boot
            assert guest.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            guest.serial = SerialPort(guest.sock)
        finally:
            other.undefine()


def test_undefine_needs_managed_save_flag(qemud: DaemonProcess, guest: Guest) -> None:
    name = guest.dom.name
    guest.dom.managed_save()
    err = shell(qemud, "undefine", name, ok=False)
    assert f"error: Failed to undefine domain '{name}'" in err
    assert "Requested operation is not valid: Refusing to undefine while domain managed " \
           "save image exists" in err
    assert guest.dom.has_managed_save() and image(qemud, name).is_file()
    assert shell(qemud, "undefine", name, "--managed-save") == \
        f"Domain '{name}' has been undefined\n"
    assert not image(qemud, name).exists()
    with qemud.connect() as conn, pytest.raises(client.NoDomainError):
        conn.lookup_by_name(name)


def test_transient_domain_is_refused(qemud: DaemonProcess, test_guest: TestGuest,
                                     tmp_path: Path) -> None:
    with qemud.connect() as conn:
        dom = conn.create_xml(guest_xml("ms-transient", test_guest, tmp_path / "t.sock"))
        try:
            with pytest.raises(client.OperationInvalid) as err:
                dom.managed_save()
            assert err.value.message == "Requested operation is not valid: cannot do " \
                                        "managed save for transient domain"
            assert dom.state()[0] == DomainState.RUNNING
            assert not image(qemud, "ms-transient").exists()
        finally:
            dom.destroy()


def test_read_only_connection(qemud: DaemonProcess, guest: Guest) -> None:
    """Asking is allowed read-only, changing is not, nor the secure XML (libvirt's
    rules)."""
    guest.dom.managed_save()
    with qemud.connect(readonly=True) as ro:
        dom = ro.lookup_by_name(guest.dom.name)
        assert dom.has_managed_save()
        assert f"<name>{dom.name}</name>" in dom.managed_save_xml()
        with pytest.raises(client.ReadOnlyError):
            dom.managed_save_xml(client.domain.XML_SECURE)
        with pytest.raises(client.ReadOnlyError):
            dom.managed_save_remove()
        with pytest.raises(client.ReadOnlyError):
            dom.create()
    assert guest.dom.has_managed_save()


def test_failed_managedsave_leaves_no_image(tmp_path: Path, test_guest: TestGuest,
                                             slowfs: SlowFS) -> None:
    """The migration to the image fails (QEMU's writes get EIO): the guest runs on, and
    no file (half or not) is left where an image would be found."""
    daemon = on_slow_state(tmp_path, slowfs)
    daemon.start()
    try:
        with daemon.connect() as conn:
            g = Guest(conn, test_guest, "ms-fails", tmp_path)
            try:
                slowfs.fail_writes()
                with pytest.raises(client.QemudClientError):
                    g.dom.managed_save()
                assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
                assert not g.dom.has_managed_save()
                assert after_discards(slowfs.mount / "state" / "save") == []
                g.uptime()
            finally:
                g.serial.close()
    finally:
        slowfs.release_writes()
        stop_destroying_guests(daemon)


def test_corrupt_image_is_reported_and_kept(qemud: DaemonProcess, guest: Guest) -> None:
    """As libvirt (qemuDomainObjStart): a restore that fails is an error and the image
    stays; start --force-boot then boots."""
    name = guest.dom.name
    guest.dom.managed_save()
    path = image(qemud, name)
    data = path.read_bytes()
    offset = data.index(b"</domain>") + len(b"</domain>\n")
    path.write_bytes(data[:offset] + b"\xde\xad" * 4096)  # no migration stream
    err = shell(qemud, "start", name, ok=False)
    assert f"Unable to restore domain '{name}' from its managed save image {path}" in err
    assert "the image is kept" in err
    assert guest.dom.state()[0] == DomainState.SHUTOFF
    assert path.is_file() and guest.dom.has_managed_save()
    assert list_state(qemud, name, "--all", "--managed-save") == "saved"
    guest.serial.close()
    guest.dom.create(client.domain.START_FORCE_BOOT)
    assert guest.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
    assert not path.exists()
    guest.serial = SerialPort(guest.sock)
    guest.serial.wait_for(READY)


def test_image_survives_restart_define_and_autostart_resumes(
        tmp_path: Path, test_guest: TestGuest) -> None:
    """A daemon restart finds the image again (the file is the truth), a define over the
    domain keeps it, and autostart resumes from it as start does."""
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    g = None
    try:
        with daemon.connect() as conn:
            g = Guest(conn, test_guest, "ms-restart", tmp_path)
            g.uptime()  # (it answers before the save)
            g.dom.managed_save()
        daemon.stop()
        daemon.start()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("ms-restart")
            g.dom = dom
            assert dom.has_managed_save()
            assert dom.state()[0] == DomainState.SHUTOFF
            assert [d.name for d in conn.list_domains(client.ListFlags.MANAGEDSAVE)] == \
                ["ms-restart"]
            conn.define_xml(dom.xml(client.domain.XML_INACTIVE))  # a define keeps it
            assert dom.has_managed_save()
            dom.set_autostart(True)
        daemon.stop()
        (daemon.run_dir / "autostarted").unlink()  # a host reboot: autostart again
        daemon.start()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("ms-restart")
            g.dom = dom
            wait_for(lambda: dom.state()[0] != DomainState.SHUTOFF and
                     dom.state()[1] != PausedReason.STARTING_UP, timeout=60,
                     message="the autostart done")
            assert dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
            assert not dom.has_managed_save()
            assert not image(daemon, "ms-restart").exists()
            g.resumed()
    finally:
        if g is not None:
            g.serial.close()
        stop_destroying_guests(daemon)


def test_daemon_killed_during_managedsave_leaves_no_image(
        tmp_path: Path, test_guest: TestGuest, slowfs: SlowFS) -> None:
    """kill -9 while the managed save's migration waits on its (held) writes: the
    restarted daemon cancels it and resumes the guest; its partial file is gone, and no
    image is left to be found."""
    daemon = on_slow_state(tmp_path, slowfs)
    saves = slowfs.mount / "state" / "save"
    daemon.start()
    g = None
    try:
        with daemon.connect() as conn:
            g = Guest(conn, test_guest, "ms-killed", tmp_path)
            slowfs.hold_writes()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    with daemon.connect() as other:
                        other.lookup_by_name("ms-killed").managed_save()
                except BaseException as exc:  # noqa: BLE001 - the daemon dies under it
                    errors.append(exc)
            saving = threading.Thread(target=save)
            saving.start()
            slowfs.wait_held_write()
            assert [p.name for p in saves.iterdir()] == [".ms-killed.part"]
            daemon.kill()
            saving.join(30)
            assert errors  # the save never completed
        daemon.start()
        # (QEMU's migration thread waits in its write: the cancel takes once it returns)
        slowfs.release_writes()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("ms-killed")
            g.dom = dom
            wait_for(lambda: dom.state() == (DomainState.RUNNING, RunningReason.BOOTED),
                     timeout=30, message="the guest running again")
            assert not dom.has_managed_save()
            assert after_discards(saves) == []
            g.uptime()
    finally:
        slowfs.release_writes()
        if g is not None:
            g.serial.close()
        stop_destroying_guests(daemon)


def test_image_blocks_revert_and_undefine_keeps_snapshots(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """A managed save image belongs to the disks as they are: a snapshot revert is
    refused while it exists (a later start would restore the memory onto reverted
    disks), and an undefine refused for the image leaves the snapshots alone (the
    snapshot duty's part of the undefine asks the driver's rule first)."""
    from protocol.constants import UndefineFlags
    from tests.appliance.snapshot_guests import disk_xml, make_image
    data = make_image(tmp_path / "data.qcow2")
    sock = tmp_path / "ms-snap.serial"
    with qemud.connect() as conn:
        dom = conn.define_xml(guest_xml("ms-snap", test_guest, sock, extra=disk_xml(data)))
        try:
            dom.create(client.START_PAUSED)
            dom.snapshot_create("s1")
            dom.managed_save()
            with pytest.raises(client.OperationInvalid) as refused:
                dom.snapshot_revert("s1")
            assert refused.value.message == (
                "Requested operation is not valid: domain 'ms-snap' has a managed save "
                "image, whose memory state belongs to its disks as they are now: no revert "
                "to a snapshot while it exists; start the domain to resume it first, or "
                "remove the image (managedsave-remove ms-snap)")
            with pytest.raises(client.OperationInvalid, match="Refusing to undefine while "
                                                              "domain managed save image"):
                dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
            assert [s.name for s in dom.snapshots()] == ["s1"]
            assert dom.has_managed_save()
            dom.managed_save_remove()
            dom.snapshot_revert("s1")  # the user chose: the image is gone, the revert goes
            assert dom.state()[0] == DomainState.SHUTOFF  # a disk-only snapshot: shut off
        finally:
            remove_domain(dom, UndefineFlags.SNAPSHOTS_METADATA
                          | client.domain.UNDEFINE_MANAGED_SAVE)


def test_undefine_is_refused_while_a_managed_save_runs(
        tmp_path: Path, test_guest: TestGuest, slowfs: SlowFS) -> None:
    """While the managed save's image is still written (under its temp name: there is
    no image yet), undefine is refused as busy, with or without --managed-save (and
    through the snapshot duty's part of it); the save completes, the domain stays
    defined with its image, and a start resumes it. Before, the undefine was accepted:
    the domain became transient, the save then stopped it, it vanished, and its image
    stayed in state/save/, an orphan no start would restore."""
    daemon = on_slow_state(tmp_path, slowfs)
    saves = slowfs.mount / "state" / "save"
    name = "ms-undefined"
    daemon.start()
    try:
        with daemon.connect() as conn:
            g = Guest(conn, test_guest, name, tmp_path)
            slowfs.hold_writes()
            thread, outcome = in_thread(
                lambda: daemon.connect().lookup_by_name(name).managed_save())
            slowfs.wait_held_write()
            assert not image(daemon, name).exists()
            err = shell(daemon, "undefine", name, ok=False)
            assert f"error: Failed to undefine domain '{name}'" in err
            assert f"Requested operation is not valid: domain '{name}' is busy: save in " \
                   "progress" in err
            for flags in (client.domain.UNDEFINE_MANAGED_SAVE,
                          UndefineFlags.SNAPSHOTS_METADATA):
                with pytest.raises(client.OperationInvalid) as refused:
                    g.dom.undefine(flags)
                assert refused.value.message == "Requested operation is not valid: " \
                    f"domain '{name}' is busy: save in progress"
            slowfs.release_writes()
            thread.join(60)
            assert outcome == {"result": None}, outcome
            assert g.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            assert list_state(daemon, name, "--all", "--managed-save") == "saved"
            assert g.dom.has_managed_save()
            assert after_discards(saves) == [f"{name}.save"]
            assert shell(daemon, "start", name) == f"Domain '{name}' started\n"
            g.resumed()
            g.close()
    finally:
        slowfs.release_writes()
        stop_destroying_guests(daemon)
