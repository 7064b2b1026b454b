"""A UEFI guest's first start on a disk that takes its time: the NVRAM file's copy waits
off the daemon's loop, and QEMU is launched only once the file is durable.

The daemon's state directory (where ``<state_dir>/nvram/<name>_VARS.fd`` lives) is on a
real FUSE file system whose fsyncs the test holds (:mod:`tests.helpers.slowfs`). The
guest is a diskless q35 machine under OVMF (the host's real firmware), started paused:
QEMU runs, nothing needs to boot.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import client
from client.domain import DESTROY_GRACEFUL
from protocol.constants import LifecycleEvent, PausedReason, ShutoffReason, StoppedDetail
from qemud.driver.firmware import NVRAM_COPY_TIMEOUT_ENV
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background

from .conftest import assert_log_clean, bare_domain_xml, guest_name, qemu_pids
from .slow_disk import UUID_A, held_until

pytestmark = pytest.mark.integration

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: libvirt's VIR_DOMAIN_START_PAUSED
PAUSED = 1


def efi_xml(name: str) -> str:
    return bare_domain_xml(name, machine="q35").replace("<os>", "<os firmware='efi'>")


def on_slowfs(slowfs: SlowFS, daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state")}})


def nvram_temp(name: str):  # noqa: ANN201 - a predicate for held_until
    prefix = f"/state/nvram/.{name}_VARS.fd."
    return lambda path: path.startswith(prefix) and path.endswith(".tmp")


@contextmanager
def copy_held(slowfs: SlowFS, d: DaemonProcess, name: str,
              call: Callable[[client.Connection], object] | None = None, *,
              flags: int = PAUSED) -> Iterator[Background]:
    """``call`` (a start of ``name``; by default DOMAIN_CREATE with ``flags``) on its
    own connection, its NVRAM copy held at its fsync until the block ends."""
    slowfs.hold()
    started = Background(d, call or (lambda c: c.lookup_by_name(name).create(flags)))
    try:
        held_until(slowfs, nvram_temp(name))
        yield started
    finally:
        slowfs.release()


def test_a_first_start_waits_for_its_nvram_off_the_loop(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("nvram")
    nvram = slowfs.backing / "state" / "nvram" / f"{name}_VARS.fd"
    with d.connect() as other:
        dom = other.define_xml(efi_xml(name))
        with copy_held(slowfs, d, name) as start:
            # the copy waits for the disk: others are answered, QEMU is not launched,
            # and the calls that would act on the domain meanwhile are refused
            assert other.node_info().cpus >= 1
            assert dom.state()[0] == client.DomainState.SHUTOFF
            assert qemu_pids(name) == []
            assert not nvram.exists()
            for call in (dom.undefine, dom.create, lambda: dom.set_autostart(True)):
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain '{name}' is busy: start in progress"):
                    call()
            assert not start.answered
            held_until(slowfs, lambda path: path == "/state/nvram")
            assert nvram.read_bytes() == OVMF_VARS.read_bytes()  # in place before QEMU
            assert qemu_pids(name) == []
        start.wait()
        assert dom.state()[0] == client.DomainState.PAUSED
        assert len(qemu_pids(name)) == 1
        dom.destroy()
        # the next start finds the guest's file and copies nothing
        before = nvram.stat().st_ino
        dom.create(PAUSED)
        assert nvram.stat().st_ino == before
        dom.destroy()
    assert sorted(p.name for p in nvram.parent.iterdir()) == [nvram.name]
    assert_log_clean(d)


def test_a_failed_nvram_write_fails_the_start_and_launches_nothing(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name, transient = guest_name("nvfail"), guest_name("nvfailt")
    nvram_dir = slowfs.backing / "state" / "nvram"
    with d.connect() as conn:
        dom = conn.define_xml(efi_xml(name))
        for call, who in ((lambda c: c.lookup_by_name(name).create(PAUSED), name),
                          (lambda c: c.create_xml(efi_xml(transient), PAUSED), transient)):
            with copy_held(slowfs, d, who, call) as start:
                slowfs.fail()
                with pytest.raises(client.RemoteError) as info:
                    start.wait()
            assert str(info.value).endswith(
                f"Failed to create NVRAM file '{slowfs.mount}/state/nvram/{who}_VARS.fd': "
                "Input/output error")
            assert qemu_pids(who) == []
            assert list(nvram_dir.iterdir()) == []  # neither the file nor its temp file
        assert dom.state()[0] == client.DomainState.SHUTOFF
        # the transient guest is gone, as after any failed start
        with pytest.raises(client.NoDomainError):
            conn.lookup_by_name(transient)
        # the disk is back: the start works, and the busy mark is gone
        dom.create(PAUSED)
        assert dom.state()[0] == client.DomainState.PAUSED
        dom.destroy()
    assert (nvram_dir / f"{name}_VARS.fd").read_bytes() == OVMF_VARS.read_bytes()


def test_a_reset_waits_too_and_replaces_the_guests_variables(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """``start --reset-nvram`` (VIR_DOMAIN_START_RESET_NVRAM, 32): a fresh copy over the
    guest's file, through the same wait; refused with a managed save image to restore."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("nvreset")
    nvram = slowfs.backing / "state" / "nvram" / f"{name}_VARS.fd"
    with d.connect() as conn:
        dom = conn.define_xml(efi_xml(name))
        dom.create(PAUSED)
        dom.destroy()
        nvram.write_bytes(b"\xa5" * OVMF_VARS.stat().st_size)  # the guest's variables
        with copy_held(slowfs, d, name, flags=PAUSED | 32) as start:
            assert nvram.read_bytes()[:1] == b"\xa5"  # until the copy is durable
            assert not start.answered
        start.wait()
        assert nvram.read_bytes() == OVMF_VARS.read_bytes()
        dom.managed_save()
        with pytest.raises(client.OperationInvalid,
                           match="cannot reset the NVRAM of domain .* managed save image"):
            dom.create(32)
        dom.create(32 | 8)  # with --force-boot: the image goes, the NVRAM is reset
        dom.destroy()


