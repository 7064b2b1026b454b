"""The appliance descriptor (``appliance.json`` / ``appliance.toml``): what an appliance
is made of, checked field by field, and whether this host can run it.

A :class:`Descriptor` is frozen and checked once (:func:`parse_descriptor`); its errors
are :class:`DescriptorError` (an ``InvalidArg``) naming the file and the field
(``appliance.json: disks[1].class: ...``). :func:`check_host` refuses an appliance this
host cannot run; :func:`version_key` orders versions naturally (1.9 < 1.10).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from qemud.errors import ConfigUnsupported, InvalidArg

from ..metadata import DISK_CLASSES, HEARTBEAT_ACTIONS, HeartbeatPolicy
from .layout import TARGET_RE

if TYPE_CHECKING:
    from qemud.qemu.capabilities import Capabilities

__all__ = ["Descriptor", "DiskSpec", "BootSpec", "DescriptorError", "parse_descriptor",
           "parse_size", "load_descriptor_text", "check_host", "version_key",
           "KNOWN_FEATURES", "NAME_RE"]

KNOWN_FEATURES = ("acpi", "kvm", "pae", "virtio")
#: appliance names, versions and VM names
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "scsi", "sata", "ide")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


class DescriptorError(InvalidArg):
    """The tarball or its descriptor is wrong; the message names the file or field."""


@dataclass(frozen=True)
class DiskSpec:
    target: str  # guest device: vda, vdb, sda...
    cls: str  # system | data | scratch
    format: str  # qcow2 | raw (of the file in the tarball; scratch disks are qcow2)
    file: str | None  # path inside the tarball (None for scratch)
    size: int | None  # bytes, scratch disks only
    bus: str = "virtio"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "class": self.cls, "bus": self.bus}
        if self.file is not None:
            out["file"] = self.file
            out["format"] = self.format
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class BootSpec:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    disk: str | None = None  # boot from this disk target instead of a kernel

    def to_json(self) -> dict[str, Any]:
        if self.disk is not None:
            return {"disk": self.disk}
        out: dict[str, Any] = {"kernel": self.kernel, "cmdline": self.cmdline}
        if self.initrd is not None:
            out["initrd"] = self.initrd
        return out


@dataclass(frozen=True)
class Descriptor:
    name: str
    version: str
    arch: str
    memory_mib: int
    vcpus: int
    boot: BootSpec
    disks: tuple[DiskSpec, ...]
    features: tuple[str, ...] = ()
    machine: str | None = None
    description: str = ""
    heartbeat: HeartbeatPolicy | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def disks_of(self, cls: str) -> list[DiskSpec]:
        return [d for d in self.disks if d.cls == cls]

    def disk(self, target: str) -> DiskSpec | None:
        return next((d for d in self.disks if d.target == target), None)

    def files(self) -> list[tuple[str, str]]:
        """(field, path inside the tarball) of every file the descriptor names."""
        out = []
        if self.boot.kernel is not None:
            out.append(("boot.kernel", self.boot.kernel))
        if self.boot.initrd is not None:
            out.append(("boot.initrd", self.boot.initrd))
        for i, d in enumerate(self.disks):
            if d.file is not None:
                out.append((f"disks[{i}].file", d.file))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": 1, "name": self.name, "version": self.version, "arch": self.arch,
            "memory": self.memory_mib, "vcpus": self.vcpus,
            "features": list(self.features), "boot": self.boot.to_json(),
            "disks": [d.to_json() for d in self.disks]}
        if self.machine:
            out["machine"] = self.machine
        if self.description:
            out["description"] = self.description
        if self.heartbeat is not None:
            h = self.heartbeat
            out["heartbeat"] = {"interval": h.interval, "misses": h.misses,
                                "action": h.action, "grace": h.grace}
        return out


def parse_size(value: Any, where: str, default_unit: int = 1) -> int:
    """``123`` (in ``default_unit``), ``"64M"``, ``"1 GiB"``, ``"512k"`` -> bytes."""
    if isinstance(value, bool):
        raise DescriptorError(f"{where}: must be a size such as 64M, got {value!r}")
    if isinstance(value, int):
        size = value * default_unit
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        unit = m.group(2).lower()
        size = int(m.group(1)) * (_SCALE[unit] if unit or m.group(3) else default_unit)
    else:
        raise DescriptorError(f"{where}: must be a size such as 64M, got {value!r}")
    if size <= 0:
        raise DescriptorError(f"{where}: must be positive, got {value!r}")
    return size


def _relpath(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DescriptorError(f"{where}: must be a file name inside the tarball, got "
                              f"{value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts or \
            any(p.startswith(".qemud") for p in path.parts):
        raise DescriptorError(f"{where}: '{value}' must be a relative path inside the "
                              "tarball (no '/' at the start, no '..')")
    return str(path)


def parse_descriptor(data: Any, source: str = "appliance.json") -> Descriptor:
    """Check a loaded descriptor; errors name the field (``appliance.json: disks[1]...``)."""
    def fail(where: str, message: str) -> DescriptorError:
        return DescriptorError(f"{source}: {where}: {message}")

    if not isinstance(data, dict):
        raise DescriptorError(f"{source}: must be a JSON object (or TOML table)")
    known = {"format", "name", "version", "arch", "machine", "description", "features",
             "boot", "memory", "vcpus", "disks", "heartbeat"}
    for key in data:
        if key not in known:
            raise fail(str(key), f"unknown field (known: {', '.join(sorted(known))})")
    if data.get("format", 1) != 1:
        raise fail("format", f"unsupported descriptor format {data['format']!r} (this "
                             "daemon reads format 1)")

    def text(key: str, required: bool = True, pattern: re.Pattern[str] | None = None
             ) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise DescriptorError(f"{source}: field '{key}' is missing")
            return None
        if not isinstance(value, str) or not value:
            raise fail(key, f"must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise fail(key, f"'{value}' may only hold letters, digits and . _ + - "
                            "(at most 64, not starting with a punctuation mark)")
        return value

    name = text("name", pattern=NAME_RE)
    version = text("version", pattern=NAME_RE)
    arch = text("arch")
    machine = text("machine", required=False)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    assert name is not None and version is not None and arch is not None
    features = data.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) and f for f in features):
        raise fail("features", f"must be a list of feature names, got {features!r}")
    if "memory" not in data:
        raise DescriptorError(f"{source}: field 'memory' is missing (MiB, or a size such "
                              "as \"512M\")")
    memory = parse_size(data["memory"], f"{source}: memory", 1024 * 1024)
    if memory < 1024 * 1024:
        raise fail("memory", "must be at least 1 MiB")
    vcpus = data.get("vcpus", 1)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 255:
        raise fail("vcpus", f"must be a number of vCPUs between 1 and 255, got {vcpus!r}")

    raw_disks = data.get("disks")
    if raw_disks is None:
        raise DescriptorError(f"{source}: field 'disks' is missing")
    if not isinstance(raw_disks, list) or not raw_disks:
        raise fail("disks", "must be a non-empty list of disks")
    disks: list[DiskSpec] = []
    for i, raw in enumerate(raw_disks):
        where = f"disks[{i}]"
        if not isinstance(raw, dict):
            raise fail(where, "must be a table/object")
        for key in raw:
            if key not in ("file", "class", "format", "target", "size", "bus"):
                raise fail(f"{where}.{key}", "unknown field (known: bus, class, file, "
                                             "format, size, target)")
        target = raw.get("target")
        if not isinstance(target, str) or not TARGET_RE.match(target):
            raise fail(f"{where}.target", f"must be a guest disk name such as vda, got "
                                          f"{target!r}")
        if any(d.target == target for d in disks):
            raise fail(f"{where}.target", f"'{target}' is used by two disks")
        cls = raw.get("class")
        if cls not in DISK_CLASSES:
            raise fail(f"{where}.class", f"must be one of {', '.join(DISK_CLASSES)}, got "
                                         f"{cls!r}")
        bus = raw.get("bus", "virtio")
        if bus not in DISK_BUSES:
            raise fail(f"{where}.bus", f"must be one of {', '.join(DISK_BUSES)}, got {bus!r}")
        if cls == "scratch":
            if "file" in raw:
                raise fail(f"{where}.file", "a scratch disk has no file: it is created "
                                            "empty (give its size)")
            if "size" not in raw:
                raise fail(f"{where}.size", "a scratch disk needs a size (e.g. \"64M\")")
            disks.append(DiskSpec(target, cls, "qcow2", None,
                                  parse_size(raw["size"], f"{source}: {where}.size"), bus))
            continue
        if "file" not in raw:
            raise fail(f"{where}.file", f"is missing (a {cls} disk comes from an image in "
                                        "the tarball)")
        if "size" in raw:
            raise fail(f"{where}.size", f"only scratch disks have a size (a {cls} disk is "
                                        "as large as its image)")
        path = _relpath(raw["file"], f"{source}: {where}.file")
        fmt = raw.get("format", "qcow2" if path.endswith(".qcow2") else "raw")
        if fmt not in DISK_FORMATS:
            raise fail(f"{where}.format", f"must be qcow2 or raw, got {fmt!r}")
        disks.append(DiskSpec(target, cls, fmt, path, None, bus))
    if not any(d.cls == "system" for d in disks):
        raise fail("disks", "an appliance needs at least one disk of class 'system' (the "
                            "one updates replace)")

    boot_raw = data.get("boot")
    if boot_raw is None:
        raise DescriptorError(f"{source}: field 'boot' is missing (kernel/initrd/cmdline "
                              "or disk)")
    if not isinstance(boot_raw, dict):
        raise fail("boot", "must be a table/object")
    for key in boot_raw:
        if key not in ("kernel", "initrd", "cmdline", "disk"):
            raise fail(f"boot.{key}", "unknown field (known: cmdline, disk, initrd, kernel)")
    if "disk" in boot_raw:
        if set(boot_raw) != {"disk"}:
            raise fail("boot", "give either 'disk' or 'kernel' (with initrd/cmdline), not "
                               "both")
        target = boot_raw["disk"]
        if not any(d.target == target and d.cls != "scratch" for d in disks):
            raise fail("boot.disk", f"{target!r} is not a system or data disk of 'disks'")
        boot = BootSpec(disk=str(target))
    else:
        if "kernel" not in boot_raw:
            raise DescriptorError(f"{source}: field 'boot.kernel' is missing (or give "
                                  "boot.disk to boot from a disk)")
        cmdline = boot_raw.get("cmdline", "")
        if not isinstance(cmdline, str):
            raise fail("boot.cmdline", "must be a string")
        boot = BootSpec(kernel=_relpath(boot_raw["kernel"], f"{source}: boot.kernel"),
                        initrd=_relpath(boot_raw["initrd"], f"{source}: boot.initrd")
                        if "initrd" in boot_raw else None, cmdline=cmdline)

    heartbeat = None
    beat = data.get("heartbeat")
    if beat is not None:
        if not isinstance(beat, dict):
            raise fail("heartbeat", "must be a table/object")
        values: dict[str, float] = {}
        for key, default in (("interval", 1.0), ("misses", 3), ("grace", 60.0)):
            value = beat.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise fail(f"heartbeat.{key}", f"must be a positive number, got {value!r}")
            values[key] = float(value)
        action = beat.get("action", "restart")
        if action not in HEARTBEAT_ACTIONS:
            raise fail("heartbeat.action", f"must be one of {', '.join(HEARTBEAT_ACTIONS)}, "
                                           f"got {action!r}")
        if action == "hook":
            raise fail("heartbeat.action", "'hook' cannot come from an appliance (a host "
                                           "path); set it on the VM afterwards")
        for key in beat:
            if key not in ("interval", "misses", "grace", "action"):
                raise fail(f"heartbeat.{key}", "unknown field (known: action, grace, "
                                               "interval, misses)")
        heartbeat = HeartbeatPolicy(interval=values["interval"], misses=int(values["misses"]),
                                    action=str(action), grace=values["grace"])
    return Descriptor(name=name, version=version, arch=arch, memory_mib=memory // (1024 ** 2),
                      vcpus=vcpus, boot=boot, disks=tuple(disks), features=tuple(features),
                      machine=machine, description=description, heartbeat=heartbeat)


def load_descriptor_text(text: str, filename: str) -> Descriptor:
    """Parse the text of ``appliance.json`` / ``appliance.toml``."""
    try:
        data = tomllib.loads(text) if filename.endswith(".toml") else \
            json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if filename.endswith(".toml") else "JSON"
        raise DescriptorError(f"{filename}: not valid {kind}: {exc}") from None
    return parse_descriptor(data, filename)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (``json`` keeps the last of two silently;
    TOML refuses them itself): two values for one key are a mistake the author must see."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key '{key}' appears twice in one object")
        data[key] = value
    return data


def check_host(desc: Descriptor, caps: Capabilities) -> None:
    """Refuse an appliance this host cannot run (arch, machine, required features)."""
    from qemud.qemu.arch.registry import registered_archs
    emulator = caps.emulator(desc.arch)
    if emulator is None or desc.arch not in registered_archs():
        have = ", ".join(sorted(caps.emulators)) or "none"
        raise ConfigUnsupported(f"appliance {desc.ref} is for arch '{desc.arch}', which this "
                                f"host cannot run: no emulator (qemu-system-{desc.arch}) "
                                f"found (this host runs: {have})")
    if desc.machine and emulator.find_machine(desc.machine) is None:
        raise ConfigUnsupported(f"appliance {desc.ref} needs machine type '{desc.machine}', "
                                f"which {emulator.path} does not offer")
    for feature in desc.features:
        if feature == "kvm":
            if not caps.kvm_usable_for(desc.arch):
                raise ConfigUnsupported(f"appliance {desc.ref} requires feature 'kvm', which "
                                        f"this host cannot provide: {caps.kvm_reason}")
        elif feature == "pae":
            if desc.arch not in ("i686", "x86_64"):
                raise ConfigUnsupported(f"appliance {desc.ref} requires feature 'pae', which "
                                        f"arch '{desc.arch}' does not have")
        elif feature == "acpi":
            if desc.arch not in ("i686", "x86_64", "aarch64"):
                raise ConfigUnsupported(f"appliance {desc.ref} requires feature 'acpi', which "
                                        f"arch '{desc.arch}' does not have here")
        elif feature == "virtio":
            pass  # every emulator qemud drives has virtio devices
        else:
            raise ConfigUnsupported(f"appliance {desc.ref} requires unknown feature "
                                    f"'{feature}' (this host knows: "
                                    f"{', '.join(KNOWN_FEATURES)})")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: 1.9 < 1.10 < 2.0; numbers sort before words at the same place."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)

