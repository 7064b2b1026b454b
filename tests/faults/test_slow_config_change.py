"""A ``--config`` change on a disk that takes its time (setmem, metadata, attach-device...).

As with a define (test_slow_disk.py), the file's fsyncs wait off the loop on a FUSE file
system the test holds. Unlike a define, the change is in memory at once (the next change
builds on it); the caller is answered once the file is durable. Changes made while one
is written go into the next write, together; a failed write puts memory back; an
undefine meanwhile wins, and nothing is written after it. With a running guest, the
definition saved from a QMP answer's callback is waited for too.
"""

from __future__ import annotations

from typing import Any

import pytest

import client
from client.domain import AFFECT_CONFIG, AFFECT_LIVE, START_PAUSED, XML_INACTIVE
from protocol.constants import MetadataType
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background

from .conftest import assert_log_clean, bare_domain_xml, guest_name
from .slow_disk import (
    UUID_A,
    definitions,
    domain_xml,
    held_call,
    names,
    on_slowfs,
)

KIB_64, KIB_48, KIB_32 = 65536, 49152, 32768


def set_current_memory(name: str, kib: int) -> Any:
    return lambda c: c.lookup_by_name(name).set_memory(kib, AFFECT_CONFIG)


def set_title(name: str, title: str) -> Any:
    return lambda c: c.lookup_by_name(name).set_metadata(MetadataType.TITLE, title,
                                                         AFFECT_CONFIG)


