"""An A/B update (or its rollback) that cannot save its definition, or whose daemon is
killed while it does: the VM's appliance state and its definition still agree, and no
scratch disk is emptied for an update that did not happen.

* The new scratch images are made beside the scratch disks and renamed into place only
  once the definition is saved: a define that fails (``QEMUD_FAULT_BEFORE_RENAME``, as
  tests/faults uses it) leaves the scratch contents, the state file and the definition
  as they were, for an update and for a rollback (whose update then stays pending).
* The state is written ahead under a ``switch`` key, the definition saved, then the
  state alone: a daemon killed (kill -9) while the define's fsync waits (the config
  directory on a FUSE file system whose fsyncs the test holds, tests/helpers/slowfs.py)
  comes back on the old version, state and all; one killed once the definition was
  renamed into place (its directory's fsync held) comes back on the new version, the
  update pending and the scratch disks recreated. A rollback killed the same way comes
  back on the previous version, its failed overlay deleted.
* Once the definition is saved the update has happened: a failed last write of the
  state does not fail it, and a client's destroy during its restart does not roll it
  back.
* A running VM that an update, rollback or factory reset stopped and a killed daemon
  never started again is started by the next daemon (not after a host reboot).

Real daemons, real qemu-img; the appliances of test_images (no guest boots, but the
rollback test starts one).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

import client
from client import appliance_images as images
from client.errors import OperationInvalid
from protocol.constants import DomainState, ShutoffReason
from qemud.driver.store import FAULT_ENV
from tests.conftest import DaemonFactory
from tests.faults.slow_disk import held_call
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background
from tests.integration.conftest import TestGuest

from .appliances import build_appliance, descriptor, disk_sources, origin
from .appliances import work as work  # the module's directory for tarballs
from .conftest import BOOT_TIMEOUT, EventLog, wait_state

pytestmark = pytest.mark.integration

INACTIVE = client.XML_INACTIVE
#: what the test writes into a scratch disk: 4 KiB of this byte at offset 0
MARK = 0x4B
#: short: the rollback needs the guest started, not booted
UPDATE_DEADLINE = 6.0


@pytest.fixture(scope="module")
def tarballs(work: Path, test_guest: TestGuest) -> dict[str, Path]:
    """demo 1.0, 2.0 and 3.0 (which sends no heartbeat), not imported."""
    return {
        "1.0": build_appliance(work, test_guest, descriptor("1.0")),
        "2.0": build_appliance(work, test_guest, descriptor("2.0")),
        "3.0": build_appliance(work, test_guest, descriptor("3.0", boot={
            "kernel": "boot/vmlinuz", "initrd": "boot/initramfs.img",
            "cmdline": "console=ttyS0 quiet qemud.noheartbeat"})),
    }


def deployed(d: DaemonProcess, tarballs: dict[str, Path], name: str,
             versions: tuple[str, ...] = ("1.0", "2.0")) -> Path:
    """Import ``versions`` into ``d``, deploy ``name`` from 1.0 (shut off), mark its
    scratch disk; returns the VM's directory."""
    with d.connect() as conn:
        for version in versions:
            assert images.import_appliance(conn, str(tarballs[version])) == f"demo:{version}"
        images.deploy(conn, "demo", name, "1.0")
    vmdir = d.state_dir / "vms" / name
    mark(vmdir / "vdc.scratch.qcow2")
    return vmdir


def mark(image: Path) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {MARK} 0 4096", str(image)],
                   check=True, capture_output=True)


def marked(image: Path) -> bool:
    """Whether the disk still holds what :func:`mark` wrote (a recreated one is zeros)."""
    return subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-U", "-c",
                           f"read -P {MARK} 0 4096", str(image)],
                          capture_output=True).returncode == 0


def state_of(vmdir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vmdir / "appliance-state.json").read_text())
    return data


def listed_under(conn: client.Connection, name: str) -> list[str]:
    """The versions ``appliance-list`` shows ``name`` under."""
    return [i.version for i in images.list_appliances(conn) if name in i.vms]


def restart(d: DaemonProcess, env: dict[str, str]) -> None:
    d.stop()
    d.env = env
    d.start()


