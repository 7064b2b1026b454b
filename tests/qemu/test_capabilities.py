"""Capabilities probing: parsing, fake binaries, parallelism, cache, XML."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from qemud.qemu import capabilities
from qemud.qemu.capabilities import (
    CACHE_FILE,
    Capabilities,
    EmulatorCaps,
    KvmStatus,
    MachineType,
    capabilities_xml,
    find_emulators,
    host_uuid,
    parse_machine_help,
    parse_query_machines,
    parse_version,
    probe_capabilities,
    probe_emulator,
)
from qemud.qemu.errors import CapabilitiesError

X86_HELP = """\
Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
pc-i440fx-1.4        Standard PC (i440FX + PIIX, 1996) (deprecated)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
none                 empty machine
"""
ARM_HELP = """\
Supported machines are:
virt                 QEMU 7.2 ARM Virtual Machine (alias of virt-7.2)
virt-7.2             QEMU 7.2 ARM Virtual Machine
"""
PPC_HELP = """\
Supported machines are:
pseries              pSeries Logical Partition (PAPR compliant) (alias of pseries-7.2)
pseries-7.2          pSeries Logical Partition (PAPR compliant) (default)
"""
OK_KVM = [sys.executable, "-c", "print('ok fake kvm works')"]
#: what ``qemu-system-x86_64 -qmp stdio`` answers to qmp_capabilities, query-machines, quit
#: (trimmed: QEMU 7.2 lists every versioned machine, with more keys)
X86_QMP = "\n".join(json.dumps(message) for message in (
    {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}},
    {"return": {}},
    {"return": [
        {"name": "microvm", "cpu-max": 288, "deprecated": False},
        {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
        {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288},
        {"name": "none", "cpu-max": 1},
    ]},
    {"return": {}},
    {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN"},
)) + "\n"


def test_parse_version() -> None:
    assert parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
                         "Copyright (c) 2003-2022") == (
        (7, 2, 22), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")  # fmt: skip
    assert parse_version("QEMU emulator version 9.1.50 (v9.1.0-123-gabc)")[0] == (9, 1, 50)
    assert parse_version("QEMU emulator version 8.0")[0] == (8, 0, 0)
    with pytest.raises(ValueError):
        parse_version("qemu-kvm: something else")


def test_parse_machine_help() -> None:
    machines = parse_machine_help(X86_HELP)
    by_name = {m.name: m for m in machines}
    assert by_name["pc"] == MachineType(
        "pc", "Standard PC (i440FX + PIIX, 1996)", alias_of="pc-i440fx-7.2"
    )
    assert by_name["pc-i440fx-7.2"].is_default
    assert by_name["pc-i440fx-1.4"].deprecated
    assert by_name["microvm"].description == "microvm (i386)"  # parenthesis kept
    assert by_name["none"].description == "empty machine"
    caps = EmulatorCaps("x86_64", "/q", (7, 2, 0), "7.2.0", machines)
    assert caps.default_machine == "pc-i440fx-7.2"
    assert caps.find_machine("q35") is not None and caps.find_machine("nope") is None
    assert (
        EmulatorCaps("aarch64", "/q", (7, 2, 0), "", parse_machine_help(ARM_HELP)).default_machine
        is None
    )
    with pytest.raises(ValueError):
        parse_machine_help("Supported machines are:\n")


def test_combined_suffixes() -> None:
    (machine,) = parse_machine_help("x  Some board (alias of y) (default) (deprecated)\n")
    assert (machine.alias_of, machine.is_default, machine.deprecated) == ("y", True, True)
    assert machine.description == "Some board"


# -- fake binaries -------------------------------------------------------------------------


def fake_qemu(
    directory: Path, arch: str, help_text: str, *, log: Path, delay: float = 0.0,
    version: str = "7.2.5", fail: bool = False, qmp: str = "",
) -> Path:  # fmt: skip
    """A fake binary; ``qmp`` is its answer to ``-qmp stdio`` (none: it says nothing).

    Each run also appends "begin" before its ``delay`` and "end" after it to ``LOG.spans``
    (see :func:`most_at_once`).
    """
    path = directory / f"qemu-system-{arch}"
    help_file = directory / f"{arch}.help"
    help_file.write_text(help_text)
    qmp_file = directory / f"{arch}.qmp"
    qmp_file.write_text(qmp)
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$0 $*" >> "{log}"\n'
        f'echo begin >> "{log}.spans"\n'
        f"sleep {delay}\n"
        f'echo end >> "{log}.spans"\n'
        + ("echo 'qemu: cannot do that' >&2; exit 1\n" if fail else "")
        + 'case "$1" in\n'
        f"  -version) echo 'QEMU emulator version {version} (fake)'; echo 'Copyright';;\n"
        f'  -machine) cat "{help_file}";;\n'
        f'  -S) cat > /dev/null; cat "{qmp_file}";;\n'
        "esac\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def most_at_once(log: Path) -> int:
    """How many fake binaries were inside their ``delay`` at the same time, at most: told
    by the order of their begin/end lines, not by a clock a loaded machine slows."""
    spans = Path(f"{log}.spans").read_text().split()
    depth = most = 0
    for mark in spans:
        depth += 1 if mark == "begin" else -1
        most = max(most, depth)
    return most


def probe(bindir: Path, cache: Path | None, **kwargs: object) -> Capabilities:
    kwargs.setdefault("kvm_command", OK_KVM)
    return probe_capabilities(
        cache,
        search_dirs=[str(bindir)],
        host_arch="x86_64",
        uuid_="u-1",
        **kwargs,  # type: ignore[arg-type]
    )


def test_find_emulators(bindir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake_qemu(bindir, "x86_64", X86_HELP, log=log)
    fake_qemu(bindir, "ppc64", PPC_HELP, log=log)
    (bindir / "qemu-system-aarch64").write_text("not executable")
    assert find_emulators([str(bindir)]) == {
        "x86_64": str(bindir / "qemu-system-x86_64"),
        "ppc64": str(bindir / "qemu-system-ppc64"),
    }
    assert find_emulators([str(tmp_path / "empty")]) == {}
    assert calls(log) == []  # finding runs nothing


def test_probe_runs_binaries_in_parallel_and_caches(bindir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    for arch, text in (("x86_64", X86_HELP), ("aarch64", ARM_HELP), ("ppc64", PPC_HELP)):
        fake_qemu(bindir, arch, text, log=log, delay=0.4)
    cache = tmp_path / "cache"

    caps = probe(bindir, cache)
    assert len(calls(log)) == 9  # -version, -machine help and QMP, three binaries
    # (one binary's three runs overlap anyway: more than three at once is more binaries)
    assert most_at_once(log) > 3, "binaries were not run in parallel"
    assert sorted(caps.emulators) == ["aarch64", "ppc64", "x86_64"]
    assert caps.emulators["x86_64"].version == (7, 2, 5)
    assert caps.emulators["ppc64"].default_machine == "pseries-7.2"
    assert caps.kvm == KvmStatus(True, "fake kvm works", caps.kvm.elapsed)
    assert caps.kvm_usable and caps.kvm_reason == "fake kvm works"
    assert caps.problems == ()
    data = json.loads((cache / CACHE_FILE).read_text())
    assert set(data["emulators"]) == {str(bindir / f"qemu-system-{a}")
                                      for a in ("x86_64", "aarch64", "ppc64")}  # fmt: skip

    again = probe(bindir, cache)
    assert len(calls(log)) == 9, "an unchanged binary must not be re-run"
    assert again.emulators == caps.emulators

    # a changed binary (size and mtime) is probed again, the others are not
    fake_qemu(bindir, "x86_64", X86_HELP, log=log, version="8.0.0")
    os.utime(bindir / "qemu-system-x86_64", ns=(1, 1))
    third = probe(bindir, cache)
    assert len(calls(log)) == 12
    assert third.emulators["x86_64"].version == (8, 0, 0)
    assert third.emulators["ppc64"] == caps.emulators["ppc64"]


def test_kvm_is_never_cached(bindir: Path, tmp_path: Path) -> None:
    fake_qemu(bindir, "x86_64", X86_HELP, log=tmp_path / "calls")
    cache = tmp_path / "cache"
    assert probe(bindir, cache).kvm_usable
    no = [sys.executable, "-c", "print('fail nope')"]
    assert not probe(bindir, cache, kvm_command=no).kvm_usable


def test_corrupt_or_foreign_cache_is_ignored(bindir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake_qemu(bindir, "x86_64", X86_HELP, log=log)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_text("{not json")
    assert "x86_64" in probe(bindir, cache).emulators
    assert len(calls(log)) == 3
    data = json.loads((cache / CACHE_FILE).read_text())
    assert data["format"] == 2
    data["format"] = 999
    (cache / CACHE_FILE).write_text(json.dumps(data))
    probe(bindir, cache)
    assert len(calls(log)) == 6


def test_no_cache_dir(bindir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake_qemu(bindir, "x86_64", X86_HELP, log=log)
    probe(bindir, None)
    probe(bindir, None)
    assert len(calls(log)) == 6


def test_machine_vcpu_limits_come_from_query_machines(bindir: Path, tmp_path: Path) -> None:
    """libvirt's maxCpus: QMP ``cpu-max`` per machine (an alias gets its machine's), kept
    in the cache; a binary that will not answer QMP has no limits and no problem."""
    log = tmp_path / "calls"
    fake_qemu(bindir, "x86_64", X86_HELP, log=log, qmp=X86_QMP)
    fake_qemu(bindir, "ppc64", PPC_HELP, log=log)  # says nothing to -qmp
    cache = tmp_path / "cache"
    for caps in (probe(bindir, cache), probe(bindir, cache)):  # probed, then cached
        x86 = caps.emulators["x86_64"]
        limits = {m.name: m.max_cpus for m in x86.machines}
        assert limits == {"microvm": 288, "pc": 255, "pc-i440fx-7.2": 255,
                          "pc-i440fx-1.4": None, "q35": 288, "pc-q35-7.2": 288, "none": 1}
        assert {m.max_cpus for m in caps.emulators["ppc64"].machines} == {None}
        assert caps.problems == ()
    assert sum(line.endswith(" -S -nodefaults -display none -machine none -qmp stdio")
               for line in calls(log)) == 2  # once per binary: the second probe was cached


def test_parse_query_machines() -> None:
    assert parse_query_machines(X86_QMP) == {
        "microvm": 288, "pc-i440fx-7.2": 255, "pc": 255, "pc-q35-7.2": 288, "q35": 288,
        "none": 1}
    assert parse_query_machines("garbage\n{\"return\": {}}\n") == {}


def test_failing_binary_is_a_problem_not_a_crash(bindir: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake_qemu(bindir, "x86_64", X86_HELP, log=log)
    fake_qemu(bindir, "ppc64", PPC_HELP, log=log, fail=True)
    caps = probe(bindir, tmp_path / "cache")
    assert list(caps.emulators) == ["x86_64"]
    assert caps.problems == (f"{bindir}/qemu-system-ppc64: -version failed: qemu: cannot do that",)
    with pytest.raises(CapabilitiesError) as info:
        probe_emulator("ppc64", str(bindir / "qemu-system-ppc64"))
    assert info.value.binary == str(bindir / "qemu-system-ppc64")


def test_hanging_binary_times_out(
    bindir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capabilities, "_BINARY_TIMEOUT", 0.5)
    fake_qemu(bindir, "x86_64", X86_HELP, log=tmp_path / "calls", delay=30)
    started = time.monotonic()
    caps = probe(bindir, None)
    assert time.monotonic() - started < 5
    assert caps.emulators == {}
    assert "timed out" in caps.problems[0]


def test_host_uuid_is_a_uuid() -> None:
    import uuid

    assert str(uuid.UUID(host_uuid())) == host_uuid()


# -- XML ---------------------------------------------------------------------------------


def xml_caps(kvm: bool, host_arch: str = "x86_64") -> etree._Element:
    emulators = {
        "x86_64": EmulatorCaps("x86_64", "/usr/bin/qemu-system-x86_64", (7, 2, 0), "7.2.0",
                               tuple(replace(m, max_cpus=255 if "pc" in m.name else None)
                                     for m in parse_machine_help(X86_HELP))),
        "aarch64": EmulatorCaps("aarch64", "/usr/bin/qemu-system-aarch64", (7, 2, 0), "7.2.0",
                                parse_machine_help(ARM_HELP)),
    }  # fmt: skip
    caps = Capabilities(host_arch, "uuid-1", emulators, KvmStatus(kvm, "r"))
    text = capabilities_xml(caps)
    assert caps.to_xml() == text
    return etree.fromstring(text)


def test_capabilities_xml_shape() -> None:
    root = xml_caps(kvm=False)
    assert root.tag == "capabilities"
    assert root.findtext("host/uuid") == "uuid-1"
    assert root.findtext("host/cpu/arch") == "x86_64"
    guests = root.findall("guest")
    assert [g.find("arch").get("name") for g in guests] == ["x86_64", "aarch64"]
    x86 = guests[0]
    assert x86.findtext("os_type") == "hvm"
    assert x86.findtext("arch/wordsize") == "64"
    assert x86.findtext("arch/emulator") == "/usr/bin/qemu-system-x86_64"
    machines = {m.text: m.attrib for m in x86.findall("arch/machine")}
    assert machines["q35"] == {"canonical": "pc-q35-7.2"}
    assert machines["pc-i440fx-1.4"] == {"maxCpus": "255", "deprecated": "yes"}
    assert machines["pc"] == {"maxCpus": "255", "canonical": "pc-i440fx-7.2"}
    assert [d.get("type") for d in x86.findall("arch/domain")] == ["qemu"]


def test_kvm_domain_only_when_usable_and_native() -> None:
    root = xml_caps(kvm=True)
    types = {g.find("arch").get("name"): [d.get("type") for d in g.findall("arch/domain")]
             for g in root.findall("guest")}  # fmt: skip
    assert types == {"x86_64": ["qemu", "kvm"], "aarch64": ["qemu"]}
    root = xml_caps(kvm=True, host_arch="aarch64")
    types = {g.find("arch").get("name"): [d.get("type") for d in g.findall("arch/domain")]
             for g in root.findall("guest")}  # fmt: skip
    assert types == {"x86_64": ["qemu"], "aarch64": ["qemu", "kvm"]}


# -- the real host --------------------------------------------------------------------------


@pytest.mark.integration
def test_real_host(tmp_path: Path) -> None:
    started = time.monotonic()
    caps = probe_capabilities(tmp_path)
    first = time.monotonic() - started
    if "x86_64" not in caps.emulators:
        pytest.skip("qemu-system-x86_64 not installed")
    x86 = caps.emulators["x86_64"]
    assert x86.version >= (6, 0, 0)
    assert x86.find_machine("q35") is not None and x86.default_machine is not None
    for arch in ("aarch64", "ppc64"):
        if arch in caps.emulators:
            assert caps.emulators[arch].find_machine({"aarch64": "virt", "ppc64": "pseries"}[arch])
    assert caps.kvm.reason
    assert caps.problems == ()
    assert first < 5
    cached = probe_capabilities(tmp_path)
    assert cached.emulators == caps.emulators
    root = etree.fromstring(caps.to_xml())
    kvm_listed = any(d.get("type") == "kvm" for d in root.iter("domain"))
    assert kvm_listed == caps.kvm_usable
