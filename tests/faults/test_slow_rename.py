"""domrename on a disk that takes its time: its fsyncs wait off the loop.

The daemon's config directory (and, for the last test, its state directory) is on a FUSE
file system whose fsyncs the test holds (:mod:`tests.helpers.slowfs`). While a rename
waits for the disk, other clients are answered, the domain is busy and the new name is
taken; a failed fsync before the commit fails the call and changes nothing. A rename
waits for a snapshot metadata write in flight before it moves the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import client
from qemud.driver.rename import JOURNAL_PREFIX
from tests.appliance.snapshot_guests import disk_source, disk_xml, make_image
from tests.conftest import DaemonFactory
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background

from .conftest import NO_GUEST_EMULATOR, assert_log_clean, bare_domain_xml, guest_name
from .slow_disk import (
    UUID_A,
    definitions,
    domain_xml,
    held_call,
    held_until,
    metadata_temp,
    names,
    on_slowfs,
    recorded,
)

UUID_B = "6a0d2c3e-2222-4c5b-9c1d-0123456789ab"
UUID_C = "6a0d2c3e-3333-4c5b-9c1d-0123456789ab"
UUID_D = "6a0d2c3e-4444-4c5b-9c1d-0123456789ab"


def renamed(name: str, new: str) -> Callable[[Any], None]:
    return lambda c: c.lookup_by_name(name).rename(new)


def assert_waits_for(slowfs: SlowFS, held: str, rename: Background) -> None:
    """Every fsync but ``held``'s goes through for a second, and ``rename`` is still not
    answered, nor has it asked for one: a rename that did not wait for that write would
    be done well within the second."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and not rename.answered:
        for path in slowfs.held():
            if path != held:
                slowfs.let(path)
        time.sleep(0.02)
    assert not rename.answered
    assert slowfs.held() == [held]


