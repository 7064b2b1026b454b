"""qemud.qemu.firmware: descriptor parsing, directory precedence and autoselection, with
descriptors the tests write and against the host's real ones (Debian's ovmf and
qemu-efi-aarch64, installed by contrib/setup.sh)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qemud.qemu import firmware as fw


def descriptor(code: str, *, vars: str | None = "/fw/VARS.fd", arch: str = "x86_64",
               machines: tuple[str, ...] = ("pc-i440fx-*", "pc-q35-*"),
               features: tuple[str, ...] = (), interfaces: tuple[str, ...] = ("uefi",),
               mode: str | None = None) -> dict[str, Any]:
    mapping: dict[str, Any] = {"device": "flash",
                               "executable": {"filename": code, "format": "raw"}}
    if vars is not None:
        mapping["nvram-template"] = {"filename": vars, "format": "raw"}
    if mode is not None:
        mapping["mode"] = mode
    return {"description": code, "interface-types": list(interfaces), "mapping": mapping,
            "targets": [{"architecture": arch, "machines": list(machines)}],
            "features": list(features), "tags": []}


def write(directory: Path, name: str, data: dict[str, Any] | str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(data if isinstance(data, str) else json.dumps(data))


Q35 = ["q35", "pc-q35-7.2"]
PC = ["pc", "pc-i440fx-7.2"]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    share, etc = tmp_path / "share", tmp_path / "etc"
    write(share, "40-secure-enrolled.json",
          descriptor("/fw/CODE.ms.fd", machines=("pc-q35-*",),
                     features=("enrolled-keys", "requires-smm", "secure-boot")))
    write(share, "50-secure.json", descriptor("/fw/CODE.secboot.fd", machines=("pc-q35-*",),
                                              features=("requires-smm", "secure-boot")))
    write(share, "60-plain.json", descriptor("/fw/CODE.fd"))
    write(share, "60-arm.json", descriptor("/fw/AAVMF.fd", arch="aarch64",
                                           machines=("virt-*",)))
    return share, etc


def test_priority_order_and_plain_firmware_preferred_without_a_request(
        dirs: tuple[Path, Path]) -> None:
    found = fw.load_descriptors(dirs)
    assert [d.name for d in found] == ["40-secure-enrolled.json", "50-secure.json",
                                       "60-arm.json", "60-plain.json"]
    # the secure builds come first by priority, but nobody asked for Secure Boot
    assert fw.select(found, arch="x86_64", machines=Q35, features={}).executable == \
        "/fw/CODE.fd"
    chosen = fw.select(found, arch="x86_64", machines=PC, features={})
    assert (chosen.executable, chosen.nvram_template) == ("/fw/CODE.fd", "/fw/VARS.fd")


def test_requested_features_decide_then_priority(dirs: tuple[Path, Path]) -> None:
    found = fw.load_descriptors(dirs)
    secure = fw.select(found, arch="x86_64", machines=Q35, features={"secure-boot": True})
    assert secure.executable == "/fw/CODE.ms.fd" and secure.requires_smm
    unenrolled = fw.select(found, arch="x86_64", machines=Q35,
                           features={"secure-boot": True, "enrolled-keys": False})
    assert unenrolled.executable == "/fw/CODE.secboot.fd"
    assert fw.select(found, arch="x86_64", machines=Q35,
                     features={"secure-boot": False}).executable == "/fw/CODE.fd"


def test_smm_firmware_never_on_a_machine_without_smm(dirs: tuple[Path, Path]) -> None:
    found = fw.load_descriptors(dirs)
    with pytest.raises(fw.FirmwareNotFound, match=r"^Unable to find any firmware to satisfy "
                       r"'efi' \(.*x86_64 machine 'pc-i440fx-7.2' with secure-boot on "
                       r"without SMM\)$"):
        fw.select(found, arch="x86_64", machines=PC, features={"secure-boot": True})
    # q35 with SMM turned off by the definition (<smm state='off'/>)
    with pytest.raises(fw.FirmwareNotFound):
        fw.select(found, arch="x86_64", machines=Q35, features={"secure-boot": True},
                  smm=False)
    assert fw.machine_has_smm("x86_64", Q35) and not fw.machine_has_smm("x86_64", PC)
    assert not fw.machine_has_smm("aarch64", ["virt", "virt-7.2"])


def test_machine_alias_and_arch_must_match(dirs: tuple[Path, Path]) -> None:
    found = fw.load_descriptors(dirs)
    with pytest.raises(fw.FirmwareNotFound):  # 'q35' alone matches no 'pc-q35-*' glob
        fw.select(found, arch="x86_64", machines=["q35"], features={})
    assert fw.select(found, arch="aarch64", machines=["virt", "virt-7.2"],
                     features={}).executable == "/fw/AAVMF.fd"
    with pytest.raises(fw.FirmwareNotFound):
        fw.select(found, arch="ppc64", machines=["pseries"], features={})


def test_etc_overrides_and_masks_by_file_name(dirs: tuple[Path, Path]) -> None:
    share, etc = dirs
    write(etc, "60-plain.json", descriptor("/local/CODE.fd"))
    write(etc, "60-arm.json", "")  # an empty file hides the packaged one
    found = fw.load_descriptors(dirs)
    assert "60-arm.json" not in [d.name for d in found]
    assert fw.select(found, arch="x86_64", machines=PC, features={}).executable == \
        "/local/CODE.fd"


def test_bad_and_foreign_descriptors_are_skipped(dirs: tuple[Path, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    share, _ = dirs
    write(share, "10-broken.json", "{not json")
    write(share, "11-no-targets.json", {"interface-types": ["uefi"],
                                        "mapping": {"device": "flash", "executable": {
                                            "filename": "/x"}}})
    write(share, "12-combined.json", descriptor("/fw/COMBINED.fd", mode="combined"))
    write(share, "13-bios.json", descriptor("/fw/BIOS.fd", interfaces=("bios",)))
    write(share, "README", "not a descriptor")
    found = fw.load_descriptors(dirs)
    names = [d.name for d in found]
    assert "10-broken.json" not in names and "11-no-targets.json" not in names
    assert "12-combined.json" not in names  # a combined image has no NVRAM template
    assert fw.select(found, arch="x86_64", machines=PC, features={}).executable == \
        "/fw/CODE.fd"  # the bios-only one is not UEFI
    assert "10-broken.json" in caplog.text and "11-no-targets.json" in caplog.text
    with pytest.raises(fw.InvalidDescriptor, match="'targets' must be a list"):
        fw.parse_descriptor(json.dumps({"mapping": {"device": "memory", "filename": "/b"}}),
                            "x.json")


def test_find_executable_by_path_or_symlink(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    real = tmp_path / "CODE.fd"
    real.write_bytes(b"x")
    link = tmp_path / "CODE.link.fd"
    link.symlink_to(real)
    write(dirs[1], "70-real.json", descriptor(str(real), vars="/fw/REAL_VARS.fd"))
    found = fw.load_descriptors(dirs)
    assert fw.find_executable(found, "/fw/CODE.fd") is not None
    by_link = fw.find_executable(found, str(link))
    assert by_link is not None and by_link.nvram_template == "/fw/REAL_VARS.fd"
    assert fw.find_executable(found, "/nowhere.fd") is None


# -- the host's real descriptors (Debian's ovmf / qemu-efi-aarch64) ------------------------

def test_host_descriptors_x86_64() -> None:
    found = fw.load_descriptors()
    for machines in (PC, Q35):
        plain = fw.select(found, arch="x86_64", machines=machines, features={})
        assert not plain.secure_boot and not plain.requires_smm
        assert plain.device == "flash" and plain.nvram_template
        assert Path(plain.executable).is_file() and Path(plain.nvram_template).is_file()
    secure = fw.select(found, arch="x86_64", machines=Q35, features={"secure-boot": True})
    assert secure.requires_smm and Path(secure.executable).is_file()
    with pytest.raises(fw.FirmwareNotFound):
        fw.select(found, arch="x86_64", machines=PC, features={"secure-boot": True})


def test_host_descriptors_aarch64() -> None:
    found = fw.load_descriptors()
    chosen = fw.select(found, arch="aarch64", machines=["virt", "virt-7.2"], features={})
    assert not chosen.secure_boot and chosen.nvram_template
    assert Path(chosen.executable).is_file() and Path(chosen.nvram_template).is_file()
