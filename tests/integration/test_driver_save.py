"""Saves that do not complete: the guest is left as it was, no file is left behind, and
a daemon killed during a save cancels it when it comes back (as libvirt does when it
re-attaches during a save job). Real QEMU guests under TCG. QEMU writes the image itself,
through a descriptor the daemon passes it (``getfd``, ``migrate fd:``); the saves go to
a FUSE file system whose writes past the daemon's header the test holds or fails
(tests/helpers/slowfs.py), and whose fsync of the complete image it can hold too. Also:
two saves to one file, and the state (running or paused) a restored guest comes back
in."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, PausedReason, RunningReason, ShutoffReason
from tests.helpers.daemon import (
    DaemonProcess,
    after_discards,
    qemush,
    serving,
    stop_destroying_guests,
    wait_for,
)
from tests.helpers.procs import wait_exited
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import in_thread
from tests.integration.conftest import TestGuest
from tests.integration.guest import BootedGuest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-save"))
    with serving(daemon):
        yield daemon


@pytest.fixture
def saves(slowfs: SlowFS) -> Path:
    """A directory for save images on the FUSE file system."""
    directory = slowfs.mount / "saves"
    directory.mkdir()
    return directory


def booted(conn: client.Connection, test_guest: TestGuest, name: str, tmp: Path
           ) -> BootedGuest:
    """A booted test guest, its serial socket ``tmp/NAME.serial`` (the tests list what
    the directory holds)."""
    return BootedGuest(conn, test_guest, name, tmp, sock=tmp / f"{name}.serial")


def leftovers(directory: Path) -> list[str]:
    return after_discards(directory)


def shell(daemon: DaemonProcess, *args: str, ok: bool = True) -> str:
    """qemush's stdout (``ok``) or stderr (a failing command)."""
    done = qemush(daemon, *args)
    assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
    return done.stdout if ok else done.stderr