def test_calls_on_a_guest_whose_start_waits_for_its_nvram_leave_it_alone(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """While the copy waits, the domain is inactive, but its start has begun: a second
    create of the same transient guest is refused without removing the first one's
    domain; a managed save image the start restores is neither discarded by
    ``start --force-boot`` nor by ``managedsave-remove``."""
    d = on_slowfs(slowfs, daemon_factory)
    transient, saved = guest_name("nvtwice"), guest_name("nvsaved")
    nvram_dir = slowfs.backing / "state" / "nvram"
    xml = efi_xml(transient).replace("<name>", f"<uuid>{UUID_A}</uuid><name>")
    with d.connect() as conn:
        with copy_held(slowfs, d, transient, lambda c: c.create_xml(xml, PAUSED)) as first:
            with pytest.raises(client.OperationInvalid,
                               match=f"domain '{transient}' is busy: start in progress"):
                conn.create_xml(xml, PAUSED)
            assert conn.lookup_by_name(transient).state()[0] == client.DomainState.SHUTOFF
        first.wait()
        dom = conn.lookup_by_name(transient)  # listed, and running what was launched
        assert dom.state()[0] == client.DomainState.PAUSED
        assert len(qemu_pids(transient)) == 1
        dom.destroy()

        dom = conn.define_xml(efi_xml(saved))
        dom.create(PAUSED)
        dom.managed_save()
        (nvram_dir / f"{saved}_VARS.fd").unlink()  # the next start copies it again
        with copy_held(slowfs, d, saved) as restore:
            for call in (lambda: dom.create(8), dom.managed_save_remove):
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain '{saved}' is busy: start in progress"):
                    call()
            assert dom.has_managed_save()
        restore.wait()
        assert dom.state() == (client.DomainState.PAUSED, PausedReason.USER)
        assert not dom.has_managed_save()  # restored, then removed as usual
        dom.destroy()
    assert_log_clean(d)


def test_the_temp_copies_a_killed_daemon_left_go_at_its_next_start(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """In ``<state_dir>/nvram/`` every temp file name is the daemon's; next to a
    definition's NVRAM file elsewhere, only that file's own temp names are removed."""
    d = daemon_factory()
    name = guest_name("nvdead")
    elsewhere = tmp_path / "vars"
    elsewhere.mkdir()
    with d.connect() as conn:
        conn.define_xml(efi_xml(name).replace(
            "<os firmware='efi'>", f"<os firmware='efi'><nvram>{elsewhere}/x.fd</nvram>"))
    d.stop()
    nvram_dir = d.state_dir / "nvram"
    nvram_dir.mkdir(exist_ok=True)
    dead = [nvram_dir / f".{name}_VARS.fd.4242-0.tmp", elsewhere / ".x.fd.4242-1.tmp"]
    kept = [elsewhere / ".y.fd.4242-1.tmp", elsewhere / "notes.txt"]
    for path in dead + kept:
        path.write_bytes(b"")
    d.start()
    assert [p for p in dead if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert f"removed {dead[1]}, left by an interrupted write" in d.log_text()


def test_a_copy_that_never_ends_fails_the_start_at_its_deadline(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The copy (``dd``) held as one reading a template on a hung mount would be: at the
    deadline (cut to 2 s by the test hook) it is killed and the start fails saying so,
    the domain no longer busy; the next start copies the template and runs."""
    (tmp_path / "held-dd").mkdir()
    held = HeldQemuImg.install(tmp_path / "held-dd", "dd")
    d = daemon_factory(env={"PATH": held.path_env(), NVRAM_COPY_TIMEOUT_ENV: "2"})
    name = guest_name("nvhung")
    nvram_dir = d.state_dir / "nvram"
    with d.connect() as conn:
        dom = conn.define_xml(efi_xml(name))
        held.start_holding()
        try:
            with pytest.raises(client.RemoteError) as info:
                dom.create(PAUSED)
            assert str(info.value).endswith(
                f"Failed to create NVRAM file '{nvram_dir}/{name}_VARS.fd': copying "
                f"{OVMF_VARS} did not complete within 2 s"), info.value
            assert held.held.exists()  # (it was the copy that waited)
            assert qemu_pids(name) == []
            assert list(nvram_dir.iterdir()) == []
        finally:
            held.release()
        dom.create(PAUSED)  # not busy any more, and the copy works
        assert dom.state()[0] == client.DomainState.PAUSED
        dom.destroy()
    assert (nvram_dir / f"{name}_VARS.fd").read_bytes() == OVMF_VARS.read_bytes()


def test_a_destroy_while_the_copy_waits_ends_the_start(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The copy (``dd``) held before it runs: a destroy (plain or graceful) kills it and
    ends the start at once, as libvirt's destroy ends a start at any step: the start
    fails saying so, the domain is shut off (destroyed, with the STOPPED event), no
    temp file is left and the copy is killed before it copied; a transient guest goes,
    a managed save image whose restore waited stays. The next start copies and runs."""
    (tmp_path / "held-dd").mkdir()
    held = HeldQemuImg.install(tmp_path / "held-dd", "dd")
    d = daemon_factory(env={"PATH": held.path_env()})
    name, transient, saved = (guest_name("nvdestroy"), guest_name("nvdestroyt"),
                              guest_name("nvdestroys"))
    nvram_dir = d.state_dir / "nvram"
    with d.connect() as conn:
        dom = conn.define_xml(efi_xml(name))
        saved_dom = conn.define_xml(efi_xml(saved))
        saved_dom.create(PAUSED)
        saved_dom.managed_save()
        (nvram_dir / f"{saved}_VARS.fd").unlink()  # its restore copies it again
        conn.register_event(client.EventId.LIFECYCLE)
        for who, call, flags, what in (
                (name, lambda c: c.lookup_by_name(name).create(PAUSED), 0, "start"),
                (transient, lambda c: c.create_xml(efi_xml(transient), PAUSED),
                 DESTROY_GRACEFUL, "start"),
                (saved, lambda c: c.lookup_by_name(saved).create(PAUSED), 0, "restore")):
            held.start_holding()
            start = Background(d, call)
            try:
                wait_for(held.held.exists, timeout=30, message="the NVRAM copy held")
                conn.lookup_by_name(who).destroy(flags)
                with pytest.raises(client.OperationFailed,
                                   match=f"domain '{who}' was destroyed during its {what}"):
                    start.wait()
                event = conn.next_event(10)
                assert event is not None and event.domain.name == who
                assert (event.event, event.detail) == (LifecycleEvent.STOPPED,
                                                       StoppedDetail.DESTROYED)
                # the copy was killed while held (still holding it: so it never ran dd)
                wait_for(lambda: not _running(held.bin_dir / "dd"), timeout=10,
                         message="the held copy killed")
            finally:
                held.release()
            assert qemu_pids(who) == []
            assert sorted(p.name for p in nvram_dir.iterdir() if who in p.name) == []
        assert dom.state() == (client.DomainState.SHUTOFF, ShutoffReason.DESTROYED)
        with pytest.raises(client.NoDomainError):
            conn.lookup_by_name(transient)
        assert saved_dom.has_managed_save()
        with pytest.raises(client.OperationInvalid, match=f"domain '{name}' is not running"):
            dom.destroy()  # nothing is starting any more
        for each in (dom, saved_dom):
            each.create(PAUSED)  # not busy, and the copy works (the restore restores)
            assert each.state()[0] == client.DomainState.PAUSED
            each.destroy()
        assert not saved_dom.has_managed_save()
    assert (nvram_dir / f"{name}_VARS.fd").read_bytes() == OVMF_VARS.read_bytes()
    assert_log_clean(d)


def test_a_destroy_after_the_copy_is_whole_lets_the_file_land(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """The copy has run and its fsync waits for the disk: a destroy ends the start the
    same way, and the whole copy still lands (a complete file is what the next start
    would write), which that start then uses as it is. Until it has landed the domain
    stays busy: an undefine meanwhile (which, without --nvram, checks for the file
    that is not there yet) would leave it behind for a later domain of that name."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("nvland")
    nvram = slowfs.backing / "state" / "nvram" / f"{name}_VARS.fd"
    with d.connect() as conn:
        dom = conn.define_xml(efi_xml(name))
        with copy_held(slowfs, d, name) as start:
            dom.destroy()
            with pytest.raises(client.OperationFailed,
                               match=f"domain '{name}' was destroyed during its start"):
                start.wait()
            assert dom.state() == (client.DomainState.SHUTOFF, ShutoffReason.DESTROYED)
            with pytest.raises(client.OperationInvalid,
                               match=f"domain '{name}' is busy: start in progress"):
                dom.undefine()
        wait_for(nvram.exists, timeout=30, message="the copy landed")
        wait_for(lambda: _undefine_refused_for_nvram(dom), timeout=30,
                 message="the domain no longer busy")
        assert nvram.read_bytes() == OVMF_VARS.read_bytes()
        before = nvram.stat().st_ino
        dom.create(PAUSED)
        assert nvram.stat().st_ino == before
        assert qemu_pids(name) != []
        dom.destroy()
    assert sorted(p.name for p in nvram.parent.iterdir()) == [nvram.name]
    assert_log_clean(d)


def _undefine_refused_for_nvram(dom: client.Domain) -> bool:
    """Whether an undefine (without --nvram) is refused for the NVRAM file, not as busy."""
    try:
        dom.undefine()
    except client.OperationInvalid as exc:
        if "busy" in str(exc):
            return False
        assert "cannot undefine domain with nvram" in str(exc), exc
        return True
    raise AssertionError("undefined, its NVRAM file left behind")


def _running(program: Path) -> bool:
    """Whether a process runs ``program`` (a script: it is in the command line)."""
    return subprocess.run(["pgrep", "-f", str(program)], capture_output=True).returncode == 0
