"""The daemon's config_dir runs out of space.

config_dir is a 256 KiB tmpfs mounted for the test (needs root; skipped otherwise),
filled to the last page. Defining a new domain and redefining an existing one must fail
with an error naming ENOSPC ("No space left on device") and the domain, leave no new or
torn file behind, keep the existing definition intact, and the daemon must keep serving;
once space is freed, defining works again.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client

from .conftest import NO_GUEST_EMULATOR, assert_log_clean, bare_domain_xml, guest_name

FS_SIZE = "256k"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs; requested before daemon_factory so it is unmounted after the daemon
    stopped (fixtures are torn down in reverse order)."""
    mountpoint = tmp_path / "small-config"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0700",
                           "tmpfs", str(mountpoint)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until the filesystem is full; returns the file."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # and the last partial page
    with open(directory / "filler-tail", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _xml_files(domains: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in domains.iterdir()}


def test_define_on_full_config_dir_fails_with_enospc(small_fs: Path, daemon_factory) -> None:
    d = daemon_factory(config={"paths": {"config_dir": str(small_fs)}})
    existing, new = guest_name("full-old"), guest_name("full-new")
    domains = small_fs / "domains"
    with d.connect() as conn:
        old = conn.define_xml(bare_domain_xml(existing, memory_mib=64,
                                              emulator=NO_GUEST_EMULATOR))
        _fill(small_fs)
        before = _xml_files(domains)
        assert list(before) == [f"{existing}.xml"]

        with pytest.raises(client.OperationFailed) as info:
            conn.define_xml(bare_domain_xml(new, emulator=NO_GUEST_EMULATOR))
        message = str(info.value)
        assert "No space left on device" in message, message
        assert f"'{new}'" in message and "nothing was changed" in message
        assert new not in {x.name for x in conn.list_domains()}

        redefined = bare_domain_xml(existing, memory_mib=96, emulator=NO_GUEST_EMULATOR)
        redefined = redefined.replace("<domain type='qemu'>",
                                      f"<domain type='qemu'><uuid>{old.uuid}</uuid>")
        with pytest.raises(client.OperationFailed, match="No space left on device"):
            conn.define_xml(redefined)
        assert "65536" in old.xml()  # memory unchanged in the daemon...
        assert _xml_files(domains) == before  # ...and on disk; no temp file either

        # still serving
        for _ in range(10):
            assert conn.node_info().cpus >= 1
        assert conn.lookup_by_name(existing).uuid == old.uuid

        # space back: defining works again
        (small_fs / "filler").unlink()
        conn.define_xml(bare_domain_xml(new, emulator=NO_GUEST_EMULATOR))
        assert (domains / f"{new}.xml").exists()
    assert_log_clean(d)
    d.stop()
    d.start()  # what was written is read back whole
    with d.connect() as conn:
        assert {existing, new} <= {x.name for x in conn.list_domains()}
    assert "skipping domain definition" not in d.log_text()


def test_a_config_change_on_a_full_config_dir_changes_nothing(small_fs: Path,
                                                              daemon_factory) -> None:
    """setmem --config: the temp file cannot be written, so the change is refused before
    memory moves (its fsync would otherwise wait off the loop)."""
    d = daemon_factory(config={"paths": {"config_dir": str(small_fs)}})
    name = guest_name("full-setmem")
    domains = small_fs / "domains"
    with d.connect() as conn:
        dom = conn.define_xml(bare_domain_xml(name, memory_mib=64, emulator=NO_GUEST_EMULATOR))
        filler = _fill(small_fs)
        before = _xml_files(domains)
        with pytest.raises(client.OperationFailed) as info:
            dom.set_memory(32768, client.AFFECT_CONFIG)
        assert str(info.value) == (f"operation failed: cannot save the definition of "
                                   f"'{name}': No space left on device (nothing was changed)")
        assert "<currentMemory" not in dom.xml()  # still 64 MiB, all of it
        assert _xml_files(domains) == before
        filler.unlink()
        dom.set_memory(32768, client.AFFECT_CONFIG)
        assert "<currentMemory unit='KiB'>32768</currentMemory>" in dom.xml()
    assert "<currentMemory unit='KiB'>32768</currentMemory>" in \
        (domains / f"{name}.xml").read_text()
    assert_log_clean(d)
