"""What keeps an idle daemon small (qemud/daemon.py): the schema dropped when idle, the heap
trimmed, no importlib.metadata for one version string."""

from __future__ import annotations

import importlib.metadata
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
import qemud
from qemud import daemon as daemon_module
from qemud.conf import SchemaError, parse_domain_xml, schema
from qemud.daemon import SchemaRelease, trim_heap
from qemud.loop import EventLoop
from tests.conftest import DaemonFactory
from tests.helpers.loop import run_until

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><disk type='file'><driver name='qemu' cache='{cache}'/>
    <source file='/nonexistent/{name}.img'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>
"""
SCHEMA_LOADED = re.compile(r"libvirt domain schema \S+ loaded")


@pytest.fixture
def installed_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """libvirt's domain.rng, nothing loaded yet; skips where it is not installed."""
    path = next((p for p in schema.DEFAULT_SCHEMA_PATHS if p.is_file()), None)
    if path is None:
        pytest.skip("libvirt's domain.rng is not installed (Debian: libvirt-daemon)")
    monkeypatch.delenv(schema.SCHEMA_ENV, raising=False)
    schema.reset_schema()
    yield path
    schema.reset_schema()


# -- the schema's idle release, in-process ----------------------------------------------

def test_schema_released_when_idle_and_loaded_again_on_next_define(
        loop: EventLoop, installed_schema: Path) -> None:
    released: list[float] = []
    release = SchemaRelease(loop, idle=0.2, on_release=lambda: released.append(
        time.monotonic()))
    try:
        assert release.timer is None  # nothing loaded, nothing scheduled
        bad = DOMAIN.format(name="a", cache="bogus")
        with pytest.raises(SchemaError) as first:
            parse_domain_xml(bad)
        assert schema.idle_seconds() is not None and release.timer is not None
        # in use: each validation pushes the release back
        last_use = time.monotonic()
        for _ in range(8):
            loop.run_once(max_wait=0.05)
            parse_domain_xml(DOMAIN.format(name="b", cache="none"))
            last_use = time.monotonic()
        assert not released and schema.idle_seconds() is not None
        run_until(loop, lambda: released)
        assert released[0] - last_use >= 0.2
        assert schema.idle_seconds() is None and release.timer is None
        # the next define loads it again, with the same verdict and words
        with pytest.raises(SchemaError) as again:
            parse_domain_xml(bad)
        assert str(again.value) == str(first.value)
        assert release.timer is not None
        run_until(loop, lambda: len(released) == 2)
    finally:
        release.close()
    assert schema.idle_seconds() is None


def test_close_stops_watching(loop: EventLoop, installed_schema: Path) -> None:
    release = SchemaRelease(loop, idle=0.01)
    release.close()
    parse_domain_xml(DOMAIN.format(name="c", cache="none"))
    assert release.timer is None
    loop.run_once(max_wait=0.05)
    assert schema.idle_seconds() is not None  # nobody releases it any more


def test_a_schema_loaded_before_the_daemon_is_released_too(loop: EventLoop,
                                                           installed_schema: Path) -> None:
    parse_domain_xml(DOMAIN.format(name="d", cache="none"))
    release = SchemaRelease(loop, idle=0.01)
    try:
        assert release.timer is not None
        run_until(loop, lambda: schema.idle_seconds() is None)
    finally:
        release.close()


# -- heap trim and version --------------------------------------------------------------

def test_trim_heap_on_glibc() -> None:
    trim_heap()
    trim_heap()  # cached, and harmless when there is nothing to give back
    if os.confstr("CS_GNU_LIBC_VERSION"):
        assert daemon_module._malloc_trim is not None


def test_the_version_reported_is_the_installed_one() -> None:
    assert qemud.__version__ == importlib.metadata.version("qemud")


# -- a real daemon ----------------------------------------------------------------------

def test_daemon_loads_the_schema_only_to_validate(daemon_factory: DaemonFactory,
                                                  installed_schema: Path) -> None:
    """Stored definitions are not validated again at start-up, so a restarted daemon holds
    no schema until the next define, which still gets the schema's verdict."""
    d = daemon_factory()
    with d.connect() as conn:
        conn.define_xml(DOMAIN.format(name="stored", cache="none"))
    assert SCHEMA_LOADED.search(d.log_text())
    d.stop()
    offset = len(d.log_text())
    d.start()
    with d.connect() as conn:
        assert [dom.name for dom in conn.list_domains()] == ["stored"]
        assert not SCHEMA_LOADED.search(d.log_text()[offset:])
        with pytest.raises(client.XMLError, match="devices/disk.*/driver: attribute "
                           "cache='bogus' rejected by libvirt's domain schema"):
            conn.define_xml(DOMAIN.format(name="bad", cache="bogus"))
    assert SCHEMA_LOADED.search(d.log_text()[offset:])


def _rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1))


def test_defines_and_undefines_do_not_pile_up_memory(daemon_factory: DaemonFactory) -> None:
    """Each define is a deferred call (it waits for its fsyncs off the loop) with a
    300 s deadline timer; thousands of them must not keep their calls in memory (they
    did: ~1.2 KiB a pair until the deadline would have passed)."""
    d = daemon_factory()
    assert d.proc is not None
    bare = ("<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>")
    with d.connect() as conn:
        def pairs(prefix: str, count: int) -> None:
            for i in range(count):
                conn.define_xml(bare.format(f"{prefix}{i}")).undefine()

        pairs("warm", 500)  # the schema, the allocator's arenas, the caches
        before = _rss_kib(d.proc.pid)
        pairs("many", 3000)
        grown = _rss_kib(d.proc.pid) - before
    assert grown < 1536, f"RSS grew {grown} KiB over 3,000 define + undefine pairs"