def with_domain(slowfs: SlowFS, daemon_factory: DaemonFactory, tag: str
                ) -> tuple[DaemonProcess, str]:
    """A daemon on ``slowfs`` and the name of a domain it has defined (64 MiB)."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name(tag)
    with d.connect() as conn:
        conn.define_xml(domain_xml(name, UUID_A))
    return d, name


def on_disk(slowfs: SlowFS, name: str) -> str:
    return (slowfs.backing / "config" / "domains" / f"{name}.xml").read_text()


def current_memory(xml: str) -> int:
    """``<currentMemory>`` (left out, as libvirt does, when it equals ``<memory>``)."""
    tag = "<currentMemory unit='KiB'>" if "<currentMemory" in xml else "<memory unit='KiB'>"
    start = xml.index(tag) + len(tag)
    return int(xml[start:xml.index("<", start)])


def test_a_config_change_is_seen_at_once_and_answered_once_durable(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d, name = with_domain(slowfs, daemon_factory, "setmem")
    with d.connect() as other:
        dom = other.lookup_by_name(name)
        change = held_call(slowfs, d, set_current_memory(name, KIB_48))
        try:
            [temp] = slowfs.held()
            assert temp.startswith(f"/config/domains/.{name}.xml.") and temp.endswith(".tmp")
            # the loop serves others; memory has the change, the file not yet
            assert other.node_info().cpus >= 1
            assert current_memory(dom.xml()) == KIB_48
            assert current_memory(on_disk(slowfs, name)) == KIB_64
            assert not change.answered
            slowfs.let()
            assert slowfs.wait_held() == ["/config/domains"]
            assert current_memory(on_disk(slowfs, name)) == KIB_48
            assert not change.answered  # (until the rename is durable too)
        finally:
            slowfs.release()
        change.wait()
    assert definitions(slowfs) == [f"{name}.xml"]
    d.stop()
    d.start()
    with d.connect() as conn:
        assert current_memory(conn.lookup_by_name(name).xml()) == KIB_48
    assert_log_clean(d)


def test_changes_made_while_one_is_written_go_into_the_next_write_together(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d, name = with_domain(slowfs, daemon_factory, "coalesce")
    first = held_call(slowfs, d, set_current_memory(name, KIB_48))
    try:
        # both build on the first change, and wait for a write that has them
        second = Background(d, set_title(name, "frontend"))
        third = Background(d, set_current_memory(name, KIB_32))
        with d.connect() as other:
            xml = other.lookup_by_name(name).xml()
            while "<title>frontend</title>" not in xml or current_memory(xml) != KIB_32:
                xml = other.lookup_by_name(name).xml()
        slowfs.let()  # the first write's temp file
        assert slowfs.wait_held() == ["/config/domains"]
        assert current_memory(on_disk(slowfs, name)) == KIB_48
        slowfs.let()  # its directory: the first caller is answered, the next write starts
        first.wait()
        [temp] = slowfs.wait_held()  # one write for both changes
        assert temp.startswith(f"/config/domains/.{name}.xml.")
        assert not second.answered and not third.answered
        slowfs.let()
        assert slowfs.wait_held() == ["/config/domains"]
    finally:
        slowfs.release()
    second.wait()
    third.wait()
    xml = on_disk(slowfs, name)
    assert "<title>frontend</title>" in xml and current_memory(xml) == KIB_32
    assert definitions(slowfs) == [f"{name}.xml"]
    assert_log_clean(d)


def test_a_change_written_when_a_define_has_landed_does_not_undo_it(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """setmem --config's fsync waits; a redefine lands; a change on top of it is made;
    then setmem's fsync ends: its file (built on the old definition) must not go over
    the define's. The next write has the define and the change after it."""
    d, name = with_domain(slowfs, daemon_factory, "redef")
    change = held_call(slowfs, d, set_current_memory(name, KIB_48))
    try:
        [change_temp] = slowfs.held()
        redefine = Background(d, lambda c: c.define_xml(domain_xml(name, UUID_A, 96)))
        define_temp = next(p for p in slowfs.wait_held(2) if p != change_temp)
        slowfs.let(define_temp)  # the define lands
        # (its directory's fsync too: FUSE holds the directory's lock while it waits)
        assert "/config/domains" in slowfs.wait_held(2)
        slowfs.let("/config/domains")
        redefine.wait()
        with d.connect() as other:
            assert current_memory(other.lookup_by_name(name).xml()) == 98304
            title = Background(d, set_title(name, "after the define"))
            while "<title>" not in other.lookup_by_name(name).xml():
                pass
        assert current_memory(on_disk(slowfs, name)) == 98304
        slowfs.let(change_temp)  # setmem's write ends: dropped; the next one starts
        # setmem is answered after a directory fsync (what overtook it must be durable)
        held = slowfs.wait_held(2)
        [next_temp] = [p for p in held if p != "/config/domains"]
        assert "/config/domains" in held
        assert next_temp.endswith(".tmp") and next_temp != change_temp
        xml = on_disk(slowfs, name)
        assert current_memory(xml) == 98304 and "<title>" not in xml
        assert not change.answered
    finally:
        slowfs.release()
    change.wait()  # (as if it had come before the define)
    title.wait()
    xml = on_disk(slowfs, name)
    assert current_memory(xml) == 98304 and "<title>after the define</title>" in xml
    assert definitions(slowfs) == [f"{name}.xml"]
    assert_log_clean(d)


def test_a_failed_write_puts_memory_back(slowfs: SlowFS,
                                         daemon_factory: DaemonFactory) -> None:
    d, name = with_domain(slowfs, daemon_factory, "eio")
    with d.connect() as other:
        dom = other.lookup_by_name(name)
        change = held_call(slowfs, d, set_current_memory(name, KIB_48))
        try:
            assert current_memory(dom.xml()) == KIB_48
            slowfs.fail()
            with pytest.raises(client.OperationFailed) as info:
                change.wait()
        finally:
            slowfs.release()
        assert str(info.value) == (
            f"operation failed: cannot save the definition of '{name}': Input/output "
            "error (the persistent definition was not changed)")
        assert current_memory(dom.xml()) == KIB_64
        assert current_memory(on_disk(slowfs, name)) == KIB_64
        assert definitions(slowfs) == [f"{name}.xml"]  # no temp file left
        dom.set_memory(KIB_32, AFFECT_CONFIG)  # the disk is back: it works
    assert current_memory(on_disk(slowfs, name)) == KIB_32
    assert "cannot save the definition of" in d.log_text()


