"""qemud.driver.firmware without a daemon: what define fills in (with the host's real
descriptors and with the test's own), and the NVRAM file's creation rules, on a real
loop: the template copied by a child, the fsyncs by Linux AIO, on the temp dir's disk
and on a FUSE file system whose fsyncs the test holds (tests/helpers/slowfs.py)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qemud.asyncfsync import AsyncFsync
from qemud.conf import DomainDef, parse_domain_xml
from qemud.dispatch import Deferred
from qemud.driver import firmware as firmware_mod
from qemud.driver.firmware import Firmware
from qemud.errors import OperationFailed, SystemCallFailed
from qemud.loop import EventLoop
from qemud.qemu import firmware as fw
from tests.helpers.loop import run_for, run_until
from tests.helpers.slowfs import SlowFS
from tests.qemu.fakes import fake_caps


@pytest.fixture
def driver(tmp_path: Path, loop: EventLoop, fsyncs: AsyncFsync) -> Any:
    """The parts of a driver a Firmware uses: real capabilities of a fake host, a real
    state directory, loop and AIO."""
    return SimpleNamespace(
        config=SimpleNamespace(paths=SimpleNamespace(state_dir=tmp_path / "state")),
        registry=SimpleNamespace(validators=[]), start_hooks=[], caps=fake_caps(),
        loop=loop, fsync=fsyncs)


def make(driver: Any, dirs: tuple[Path, ...] = fw.DEFAULT_DIRS) -> Firmware:
    """A Firmware registered with ``driver``."""
    driver.registry.validators, driver.start_hooks = [], []
    firmware = Firmware(driver, dirs)
    assert driver.registry.validators == [firmware.fill]
    assert driver.start_hooks == [firmware.before_start]
    return firmware


def ended(loop: EventLoop, d: Deferred) -> Deferred:
    run_until(loop, lambda: d.done)
    return d


def created(loop: EventLoop, firmware: Firmware, path: Path, template: str | None,
            loader: str, replace: bool = False) -> bool | None:
    """:meth:`Firmware.create_nvram` to its end: None (the file is there), True
    (written) or False (one appeared meanwhile); its failure raised."""
    d = firmware.create_nvram(path, template, loader, replace=replace)
    if d is None:
        return None
    assert not d.done  # never from inside the call: the copy is a child's
    if ended(loop, d).error is not None:
        raise d.error
    assert isinstance(d.result, bool)
    return d.result


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def definition(os_inner: str, os_attrs: str = "", machine: str = "pc-q35-7.2") -> DomainDef:
    return parse_domain_xml(
        f"<domain type='qemu'><name>vm</name><memory>65536</memory><os{os_attrs}>"
        f"<type arch='x86_64' machine='{machine}'>hvm</type>{os_inner}</os></domain>")


def test_efi_is_resolved_with_the_host_descriptors(tmp_path: Path, driver: Any) -> None:
    firmware = make(driver)
    dom = definition("", " firmware='efi'")
    firmware.fill(dom)
    os_ = dom.os
    assert (os_.loader, os_.loader_type, os_.loader_readonly, os_.loader_secure) == (
        "/usr/share/OVMF/OVMF_CODE_4M.fd", "pflash", True, None)
    assert os_.nvram == str(tmp_path / "state" / "nvram" / "vm_VARS.fd")
    assert os_.nvram_template == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    assert os_.firmware_features == {"enrolled-keys": False, "secure-boot": False}
    dom.validate()  # what define stores is valid (libvirt's schema included)
    before = dom.to_xml()
    firmware.fill(dom)  # resolved once: a second pass changes nothing
    assert dom.to_xml() == before


def test_a_manual_pflash_loader_gets_the_default_nvram_and_its_template(
        tmp_path: Path, driver: Any) -> None:
    firmware = make(driver)
    dom = definition("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd"
                     "</loader>", machine="pc")
    firmware.fill(dom)
    assert dom.os.nvram == str(tmp_path / "state" / "nvram" / "vm_VARS.fd")
    assert dom.os.nvram_template == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    bare = definition("<loader>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>", machine="pc")
    firmware.fill(bare)  # a bare path the descriptors know: flash, with its NVRAM
    assert (bare.os.loader_type, bare.os.loader_readonly) == ("pflash", True)
    assert bare.os.nvram_template == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    rom = definition("<loader type='rom'>/usr/share/seabios/bios.bin</loader>")
    firmware.fill(rom)
    assert not rom.os.has_nvram


def test_smm_firmware_turns_smm_on_and_smm_off_excludes_it(driver: Any) -> None:
    firmware = make(driver)
    secure = "<firmware><feature enabled='yes' name='secure-boot'/></firmware>"
    dom = definition(secure, " firmware='efi'")
    firmware.fill(dom)
    assert dom.os.loader_secure is True
    assert "<features>\n    <smm state='on'/>\n  </features>" in dom.to_xml()
    off = parse_domain_xml(definition(secure, " firmware='efi'").to_xml().replace(
        "</os>", "</os><features><smm state='off'/></features>"))
    with pytest.raises(OperationFailed, match="Unable to find any firmware to satisfy 'efi'"):
        firmware.fill(off)


def test_nvram_is_created_once_0600_from_the_template(tmp_path: Path, loop: EventLoop,
                                                      driver: Any) -> None:
    firmware = make(driver)
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"template")
    path = tmp_path / "state" / "nvram" / "vm_VARS.fd"
    assert created(loop, firmware, path, str(template), "/fw/CODE.fd") is True
    assert path.read_bytes() == b"template" and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"the guest's variables")
    assert created(loop, firmware, path, str(template), "/fw/CODE.fd") is None
    assert path.read_bytes() == b"the guest's variables"
    # start --reset-nvram: a fresh copy over it
    assert created(loop, firmware, path, str(template), "/fw/CODE.fd", replace=True) is True
    assert path.read_bytes() == b"template" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["vm_VARS.fd"]  # no temp left


@pytest.mark.timeout(30)
def test_the_zeros_of_a_template_take_no_disk_space_in_the_copy(
        tmp_path: Path, loop: EventLoop, driver: Any) -> None:
    """aarch64's variable store template is 64 MiB of (nearly all) zeros: the copy has
    the same bytes, with the all-zero 64 KiB blocks left as holes, so creating it writes
    and syncs a few KiB, not 64 MiB."""
    firmware = make(driver)
    block = 64 * 1024
    content = (b"\0" * (3 * block) + b"VARSTORE" + b"\0" * (block - 8)  # 1 block of data
               + b"\0" * (60 * block) + b"\xff" * 100 + b"\0" * 5)  # and a short tail
    template = tmp_path / "AAVMF_VARS.fd"
    template.write_bytes(content)
    assert template.stat().st_blocks * 512 >= len(content)  # (written whole: no holes)
    path = tmp_path / "state" / "nvram" / "arm_VARS.fd"
    assert created(loop, firmware, path, str(template), "/fw/AAVMF_CODE.fd")
    assert path.read_bytes() == content
    allocated = path.stat().st_blocks * 512
    assert allocated <= 4 * block, f"{allocated} bytes allocated for {len(content)}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a size that is no multiple of the block, ending in zeros: the size is kept
    template.write_bytes(b"x" + b"\0" * (2 * block + 10))
    other = path.with_name("arm2_VARS.fd")
    assert created(loop, firmware, other, str(template), "/fw/AAVMF_CODE.fd")
    assert other.read_bytes() == template.read_bytes()


@pytest.mark.timeout(30)  # a blocking open of the FIFO would hang here
def test_a_template_that_is_not_a_file_is_refused_at_once(tmp_path: Path, driver: Any,
                                                          monkeypatch) -> None:
    """The template path is the definition's: a FIFO (or a device) there is refused
    without being waited on, a missing one says so, a huge one is not read."""
    firmware = make(driver)
    fifo = tmp_path / "VARS.fifo"
    os.mkfifo(fifo)
    path = tmp_path / "state" / "nvram" / "vm_VARS.fd"
    cases = {str(fifo): "it is a FIFO, not a regular file (an NVRAM template)",
             "/dev/zero": "it is a character device, not a regular file",
             str(tmp_path): "it is a directory, not a regular file",
             str(tmp_path / "missing.fd"): "No such file or directory"}
    for template, reason in cases.items():
        with pytest.raises(SystemCallFailed, match=re.escape(
                f"Failed to open file '{template}': {reason}")):
            firmware.create_nvram(path, template, "/fw/CODE.fd")
    big = tmp_path / "BIG_VARS.fd"
    big.write_bytes(b"v" * 100)
    monkeypatch.setattr(firmware_mod, "MAX_NVRAM_TEMPLATE", 99)
    with pytest.raises(SystemCallFailed, match="100 bytes, more than an NVRAM template's 99"):
        firmware.create_nvram(path, str(big), "/fw/CODE.fd")
    assert not path.exists()
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SystemCallFailed, match="100 bytes"):  # (its descriptor closed)
        firmware.create_nvram(path, str(big), "/fw/CODE.fd")
    assert len(os.listdir("/proc/self/fd")) == before


def test_template_from_the_loader_descriptor_or_a_clear_error(
        tmp_path: Path, loop: EventLoop, driver: Any) -> None:
    share = tmp_path / "share"
    share.mkdir()
    template = tmp_path / "DESC_VARS.fd"
    template.write_bytes(b"from descriptor")
    (share / "50-x.json").write_text(json.dumps({
        "interface-types": ["uefi"], "features": [],
        "mapping": {"device": "flash", "executable": {"filename": "/fw/CODE.fd"},
                    "nvram-template": {"filename": str(template)}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}]}))
    firmware = make(driver, (share,))
    path = tmp_path / "nv" / "a.fd"
    assert created(loop, firmware, path, None, "/fw/CODE.fd")
    assert path.read_bytes() == b"from descriptor"
    with pytest.raises(OperationFailed, match="unable to find any master var store for "
                       "loader: /fw/OTHER.fd"):
        firmware.create_nvram(tmp_path / "nv" / "b.fd", None, "/fw/OTHER.fd")


def test_the_copy_waits_for_the_disk_off_the_loop(
        slowfs: SlowFS, tmp_path: Path, loop: EventLoop, driver: Any) -> None:
    """The template is copied by a child and synced by AIO: the loop turns meanwhile,
    and the file is in place only once its temp file is synced; the Deferred resolves
    once the directory is synced too."""
    firmware = make(driver)
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"vars" * 1000)
    path = slowfs.mount / "nvram" / "vm_VARS.fd"
    slowfs.hold()
    try:
        d = firmware.create_nvram(path, str(template), "/fw/CODE.fd")
        assert d is not None
        run_until(loop, slowfs.held)
        [held] = slowfs.held()
        assert held.startswith("/nvram/.vm_VARS.fd.") and held.endswith(".tmp")
        run_for(loop, 0.3)  # (this thread is the loop: it turns while the fsync waits)
        assert not d.done and not path.exists()
        slowfs.let()
        run_until(loop, lambda: slowfs.held() == ["/nvram"])
        assert path.read_bytes() == template.read_bytes() and not d.done
    finally:
        slowfs.release()
    assert ended(loop, d).error is None and d.result is True
    assert temps(path.parent) == []


def test_a_failed_fsync_creates_no_file(slowfs: SlowFS, tmp_path: Path, loop: EventLoop,
                                        driver: Any) -> None:
    firmware = make(driver)
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"vars")
    path = slowfs.mount / "vm_VARS.fd"
    slowfs.hold()
    try:
        d = firmware.create_nvram(path, str(template), "/fw/CODE.fd")
        assert d is not None
        run_until(loop, slowfs.held)
        slowfs.fail()
        ended(loop, d)
    finally:
        slowfs.release()
    assert isinstance(d.error, SystemCallFailed)
    assert d.error.detail == f"Failed to create NVRAM file '{path}': Input/output error"
    assert sorted(os.listdir(slowfs.mount)) == []  # neither the file nor its temp file


def test_a_file_that_appears_during_the_copy_is_kept(
        slowfs: SlowFS, tmp_path: Path, loop: EventLoop, driver: Any) -> None:
    """Once it exists, the NVRAM file is the guest's: one put there while the copy
    waited for the disk is not replaced (unless the copy is a reset)."""
    firmware = make(driver)
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"template")
    path = slowfs.mount / "vm_VARS.fd"
    for replace, expected in ((False, b"the guest's"), (True, b"template")):
        path.unlink(missing_ok=True)
        slowfs.hold()
        try:
            d = firmware.create_nvram(path, str(template), "/fw/CODE.fd", replace=replace)
            assert d is not None
            run_until(loop, slowfs.held)
            path.write_bytes(b"the guest's")
        finally:
            slowfs.release()
        assert ended(loop, d).error is None
        assert d.result is replace  # (False: the file there is left as it is)
        assert path.read_bytes() == expected
        assert temps(slowfs.mount) == []


def test_a_copy_that_fills_the_disk_names_the_cause(
        tmp_path: Path, loop: EventLoop, driver: Any) -> None:
    """The child's failure (here: ENOSPC on a full file system) is the start's error,
    in dd's words, and nothing is left behind."""
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                           capture_output=True, text=True)
    assert mount.returncode == 0, mount.stderr
    try:
        firmware = make(driver)
        template = tmp_path / "VARS.fd"
        template.write_bytes(b"\xa5" * (256 * 1024))  # (no zeros: all of it is written)
        path = small / "vm_VARS.fd"
        d = firmware.create_nvram(path, str(template), "/fw/CODE.fd")
        assert d is not None
        ended(loop, d)
        assert isinstance(d.error, SystemCallFailed)
        assert d.error.detail.startswith(
            f"Failed to create NVRAM file '{path}': copying {template}: ")
        assert "exited with status 1: " in d.error.detail
        assert "No space left on device" in d.error.detail
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_copies_a_killed_daemon_left_are_removed_at_start_up(
        tmp_path: Path, driver: Any) -> None:
    """In the default directory every temp file name is the daemon's; next to an NVRAM
    file elsewhere, only that file's own temp files are removed."""
    firmware = make(driver)
    firmware.nvram_dir.mkdir(parents=True)
    default_dead = firmware.nvram_dir / ".vm_VARS.fd.4242-0.tmp"
    default_dead.write_bytes(b"")
    (firmware.nvram_dir / "vm_VARS.fd").write_bytes(b"kept")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    custom_dead = elsewhere / ".custom.fd.4242-1.tmp"
    custom_dead.write_bytes(b"")
    others = [elsewhere / ".other.fd.4242-1.tmp", elsewhere / ".custom.fd.notours.tmp"]
    for other in others:
        other.write_bytes(b"")

    def domain(nvram: str) -> SimpleNamespace:
        xml = definition(f"<loader readonly='yes' type='pflash'>/fw/CODE.fd</loader>"
                         f"<nvram>{nvram}</nvram>")
        return SimpleNamespace(persistent=True, persistent_definition=xml)
    driver.registry = [domain(str(elsewhere / "custom.fd")),
                       domain(str(firmware.nvram_dir / "vm_VARS.fd"))]
    firmware.remove_dead_copies()
    assert not default_dead.exists() and not custom_dead.exists()
    assert all(other.exists() for other in others)
    assert (firmware.nvram_dir / "vm_VARS.fd").read_bytes() == b"kept"