def test_a_failed_update_changes_nothing_scratch_contents_included(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    d = daemon_factory()
    vmdir = deployed(d, tarballs, "upd-fail")
    scratch = vmdir / "vdc.scratch.qcow2"
    before = state_of(vmdir)
    restart(d, {FAULT_ENV: "domains/upd-fail.xml"})  # its define fails at the rename
    with d.connect() as conn:
        dom = conn.lookup_by_name("upd-fail")
        with pytest.raises(client.QemudClientError) as info:
            images.update(conn, dom, "2.0")
        assert "injected fault before rename" in str(info.value), info.value
        # the VM is as it was: its scratch contents, its state and its definition
        assert marked(scratch)
        assert state_of(vmdir) == before
        assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
        assert disk_sources(dom.xml(INACTIVE))["vda"] == str(vmdir / "vda.a.qcow2")
        assert listed_under(conn, "upd-fail") == ["1.0"]
        assert sorted(vmdir.glob("*.new")) == []
    restart(d, {})
    with d.connect() as conn:  # the same update goes through now
        dom = conn.lookup_by_name("upd-fail")
        images.update(conn, dom, "2.0")
        assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
        assert not marked(scratch)  # recreated empty
        state = state_of(vmdir)
        assert (state["version"], state["slot"]) == ("2.0", "b") and "switch" not in state
        assert (state["pending"]["from"], state["pending"]["to"]) == ("1.0", "2.0")


def test_a_failed_rollback_changes_nothing_and_the_update_stays_pending(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    d = daemon_factory(config={"appliance": {"update_deadline": UPDATE_DEADLINE}})
    vmdir = deployed(d, tarballs, "rb-fail", ("1.0", "3.0"))
    scratch = vmdir / "vdc.scratch.qcow2"
    with d.connect() as conn:
        images.update(conn, conn.lookup_by_name("rb-fail"), "3.0")  # off: switched now
    mark(scratch)  # (the update recreated it)
    pending = state_of(vmdir)
    assert pending["pending"]["to"] == "3.0"
    restart(d, {FAULT_ENV: "domains/rb-fail.xml"})
    try:
        with d.connect() as conn:
            events = EventLog(conn)
            conn.register_event(client.EventId.APPLIANCE)
            dom = conn.lookup_by_name("rb-fail")
            dom.create()  # 3.0 sends no heartbeat: the rollback comes at the deadline
            failed = events.wait("rb-fail", "update-rollback-failed",
                                 timeout=UPDATE_DEADLINE + 60)[0]
            assert "injected fault before rename" in failed.text, failed.text
            wait_state(dom, DomainState.SHUTOFF)  # (stopped by the rollback)
            assert events.appliance("rb-fail", "update-rolled-back") == []
            # still 3.0, pending, in the definition and in the state; scratch kept
            assert marked(scratch)
            # (once the rollback's restart mark, written as it stopped the guest, is
            # dropped again: not waited for by the rollback)
            wait_for(lambda: state_of(vmdir) == pending, timeout=10,
                     message="the state as it was")
            assert origin(dom.xml(INACTIVE)) == ("demo", "3.0")
            assert disk_sources(dom.xml(INACTIVE))["vda"] == str(vmdir / "vda.b.qcow2")
            assert (vmdir / "vda.b.qcow2").is_file()  # the failed overlay is not deleted
            assert listed_under(conn, "rb-fail") == ["3.0"]
            assert sorted(vmdir.glob("*.new")) == []
            with pytest.raises(OperationInvalid, match="waiting for the guest's heartbeat"):
                images.update(conn, dom, "1.0")
    finally:
        stop_destroying_guests(d)


def on_slowfs(slowfs: SlowFS, daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose config directory (the definitions) is on ``slowfs``."""
    return daemon_factory(config={"paths": {"config_dir": str(slowfs.mount / "config")}})


def kill_during_update(slowfs: SlowFS, d: DaemonProcess, name: str, saved: bool,
                       before_restart: Any = None) -> None:
    """Update ``name`` to 2.0 and kill -9 the daemon while the define's first fsync (its
    temp file: the definition is not saved) or, ``saved``, its second one (the
    directory's, after the rename: the definition is on disk) waits; then
    ``before_restart()``, if given, and restart."""
    update = held_call(slowfs, d, lambda c: images.update(c, c.lookup_by_name(name), "2.0"))
    try:
        [temp] = slowfs.held()
        assert temp.startswith(f"/config/domains/.{name}.xml.") and temp.endswith(".tmp")
        if saved:
            slowfs.let()
            assert slowfs.wait_held() == ["/config/domains"]
        assert d.proc is not None
        d.proc.kill()  # the process cannot finish dying before the kernel's fsync does
    finally:
        slowfs.release()
    d.proc.wait()
    with pytest.raises(client.ConnectionLost):
        update.wait()
    if before_restart is not None:
        before_restart()
    d.start()


def test_daemon_killed_before_the_updated_definition_is_saved(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    vmdir = deployed(d, tarballs, "kill-early")
    before = state_of(vmdir)
    kill_during_update(slowfs, d, "kill-early", saved=False)
    with d.connect() as conn:
        dom = conn.lookup_by_name("kill-early")
        # the definition is 1.0's, and so is the state: no update, none pending
        assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
        assert disk_sources(dom.xml(INACTIVE))["vda"] == str(vmdir / "vda.a.qcow2")
        assert state_of(vmdir) == before
        assert listed_under(conn, "kill-early") == ["1.0"]
        assert marked(vmdir / "vdc.scratch.qcow2")
        assert sorted(vmdir.glob("*.new")) == []
        assert "an appliance image change to demo 2.0 was cut short: its definition was " \
               "not saved" in d.log_text()
        images.update(conn, dom, "2.0")  # not "waiting for the guest's heartbeat"
        assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
        assert state_of(vmdir)["version"] == "2.0"


def test_daemon_killed_after_the_updated_definition_is_saved(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    vmdir = deployed(d, tarballs, "kill-late")
    kill_during_update(slowfs, d, "kill-late", saved=True)
    with d.connect() as conn:
        dom = conn.lookup_by_name("kill-late")
        # the definition is 2.0's, and so is the state: updated, pending its heartbeat
        assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
        assert disk_sources(dom.xml(INACTIVE))["vda"] == str(vmdir / "vda.b.qcow2")
        state = state_of(vmdir)
        assert (state["version"], state["slot"]) == ("2.0", "b") and "switch" not in state
        assert (state["pending"]["from"], state["pending"]["to"]) == ("1.0", "2.0")
        assert state["previous"]["version"] == "1.0"
        assert state["disks"]["vda"]["path"] == str(vmdir / "vda.b.qcow2")
        assert listed_under(conn, "kill-late") == ["2.0"]
        assert not marked(vmdir / "vdc.scratch.qcow2")  # recreated, as the update does
        assert sorted(vmdir.glob("*.new")) == []
        assert "an appliance image change to demo 2.0 was cut short: its definition was " \
               "saved, so the VM is on 2.0" in d.log_text()
        with pytest.raises(OperationInvalid, match="waiting for the guest's heartbeat"):
            images.update(conn, dom, "1.0")


def running_deployed(d: DaemonProcess, tarballs: dict[str, Path], name: str) -> Path:
    """:func:`deployed`, then started (the VM directory)."""
    vmdir = deployed(d, tarballs, name)
    with d.connect() as conn:
        conn.lookup_by_name(name).create()
    return vmdir


def kill_while_held(d: DaemonProcess, held: HeldQemuImg, call: Any,
                    check: Any = lambda: True) -> None:
    """``call`` on its own connection; once the tool it runs is held (``held``) and
    ``check()`` holds, kill -9 the daemon, let the tool go, and restart the daemon."""
    held.start_holding()
    background = Background(d, call)
    try:
        wait_for(held.held.exists, timeout=60, message="the operation's tool held")
        assert check()
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
    finally:
        held.release()
    with pytest.raises(client.ConnectionLost):
        background.wait()
    d.start()


@pytest.mark.parametrize("saved", [False, True], ids=["before-define", "after-define"])
def test_a_running_vm_whose_update_a_killed_daemon_cut_short_runs_again(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path],
        saved: bool) -> None:
    """The update stopped the guest; the daemon was killed before it started it again:
    the next daemon starts it, on the version its definition settled on (1.0 when the
    define had not landed, 2.0 pending its heartbeat when it had), and drops the mark."""
    d = on_slowfs(slowfs, daemon_factory)
    name = f"kill-run-{int(saved)}"
    try:
        vmdir = running_deployed(d, tarballs, name)
        kill_during_update(slowfs, d, name, saved=saved)
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            wait_state(dom, DomainState.RUNNING)
            assert origin(dom.xml(INACTIVE)) == ("demo", "2.0" if saved else "1.0")
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the restart mark dropped")
            assert (state_of(vmdir)["pending"] is not None) is saved
            assert f"domain {name}: its appliance update had stopped it when the daemon " \
                   "ended: starting it again" in d.log_text()
    finally:
        stop_destroying_guests(d)


def test_a_vm_whose_restart_by_the_update_a_killed_daemon_cut_short_runs_again(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path], tmp_path: Path) -> None:
    """The daemon killed while the update's own start of the VM was under way (its
    QEMU held before it runs): the next daemon re-attaches that QEMU and kills it as a
    start cut short, then starts the VM on 2.0 once it has exited."""
    (tmp_path / "held-qemu").mkdir()
    held = HeldQemuImg.install(tmp_path / "held-qemu", "qemu-system-x86_64")
    d = daemon_factory(config={"qemu": {"emulator_dirs": [str(held.bin_dir)]}})
    try:
        vmdir = running_deployed(d, tarballs, "kill-start")
        kill_while_held(d, held, lambda c: images.update(c, c.lookup_by_name("kill-start"),
                                                         "2.0"))
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-start")
            wait_state(dom, DomainState.RUNNING)
            assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the restart mark dropped")
            log = d.log_text()
            assert "was still starting when the last daemon stopped: killing it" in log
            assert "its appliance update had stopped it when the daemon ended: starting " \
                   "it again" in log
    finally:
        stop_destroying_guests(d)


def test_a_mark_no_operation_holds_is_dropped_by_the_next_image_call(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """A mark left in a running daemon (its drop failed) would start the VM at a later
    daemon start although the admin stopped it: the VM's next image call drops it."""
    d = daemon_factory()
    vmdir = deployed(d, tarballs, "stale-mark")
    state = vmdir / "appliance-state.json"
    state.write_text(json.dumps(dict(state_of(vmdir), restart="update")))
    with d.connect() as conn:
        dom = conn.lookup_by_name("stale-mark")
        with pytest.raises(OperationInvalid, match="already runs demo 1.0"):
            images.update(conn, dom, "1.0")
        wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                 message="the stale mark dropped")
    restart(d, {})
    with d.connect() as conn:
        assert conn.lookup_by_name("stale-mark").state()[0] == DomainState.SHUTOFF
    assert "starting it again" not in d.log_text()


def test_a_cut_short_update_whose_restart_fails_is_rolled_back(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """The define had landed, and the next daemon's start of the VM on 2.0 fails (its
    new system overlay is broken here): the update is rolled back, as when its own
    restart fails, and the VM runs again on 1.0."""
    d = on_slowfs(slowfs, daemon_factory)
    try:
        vmdir = running_deployed(d, tarballs, "kill-broken")
        kill_during_update(slowfs, d, "kill-broken", saved=True,
                           before_restart=lambda: (vmdir / "vda.b.qcow2").write_bytes(b""))
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-broken")
            wait_for(lambda: origin(dom.xml(INACTIVE)) == ("demo", "1.0"), timeout=60,
                     message="the update rolled back")
            wait_state(dom, DomainState.RUNNING)
            state = state_of(vmdir)
            assert (state["version"], state["pending"]) == ("1.0", None)
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the restart mark dropped")
            assert "rolled back to 1.0: the guest did not start again after the daemon " \
                   "ended during its update" in d.log_text()
    finally:
        stop_destroying_guests(d)


def test_after_a_host_reboot_the_cut_short_update_starts_nothing(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """After a host reboot the guests that run are the autostarted ones, as for any
    guest: the mark is dropped, the VM (not autostarted) stays off."""
    d = on_slowfs(slowfs, daemon_factory)
    try:
        vmdir = running_deployed(d, tarballs, "kill-boot")
        # as after a host reboot: autostart's once-per-boot mark is gone from /run
        kill_during_update(slowfs, d, "kill-boot", saved=False,
                           before_restart=(d.run_dir / "autostarted").unlink)
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-boot")
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the restart mark dropped")
            assert dom.state()[0] == DomainState.SHUTOFF
            assert "starting it again" not in d.log_text()
    finally:
        stop_destroying_guests(d)


def test_a_running_vm_whose_factory_reset_a_killed_daemon_cut_short_runs_again(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path], tmp_path: Path) -> None:
    """The same for a factory reset, killed while its qemu-img (held) makes the new
    system overlay: the next daemon starts the VM on its disks as they are (the reset
    had not replaced any: the unfinished overlay is removed at start-up)."""
    (tmp_path / "held-img").mkdir()
    held = HeldQemuImg.install(tmp_path / "held-img")
    d = daemon_factory(env={"PATH": held.path_env()})
    try:
        vmdir = running_deployed(d, tarballs, "kill-reset")
        kill_while_held(d, held, lambda c: images.factory_reset(c, c.lookup_by_name(
            "kill-reset")), check=lambda: state_of(vmdir)["restart"] == "factory reset")
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-reset")
            wait_state(dom, DomainState.RUNNING)
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the restart mark dropped")
            assert "its factory reset had stopped it when the daemon ended, and may not " \
                   "have replaced every disk (run it again): starting it again" in d.log_text()
            # a reset that completes drops its mark too, and the VM runs again
            images.factory_reset(conn, dom)
            assert dom.state()[0] == DomainState.RUNNING
            wait_for(lambda: "restart" not in state_of(vmdir), timeout=10,
                     message="the reset's own mark dropped")
    finally:
        stop_destroying_guests(d)


def test_a_failed_final_state_write_does_not_fail_the_update(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """The define is the point of no return: once the new definition is saved, a failed
    last write of the state (the record without its ``switch``) is logged, the guest is
    started on the new version, and its start settles the switch and arms the
    confirmation, which its heartbeat gives."""
    d = daemon_factory()
    try:
        vmdir = deployed(d, tarballs, "last-write")
        # after the restart: the restart mark (the guest runs) is write 1, the switch
        # written ahead write 2, the final one write 3
        restart(d, {FAULT_ENV: "vms/last-write/appliance-state.json#3"})
        with d.connect() as conn:
            dom = conn.lookup_by_name("last-write")
            dom.create()
            events = EventLog(conn)
            conn.register_event(client.EventId.APPLIANCE)
            images.update(conn, dom, "2.0")
            assert f"{FAULT_ENV}: failing the write" in d.log_text()
            assert dom.state()[0] == DomainState.RUNNING
            assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
            confirmed = events.wait("last-write", "update-confirmed", timeout=BOOT_TIMEOUT)
            assert "1.0 -> 2.0" in confirmed[0].text, confirmed[0].text
            state = state_of(vmdir)
            assert (state["version"], state["slot"], state["pending"]) == ("2.0", "b", None)
            assert "switch" not in state
            assert events.appliance("last-write", "update-rolled-back") == []
    finally:
        stop_destroying_guests(d)


def test_a_destroy_during_the_updates_restart_keeps_the_update(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path], tmp_path: Path) -> None:
    """A client's destroy while the update starts the VM again is not the new version
    failing to start: nothing is rolled back, the VM stays off on the new version with
    the update pending, and its next start arms the confirmation. (Its QEMU is a wrapper
    the test holds before it runs the real one, so the destroy lands in the start.)"""
    (tmp_path / "held").mkdir()
    held = HeldQemuImg.install(tmp_path / "held", "qemu-system-x86_64")
    d = daemon_factory(config={"qemu": {"emulator_dirs": [str(held.bin_dir)]}})
    try:
        vmdir = running_deployed(d, tarballs, "upd-destroyed")
        with d.connect() as conn:
            dom = conn.lookup_by_name("upd-destroyed")
            events = EventLog(conn)
            conn.register_event(client.EventId.APPLIANCE)
            held.start_holding()
            update = Background(d, lambda c: images.update(
                c, c.lookup_by_name("upd-destroyed"), "2.0"))
            try:
                wait_for(held.held.exists, timeout=60, message="the restart's QEMU held")
                dom.destroy()
            finally:
                held.release()
            with pytest.raises(client.OperationFailed,
                               match="update of 'upd-destroyed' to demo:2.0 is installed, but "
                                     "the guest was destroyed during its restart"):
                update.wait(60)
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
            assert origin(dom.xml(INACTIVE)) == ("demo", "2.0")
            state = state_of(vmdir)
            assert (state["version"], state["slot"]) == ("2.0", "b")
            assert (state["pending"]["from"], state["pending"]["to"]) == ("1.0", "2.0")
            events.drain(0.5)
            assert events.appliance("upd-destroyed", "update-rolled-back") == []
            dom.create()  # the next start arms the confirmation; 2.0's heartbeat gives it
            events.wait("upd-destroyed", "update-confirmed", timeout=BOOT_TIMEOUT)
            assert state_of(vmdir)["pending"] is None
    finally:
        held.release()
        stop_destroying_guests(d)


def test_daemon_killed_after_the_rollbacks_definition_is_saved(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """A rollback at the deadline, the daemon killed once its definition was renamed
    into place (the directory's fsync held): the restarted daemon settles the state on
    the previous version and deletes the failed overlay, as the rollback would have,
    and starts the guest the rollback had stopped."""
    d = daemon_factory(config={"paths": {"config_dir": str(slowfs.mount / "config")},
                               "appliance": {"update_deadline": UPDATE_DEADLINE}})
    try:
        vmdir = deployed(d, tarballs, "kill-rb", ("1.0", "3.0"))
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-rb")
            images.update(conn, dom, "3.0")  # (off: switched, pending)
            assert (vmdir / "vda.b.qcow2").is_file()
            slowfs.hold()
            dom.create()  # 3.0 sends no heartbeat: the rollback comes at the deadline
        try:
            [temp] = slowfs.wait_held(timeout=UPDATE_DEADLINE + 60)
            assert temp.startswith("/config/domains/.kill-rb.xml.") and temp.endswith(".tmp")
            slowfs.let()
            assert slowfs.wait_held() == ["/config/domains"]
            assert d.proc is not None
            d.proc.kill()
        finally:
            slowfs.release()
        d.proc.wait()
        d.start()
        with d.connect() as conn:
            dom = conn.lookup_by_name("kill-rb")
            assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
            state = state_of(vmdir)
            assert (state["version"], state["slot"]) == ("1.0", "a") and "switch" not in state
            assert state["pending"] is None and state["previous"] is None
            wait_for(lambda: not (vmdir / "vda.b.qcow2").exists(), timeout=30,
                     message="the failed overlay removed")
            assert (vmdir / "vda.a.qcow2").is_file()
            assert "removing " + str(vmdir / "vda.b.qcow2") in d.log_text()
            # (removed once, not also taken for an earlier daemon's leftover)
            assert "an earlier daemon discarded" not in d.log_text()
            # the rollback had stopped the guest: it runs again, on 1.0
            wait_state(dom, DomainState.RUNNING)
            assert "its appliance rollback had stopped it when the daemon ended" \
                in d.log_text()
    finally:
        stop_destroying_guests(d)


def kill_during_deploy(slowfs: SlowFS, d: DaemonProcess, tarballs: dict[str, Path],
                       name: str, saved: bool) -> None:
    """Deploy ``name`` from 1.0 and kill -9 the daemon while its define's first fsync
    (``saved`` False: the definition is not on disk) or its second one waits; then
    restart."""
    with d.connect() as conn:
        assert images.import_appliance(conn, str(tarballs["1.0"])) == "demo:1.0"
    deploy = held_call(slowfs, d, lambda c: images.deploy(c, "demo", name, "1.0"))
    try:
        [temp] = slowfs.held()
        assert temp.startswith(f"/config/domains/.{name}.xml.") and temp.endswith(".tmp")
        if saved:
            slowfs.let()
            assert slowfs.wait_held() == ["/config/domains"]
        assert d.proc is not None
        d.proc.kill()
    finally:
        slowfs.release()
    d.proc.wait()
    with pytest.raises(client.ConnectionLost):
        deploy.wait()
    d.start()


def test_daemon_killed_before_the_deployed_definition_is_saved(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """No domain was defined and no one was told of the VM: the restarted daemon removes
    its directory, and the same deploy works again (before: refused, naming the
    directory to remove by hand)."""
    d = on_slowfs(slowfs, daemon_factory)
    kill_during_deploy(slowfs, d, tarballs, "dep-early", saved=False)
    vmdir = d.state_dir / "vms" / "dep-early"
    assert "a deploy of 'dep-early' was cut short before its domain was defined: " \
           f"removing {vmdir}" in d.log_text()
    assert not vmdir.exists()
    assert "an earlier daemon discarded" not in d.log_text()
    with d.connect() as conn:
        assert "dep-early" not in {dom.name for dom in conn.list_domains()}
        dom = images.deploy(conn, "demo", "dep-early", "1.0")
        assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
        assert "deploying" not in state_of(vmdir)


def test_daemon_killed_after_the_deployed_definition_is_saved(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """The domain is defined: the restarted daemon keeps the VM and drops the mark."""
    d = on_slowfs(slowfs, daemon_factory)
    kill_during_deploy(slowfs, d, tarballs, "dep-late", saved=True)
    vmdir = d.state_dir / "vms" / "dep-late"
    state = state_of(vmdir)
    assert "deploying" not in state and state["version"] == "1.0"
    with d.connect() as conn:
        dom = conn.lookup_by_name("dep-late")
        assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
        assert listed_under(conn, "dep-late") == ["1.0"]


def test_a_deploy_whose_last_state_write_fails_is_undone(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path]) -> None:
    """Its state would keep the deploy's mark: the deploy fails, its domain undefined
    and its directory removed, rather than leave a mark that would remove the
    directory at a later start should the VM be undefined meanwhile."""
    d = daemon_factory(env={FAULT_ENV: "vms/dep-undo/appliance-state.json#2"})
    with d.connect() as conn:
        assert images.import_appliance(conn, str(tarballs["1.0"])) == "demo:1.0"
        with pytest.raises(client.QemudClientError, match="injected fault before rename"):
            images.deploy(conn, "demo", "dep-undo", "1.0")
        assert "dep-undo" not in {dom.name for dom in conn.list_domains()}
        wait_for(lambda: not (d.state_dir / "vms" / "dep-undo").exists(), timeout=30,
                 message="the VM directory removed")
        dom = images.deploy(conn, "demo", "dep-undo", "1.0")  # (write 3: fine)
        assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")


def test_an_update_whose_restart_fails_before_qemu_runs_is_rolled_back(
        daemon_factory: DaemonFactory, tarballs: dict[str, Path], tmp_path: Path) -> None:
    """The update's own stop leaves the VM shut off as destroyed: a restart that fails
    before QEMU is even launched (here the emulator is gone) is still the new version's
    start failing, not a client's destroy, and the update is rolled back (its restart
    fails too, and the call says both). The emulator is removed while the update's
    ``qemu-img`` is held."""
    (tmp_path / "img").mkdir()
    held_img = HeldQemuImg.install(tmp_path / "img")
    emulators = tmp_path / "emulators"
    emulators.mkdir()
    emulator = emulators / "qemu-system-x86_64"
    emulator.symlink_to("/usr/bin/qemu-system-x86_64")
    d = daemon_factory(config={"qemu": {"emulator_dirs": [str(emulators)]}},
                       env={"PATH": held_img.path_env()})
    try:
        vmdir = running_deployed(d, tarballs, "upd-nolaunch")
        with d.connect() as conn:
            dom = conn.lookup_by_name("upd-nolaunch")
            events = EventLog(conn)
            conn.register_event(client.EventId.APPLIANCE)
            held_img.start_holding()
            update = Background(d, lambda c: images.update(
                c, c.lookup_by_name("upd-nolaunch"), "2.0"))
            try:
                wait_for(held_img.held.exists, timeout=60, message="the update's qemu-img")
                emulator.unlink()
            finally:
                held_img.release()
            with pytest.raises(client.OperationFailed,
                               match="domain 'upd-nolaunch' was rolled back to 1.0, but did "
                                     "not start again: .*cannot start QEMU"):
                update.wait(60)
            assert origin(dom.xml(INACTIVE)) == ("demo", "1.0")
            state = state_of(vmdir)
            assert (state["version"], state["slot"], state["pending"]) == ("1.0", "a", None)
            events.wait("upd-nolaunch", "update-rolled-back")
            emulator.symlink_to("/usr/bin/qemu-system-x86_64")
            dom.create()
            assert dom.state()[0] == DomainState.RUNNING
    finally:
        held_img.release()
        stop_destroying_guests(d)