def test_save_to_a_directory_is_refused_before_the_guest_stops(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    target = tmp_path / "saves"
    target.mkdir()
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-to-dir", tmp_path)
        try:
            with pytest.raises(client.OperationFailed,
                               match=f"cannot save to {target}: it is a directory"):
                g.dom.save(str(target))
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            g.answers("still-here")
            assert leftovers(tmp_path) == ["save-to-dir.serial", "saves"]
        finally:
            g.close()


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_failed_save_leaves_the_guest_as_it_was(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path, paused: bool) -> None:
    """The migration fails after the save stopped the vCPUs: a running guest runs again,
    one the user had paused stays paused, and the temp file is gone."""
    with qemud.connect() as conn:
        g = booted(conn, test_guest, f"save-fails-{'paused' if paused else 'running'}",
                  tmp_path)
        try:
            if paused:
                g.dom.suspend()
            before = g.dom.state()
            slowfs.fail_writes()  # QEMU's, past the daemon's header
            with pytest.raises(client.QemudClientError):
                g.dom.save(str(saves / "g.sav"))
            assert g.dom.state() == before
            assert leftovers(saves) == []
            if paused:
                assert before == (DomainState.PAUSED, PausedReason.USER)
                g.dom.resume()
            g.answers("after-failed-save")
        finally:
            g.close()


def test_daemon_killed_during_save_cancels_it_at_restart(
        tmp_path: Path, test_guest: TestGuest, slowfs: SlowFS, saves: Path) -> None:
    """kill -9 while the save's migration waits on its (held) writes: the restarted
    daemon cancels the migration, resumes the guest and removes the temp file; the
    user's target never appears."""
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    g = None
    try:
        with daemon.connect() as conn:
            g = booted(conn, test_guest, "save-killed", tmp_path)
            slowfs.hold_writes()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    with daemon.connect() as other:
                        other.lookup_by_name("save-killed").save(str(saves / "g.sav"))
                except BaseException as exc:  # noqa: BLE001 - the daemon dies under it
                    errors.append(exc)
            saving = threading.Thread(target=save)
            saving.start()
            slowfs.wait_held_write()
            assert [p.name for p in saves.iterdir()] != []  # its temp file
            daemon.kill()
            saving.join(30)
            assert errors  # the save never completed
        daemon.start()
        # (QEMU's migration thread waits in its write: the cancel takes once it returns)
        slowfs.release_writes()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("save-killed")
            g.dom = dom
            wait_for(lambda: dom.state() == (DomainState.RUNNING, RunningReason.BOOTED),
                     timeout=30, message="the guest running again")
            g.answers("after-killed-save")
            assert leftovers(saves) == []
            assert "a save was in progress when the last daemon stopped: cancelled, the " \
                   "guest resumed" in daemon.log_text()
            g.close()
            g = None
    finally:
        slowfs.release_writes()
        if g is not None:
            g.serial.close()
        stop_destroying_guests(daemon)


#: a qemu-system-x86_64 that starts with SIGTERM blocked (a blocked signal stays blocked
#: across exec, and QEMU does not unblock it): the SIGTERM a save sends once its file is
#: complete stays pending, so a test can kill the daemon before QEMU has exited
_DEAF_QEMU = """#!{python}
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM}})
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


def deaf_qemu(tmp_path: Path) -> Path:
    """A directory holding :data:`_DEAF_QEMU` as ``qemu-system-x86_64`` (for the
    daemon's ``qemu.emulator_dirs``)."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    deaf = wrappers / "qemu-system-x86_64"
    deaf.write_text(_DEAF_QEMU.format(python=sys.executable,
                                      real="/usr/bin/qemu-system-x86_64"))
    deaf.chmod(0o755)
    return wrappers


@pytest.mark.parametrize("how,qemu", [("save", "alive"), ("managedsave", "alive"),
                                      ("save", "gone")])
def test_daemon_killed_after_the_save_file_is_complete_finishes_the_save(
        tmp_path: Path, test_guest: TestGuest, how: str, qemu: str) -> None:
    """kill -9 after QEMU finished writing the save file but before it exited: the saved
    state is the guest's, so the restarted daemon finishes the save (QEMU stopped, the
    domain shut off as saved, the image where the user asked) instead of resuming the
    guest and removing the image. ``gone``: QEMU exited too before the restart."""
    saves = tmp_path / "saves"
    saves.mkdir()
    # a SIGTERM QEMU never sees: SIGKILL after destroy_grace (long enough to kill the
    # daemon meanwhile)
    daemon = DaemonProcess(tmp_path / "d", config={"qemu": {
        "emulator_dirs": [str(deaf_qemu(tmp_path))], "destroy_grace": 10}})
    daemon.start()
    name = f"saved-{how}-{qemu}"
    g = None
    try:
        with daemon.connect() as conn:
            g = booted(conn, test_guest, name, tmp_path)
            pid = int((daemon.guest_run_dir(name) / "qemu.pid").read_text())
            target = saves / "g.sav" if how == "save" else \
                daemon.state_dir / "save" / f"{name}.save"

            def save() -> None:
                try:
                    with daemon.connect() as other:
                        dom = other.lookup_by_name(name)
                        if how == "save":
                            dom.save(str(target))
                        else:
                            dom.managed_save()
                except client.QemudClientError:  # the daemon dies under it
                    pass
            saving = threading.Thread(target=save)
            saving.start()
            wait_for(target.exists, timeout=60, message="the complete save file")
            daemon.kill()
            saving.join(30)
            assert os.path.exists(f"/proc/{pid}")  # QEMU outlived the daemon
            if qemu == "gone":
                os.kill(pid, signal.SIGKILL)
                wait_exited([pid], timeout=30)
        daemon.config["qemu"]["destroy_grace"] = 1
        daemon.start()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name(name)
            wait_for(lambda: dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED),
                     timeout=30, message="the domain shut off as saved")
            wait_exited([pid], timeout=30)
            assert "a save had completed when the last daemon stopped: finished" \
                in daemon.log_text()
            assert [p.name for p in target.parent.iterdir()] == [target.name]
            if how == "save":
                g.dom = conn.restore(str(target))
            else:
                assert dom.has_managed_save()
                dom.create()
                g.dom = dom
            g.resumed()
            g.close()
            g = None
    finally:
        if g is not None:
            g.serial.close()
        stop_destroying_guests(daemon)


def test_managed_save_image_cannot_be_removed_while_the_guest_stops(
        tmp_path: Path, test_guest: TestGuest) -> None:
    """The managed save image is in place before QEMU has exited (its SIGTERM blocked
    here, so the window lasts): managedsave-remove is refused as busy then, rather than
    deleting the image of a managed save that then reports success."""
    daemon = DaemonProcess(tmp_path / "d", config={"qemu": {
        "emulator_dirs": [str(deaf_qemu(tmp_path))], "destroy_grace": 2}})
    name = "msave-stopping"
    target = daemon.state_dir / "save" / f"{name}.save"
    with serving(daemon), daemon.connect() as conn:
        g = booted(conn, test_guest, name, tmp_path)
        try:
            with daemon.connect() as other:
                saving = threading.Thread(
                    target=other.lookup_by_name(name).managed_save)
                saving.start()
                wait_for(target.exists, timeout=60, message="the managed save image")
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain '{name}' is busy: save in progress"):
                    g.dom.managed_save_remove()
                saving.join(60)
            assert g.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            assert g.dom.has_managed_save() and target.is_file()
            g.dom.create()
            g.resumed()
        finally:
            g.close()


def test_a_save_whose_rename_fails_leaves_the_guest_running(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    """The target became a directory while the migration ran, so the complete file
    cannot be renamed to it: the save fails as any failed save does (the guest was not
    stopped yet and runs on, the temp file is removed)."""
    target = saves / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-rename-fails", tmp_path)
        try:
            slowfs.hold_writes()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    with qemud.connect() as other:
                        other.lookup_by_name("save-rename-fails").save(str(target))
                except client.QemudClientError as exc:
                    errors.append(exc)
            saving = threading.Thread(target=save)
            saving.start()
            slowfs.wait_held_write()
            target.mkdir()
            slowfs.release_writes()
            saving.join(60)
            [error] = errors
            assert isinstance(error, client.OperationFailed)
            assert str(error).endswith(f"cannot finish save file {target}: Is a directory")
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            g.answers("after-failed-rename")
            assert leftovers(saves) == ["g.sav"]  # (the directory)
        finally:
            g.close()


def test_the_guest_stops_only_once_its_image_is_on_disk(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    """The migration has written the whole image; the guest is stopped only after the
    image's fsync (waited for off the loop), so a power cut cannot take the only copy of
    its state with the page cache. Meanwhile other calls are answered."""
    target = saves / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-synced", tmp_path)
        try:
            slowfs.hold()
            thread, outcome = in_thread(
                lambda: qemud.connect().lookup_by_name("save-synced").save(str(target)))
            [held] = slowfs.wait_held(timeout=60)
            assert held.startswith("/saves/")  # the complete image, under its temp name
            assert not target.exists()
            assert g.dom.state()[0] != DomainState.SHUTOFF  # not stopped yet
            assert conn.node_info().cpus >= 1
            slowfs.release()
            thread.join(60)
            assert outcome == {"result": None}, outcome
            assert g.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            assert target.is_file()
        finally:
            slowfs.release()
            g.close()


def test_a_save_whose_image_cannot_be_synced_leaves_the_guest_running(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-eio", tmp_path)
        try:
            slowfs.hold()
            thread, outcome = in_thread(
                lambda: qemud.connect().lookup_by_name("save-eio").save(str(saves / "g.sav")))
            [held] = slowfs.wait_held(timeout=60)
            slowfs.fail()
            thread.join(60)
            error = outcome.get("error")
            assert isinstance(error, client.OperationFailed), outcome
            assert str(error) == (f"operation failed: cannot sync save file "
                                  f"{slowfs.mount}{held}: Input/output error")
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            g.answers("after-eio")
            assert leftovers(saves) == []
        finally:
            slowfs.release()
            g.close()


@pytest.mark.parametrize("synced", [True, False], ids=["synced", "eio"])
def test_daemon_killed_while_the_image_is_synced(
        tmp_path: Path, test_guest: TestGuest, slowfs: SlowFS, saves: Path,
        synced: bool) -> None:
    """kill -9 while the complete image's fsync waits. The restarted daemon syncs it
    first: on disk, it finishes the save (the guest shut off as saved, the image at its
    target); where that fsync fails (EIO), it cancels the save as one cut short (the
    guest runs on, no image is left to restore)."""
    target = saves / "g.sav"
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start()
    g = None
    try:
        with daemon.connect() as conn:
            g = booted(conn, test_guest, "save-sync-killed", tmp_path)
            slowfs.hold()
            thread, outcome = in_thread(lambda: daemon.connect().lookup_by_name(
                "save-sync-killed").save(str(target)))
            slowfs.wait_held(timeout=60)
            assert daemon.proc is not None
            daemon.proc.kill()  # (it dies once the kernel's fsync has returned)
            if synced:
                slowfs.release()
            else:
                slowfs.fail()  # that fsync, and the restarted daemon's
            daemon.proc.wait()
            thread.join(30)
            assert "error" in outcome  # the save never answered
        daemon.start()
        with daemon.connect() as conn:
            dom = conn.lookup_by_name("save-sync-killed")
            g.dom = dom
            if synced:
                wait_for(lambda: dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED),
                         timeout=30, message="the guest shut off as saved")
                assert leftovers(saves) == ["g.sav"]
                g = None
            else:
                wait_for(lambda: dom.state() == (DomainState.RUNNING, RunningReason.BOOTED),
                         timeout=30, message="the guest running again")
                g.answers("after-failed-sync")
                assert leftovers(saves) == []
                assert "cannot sync save file" in daemon.log_text()
    finally:
        slowfs.release()
        if g is not None:
            g.serial.close()
        stop_destroying_guests(daemon)


def test_a_guest_restarted_while_its_image_is_synced_is_not_saved(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    """destroy and start while the image's fsync waits: the save fails (the guest it
    would stop is not the one it saved), the new guest runs on, and no image is left
    that a restore would put over its disks."""
    target = saves / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-restarted", tmp_path)
        try:
            slowfs.hold()
            thread, outcome = in_thread(lambda: qemud.connect().lookup_by_name(
                "save-restarted").save(str(target)))
            slowfs.wait_held(timeout=60)
            g.dom.destroy()
            g.dom.create()
            g.reconnect()
            g.serial.wait_for("QEMUD-GUEST-READY", timeout=60)
            slowfs.release()
            thread.join(60)
            error = outcome.get("error")
            assert isinstance(error, client.OperationFailed), outcome
            assert str(error).endswith("domain 'save-restarted' stopped during its save")
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            g.answers("the-new-one")
            assert leftovers(saves) == []
        finally:
            slowfs.release()
            g.close()


def test_a_medium_change_is_refused_while_a_save_runs(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    """The save writes the guest's live XML (with the medium then in the drive) into its
    image when it starts: a medium changed meanwhile would be gone after the restore,
    so the change (change-media, update-device) is refused as busy, as attach and
    detach are; the restored guest has the medium it was saved with."""
    target = saves / "g.sav"
    medium = tmp_path / "m.iso"
    medium.write_bytes(b"\1" * (1 << 20))
    cdrom = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             f"<source file='{medium}'/><target dev='hdc' bus='ide'/><readonly/></disk>")
    with qemud.connect() as conn:
        g = BootedGuest(conn, test_guest, "save-media", tmp_path, extra=cdrom,
                        sock=tmp_path / "save-media.serial")
        try:
            slowfs.hold_writes()
            thread, outcome = in_thread(
                lambda: qemud.connect().lookup_by_name("save-media").save(str(target)))
            slowfs.wait_held_write()
            for change in (lambda: g.dom.change_media("hdc", None),
                           lambda: g.dom.update_device(cdrom.replace(f"<source file='{medium}'/>",
                                                                     ""))):
                with pytest.raises(client.OperationInvalid,
                                   match="domain 'save-media' is busy: save in progress"):
                    change()
            slowfs.release_writes()
            thread.join(60)
            assert outcome == {"result": None}, outcome
            g.dom = conn.restore(str(target))
            assert str(medium) in g.dom.xml()
            g.resumed()
        finally:
            g.close()


def test_a_save_to_a_file_another_save_writes_is_refused(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, slowfs: SlowFS,
        saves: Path) -> None:
    """Two guests saved to one file: while the first save runs, the second is refused
    before it touches anything (the first's temp file, its own guest), naming the file
    and the save in progress, also when its path is spelt another way (through a
    symlink to the directory). The first save completes and its image restores its
    guest; then the file is free for the second. Before, the second save removed the
    first's temp file while QEMU wrote it: the first renamed the second guest's
    half-written image into place, reported success and stopped its guest as saved (its
    state lost), and the second failed with ENOENT."""
    target = saves / "same.sav"
    link = tmp_path / "link"
    link.symlink_to(saves)
    with qemud.connect() as conn:
        first = booted(conn, test_guest, "save-same-1", tmp_path)
        second = booted(conn, test_guest, "save-same-2", tmp_path)
        try:
            slowfs.hold_writes()
            thread, outcome = in_thread(
                lambda: qemud.connect().lookup_by_name("save-same-1").save(str(target)))
            slowfs.wait_held_write()
            [temp] = [p.name for p in saves.iterdir()]
            assert temp.startswith(".same.sav.qemud-save-") and temp.endswith(".part")
            for path in (target, link / "same.sav"):
                refusal, refused = in_thread(
                    lambda path=path: qemud.connect().lookup_by_name("save-same-2").save(
                        str(path)))
                refusal.join(30)  # (it used to wait for QEMU's held writes)
                error = refused.get("error")
                assert isinstance(error, client.OperationInvalid), refused
                assert error.message == (
                    f"Requested operation is not valid: cannot save domain 'save-same-2' "
                    f"to {path}: a save of domain 'save-same-1' to that file is in "
                    "progress")
            assert second.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            second.answers("not-saved")
            assert [p.name for p in saves.iterdir()] == [temp]  # the first's, untouched
            slowfs.release_writes()
            thread.join(60)
            assert outcome == {"result": None}, outcome
            assert first.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            assert leftovers(saves) == ["same.sav"]
            first.dom = conn.restore(str(target))
            first.resumed()
            second.dom.save(str(target))  # (the file is free again)
            assert second.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            second.dom = conn.restore(str(target))
            second.resumed()
        finally:
            slowfs.release_writes()
            first.close()
            second.close()


def test_a_restored_guest_is_running_or_paused_as_saved_or_as_asked(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """As libvirt: the image records whether the guest ran, so a guest paused at its
    save comes back paused; ``save --running/--paused`` record another state, and
    ``restore --running/--paused`` override the one recorded (``--bypass-cache`` is
    accepted). Before, every restore of a save resumed the guest, and the flags were
    ignored."""
    name = "save-states"
    target = tmp_path / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, name, tmp_path)
        try:
            g.dom.suspend()
            assert shell(qemud, "save", name, str(target)) == \
                f"Domain '{name}' saved to {target}\n"
            assert g.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            assert shell(qemud, "restore", str(target)) == f"Domain restored from {target}\n"
            assert g.dom.state()[0] == DomainState.PAUSED  # as it was saved
            g.dom.resume()
            g.resumed()

            shell(qemud, "save", name, str(target), "--paused", "--bypass-cache")
            g.dom = conn.restore(str(target))
            assert g.dom.state()[0] == DomainState.PAUSED  # as the save asked

            g.dom.save(str(target), client.domain.SAVE_RUNNING)  # (a paused guest)
            g.dom = conn.restore(str(target))
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
            g.resumed()

            g.dom.save(str(target))  # (a running guest)
            g.dom = conn.restore(str(target), client.domain.SAVE_PAUSED)
            assert g.dom.state()[0] == DomainState.PAUSED  # as the restore asked
            g.dom.save(str(target))  # (recorded paused)
            shell(qemud, "restore", str(target), "--running", "--bypass-cache")
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
            g.resumed()
        finally:
            g.close()


def test_save_and_restore_flags_are_checked(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """--running with --paused, and flags the daemon does not know, are refused with
    libvirt's words, before the guest or a file is touched."""
    name = "save-flags"
    target = tmp_path / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, name, tmp_path)
        try:
            for command in (("save", name, str(target)), ("restore", str(target))):
                err = shell(qemud, *command, "--running", "--paused", ok=False)
                assert "Options --running and --paused are mutually exclusive" in err
            both = client.domain.SAVE_RUNNING | client.domain.SAVE_PAUSED
            exclusive = "invalid argument: Flags 'VIR_DOMAIN_SAVE_RUNNING' and " \
                        "'VIR_DOMAIN_SAVE_PAUSED' are mutually exclusive"
            with pytest.raises(client.InvalidArgError) as refused:
                g.dom.save(str(target), both)
            assert refused.value.message == exclusive
            with pytest.raises(client.InvalidArgError) as refused:
                g.dom.save(str(target), 8)
            assert refused.value.message == \
                "invalid argument: unsupported flags (0x8) in function qemuDomainSaveFlags"
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            assert not target.exists()
            g.dom.save(str(target))
            with pytest.raises(client.InvalidArgError) as refused:
                conn.restore(str(target), both)
            assert refused.value.message == exclusive
            with pytest.raises(client.InvalidArgError) as refused:
                conn.restore(str(target), 16)  # (libvirt's _RESET_NVRAM: not supported)
            assert refused.value.message == "invalid argument: unsupported flags (0x10) " \
                                            "in function qemuDomainRestoreFlags"
            assert g.dom.state() == (DomainState.SHUTOFF, ShutoffReason.SAVED)
            g.dom = conn.restore(str(target))
            g.resumed()
        finally:
            g.close()


def test_an_image_of_an_older_qemud_is_restored_running(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    """An image whose header records no state (``QEMUD-SAVE-1``, as a qemud before
    this one wrote a plain save) is still restored, running as it was then, unless
    --paused."""
    name = "save-old-image"
    target = tmp_path / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, name, tmp_path)
        try:
            g.dom.suspend()
            g.dom.save(str(target))
            data = target.read_bytes()
            assert data.startswith(b"QEMUD-SAVE-2\npaused\n")
            target.write_bytes(b"QEMUD-SAVE-1\n" + data[len(b"QEMUD-SAVE-2\npaused\n"):])
            g.dom = conn.restore(str(target))
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.RESTORED)
            g.resumed()
            g.dom.destroy()
            g.dom = conn.restore(str(target), client.domain.SAVE_PAUSED)
            assert g.dom.state()[0] == DomainState.PAUSED
        finally:
            g.close()