def test_a_rename_waits_off_the_loop_with_the_domain_busy_and_the_name_taken(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    old, new = guest_name("ren-a"), guest_name("ren-b")
    with d.connect() as other:
        dom = other.define_xml(domain_xml(old, UUID_A))
        dom.set_autostart(True)
        third = other.define_xml(domain_xml(guest_name("ren-c"), UUID_B))
        rename = held_call(slowfs, d, renamed(old, new))
        try:
            [journal] = slowfs.held()
            assert journal.startswith(f"/config/domains/..rename-{UUID_A}.json.")
            assert other.node_info().cpus >= 1  # the loop serves others meanwhile
            assert names(other) == {old, third.name}
            with pytest.raises(client.OperationInvalid,
                               match=f"domain '{old}' is busy: rename in progress"):
                dom.create()
            with pytest.raises(client.OperationInvalid, match="busy: rename in progress"):
                dom.set_autostart(False)
            with pytest.raises(client.OperationInvalid, match="busy: rename in progress"):
                dom.undefine()
            with pytest.raises(client.DomainExistsError,
                               match=f"domain '{new}' already exists: domain '{old}' is "
                                     "being renamed to it"):
                other.define_xml(domain_xml(new, "6a0d2c3e-3333-4c5b-9c1d-0123456789ab"))
            with pytest.raises(client.OperationInvalid,
                               match=f"domain with name '{new}' already exists"):
                third.rename(new)
            # the journal, its directory, then the new definition: the commit
            slowfs.let()
            assert slowfs.wait_held() == ["/config/domains"]
            slowfs.let()
            [commit] = slowfs.wait_held()
            assert commit.startswith(f"/config/domains/.{new}.xml.")
            assert not rename.answered
        finally:
            slowfs.release()
        rename.wait()
        assert names(other) == {new, third.name}
        assert other.lookup_by_name(new).uuid == UUID_A
        assert other.lookup_by_name(new).autostart() is True
    assert definitions(slowfs) == [f"{new}.xml", f"{third.name}.xml"]
    assert sorted(p.name for p in (slowfs.backing / "config" / "autostart").iterdir()) == [
        new]
    assert_log_clean(d)


def test_a_failed_fsync_of_the_new_definition_changes_nothing(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    old, new = guest_name("reneio-a"), guest_name("reneio-b")
    with d.connect() as other:
        dom = other.define_xml(domain_xml(old, UUID_A))
        rename = held_call(slowfs, d, renamed(old, new))
        try:
            slowfs.let()  # the journal
            slowfs.wait_held()
            slowfs.let()  # its directory
            [commit] = slowfs.wait_held()
            assert commit.startswith(f"/config/domains/.{new}.xml.")
            slowfs.fail()
            with pytest.raises(client.OperationFailed) as info:
                rename.wait()
        finally:
            slowfs.release()
        assert str(info.value) == (f"operation failed: cannot rename domain '{old}' to "
                                   f"'{new}': Input/output error (nothing was changed)")
        assert names(other) == {old}
        assert definitions(slowfs) == [f"{old}.xml"]  # no journal, no temp file left
        # nothing is busy any more, and the name is free
        dom.set_autostart(True)
        dom.rename(new)
        assert names(other) == {new}
    assert definitions(slowfs) == [f"{new}.xml"]


def test_a_rename_waits_for_the_snapshot_metadata_write_in_flight(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The delete of a domain's last snapshot has merged it and writes the record without
    it (held here): the rename reads that write, not the file, so it is not refused, and
    moves the record only once the write has landed (else the write would land under
    the old name, after the record moved)."""
    d = daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state"),
                                         "config_dir": str(slowfs.mount / "config")}})
    old, new = guest_name("rensnap-a"), guest_name("rensnap-b")
    image = make_image(tmp_path / "vda.qcow2")
    snapshots = slowfs.backing / "state" / "snapshots"
    with d.connect() as other:
        dom = other.define_xml(bare_domain_xml(old, emulator=NO_GUEST_EMULATOR,
                                               devices=disk_xml(image)))
        assert dom.snapshot_create("s1") == "s1"
        slowfs.hold()
        delete = Background(d, lambda c: c.lookup_by_name(old).snapshot_delete("s1"))
        rename = None
        try:
            held_until(slowfs, metadata_temp(old))  # the merge's mark
            slowfs.let()
            forgotten = held_until(slowfs, metadata_temp(old))  # merged: s1 forgotten
            rename = Background(d, renamed(old, new))
            assert other.node_info().cpus >= 1
            assert_waits_for(slowfs, forgotten, rename)
            assert recorded(snapshots / old / "snapshots.json") == ["s1"]
        finally:
            slowfs.release()
        delete.wait()
        assert rename is not None
        rename.wait()
        assert names(other) == {new}
        assert disk_source(other.lookup_by_name(new).xml(client.XML_INACTIVE)) == str(image)
    assert not (snapshots / old / "snapshots.json").exists()
    record = json.loads((snapshots / new / "snapshots.json").read_text())
    assert record["domain"] == new and record["snapshots"] == []
    assert not any(p.name.startswith(JOURNAL_PREFIX)
                   for p in (slowfs.backing / "config" / "domains").iterdir())
    assert_log_clean(d)


@pytest.mark.parametrize("change", ["define", "autostart"])
def test_a_change_in_flight_when_the_rename_comes_lands_first(
        slowfs: SlowFS, daemon_factory: DaemonFactory, change: str) -> None:
    """A redefine (or an autostart enable) whose file waits for the disk when the rename
    is called, its checks made: the rename waits for it and renames what it wrote (it
    would otherwise land under the old name, and be lost or undo the rename)."""
    d = on_slowfs(slowfs, daemon_factory)
    old, new = guest_name(f"ren{change}-a"), guest_name(f"ren{change}-b")
    with d.connect() as other:
        other.define_xml(domain_xml(old, UUID_A))
        if change == "define":
            first = held_call(slowfs, d, lambda c: c.define_xml(
                domain_xml(old, UUID_A, memory_mib=128)))
        else:
            first = held_call(slowfs, d, lambda c: c.lookup_by_name(old).set_autostart(True))
        [waiting] = slowfs.held()
        rename = Background(d, renamed(old, new))
        try:
            assert other.node_info().cpus >= 1
            assert_waits_for(slowfs, waiting, rename)  # (it has not begun its writes)
        finally:
            slowfs.release()
        first.wait()
        rename.wait()
        assert names(other) == {new}
        dom = other.lookup_by_name(new)
        if change == "define":
            assert "<memory unit='KiB'>131072</memory>" in dom.xml(client.XML_INACTIVE)
        else:
            assert dom.autostart() is True
    assert definitions(slowfs) == [f"{new}.xml"]
    on_disk = (slowfs.backing / "config" / "domains" / f"{new}.xml").read_text()
    assert ("<memory unit='KiB'>131072</memory>" in on_disk) == (change == "define")
    autostart = slowfs.backing / "config" / "autostart"
    flags = sorted(p.name for p in autostart.iterdir()) if autostart.exists() else []
    assert flags == ([new] if change == "autostart" else [])
    d.stop()
    d.start()
    with d.connect() as again:
        assert [(dom.name, dom.uuid) for dom in again.list_all()] == [(new, UUID_A)]


def test_a_failed_undo_says_so_and_the_next_daemon_undoes(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """The new definition's fsync fails, and so does the undo (the disk is gone for
    good): the caller hears that the domain keeps its name and that what was moved is
    moved back at the next start, which does it."""
    d = daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state"),
                                         "config_dir": str(slowfs.mount / "config")}})
    old, new = guest_name("renundo-a"), guest_name("renundo-b")
    snapshots = slowfs.backing / "state" / "snapshots"
    with d.connect() as other:
        dom = other.define_xml(bare_domain_xml(old, emulator=NO_GUEST_EMULATOR,
                                               devices=disk_xml(make_image(tmp_path / "a"))))
        dom.snapshot_create("s1")
        dom.snapshot_delete("s1")  # an empty record: it moves with the name
        rename = held_call(slowfs, d, renamed(old, new))
        try:
            held_until(slowfs, lambda path: path.startswith(f"/config/domains/.{new}.xml."))
            assert (snapshots / new / "snapshots.json").exists()  # moved, not committed
            slowfs.fail()
            with pytest.raises(client.OperationFailed) as info:
                rename.wait()
        finally:
            slowfs.release()
        assert str(info.value) == (
            f"operation failed: cannot rename domain '{old}' to '{new}': Input/output error"
            " (the undo failed too, Input/output error: the domain keeps its name, and the"
            " next daemon start moves back what was moved)")
        assert names(other) == {old}
    d.stop()
    d.start()
    with d.connect() as again:
        assert [dom.name for dom in again.list_all()] == [old]
    assert json.loads((snapshots / old / "snapshots.json").read_text())["domain"] == old
    assert not (snapshots / new).exists() or not any((snapshots / new).iterdir())
    assert f"a rename to '{new}' was interrupted; undone" in d.log_text()


def test_a_rename_whose_clean_up_failed_is_finished_not_undone_after_later_changes(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """The new definition is durable, then the new autostart flag's fsync fails: the
    call succeeds (the domain is renamed) and the intent record stays. A change of the
    renamed domain rewrites its definition, and the next start still finishes the
    rename (it had undone it, moving the domain's files back under the old name while
    the definition kept the new one). A second domain renamed the same way and then
    undefined is neither finished nor undone, also once another domain is defined under
    its old name: its record is dropped, and it does not come back under its old name.
    A third one whose autostart the admin turns off meanwhile stays off (the record,
    with only the flag left to write, is dropped)."""
    d = on_slowfs(slowfs, daemon_factory)
    old, new = guest_name("renfin-a"), guest_name("renfin-b")
    gone_old, gone_new = guest_name("renfin-c"), guest_name("renfin-d")
    off_old, off_new = guest_name("renfin-e"), guest_name("renfin-f")
    with d.connect() as other:
        for name, uuid, new_name in ((old, UUID_A, new), (gone_old, UUID_B, gone_new),
                                     (off_old, UUID_C, off_new)):
            other.define_xml(domain_xml(name, uuid)).set_autostart(True)
            rename = held_call(slowfs, d, renamed(name, new_name))
            try:
                held_until(slowfs, lambda path, n=new_name: path.startswith(
                    f"/config/autostart/.{n}."))
                slowfs.fail()
                rename.wait()
            finally:
                slowfs.release()
            assert (f"domain '{name}' renamed to '{new_name}', but its clean-up (the old "
                    "name's files, the autostart flag) failed: Input/output error"
                    in d.log_text())
        assert names(other) == {new, gone_new, off_new}
        other.define_xml(domain_xml(new, UUID_A, memory_mib=128))  # changed since
        other.lookup_by_name(gone_new).undefine()
        other.define_xml(domain_xml(gone_old, UUID_D))  # another domain, the old name
        other.lookup_by_name(off_new).set_autostart(False)
    domains = slowfs.backing / "config" / "domains"
    assert sorted(p.name for p in domains.glob(".rename-*")) == sorted(
        f".rename-{uuid}.json" for uuid in (UUID_A, UUID_B))
    d.stop()
    d.start()
    with d.connect() as again:
        assert sorted((dom.name, dom.uuid) for dom in again.list_all()) == sorted([
            (new, UUID_A), (off_new, UUID_C), (gone_old, UUID_D)])
        dom = again.lookup_by_name(new)
        assert "<memory unit='KiB'>131072</memory>" in dom.xml(client.XML_INACTIVE)
        assert dom.autostart() is True
        assert again.lookup_by_name(off_new).autostart() is False
    assert definitions(slowfs) == sorted([f"{new}.xml", f"{off_new}.xml", f"{gone_old}.xml"])
    assert sorted(p.name for p in (slowfs.backing / "config" / "autostart").iterdir()) \
        == [new]
    text = d.log_text()
    assert f"a rename to '{new}' was interrupted; finished: the domain is '{new}'" in text
    assert (f"domain '{gone_old}' (uuid {UUID_B}): the record " in text
            and "is left from a rename whose domain has been undefined since: removed"
            in text)
    assert list(domains.glob(".rename-*")) == []
