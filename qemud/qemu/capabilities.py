"""Host and emulator capabilities, probed once at daemon start.

What the daemon can offer depends on the host: which ``qemu-system-*``
binaries exist, their versions and machine types, and whether KVM really
runs guests (see :mod:`qemud.qemu.kvmprobe`).  Probing blocks, which is
acceptable at start-up only, so it is made cheap:

* every binary is run (``-version``, ``-machine help``, and QMP ``query-machines``
  for each machine's vCPU limit, as libvirt probes it) concurrently, and
  concurrently with the KVM probe, so the wall time is that of the slowest
  child rather than the sum;
* per-binary results are cached in a JSON file keyed by the binary's path,
  mtime and size, so an unchanged QEMU is not re-run at all.  KVM is never
  cached: it is a property of the running host, not of a file.

Which binaries to look for comes from the arch strategies (their table's
``binary``), so adding an architecture needs no change here.

The result renders as libvirt-shaped capabilities XML
(:func:`capabilities_xml`) for ``virsh capabilities``-like clients.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from lxml import etree

from qemud.conf.xmlmodel import single_quoted
from qemud.qemu.arch import get_strategy, registered_archs
from qemud.qemu.errors import CapabilitiesError
from qemud.qemu.kvmprobe import DEFAULT_TIMEOUT, KvmProbe, KvmStatus

__all__ = [
    "CACHE_FILE",
    "Capabilities",
    "EmulatorCaps",
    "KvmStatus",
    "MachineType",
    "capabilities_xml",
    "find_emulators",
    "host_uuid",
    "parse_machine_help",
    "parse_query_machines",
    "parse_version",
    "probe_capabilities",
    "probe_emulator",
]

_log = logging.getLogger(__name__)

CACHE_FILE: Final = "qemu-capabilities.json"
#: the KVM run probe's verdict, valid for one boot (keyed by boot_id and the device node)
KVM_CACHE_FILE: Final = "kvm-verdict.json"
# Bump when parsing changes so stale cache entries are re-probed.
_CACHE_FORMAT: Final = 2
#: what the ``query-machines`` probe says to ``-qmp stdio``, all at once (QEMU answers the
#: commands in order, then quits)
_QMP_MACHINES: Final = "".join(json.dumps({"execute": cmd}) + "\n" for cmd in
                               ("qmp_capabilities", "query-machines", "quit"))
_BINARY_TIMEOUT: Final = 10.0
_VERSION_RE: Final = re.compile(
    r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?\S*(?:\s*\((?P<package>[^)]*)\))?"
)
_MACHINE_RE: Final = re.compile(r"(?P<name>\S+)\s+(?P<desc>.*?)\s*\Z")
_SUFFIX_RE: Final = re.compile(r"\s*\((?P<tag>default|deprecated|alias of (?P<alias>[^)]+))\)\Z")


@dataclass(frozen=True)
class MachineType:
    """One line of ``-machine help``."""

    name: str
    description: str
    alias_of: str | None = None
    is_default: bool = False
    deprecated: bool = False
    #: the most vCPUs the machine takes (QMP ``cpu-max``); None when unknown
    max_cpus: int | None = None


@dataclass(frozen=True)
class EmulatorCaps:
    """What one ``qemu-system-ARCH`` binary can do."""

    arch: str
    path: str
    version: tuple[int, int, int]
    version_string: str
    machines: tuple[MachineType, ...]

    @property
    def default_machine(self) -> str | None:
        """The binary's own default machine (aarch64 has none)."""
        return next((m.name for m in self.machines if m.is_default), None)

    def find_machine(self, name: str) -> MachineType | None:
        return next((m for m in self.machines if m.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "path": self.path,
            "version": list(self.version),
            "version_string": self.version_string,
            "machines": [
                {
                    "name": m.name,
                    "description": m.description,
                    "alias_of": m.alias_of,
                    "default": m.is_default,
                    "deprecated": m.deprecated,
                    "max_cpus": m.max_cpus,
                }
                for m in self.machines
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmulatorCaps:
        major, minor, micro = (int(part) for part in data["version"])
        return cls(
            arch=str(data["arch"]),
            path=str(data["path"]),
            version=(major, minor, micro),
            version_string=str(data["version_string"]),
            machines=tuple(
                MachineType(
                    name=str(m["name"]),
                    description=str(m["description"]),
                    alias_of=None if m["alias_of"] is None else str(m["alias_of"]),
                    is_default=bool(m["default"]),
                    deprecated=bool(m["deprecated"]),
                    max_cpus=None if m.get("max_cpus") is None else int(m["max_cpus"]),
                )
                for m in data["machines"]
            ),
        )


@dataclass(frozen=True)
class Capabilities:
    """Everything probed: host facts, emulators by guest arch, KVM verdict."""

    host_arch: str
    host_uuid: str
    emulators: Mapping[str, EmulatorCaps]
    kvm: KvmStatus
    #: Binaries found but not usable, as human-readable messages.
    problems: tuple[str, ...] = field(default=())

    @property
    def kvm_usable(self) -> bool:
        return self.kvm.usable

    @property
    def kvm_reason(self) -> str:
        return self.kvm.reason

    def emulator(self, arch: str) -> EmulatorCaps | None:
        return self.emulators.get(arch)

    def kvm_usable_for(self, arch: str) -> bool:
        """KVM works on this host *and* can run ``arch`` guests here."""
        return self.kvm.usable and get_strategy(arch).kvm_possible_on(self.host_arch)

    def to_xml(self) -> str:
        return capabilities_xml(self)


# -- parsing ----------------------------------------------------------------------


def parse_version(text: str) -> tuple[tuple[int, int, int], str]:
    """Parse ``qemu-system-* -version`` output into ``((7, 2, 22), "7.2.22 (...)")``."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise ValueError(f"no QEMU version in {text[:200]!r}")
    major, minor, micro = (int(match.group(i) or 0) for i in (1, 2, 3))
    return (major, minor, micro), match.group(0).removeprefix("QEMU emulator version ")


def parse_machine_help(text: str) -> tuple[MachineType, ...]:
    """Parse ``-machine help`` output (first line is a header)."""
    machines: list[MachineType] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Supported machines"):
            continue
        match = _MACHINE_RE.match(line.strip())
        if match is None:
            continue
        desc, alias, default, deprecated = match.group("desc"), None, False, False
        while (suffix := _SUFFIX_RE.search(desc)) is not None:
            tag = suffix.group("tag")
            if tag == "default":
                default = True
            elif tag == "deprecated":
                deprecated = True
            else:
                alias = suffix.group("alias")
            desc = desc[: suffix.start()]
        machines.append(MachineType(match.group("name"), desc, alias, default, deprecated))
    if not machines:
        raise ValueError("no machine types in -machine help output")
    return tuple(machines)


def parse_query_machines(text: str) -> dict[str, int]:
    """Machine name (and alias) -> ``cpu-max`` from a ``-qmp stdio`` transcript whose
    commands included ``query-machines``; lines that are not its answer are skipped."""
    limits: dict[str, int] = {}
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        answer = message.get("return") if isinstance(message, dict) else None
        if not isinstance(answer, list):
            continue
        for machine in answer:
            if not isinstance(machine, dict) or not isinstance(machine.get("cpu-max"), int):
                continue
            for key in ("name", "alias"):
                if isinstance(machine.get(key), str):
                    limits[machine[key]] = machine["cpu-max"]
    return limits


# -- probing ----------------------------------------------------------------------


def find_emulators(
    search_dirs: Sequence[str] | None = None, archs: Iterable[str] | None = None
) -> dict[str, str]:
    """Map guest arch -> path of its emulator binary found on ``search_dirs``.

    ``search_dirs`` defaults to ``$PATH``; tests point it at fake binaries.
    """
    path = os.pathsep.join(search_dirs) if search_dirs is not None else None
    found: dict[str, str] = {}
    for arch in archs if archs is not None else registered_archs():
        binary = shutil.which(get_strategy(arch).binary, path=path)
        if binary is not None:
            found[arch] = os.path.abspath(binary)
    return found


def _spawn(argv: list[str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    """End ``proc`` (and its session: a wrapper's children hold the pipes), close pipes."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            _log.warning("probe child %d did not die after SIGKILL", proc.pid)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _collect(binary: str, what: str, proc: subprocess.Popen[str], deadline: float,
             input: str | None = None) -> str:
    try:
        out, err = proc.communicate(input, timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise CapabilitiesError(binary, f"{what} timed out") from None
    if proc.returncode != 0:
        detail = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        raise CapabilitiesError(binary, f"{what} failed: {detail}")
    return out


class _EmulatorProbe:
    """``-version``, ``-machine help`` and QMP ``query-machines`` of one binary, started
    together."""

    def __init__(self, arch: str, binary: str) -> None:
        self.arch = arch
        self.binary = binary
        self._version = _spawn([binary, "-version"])
        self._machines = _spawn([binary, "-machine", "help"])
        self._qmp = _spawn([binary, "-S", "-nodefaults", "-display", "none", "-machine",
                            "none", "-qmp", "stdio"], stdin=subprocess.PIPE)

    def result(self, deadline: float) -> EmulatorCaps:
        try:
            version_text = _collect(self.binary, "-version", self._version, deadline)
            machine_text = _collect(self.binary, "-machine help", self._machines, deadline)
            limits = self._max_cpus(deadline)
        finally:
            _kill(self._version)
            _kill(self._machines)
            _kill(self._qmp)
        try:
            version, version_string = parse_version(version_text)
            machines = parse_machine_help(machine_text)
        except ValueError as exc:
            raise CapabilitiesError(self.binary, str(exc)) from None
        machines = tuple(replace(m, max_cpus=limits.get(m.alias_of or m.name))
                         for m in machines)
        return EmulatorCaps(self.arch, self.binary, version, version_string, machines)

    def _max_cpus(self, deadline: float) -> dict[str, int]:
        """Machine name -> ``cpu-max``; empty when the binary would not say (the limits
        are then unknown and not checked, as in libvirt: never a probe failure)."""
        try:
            text = _collect(self.binary, "query-machines", self._qmp, deadline, _QMP_MACHINES)
        except CapabilitiesError as exc:
            _log.debug("capabilities: %s", exc)
            return {}
        return parse_query_machines(text)


def probe_emulator(arch: str, binary: str, timeout: float = _BINARY_TIMEOUT) -> EmulatorCaps:
    """Probe one binary now (no cache).  Raises :class:`CapabilitiesError`."""
    try:
        probe = _EmulatorProbe(arch, binary)
    except OSError as exc:
        raise CapabilitiesError(binary, f"cannot run: {exc}") from None
    return probe.result(time.monotonic() + timeout)


def host_uuid() -> str:
    """A stable host UUID: DMI product UUID, else /etc/machine-id, else hostname."""
    for source in ("/sys/class/dmi/id/product_uuid", "/etc/machine-id"):
        try:
            text = Path(source).read_text().strip()
            return str(uuid.UUID(text))
        except (OSError, ValueError):
            continue
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, platform.node() or "localhost"))


def _stat_key(binary: str) -> dict[str, int]:
    st = os.stat(binary)
    return {"mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.warning("ignoring unreadable capabilities cache %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    entries = data.get("emulators")
    return entries if isinstance(entries, dict) else {}


def _save_cache(path: Path, entries: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as stream:
            json.dump({"format": _CACHE_FORMAT, "emulators": entries}, stream, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        _log.warning("cannot write capabilities cache %s: %s", path, exc)


def _cached(entries: Mapping[str, Any], arch: str, binary: str) -> EmulatorCaps | None:
    entry = entries.get(binary)
    if not isinstance(entry, dict):
        return None
    try:
        if entry.get("key") != _stat_key(binary):
            return None
        caps = EmulatorCaps.from_json(entry["caps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return caps if caps.arch == arch else None


def probe_capabilities(
    cache_dir: str | os.PathLike[str] | None,
    *,
    search_dirs: Sequence[str] | None = None,
    archs: Iterable[str] | None = None,
    kvm_device: str = "/dev/kvm",
    kvm_timeout: float = DEFAULT_TIMEOUT,
    kvm_command: Sequence[str] | None = None,
    host_arch: str | None = None,
    uuid_: str | None = None,
) -> Capabilities:
    """Probe the host once (blocking; meant for daemon start-up).

    Binaries that fail to probe are left out and listed in
    :attr:`Capabilities.problems`; the daemon decides whether that is fatal.
    ``cache_dir=None`` disables the cache.
    """
    arch_of_host = host_arch if host_arch is not None else platform.machine()
    cache_path = Path(cache_dir, CACHE_FILE) if cache_dir is not None else None
    entries = _load_cache(cache_path) if cache_path is not None else {}
    kvm_cache = Path(cache_dir, KVM_CACHE_FILE) if cache_dir is not None and \
        kvm_command is None else None
    kvm_known = _cached_kvm(kvm_cache, kvm_device) if kvm_cache is not None else None
    kvm_probe = None if kvm_known is not None else \
        KvmProbe(kvm_device, kvm_timeout, kvm_command, arch_of_host)

    emulators: dict[str, EmulatorCaps] = {}
    problems: list[str] = []
    running: list[_EmulatorProbe] = []
    for arch, binary in find_emulators(search_dirs, archs).items():
        cached = _cached(entries, arch, binary)
        if cached is not None:
            emulators[arch] = cached
            continue
        try:
            running.append(_EmulatorProbe(arch, binary))
        except OSError as exc:
            problems.append(f"{binary}: cannot run: {exc}")

    deadline = time.monotonic() + _BINARY_TIMEOUT
    fresh: dict[str, Any] = {}
    for probe in running:
        try:
            caps = probe.result(deadline)
        except CapabilitiesError as exc:
            problems.append(str(exc))
            continue
        emulators[probe.arch] = caps
        try:
            fresh[probe.binary] = {"key": _stat_key(probe.binary), "caps": caps.to_json()}
        except OSError:
            continue
    if cache_path is not None and fresh:
        kept = {b: e for b, e in entries.items() if b in {c.path for c in emulators.values()}}
        _save_cache(cache_path, {**kept, **fresh})
    for problem in problems:
        _log.warning("capabilities: %s", problem)

    if kvm_probe is not None:
        kvm_known = kvm_probe.result()
        if kvm_cache is not None:
            _save_kvm(kvm_cache, kvm_device, kvm_known)
    assert kvm_known is not None
    return Capabilities(
        host_arch=arch_of_host,
        host_uuid=uuid_ if uuid_ is not None else host_uuid(),
        emulators=dict(sorted(emulators.items())),
        kvm=kvm_known,
        problems=tuple(problems),
    )


def _kvm_key(device: str) -> dict[str, Any] | None:
    """What must not change for a KVM verdict to stay valid: this boot, this device node."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        st = os.stat(device)
    except OSError:
        return None
    return {"boot_id": boot_id, "device": device, "rdev": st.st_rdev, "ino": st.st_ino,
            "ctime_ns": st.st_ctime_ns}


def _cached_kvm(path: Path, device: str) -> KvmStatus | None:
    """The verdict of an earlier probe in this boot (the run probe costs up to seconds)."""
    key = _kvm_key(device)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if key is None or not isinstance(data, dict) or data.get("key") != key:
        return None
    return KvmStatus(bool(data.get("usable")), f"{data.get('reason', '')} (probed earlier "
                     "in this boot)")


def _save_kvm(path: Path, device: str, status: KvmStatus) -> None:
    key = _kvm_key(device)
    if key is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as stream:
            json.dump({"key": key, "usable": status.usable, "reason": status.reason}, stream)
        os.replace(tmp, path)
    except OSError as exc:
        _log.warning("cannot write KVM verdict cache %s: %s", path, exc)


# -- XML --------------------------------------------------------------------------


def _default_first(emulator: EmulatorCaps, default: str) -> list[MachineType]:
    """The machines, the one guests get by default (and its alias) first, as libvirt
    lists its preferred machine first: a client taking the first ``maxCpus`` (virsh
    maxvcpus) gets the default machine's."""
    found = emulator.find_machine(default)
    preferred = {default, found.alias_of if found is not None else None}
    return sorted(emulator.machines, key=lambda m: m.name not in preferred)


def capabilities_xml(caps: Capabilities) -> str:
    """libvirt-shaped ``<capabilities>`` document.

    ``<domain type='kvm'/>`` is listed only where KVM passed the run probe
    and the host can run that guest arch natively, so clients never offer a
    guest type that would hang.
    """
    root = etree.Element("capabilities")
    host = etree.SubElement(root, "host")
    etree.SubElement(host, "uuid").text = caps.host_uuid
    cpu = etree.SubElement(host, "cpu")
    etree.SubElement(cpu, "arch").text = caps.host_arch
    for arch, emulator in caps.emulators.items():
        strategy = get_strategy(arch)
        guest = etree.SubElement(root, "guest")
        etree.SubElement(guest, "os_type").text = "hvm"
        arch_el = etree.SubElement(guest, "arch", name=arch)
        etree.SubElement(arch_el, "wordsize").text = str(strategy.wordsize)
        etree.SubElement(arch_el, "emulator").text = emulator.path
        for machine in _default_first(emulator, strategy.table.default_machine):
            machine_el = etree.SubElement(arch_el, "machine")
            if machine.max_cpus is not None:
                machine_el.set("maxCpus", str(machine.max_cpus))
            if machine.alias_of is not None:
                machine_el.set("canonical", machine.alias_of)
            if machine.deprecated:
                machine_el.set("deprecated", "yes")
            machine_el.text = machine.name
        etree.SubElement(arch_el, "domain", type="qemu")
        if caps.kvm_usable_for(arch):
            etree.SubElement(arch_el, "domain", type="kvm")
    return single_quoted(str(etree.tostring(root, pretty_print=True, encoding="unicode")))
