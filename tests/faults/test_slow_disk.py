"""A define on a disk that takes its time: the daemon waits for the fsyncs off its loop.

The daemon's config directory is on a real FUSE file system whose fsyncs the test holds
(:mod:`tests.helpers.slowfs`). While a define's fsyncs wait, other clients are answered
and see the registry as it was; the definition appears, in memory and on disk at once,
when its temp file is synced and renamed; the caller's reply waits for the directory's
fsync too. A failed fsync changes nothing. Calls that ran in between are seen by the
define as if they had come first.
"""

from __future__ import annotations

from typing import Any

import pytest

import client
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background

from .conftest import assert_log_clean, guest_name
from .slow_disk import (
    UUID_A,
    definitions,
    domain_xml,
    held_call,
    names,
    on_slowfs,
)

UUID_B = "6a0d2c3e-2222-4c5b-9c1d-0123456789ab"


def define_held(slowfs: SlowFS, d: DaemonProcess, xml: str) -> Background:
    """A define whose temp file's fsync is held (see :func:`held_call`)."""
    return held_call(slowfs, d, lambda c: c.define_xml(xml))


def autostart_held(slowfs: SlowFS, d: DaemonProcess, name: str, on: bool) -> Background:
    return held_call(slowfs, d, lambda c: c.lookup_by_name(name).set_autostart(on))