def test_an_undefine_while_a_change_is_written_wins(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d, name = with_domain(slowfs, daemon_factory, "undef")
    with d.connect() as other:
        change = held_call(slowfs, d, set_current_memory(name, KIB_48))
        try:
            queued = Background(d, set_title(name, "gone soon"))
            while "<title>" not in other.lookup_by_name(name).xml():
                pass
            other.lookup_by_name(name).undefine()  # answered while the change waits
            assert name not in names(other)
        finally:
            slowfs.release()
        change.wait()  # as if it had come before the undefine
        queued.wait()
        assert name not in names(other)
    assert definitions(slowfs) == []  # the change did not bring the file back
    d.stop()
    d.start()
    with d.connect() as conn:
        assert name not in names(conn)
    assert_log_clean(d)


def test_a_daemon_killed_while_a_change_waits_keeps_the_old_definition(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d, name = with_domain(slowfs, daemon_factory, "kill")
    change = held_call(slowfs, d, set_current_memory(name, KIB_48))
    assert d.proc is not None
    d.proc.kill()
    slowfs.release()
    d.proc.wait()
    with pytest.raises(client.ConnectionLost):
        change.wait()  # never answered: the change was never promised
    d.start()
    with d.connect() as conn:
        assert current_memory(conn.lookup_by_name(name).xml()) == KIB_64
    assert definitions(slowfs) == [f"{name}.xml"]


@pytest.mark.usefixtures("qemu_cleanup")
def test_a_live_and_config_change_is_answered_once_the_file_is_durable(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """setmem --live --config on a running guest: the persistent definition is saved from
    the QMP answer's callback, after the handler returned; the reply still waits for
    the file (the balloon, NIC hotplug, vCPU pinning and setvcpus paths chain it)."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("live")
    with d.connect() as other:
        dom = other.define_xml(bare_domain_xml(name, memory_mib=128))
        dom.create(START_PAUSED)
        change = held_call(slowfs, d, lambda c: c.lookup_by_name(name).set_memory(
            98304, AFFECT_LIVE | AFFECT_CONFIG))
        try:
            [temp] = slowfs.held()  # (QEMU took the balloon target first)
            assert temp.startswith(f"/config/domains/.{name}.xml.")
            assert current_memory(dom.xml(XML_INACTIVE)) == 98304
            assert current_memory(on_disk(slowfs, name)) == 131072
            assert not change.answered
        finally:
            slowfs.release()
        change.wait()
        assert current_memory(dom.xml()) == 98304  # live
        dom.destroy()
    assert current_memory(on_disk(slowfs, name)) == 98304
    assert_log_clean(d)


@pytest.mark.usefixtures("qemu_cleanup")
def test_a_start_waits_for_a_change_being_written(slowfs: SlowFS,
                                                  daemon_factory: DaemonFactory) -> None:
    """A start while a ``--config`` change's fsync waits is answered after the write:
    the write fails here (EIO) and the change is taken back, so the guest runs what the
    file holds, not the change."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("start")
    with d.connect() as other:
        dom = other.define_xml(bare_domain_xml(name, memory_mib=128))
        change = held_call(slowfs, d, lambda c: c.lookup_by_name(name).set_memory(
            98304, AFFECT_CONFIG))
        try:
            sent = d.log_text().count("--> DOMAIN_CREATE ")
            start = Background(d, lambda c: c.lookup_by_name(name).create(START_PAUSED))
            wait_for(lambda: d.log_text().count("--> DOMAIN_CREATE ") > sent,
                     message="the start reached the daemon")
            assert other.node_info().cpus >= 1  # (the loop serves others meanwhile)
            assert not start.answered and not dom.is_active()
            slowfs.fail()
            with pytest.raises(client.OperationFailed, match="Input/output error"):
                change.wait()
        finally:
            slowfs.release()
        start.wait()
        assert current_memory(dom.xml()) == 131072  # the file's, not the failed change's
        assert current_memory(dom.xml(XML_INACTIVE)) == 131072
        dom.destroy()
