"""A failure between writing a config file and renaming it into place.

In-process: :func:`qemud.driver.store.atomic_write` with its ``fault_before_rename`` hook
raising (an error: the temp file is removed, the old file stays) and with the process
dying at that point (a forked child ``os._exit``\\ s: the temp file is left behind, the old
file stays, and the store never reads the debris as a definition).

Daemon-level: ``QEMUD_FAULT_BEFORE_RENAME=<text>`` in a daemon's environment makes
every atomic write to a path containing ``<text>`` fail there; define, redefine and
autostart of that domain then fail with an error naming the cause, and nothing changes
on disk or in memory.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest

import client
from qemud.driver import store as store_mod
from qemud.driver.store import FAULT_ENV, DomainStore, atomic_write

from .conftest import NO_GUEST_EMULATOR, assert_log_clean, bare_domain_xml, guest_name


def _boom(path: Path) -> None:
    raise OSError(errno.EIO, "simulated I/O error before rename", str(path))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- in-process ---------------------------------------------------------------------------

def test_fault_before_rename_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "dom.xml"
    atomic_write(target, "<domain>old</domain>")
    monkeypatch.setattr(store_mod, "fault_before_rename", _boom)
    with pytest.raises(OSError, match="simulated I/O error"):
        atomic_write(target, "<domain>new, and longer than the old one</domain>")
    assert target.read_text() == "<domain>old</domain>"
    assert _files(tmp_path) == ["dom.xml"], "the temp file must be removed"
    monkeypatch.setattr(store_mod, "fault_before_rename", None)
    atomic_write(target, "<domain>new</domain>")  # and the next write works
    assert target.read_text() == "<domain>new</domain>"
    assert _files(tmp_path) == ["dom.xml"]


def test_fault_before_first_write_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "fault_before_rename", _boom)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "new.xml", "<domain/>")
    assert _files(tmp_path) == []


def test_interrupt_before_rename_cleans_up(tmp_path: Path, monkeypatch) -> None:
    """Not only OSError: e.g. KeyboardInterrupt at that point also removes the temp file."""
    target = tmp_path / "dom.xml"
    target.write_text("old")

    def interrupt(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "fault_before_rename", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new")
    assert target.read_text() == "old" and _files(tmp_path) == ["dom.xml"]


def test_a_dead_writers_temp_file_with_our_name_is_replaced(tmp_path: Path,
                                                            monkeypatch) -> None:
    """Temp names are ``.<file>.<pid>-<n>.tmp``; pids are reused, so a killed daemon's
    leftover can carry the very name the next write picks. It is debris: overwritten,
    not an error, and the write lands whole."""
    monkeypatch.setattr(store_mod, "_temp_serial", iter([7]))
    leftover = tmp_path / f".dom.xml.{os.getpid()}-7.tmp"
    leftover.write_text("<domain>half of a dead daemon's wr")
    atomic_write(tmp_path / "dom.xml", "<domain>new</domain>")
    assert (tmp_path / "dom.xml").read_text() == "<domain>new</domain>"
    assert _files(tmp_path) == ["dom.xml"]


def test_a_failed_directory_sync_after_the_rename_is_not_a_failed_write(
        tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """Once the rename is done the new file is what everyone reads, the next daemon
    included: a write that then fails to sync the directory (EIO) returns, so its
    caller keeps memory and disk alike, and the doubt about durability is logged."""
    target = tmp_path / "dom.xml"
    atomic_write(target, "<domain>old</domain>")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    before = len(os.listdir("/proc/self/fd"))
    with caplog.at_level(logging.ERROR, logger="qemud.driver.store"):
        atomic_write(target, "<domain>new</domain>")
    assert target.read_text() == "<domain>new</domain>"
    assert _files(tmp_path) == ["dom.xml"]
    assert len(os.listdir("/proc/self/fd")) == before  # the directory's fd was closed
    assert f"{target} is written, but its directory could not be synced " \
        "(Input/output error): the change may not survive a power loss" in caplog.text


def test_written_files_get_exactly_their_mode_and_their_directory(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "a" / "b" / "flag", b"", 0o644)  # directories created
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b" / "flag").stat().st_mode & 0o777 == 0o644


def test_process_killed_before_rename_leaves_old_file_and_ignored_debris(
        tmp_path: Path) -> None:
    domains, autostart, status = tmp_path / "domains", tmp_path / "autostart", \
        tmp_path / "status"
    for d in (domains, autostart, status):
        d.mkdir()
    store = DomainStore(domains, autostart, status)
    store.save_definition("a", "<domain><name>a</name>v1</domain>")
    pid = os.fork()
    if pid == 0:  # the child dies at the worst moment, as kill -9 would
        try:
            store_mod.fault_before_rename = lambda path: os._exit(0)
            store.save_definition("a", "<domain><name>a</name>v2</domain>")
            store.save_definition("b", "<domain><name>b</name></domain>")
        finally:
            os._exit(1)
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    debris = [n for n in _files(domains) if n.endswith(".tmp")]
    assert len(debris) == 1 and debris[0].startswith(".a.xml."), _files(domains)
    assert (domains / debris[0]).read_text().endswith("v2</domain>")  # fully written...
    assert [(p.name, text) for p, text in store.definitions()] == [
        ("a.xml", "<domain><name>a</name>v1</domain>")]  # ...but never read as a domain
    store.save_definition("a", "<domain><name>a</name>v3</domain>")  # writes still work
    assert (domains / "a.xml").read_text().endswith("v3</domain>")
    # the next daemon's start removes the debris (its own temp names only)
    (domains / "a.xml.tmp").write_text("a user's file")
    assert store.remove_debris() == [domains / debris[0]]
    assert _files(domains) == ["a.xml", "a.xml.tmp"]


# -- daemon-level -------------------------------------------------------------------------

def test_define_fails_cleanly_when_rename_fails(daemon_factory, monkeypatch) -> None:
    victim = guest_name("victim")
    bystander = guest_name("bystander")
    d = daemon_factory()
    # the domains' emulator launches no guest: an autostart could never start anything
    v1 = bare_domain_xml(victim, memory_mib=64, emulator=NO_GUEST_EMULATOR)
    with d.connect() as conn:
        conn.define_xml(v1)
    d.stop()
    domains = d.config_dir / "domains"
    before = (domains / f"{victim}.xml").read_bytes()

    monkeypatch.setenv(FAULT_ENV, victim)  # every write to a path naming the victim fails
    d.start()
    with d.connect() as conn:
        dom = conn.lookup_by_name(victim)
        # redefining an existing domain
        v2 = bare_domain_xml(victim, memory_mib=96, emulator=NO_GUEST_EMULATOR)
        with pytest.raises(client.OperationFailed) as info:
            conn.define_xml(v2.replace("<domain type='qemu'>",
                                       f"<domain type='qemu'><uuid>{dom.uuid}</uuid>"))
        message = str(info.value)
        assert f"cannot save the definition of '{victim}'" in message
        assert "injected fault before rename" in message and "nothing was changed" in message
        assert (domains / f"{victim}.xml").read_bytes() == before
        assert "<memory unit='KiB'>65536</memory>" in dom.xml()
        # defining a new one
        with pytest.raises(client.OperationFailed, match="injected fault before rename"):
            conn.define_xml(bare_domain_xml(f"{victim}-new"))
        assert not (domains / f"{victim}-new.xml").exists()
        assert f"{victim}-new" not in {x.name for x in conn.list_domains()}
        # the autostart flag is written the same way
        with pytest.raises(client.OperationFailed, match=f"autostart of '{victim}'"):
            dom.set_autostart(True)
        assert dom.autostart() is False
        assert not (d.config_dir / "autostart" / victim).exists()
        # no temp file left, and the daemon serves everything else
        assert not [n for n in _files(domains) if n.endswith(".tmp")], _files(domains)
        conn.define_xml(bare_domain_xml(bystander, emulator=NO_GUEST_EMULATOR))
        assert {victim, bystander} <= {x.name for x in conn.list_domains()}
    assert f"{FAULT_ENV}: failing the write" in d.log_text()
    assert_log_clean(d)

    monkeypatch.delenv(FAULT_ENV)
    d.stop()
    d.start()
    with d.connect() as conn:
        assert "<memory unit='KiB'>65536</memory>" in \
            conn.lookup_by_name(victim).xml()
        conn.lookup_by_name(bystander)