def test_other_clients_are_answered_while_a_define_waits_for_the_disk(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("slow")
    with d.connect() as other:
        slowfs.hold()
        define = Background(d, lambda c: c.define_xml(domain_xml(name, UUID_A)))
        try:
            [temp] = slowfs.wait_held()
            assert temp.startswith(f"/config/domains/.{name}.xml.") and temp.endswith(".tmp")
            # the temp file's fsync waits: others are answered, nothing is defined yet
            assert other.node_info().cpus >= 1
            assert name not in names(other)
            with pytest.raises(client.NoDomainError):
                other.lookup_by_name(name)
            assert not define.answered
            slowfs.let()
            # renamed: memory and disk have it; the caller still waits for the directory
            assert slowfs.wait_held() == ["/config/domains"]
            assert name in names(other)
            assert f"{name}.xml" in definitions(slowfs)
            assert not define.answered
        finally:
            slowfs.release()
        assert define.wait().name == name
    assert [n for n in definitions(slowfs) if n.endswith(".tmp")] == []
    assert_log_clean(d)


def test_a_failed_fsync_defines_nothing(slowfs: SlowFS,
                                        daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("eio")
    define = define_held(slowfs, d, domain_xml(name, UUID_A))
    try:
        slowfs.fail()
        with pytest.raises(client.OperationFailed) as info:
            define.wait()
    finally:
        slowfs.release()
    assert str(info.value) == (f"operation failed: cannot save the definition of '{name}': "
                               "Input/output error (nothing was changed)")
    assert definitions(slowfs) == []  # neither the definition nor its temp file
    with d.connect() as conn:
        assert name not in names(conn)
        conn.define_xml(domain_xml(name, UUID_A))  # the disk is back: it works
        assert name in names(conn)
    assert definitions(slowfs) == [f"{name}.xml"]


def test_a_failed_directory_fsync_is_logged_and_the_define_stands(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("dirfail")
    define = define_held(slowfs, d, domain_xml(name, UUID_A))
    try:
        slowfs.let()
        assert slowfs.wait_held() == ["/config/domains"]
        slowfs.fail()
        assert define.wait().name == name
    finally:
        slowfs.release()
    assert definitions(slowfs) == [f"{name}.xml"]
    assert "is written, but its directory could not be synced (Input/output error)" \
        in d.log_text()


def test_an_undefine_while_a_redefine_waits_comes_first(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("undef")
    backing = slowfs.backing / "config" / "domains" / f"{name}.xml"
    with d.connect() as other:
        other.define_xml(domain_xml(name, UUID_A))
        redefine = define_held(slowfs, d, domain_xml(name, UUID_A, 96))
        try:
            other.lookup_by_name(name).undefine()  # answered while the redefine waits
            assert name not in names(other) and not backing.exists()
        finally:
            slowfs.release()
        # the redefine lands after it: a new definition, as if it had come second
        assert redefine.wait().name == name
        assert "<memory unit='KiB'>98304</memory>" in other.lookup_by_name(name).xml()
    assert "98304" in backing.read_text()
    d.stop()
    d.start()
    with d.connect() as conn:
        assert conn.lookup_by_name(name).uuid == UUID_A
    assert_log_clean(d)


def test_two_defines_of_one_name_with_different_uuids_one_wins(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("race")
    first = define_held(slowfs, d, domain_xml(name, UUID_A))
    try:
        # checked against the registry now, it passes: the first is not defined yet
        second = Background(d, lambda c: c.define_xml(domain_xml(name, UUID_B)))
        slowfs.wait_held(2)
    finally:
        slowfs.release()
    outcomes: dict[str, Any] = {}
    for uuid, call in ((UUID_A, first), (UUID_B, second)):
        try:
            outcomes[uuid] = call.wait().uuid
        except client.RemoteError as exc:
            outcomes[uuid] = exc
    [winner] = [u for u, o in outcomes.items() if o == u]
    [loser] = [u for u in outcomes if u != winner]
    assert isinstance(outcomes[loser], client.DomainExistsError), outcomes
    assert f"domain '{name}' already exists with uuid {winner}" in str(outcomes[loser])
    assert definitions(slowfs) == [f"{name}.xml"]
    assert f"<uuid>{winner}</uuid>" in (slowfs.backing / "config" / "domains" /
                                       f"{name}.xml").read_text()
    with d.connect() as conn:
        assert conn.lookup_by_name(name).uuid == winner
    assert_log_clean(d)


def test_a_define_that_never_got_its_fsync_leaves_the_old_definition(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """kill -9 while the temp file's fsync waits: the next daemon loads the old
    definition and removes the temp file."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("kill")
    with d.connect() as conn:
        conn.define_xml(domain_xml(name, UUID_A))
    redefine = define_held(slowfs, d, domain_xml(name, UUID_A, 96))
    assert d.proc is not None
    d.proc.kill()  # the process cannot finish dying before the kernel's fsync does
    slowfs.release()
    d.proc.wait()
    with pytest.raises(client.ConnectionLost):
        redefine.wait()  # the connection closed without a reply
    assert len(definitions(slowfs)) == 2  # the definition and the temp file
    d.start()
    with d.connect() as conn:
        assert "<memory unit='KiB'>65536</memory>" in conn.lookup_by_name(name).xml()
    assert definitions(slowfs) == [f"{name}.xml"]


def test_autostart_waits_for_the_disk_and_an_undefine_meanwhile_comes_first(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("auto")
    flag = slowfs.backing / "config" / "autostart" / name
    with d.connect() as other:
        other.define_xml(domain_xml(name, UUID_A))
        enable = autostart_held(slowfs, d, name, True)
        try:
            [temp] = slowfs.held()
            assert temp.startswith(f"/config/autostart/.{name}.") and temp.endswith(".tmp")
            assert other.lookup_by_name(name).autostart() is False
            slowfs.let()
            assert slowfs.wait_held() == ["/config/autostart"]
            assert other.lookup_by_name(name).autostart() is True and flag.exists()
            assert not enable.answered
        finally:
            slowfs.release()
        enable.wait()
        # disabling: the flag goes at once, the reply waits for the directory
        disable = autostart_held(slowfs, d, name, False)
        try:
            assert slowfs.held() == ["/config/autostart"]
            assert not flag.exists() and other.lookup_by_name(name).autostart() is False
        finally:
            slowfs.release()
        disable.wait()
        # an undefine while enabling waits: the enable fails, no flag is left behind
        enable = autostart_held(slowfs, d, name, True)
        try:
            other.lookup_by_name(name).undefine()
        finally:
            slowfs.release()
        with pytest.raises(client.NoDomainError, match="undefined or renamed while its "
                                                       "autostart flag was written"):
            enable.wait()
    assert list(flag.parent.iterdir()) == []
    d.stop()
    d.start()
    with d.connect() as conn:
        assert name not in names(conn)
    assert_log_clean(d)


def test_a_call_past_its_deadline_fails_and_its_work_still_lands(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """``limits.call_deadline``: a define whose fsync waits longer fails with
    OPERATION_TIMEOUT, naming the limit and that the work goes on; the same connection
    makes its next call at once, and the define lands once the disk has it."""
    d = daemon_factory(config={"paths": {"config_dir": str(slowfs.mount / "config")},
                               "limits": {"call_deadline": 1.0}})
    name = guest_name("deadline")
    with d.connect() as conn:
        slowfs.hold()
        try:
            with pytest.raises(client.OperationTimeout) as late:
                conn.define_xml(domain_xml(name, UUID_A))
            assert str(late.value) == (
                "Timed out during operation: DOMAIN_DEFINE_XML did not complete within 1 s "
                "(limits.call_deadline); the work goes on and may still complete: look "
                "at the domain before trying again")
            assert conn.node_info().cpus >= 1  # the connection is free again
            assert name not in names(conn)
        finally:
            slowfs.release()
        wait_for(lambda: name in names(conn), timeout=10, message="the define landed")
    assert definitions(slowfs) == [f"{name}.xml"]


def test_a_stale_autostart_flag_goes_off_the_loop_before_the_definition_lands(
        slowfs: SlowFS, daemon_factory: DaemonFactory) -> None:
    """A flag with no definition (an undefine cut short, a hand edit) is removed when the
    define is called, and its removal is durable before the definition is renamed into
    place: the directory's fsync waits off the loop, first."""
    d = on_slowfs(slowfs, daemon_factory)
    name = guest_name("staleflag")
    flag = slowfs.backing / "config" / "autostart" / name
    flag.parent.mkdir(exist_ok=True)
    flag.touch()
    with d.connect() as other:
        define = define_held(slowfs, d, domain_xml(name, UUID_A))
        try:
            assert slowfs.held() == ["/config/autostart"]  # the flag's removal, first
            assert other.node_info().cpus >= 1
            assert not flag.exists()
            assert name not in names(other)
            slowfs.let()
            [temp] = slowfs.wait_held()  # then the definition's own
            assert temp.startswith(f"/config/domains/.{name}.xml.")
        finally:
            slowfs.release()
        assert define.wait().name == name
        assert other.lookup_by_name(name).autostart() is False
    assert definitions(slowfs) == [f"{name}.xml"]
    assert f"removing stale autostart flag of '{name}'" in d.log_text()
