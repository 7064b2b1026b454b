"""qemud.driver.firmware without a daemon: what define fills in (with the host's real
descriptors and with the test's own), and the NVRAM file's creation rules."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qemud.conf import DomainDef, parse_domain_xml
from qemud.driver import firmware as firmware_mod
from qemud.driver.firmware import Firmware
from qemud.errors import OperationFailed, SystemCallFailed
from qemud.qemu import firmware as fw
from tests.qemu.fakes import fake_caps


def make(tmp_path: Path, dirs: tuple[Path, ...] = fw.DEFAULT_DIRS) -> tuple[Firmware, Any]:
    """A Firmware registered with the parts of a driver it uses (real capabilities of a
    fake host, a real state directory)."""
    driver = SimpleNamespace(
        config=SimpleNamespace(paths=SimpleNamespace(state_dir=tmp_path / "state")),
        registry=SimpleNamespace(validators=[]), start_hooks=[], caps=fake_caps())
    firmware = Firmware(driver, dirs)  # type: ignore[arg-type]
    assert driver.registry.validators == [firmware.fill]
    assert driver.start_hooks == [firmware.before_start]
    return firmware, driver


def definition(os_inner: str, os_attrs: str = "", machine: str = "pc-q35-7.2") -> DomainDef:
    return parse_domain_xml(
        f"<domain type='qemu'><name>vm</name><memory>65536</memory><os{os_attrs}>"
        f"<type arch='x86_64' machine='{machine}'>hvm</type>{os_inner}</os></domain>")


def test_efi_is_resolved_with_the_host_descriptors(tmp_path: Path) -> None:
    firmware, _ = make(tmp_path)
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
        tmp_path: Path) -> None:
    firmware, _ = make(tmp_path)
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


def test_smm_firmware_turns_smm_on_and_smm_off_excludes_it(tmp_path: Path) -> None:
    firmware, _ = make(tmp_path)
    secure = "<firmware><feature enabled='yes' name='secure-boot'/></firmware>"
    dom = definition(secure, " firmware='efi'")
    firmware.fill(dom)
    assert dom.os.loader_secure is True
    assert "<features>\n    <smm state='on'/>\n  </features>" in dom.to_xml()
    off = parse_domain_xml(definition(secure, " firmware='efi'").to_xml().replace(
        "</os>", "</os><features><smm state='off'/></features>"))
    with pytest.raises(OperationFailed, match="Unable to find any firmware to satisfy 'efi'"):
        firmware.fill(off)


def test_nvram_is_created_once_0600_from_the_template(tmp_path: Path) -> None:
    firmware, _ = make(tmp_path)
    template = tmp_path / "VARS.fd"
    template.write_bytes(b"template")
    path = tmp_path / "state" / "nvram" / "vm_VARS.fd"
    assert firmware.create_nvram(path, str(template), "/fw/CODE.fd")
    assert path.read_bytes() == b"template" and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"the guest's variables")
    assert not firmware.create_nvram(path, str(template), "/fw/CODE.fd")
    assert path.read_bytes() == b"the guest's variables"
    assert [p.name for p in path.parent.iterdir()] == ["vm_VARS.fd"]  # no temp left


@pytest.mark.timeout(30)  # a blocking open of the FIFO would hang here
def test_the_zeros_of_a_template_take_no_disk_space_in_the_copy(tmp_path: Path) -> None:
    """aarch64's variable store template is 64 MiB of (nearly all) zeros: the copy has
    the same bytes, with the all-zero 64 KiB blocks left as holes, so creating it writes
    and syncs a few KiB, not 64 MiB, while the daemon's loop waits."""
    firmware, _ = make(tmp_path)
    block = 64 * 1024
    content = (b"\0" * (3 * block) + b"VARSTORE" + b"\0" * (block - 8)  # 1 block of data
               + b"\0" * (60 * block) + b"\xff" * 100 + b"\0" * 5)  # and a short tail
    template = tmp_path / "AAVMF_VARS.fd"
    template.write_bytes(content)
    assert template.stat().st_blocks * 512 >= len(content)  # (written whole: no holes)
    path = tmp_path / "state" / "nvram" / "arm_VARS.fd"
    assert firmware.create_nvram(path, str(template), "/fw/AAVMF_CODE.fd")
    assert path.read_bytes() == content
    allocated = path.stat().st_blocks * 512
    assert allocated <= 4 * block, f"{allocated} bytes allocated for {len(content)}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a size that is no multiple of the block, ending in zeros: the size is kept
    template.write_bytes(b"x" + b"\0" * (2 * block + 10))
    other = path.with_name("arm2_VARS.fd")
    assert firmware.create_nvram(other, str(template), "/fw/AAVMF_CODE.fd")
    assert other.read_bytes() == template.read_bytes()


def test_a_template_that_is_not_a_file_is_refused_at_once(tmp_path: Path,
                                                          monkeypatch) -> None:
    """The template path is the definition's: a FIFO (or a device) there is refused
    without being waited on, a missing one says so, a huge one is not read."""
    firmware, _ = make(tmp_path)
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


def test_template_from_the_loader_descriptor_or_a_clear_error(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    template = tmp_path / "DESC_VARS.fd"
    template.write_bytes(b"from descriptor")
    (share / "50-x.json").write_text(json.dumps({
        "interface-types": ["uefi"], "features": [],
        "mapping": {"device": "flash", "executable": {"filename": "/fw/CODE.fd"},
                    "nvram-template": {"filename": str(template)}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}]}))
    firmware, _ = make(tmp_path, (share,))
    path = tmp_path / "nv" / "a.fd"
    assert firmware.create_nvram(path, None, "/fw/CODE.fd")
    assert path.read_bytes() == b"from descriptor"
    with pytest.raises(OperationFailed, match="unable to find any master var store for "
                       "loader: /fw/OTHER.fd"):
        firmware.create_nvram(tmp_path / "nv" / "b.fd", None, "/fw/OTHER.fd")
