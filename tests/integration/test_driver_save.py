"""Saves that do not complete: the guest is left as it was, no file is left behind, and
a daemon killed during a save cancels it when it comes back (as libvirt does when it
re-attaches during a save job). Real QEMU guests under TCG; the save's ``exec:cat`` is a
held wrapper (tests/helpers/held_qemu_img.py) that a test can hold or make fail."""

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
    serving,
    stop_destroying_guests,
    wait_for,
)
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.procs import wait_exited
from tests.integration.conftest import TestGuest
from tests.integration.guest import BootedGuest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def held_cat(tmp_path_factory: pytest.TempPathFactory) -> HeldQemuImg:
    return HeldQemuImg.install(tmp_path_factory.mktemp("held-cat"), "cat")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory, held_cat: HeldQemuImg
          ) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-save"),
                           env={"PATH": held_cat.path_env()})
    with serving(daemon):
        yield daemon


@pytest.fixture
def held(held_cat: HeldQemuImg) -> Iterator[HeldQemuImg]:
    """The ``cat`` wrapper, left neither holding nor failing after the test."""
    yield held_cat
    held_cat.release()
    held_cat.fail.unlink(missing_ok=True)


def booted(conn: client.Connection, test_guest: TestGuest, name: str, tmp: Path
           ) -> BootedGuest:
    """A booted test guest, its serial socket ``tmp/NAME.serial`` (the tests list what
    the directory holds)."""
    return BootedGuest(conn, test_guest, name, tmp, sock=tmp / f"{name}.serial")


def leftovers(directory: Path) -> list[str]:
    return after_discards(directory)


def test_save_to_a_directory_is_refused_before_the_guest_stops(
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, held: HeldQemuImg
        ) -> None:
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
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, held: HeldQemuImg,
        paused: bool) -> None:
    """The migration fails after the save stopped the vCPUs: a running guest runs again,
    one the user had paused stays paused, and the temp file is gone."""
    saves = tmp_path / "saves"
    saves.mkdir()
    with qemud.connect() as conn:
        g = booted(conn, test_guest, f"save-fails-{'paused' if paused else 'running'}",
                  tmp_path)
        try:
            if paused:
                g.dom.suspend()
            before = g.dom.state()
            held.fail.touch()
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
        tmp_path: Path, test_guest: TestGuest, held_cat: HeldQemuImg) -> None:
    """kill -9 while the save's migration waits on its (held) writer: the restarted
    daemon cancels the migration, resumes the guest and removes the temp file; the
    user's target never appears."""
    saves = tmp_path / "saves"
    saves.mkdir()
    daemon = DaemonProcess(tmp_path / "d", env={"PATH": held_cat.path_env()})
    daemon.start()
    g = None
    try:
        with daemon.connect() as conn:
            g = booted(conn, test_guest, "save-killed", tmp_path)
            held_cat.start_holding()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    with daemon.connect() as other:
                        other.lookup_by_name("save-killed").save(str(saves / "g.sav"))
                except BaseException as exc:  # noqa: BLE001 - the daemon dies under it
                    errors.append(exc)
            saving = threading.Thread(target=save)
            saving.start()
            wait_for(held_cat.held.exists, timeout=60, message="the save's cat held")
            assert [p.name for p in saves.iterdir()] != []  # its temp file
            daemon.kill()
            saving.join(30)
            assert errors  # the save never completed
        daemon.start()
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
        held_cat.release()
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
        qemud: DaemonProcess, test_guest: TestGuest, tmp_path: Path, held: HeldQemuImg
        ) -> None:
    """The target became a directory while the migration ran, so the complete file
    cannot be renamed to it: the save fails as any failed save does (the guest was not
    stopped yet and runs on, the temp file is removed)."""
    saves = tmp_path / "saves"
    saves.mkdir()
    target = saves / "g.sav"
    with qemud.connect() as conn:
        g = booted(conn, test_guest, "save-rename-fails", tmp_path)
        try:
            held.start_holding()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    with qemud.connect() as other:
                        other.lookup_by_name("save-rename-fails").save(str(target))
                except client.QemudClientError as exc:
                    errors.append(exc)
            saving = threading.Thread(target=save)
            saving.start()
            wait_for(held.held.exists, timeout=60, message="the save's cat held")
            target.mkdir()
            held.release()
            saving.join(60)
            [error] = errors
            assert isinstance(error, client.OperationFailed)
            assert str(error).endswith(f"cannot finish save file {target}: Is a directory")
            assert g.dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
            g.answers("after-failed-rename")
            assert leftovers(saves) == ["g.sav"]  # (the directory)
        finally:
            g.close()
