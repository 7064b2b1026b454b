"""Appliance images: import, deploy, A/B update with rollback, factory reset.

An appliance is a tarball (optionally gzip'ed) holding a descriptor (``appliance.json`` or
``appliance.toml``), its disk images and, for direct kernel boot, a kernel and initrd.
docs/APPLIANCE-IMAGES.md describes the descriptor and every rule below; in short:

* **import** unpacks the tarball with ``tar`` (a child the loop reaps, never in the loop)
  into a staging directory of the image store, checks the descriptor (every field, every
  file, only regular files, images without backing/data files) and the host (an emulator
  for the arch, every required feature), and renames it to ``<store>/<name>/<version>/``
  with every file mode 0444: originals are never written again.
* **deploy** gives a VM its own qcow2 overlays on the originals (system and data disks)
  and fresh scratch disks in ``<state_dir>/vms/<vm>/``, then defines the domain with its
  origin and disk classes in the metadata.
* **update** (A/B): the VM is stopped (if running), its system disk gets a new overlay in
  the other slot on the new version's image (the previous overlay is kept), data disks are
  kept, scratch disks recreated; the guest is started again if it was running. The update
  is confirmed by the guest's heartbeat within ``appliance.update_deadline`` of its start;
  otherwise it is rolled back to the previous slot and version by itself.
* **reset**: the system overlay is replaced by an empty one on the original, data kept,
  scratch recreated.

Every ``qemu-img``/``tar`` runs as a child process reaped by the loop (``tools.ToolRunner``);
multi-step operations are generator tasks resumed from the loop (:func:`run_task`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import tomllib
import uuid as uuidlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import EventId, LifecycleEvent
from qemud.conf import ConfError, DomainDef, parse_domain_xml
from qemud.dispatch import Deferred
from qemud.driver.store import atomic_write
from qemud.errors import (
    ConfigUnsupported,
    DomainExists,
    InternalError,
    InvalidArg,
    NoDomain,
    OperationFailed,
    OperationInvalid,
    QemudError,
    XMLError,
)
from qemud.loop import EventLoop, Timer

from .metadata import (
    DISK_CLASSES,
    HEARTBEAT_ACTIONS,
    HeartbeatPolicy,
    Origin,
    read_settings,
    write_settings,
)
from .tools import ToolRunner

if TYPE_CHECKING:
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj
    from qemud.qemu.capabilities import Capabilities

    from . import ApplianceContext

__all__ = ["Descriptor", "DiskSpec", "BootSpec", "DescriptorError", "parse_descriptor",
           "load_descriptor_text", "check_host", "ImageStore", "VMState", "ImagesDuty",
           "install", "version_key", "KNOWN_FEATURES", "CONFIRM_KINDS", "DEPLOY_START"]

log = logging.getLogger(__name__)

DESCRIPTOR_NAMES = ("appliance.json", "appliance.toml")
#: the checked descriptor as JSON, written into each stored version at import
INDEX_NAME = ".qemud-appliance.json"
STATE_NAME = "appliance-state.json"
MAX_DESCRIPTOR_BYTES = 1024 * 1024
KNOWN_FEATURES = ("acpi", "kvm", "pae", "virtio")
#: appliance events that confirm a pending update of their domain (see the module docs)
CONFIRM_KINDS = ("heartbeat-seen", "heartbeat", "heartbeat-ok", "heartbeat-resumed")
#: DeployArgs.flags: start the VM once it is defined
DEPLOY_START = 1
#: seconds between looks at the heartbeat duty's published counters while confirming
CONFIRM_POLL = 0.5
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
TARGET_RE = re.compile(r"^(vd|sd|hd)[a-z]{1,2}$")
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "scsi", "sata", "ide")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


# -- the descriptor ----------------------------------------------------------------------


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
        data = tomllib.loads(text) if filename.endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if filename.endswith(".toml") else "JSON"
        raise DescriptorError(f"{filename}: not valid {kind}: {exc}") from None
    return parse_descriptor(data, filename)


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


# -- the image store ---------------------------------------------------------------------


class ImageStore:
    """``<store>/<name>/<version>/``: unpacked appliances, files read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[int, Descriptor]] = {}

    def dir(self, name: str, version: str) -> Path:
        return self.root / name / version

    def load(self, directory: Path) -> Descriptor | None:
        index = directory / INDEX_NAME
        try:
            mtime = index.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._cache.get(directory)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            data = json.loads(index.read_text())
            desc = parse_descriptor(data["descriptor"], str(index))
        except (OSError, ValueError, KeyError, QemudError) as exc:
            log.error("image store: ignoring %s: %s", directory, exc)
            return None
        self._cache[directory] = (mtime, desc)
        return desc

    def entries(self) -> list[tuple[Descriptor, Path]]:
        out = []
        try:
            names = sorted(p for p in self.root.iterdir()
                           if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []
        for name_dir in names:
            for version_dir in name_dir.iterdir():
                if version_dir.name.startswith("."):
                    continue
                desc = self.load(version_dir)
                if desc is not None:
                    out.append((desc, version_dir))
        out.sort(key=lambda e: (e[0].name, version_key(e[0].version)))
        return out

    def versions(self, name: str) -> list[str]:
        return [d.version for d, _ in self.entries() if d.name == name]

    def get(self, name: str, version: str = "") -> tuple[Descriptor, Path]:
        """The stored appliance (the newest version when ``version`` is "")."""
        versions = self.versions(name)
        if not versions:
            have = sorted({d.name for d, _ in self.entries()})
            raise InvalidArg(f"no appliance '{name}' in the image store (have: "
                             f"{', '.join(have) or 'none'}; import it first)")
        version = version or versions[-1]
        if version not in versions:
            raise InvalidArg(f"appliance '{name}' has no version '{version}' (have: "
                             f"{', '.join(versions)})")
        directory = self.dir(name, version)
        desc = self.load(directory)
        assert desc is not None
        return desc, directory


# -- per-VM state ------------------------------------------------------------------------


@dataclass
class VMState:
    """What the daemon remembers of a deployed VM (``<state_dir>/vms/<vm>/``)."""

    vm: str
    uuid: str
    appliance: str
    version: str
    slot: str  # "a" | "b": the system overlay(s) in use
    disks: dict[str, dict[str, Any]]  # target -> {"class", "path", "size"?}
    previous: dict[str, Any] | None = None  # {"version", "slot", "system": {t: path}, "os"}
    pending: dict[str, Any] | None = None  # {"from", "to", "since"}: unconfirmed update

    def to_json(self) -> str:
        return json.dumps({"vm": self.vm, "uuid": self.uuid, "appliance": self.appliance,
                           "version": self.version, "slot": self.slot, "disks": self.disks,
                           "previous": self.previous, "pending": self.pending}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> VMState:
        data = json.loads(text)
        return cls(vm=data["vm"], uuid=data["uuid"], appliance=data["appliance"],
                   version=data["version"], slot=data["slot"], disks=data["disks"],
                   previous=data.get("previous"), pending=data.get("pending"))

    def targets(self, cls: str) -> list[str]:
        return sorted(t for t, d in self.disks.items() if d["class"] == cls)


# -- children and tasks ------------------------------------------------------------------


def _tool_failure(argv: list[str], code: int, stderr: str) -> str:
    """How an image operation words a tool's failure: its last lines of stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()][-4:]
    return f"{Path(argv[0]).name} failed (exit {code}): {' / '.join(lines) or 'no message'}"


Task = Generator[Deferred, Any, Any]


def run_task(loop: EventLoop, task: Task, what: str) -> Deferred:
    """Drive a generator that yields Deferreds; each result is sent back into it (an error
    is thrown in) from a fresh loop turn. The Deferred completes with its return value."""
    out = Deferred()

    def step(value: Any = None, error: QemudError | None = None) -> None:
        try:
            waiting = task.throw(error) if error is not None else task.send(value)
        except StopIteration as stop:
            out.resolve(stop.value)
            return
        except QemudError as exc:
            out.fail(exc)
            return
        except OSError as exc:
            log.warning("%s: %s", what, exc)
            out.fail(OperationFailed(f"{what}: {exc.strerror or exc}"
                                     + (f": {exc.filename}" if exc.filename else "")))
            return
        except Exception as exc:
            log.exception("%s crashed", what)
            out.fail(InternalError(f"internal error in {what}: {exc!r}"))
            return
        def resume(d: Deferred) -> None:
            loop.call_soon(lambda: step(d.result, d.error))
        waiting.add_done_callback(resume)

    step()
    return out


def _rmtree(path: Path) -> None:
    def writable(func: Callable[..., Any], p: str, exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o755)
            func(p)
        except OSError:
            pass
    if path.exists():
        shutil.rmtree(path, onerror=writable)


def _uuid_text(ref: pl.DomainRef) -> str:
    try:
        return str(uuidlib.UUID(bytes=bytes(ref.uuid)))
    except ValueError:
        return ""


# -- the duty ----------------------------------------------------------------------------


@dataclass
class _Watch:
    """A started guest whose update waits for its heartbeat."""

    uuid: str
    since: float
    deadline: Timer
    poll: Timer | None = None


class ImagesDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.daemon = ctx.daemon
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.events = ctx.driver.events
        self.config = ctx.daemon.config
        paths = self.config.paths
        store = self.config.appliance.image_store
        self.store = ImageStore(Path(store) if store else paths.state_dir / "images")
        self.vms_dir = paths.state_dir / "vms"
        self.runner = ToolRunner(self.loop, _tool_failure)
        self.busy: dict[str, str] = {}  # domain uuid -> what is in progress
        self.importing: set[str] = set()  # "name:version"
        self.deploying: set[str] = set()  # vm names
        self.watches: dict[str, _Watch] = {}

    def install(self) -> dict[Procedure, Handler]:
        for directory, mode in ((self.store.root, 0o755), (self.vms_dir, 0o700)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, mode)
            except OSError as exc:  # the calls say so again; the daemon serves on
                log.error("appliance images: cannot use %s: %s", directory,
                          exc.strerror or exc)
        for stale in self.store.root.glob(".staging-*"):
            log.info("image store: removing %s (an import the daemon did not finish)", stale)
            _rmtree(stale)
        self.events.add_listener(self.on_event)
        for dom in self.driver.registry:  # a pending update of a guest that was re-attached
            if dom.active:
                self._arm(dom)
        P = Procedure
        return {P.APPLIANCE_IMPORT: self.handle_import, P.APPLIANCE_DEPLOY: self.handle_deploy,
                P.APPLIANCE_UPDATE: self.handle_update, P.APPLIANCE_RESET: self.handle_reset,
                P.APPLIANCE_LIST: self.handle_list}

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def qemu_img() -> str:
        path = shutil.which("qemu-img")
        if path is None:
            raise OperationFailed("qemu-img not found in PATH: it is needed for appliance "
                                  "disk images")
        return path

    def vm_dir(self, name: str) -> Path:
        return self.vms_dir / name

    def load_state(self, dom: DomainObj) -> VMState | None:
        path = self.vm_dir(dom.name) / STATE_NAME
        try:
            state = VMState.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.error("domain %s: unreadable appliance state %s: %s", dom.name, path, exc)
            return None
        return state if state.uuid == dom.uuid else None

    def save_state(self, state: VMState) -> None:
        try:
            atomic_write(self.vm_dir(state.vm) / STATE_NAME, state.to_json())
        except OSError as exc:
            raise OperationFailed(f"cannot write the appliance state of '{state.vm}': "
                                  f"{exc.strerror or exc}") from None

    def state_for_change(self, dom: DomainObj, what: str) -> VMState:
        """The state of a deployed VM that ``what`` may change now (else a clear error)."""
        state = self.load_state(dom)
        if state is None:
            raise OperationInvalid(f"domain '{dom.name}' was not deployed from an appliance "
                                   f"image: cannot {what} it")
        if not dom.persistent:
            raise OperationInvalid(f"domain '{dom.name}' is not persistent: cannot {what} it")
        if dom.uuid in self.busy:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {self.busy[dom.uuid]} in "
                                   "progress")
        if dom.job is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {dom.job} in progress")
        if state.pending is not None:
            raise OperationInvalid(f"domain '{dom.name}': the update from "
                                   f"{state.pending['from']} to {state.pending['to']} is "
                                   "waiting for the guest's heartbeat: cannot " + what +
                                   " before it is confirmed or rolled back")
        definition = dom.next_definition or dom.definition
        sources = {d.target_dev: d.source for d in definition.disks}
        for target, disk in state.disks.items():
            if sources.get(target) != disk["path"]:
                raise OperationInvalid(
                    f"domain '{dom.name}': disk {target} is {sources.get(target) or 'gone'}, "
                    f"not the appliance's {disk['path']} (snapshots or a changed definition): "
                    f"cannot {what} it")
        return state

    def _stop(self, dom: DomainObj) -> Deferred:
        if not dom.active:
            return Deferred.resolved(None)
        log.info("domain %s: stopping it for an appliance image change", dom.name)
        return self.driver.lifecycle.destroy(dom)

    def _create_overlay(self, path: Path, backing: Path, fmt: str) -> Task:
        tmp = path.with_name(path.name + ".new")
        yield self.runner.run([self.qemu_img(), "create", "-q", "-f", "qcow2", "-F", fmt,
                               "-b", str(backing), str(tmp)], f"cannot create {path.name}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _create_scratch(self, path: Path, size: int) -> Task:
        tmp = path.with_name(path.name + ".new")
        yield self.runner.run([self.qemu_img(), "create", "-q", "-f", "qcow2", str(tmp),
                               str(size)], f"cannot create {path.name}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _define(self, definition: DomainDef) -> DomainObj:
        return self.driver.registry.define(definition.to_xml())

    def _find(self, ref: pl.DomainRef) -> DomainObj | None:
        try:
            return self.driver.registry.find(ref.name, ref.uuid)
        except QemudError:
            return None

    def _by_uuid(self, uuid: str) -> DomainObj | None:
        try:
            return self.driver.registry.by_uuid(uuid)
        except NoDomain:
            return None

    # -- import --------------------------------------------------------------------------

    def handle_import(self, ctx: Any, args: pl.ImportArgs) -> Deferred:
        path = args.path
        if not path or not os.path.isabs(path):
            raise InvalidArg(f"appliance tarball path must be absolute (a file on the "
                             f"daemon's host), got '{path}'")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidArg(f"cannot read appliance tarball {path}: "
                             f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArg(f"appliance tarball {path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise InvalidArg(f"cannot read appliance tarball {path}: permission denied")
        return run_task(self.loop, self._import(path), "APPLIANCE_IMPORT")

    def _import(self, path: str) -> Task:
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.store.root))
        except OSError as exc:
            raise OperationFailed(f"cannot unpack into the image store {self.store.root}: "
                                  f"{exc.strerror or exc}") from None
        key = ""
        try:
            try:
                yield self.runner.run(["tar", "-x", "--no-same-owner", "--no-same-permissions",
                                       "-f", path, "-C", str(staging)],
                                      f"cannot unpack appliance tarball {path}")
            except OperationFailed as exc:
                raise DescriptorError(exc.message) from None
            root = _find_root(staging, path)
            _check_members(root, path)
            names = [n for n in DESCRIPTOR_NAMES if (root / n).is_file()]
            descriptor_file = root / names[0]
            if descriptor_file.stat().st_size > MAX_DESCRIPTOR_BYTES:
                raise DescriptorError(f"{path}: {names[0]} is larger than "
                                      f"{MAX_DESCRIPTOR_BYTES} bytes")
            try:
                desc = load_descriptor_text(descriptor_file.read_text(), names[0])
            except UnicodeDecodeError:
                raise DescriptorError(f"{path}: {names[0]} is not UTF-8 text") from None
            except DescriptorError as exc:
                raise DescriptorError(f"{path}: {exc.message}") from None
            for where, rel in desc.files():
                member = root / rel
                if not member.is_file() or member.is_symlink():
                    raise DescriptorError(f"{path}: {names[0]}: {where}: file '{rel}' is not "
                                          "in the tarball")
            check_host(desc, self.driver.caps)
            key = desc.ref
            dest = self.store.dir(desc.name, desc.version)
            if key in self.importing or dest.exists():
                key = ""
                raise OperationInvalid(f"appliance {desc.ref} is already imported ({dest}); "
                                       "versions are never replaced: give the new one "
                                       "another version")
            self.importing.add(key)
            images: dict[str, Any] = {}
            for i, disk in enumerate(desc.disks):
                if disk.file is None:
                    continue
                text = yield self.runner.run(
                    [self.qemu_img(), "info", "--output=json", str(root / disk.file)],
                    f"{path}: disks[{i}] '{disk.file}' is not a readable disk image",
                    stdout=True)
                images[disk.file] = _check_image(text, disk, f"{path}: disks[{i}] "
                                                             f"'{disk.file}'")
            atomic_write(root / INDEX_NAME, json.dumps({
                "descriptor": desc.to_json(), "imported_at": int(time.time()),
                "source": path, "images": images}, indent=1), 0o444)
            for dirpath, _dirnames, filenames in os.walk(root):
                for name in filenames:
                    os.chmod(os.path.join(dirpath, name), 0o444)
                os.chmod(dirpath, 0o755)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(root, dest)
            log.info("appliance %s imported from %s into %s", desc.ref, path, dest)
            return pl.StringReply(desc.ref)
        finally:
            if key:
                self.importing.discard(key)
            _rmtree(staging)

    # -- deploy --------------------------------------------------------------------------

    def handle_deploy(self, ctx: Any, args: pl.DeployArgs) -> Deferred:
        vm = args.vm_name
        if not NAME_RE.match(vm or ""):
            raise InvalidArg(f"VM name '{vm}' may only hold letters, digits and . _ + - "
                             "(at most 64, not starting with a punctuation mark)")
        desc, directory = self.store.get(args.name, args.version)
        try:
            existing = self.driver.registry.by_name(vm)
        except NoDomain:
            existing = None
        if existing is not None or vm in self.deploying:
            raise DomainExists(f"operation failed: domain '{vm}' already exists")
        if self.vm_dir(vm).exists():
            raise OperationInvalid(f"{self.vm_dir(vm)} exists (disks of an earlier VM "
                                   f"'{vm}'?): remove it or deploy under another name")
        check_host(desc, self.driver.caps)
        self.qemu_img()
        self.deploying.add(vm)
        return run_task(self.loop, self._deploy(desc, directory, vm,
                                                bool(args.flags & DEPLOY_START)),
                        "APPLIANCE_DEPLOY")

    def _deploy(self, desc: Descriptor, directory: Path, vm: str, start: bool) -> Task:
        vmdir = self.vm_dir(vm)
        try:
            vmdir.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            self.deploying.discard(vm)
            raise OperationFailed(f"cannot create {vmdir}: {exc.strerror or exc}") from None
        try:
            disks: dict[str, dict[str, Any]] = {}
            for disk in desc.disks:
                path = vmdir / _disk_file(disk, "a")
                if disk.cls == "scratch":
                    assert disk.size is not None
                    yield from self._create_scratch(path, disk.size)
                    disks[disk.target] = {"class": "scratch", "path": str(path),
                                          "size": disk.size}
                else:
                    assert disk.file is not None
                    yield from self._create_overlay(path, directory / disk.file, disk.format)
                    disks[disk.target] = {"class": disk.cls, "path": str(path)}
            uuid = str(uuidlib.uuid4())
            definition = self._build_definition(desc, directory, vm, uuid, disks)
            state = VMState(vm=vm, uuid=uuid, appliance=desc.name, version=desc.version,
                            slot="a", disks=disks)
            self.save_state(state)
            dom = self._define(definition)
        except BaseException:
            _rmtree(vmdir)
            raise
        finally:
            self.deploying.discard(vm)
        log.info("domain %s deployed from appliance %s", vm, desc.ref)
        self.events.appliance(dom.ref(), "appliance-deployed",
                              f"deployed from appliance {desc.ref} ({len(disks)} disk(s) in "
                              f"{vmdir})")
        if start:
            yield self.driver.lifecycle.start(dom)
        return pl.DomainReply(dom.ref())

    def _build_definition(self, desc: Descriptor, directory: Path, vm: str, uuid: str,
                          disks: dict[str, dict[str, Any]]) -> DomainDef:
        caps = self.driver.caps
        domain_type = "kvm" if caps.kvm_usable_for(desc.arch) else "qemu"
        machine = f" machine={quoteattr(desc.machine)}" if desc.machine else ""
        boot = ""
        if desc.boot.kernel is not None:
            boot += f"<kernel>{escape(str(directory / desc.boot.kernel))}</kernel>"
            if desc.boot.initrd is not None:
                boot += f"<initrd>{escape(str(directory / desc.boot.initrd))}</initrd>"
            if desc.boot.cmdline:
                boot += f"<cmdline>{escape(desc.boot.cmdline)}</cmdline>"
        devices = []
        for disk in desc.disks:
            order = "<boot order='1'/>" if desc.boot.disk == disk.target else ""
            devices.append(
                f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file={quoteattr(disks[disk.target]['path'])}/>"
                f"<target dev='{disk.target}' bus='{disk.bus}'/>{order}</disk>")
        console = self.driver.lifecycle.guest_paths(vm).run_dir / "console.sock"
        devices.append(f"<serial type='unix'><source mode='bind' path={quoteattr(str(console))}"
                       f"/><target port='0'/></serial>")
        xml = (f"<domain type='{domain_type}'><name>{escape(vm)}</name><uuid>{uuid}</uuid>"
               f"<description>{escape(desc.description or f'appliance {desc.ref}')}"
               f"</description><memory unit='MiB'>{desc.memory_mib}</memory>"
               f"<vcpu>{desc.vcpus}</vcpu><os><type arch={quoteattr(desc.arch)}{machine}>hvm"
               f"</type>{boot}</os><on_poweroff>destroy</on_poweroff>"
               f"<on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
               f"<devices>{''.join(devices)}</devices></domain>")
        try:
            definition = parse_domain_xml(xml)
        except ConfError as exc:
            raise XMLError(f"appliance {desc.ref} does not make a valid domain: {exc}") \
                from None
        settings = read_settings(definition)
        settings.origin = Origin(desc.name, desc.version)
        settings.heartbeat = desc.heartbeat
        settings.disk_classes = {t: d["class"] for t, d in disks.items()}
        write_settings(definition, settings)
        return definition

    # -- list ----------------------------------------------------------------------------

    def handle_list(self, ctx: Any, args: Empty) -> pl.ApplianceListReply:
        vms: dict[tuple[str, str], list[str]] = {}
        for dom in self.driver.registry:
            try:
                origin = read_settings(dom.next_definition or dom.definition).origin
            except QemudError:
                continue
            if origin is not None:
                vms.setdefault((origin.appliance, origin.version), []).append(dom.name)
        return pl.ApplianceListReply([
            pl.ApplianceInfo(desc.name, desc.version, desc.arch, str(directory),
                             sorted(vms.get((desc.name, desc.version), [])))
            for desc, directory in self.store.entries()])

    # -- update --------------------------------------------------------------------------

    def handle_update(self, ctx: Any, args: pl.UpdateArgs) -> Deferred:
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        state = self.state_for_change(dom, "update")
        if not args.version:
            raise InvalidArg("give the version to update to")
        if args.version == state.version:
            raise OperationInvalid(f"domain '{dom.name}' already runs {state.appliance} "
                                   f"{state.version}")
        new, new_dir = self.store.get(state.appliance, args.version)
        check_host(new, self.driver.caps)
        _check_compatible(state, new)
        self.qemu_img()
        self.busy[dom.uuid] = f"update to {new.ref}"
        return run_task(self.loop, self._update(dom, state, new, new_dir), "APPLIANCE_UPDATE")

    def _update(self, dom: DomainObj, state: VMState, new: Descriptor, new_dir: Path) -> Task:
        old_version = state.version
        original = state.to_json()
        was_running = dom.active
        switched = False
        try:
            yield self._stop(dom)
            vmdir = self.vm_dir(dom.name)
            slot = "b" if state.slot == "a" else "a"
            system: dict[str, str] = {}
            for disk in new.disks_of("system"):
                assert disk.file is not None
                path = vmdir / _disk_file(disk, slot)
                yield from self._create_overlay(path, new_dir / disk.file, disk.format)
                system[disk.target] = str(path)
            for disk in new.disks_of("scratch"):
                assert disk.size is not None
                scratch = Path(state.disks[disk.target]["path"])
                yield from self._create_scratch(scratch, disk.size)
                state.disks[disk.target]["size"] = disk.size
            definition = (dom.next_definition or dom.definition).copy()
            state.previous = {
                "version": old_version, "slot": state.slot,
                "system": {t: state.disks[t]["path"] for t in state.targets("system")},
                "os": _os_values(definition)}
            for target, overlay in system.items():
                state.disks[target]["path"] = overlay
            state.version, state.slot = new.version, slot
            state.pending = {"from": old_version, "to": new.version, "since": time.time()}
            _switch(definition, system, _new_os(new, new_dir),
                    Origin(state.appliance, new.version))
            self.save_state(state)
            try:
                self._define(definition)
            except QemudError:
                self.save_state(VMState.from_json(original))
                raise
            switched = True
            deadline = self.config.appliance.update_deadline
            self.events.appliance(dom.ref(), "update-applied",
                                  f"{state.appliance} {old_version} -> {new.version}: system "
                                  f"disk(s) {', '.join(sorted(system))} switched to slot "
                                  f"{slot}; heartbeat due within {deadline:g} s of the "
                                  f"{'restart' if was_running else 'next start'}")
            log.info("domain %s: updated %s %s -> %s (slot %s)", dom.name, state.appliance,
                     old_version, new.version, slot)
            if was_running:
                try:
                    yield self.driver.lifecycle.start(dom)
                except QemudError as exc:
                    why = f"the guest did not start on {new.version}: {exc.message}"
                    yield from self._rollback(dom, why, restart=True)
                    raise OperationFailed(f"update of '{dom.name}' to {new.ref} failed and "
                                          f"was rolled back to {old_version}: {why}") from None
        except QemudError:
            if not switched and was_running and not dom.active:
                try:  # nothing changed: the guest runs on as it was
                    yield self.driver.lifecycle.start(dom)
                except QemudError as exc:
                    log.error("domain %s: restart after a failed update: %s", dom.name,
                              exc.message)
            raise
        finally:
            self.busy.pop(dom.uuid, None)
        return Empty()

    # -- confirmation and rollback -------------------------------------------------------

    def on_event(self, event_id: EventId, ref: pl.DomainRef, data: tuple[object, ...]
                 ) -> None:
        if event_id == EventId.LIFECYCLE and data and data[0] == LifecycleEvent.STARTED:
            if (self.vms_dir / ref.name / STATE_NAME).exists():
                dom = self._find(ref)
                if dom is not None:
                    self._arm(dom)
        elif event_id == EventId.APPLIANCE and data and data[0] in CONFIRM_KINDS:
            watch = self.watches.get(_uuid_text(ref))
            if watch is not None:
                self._confirm(watch.uuid, f"appliance event '{data[0]}' "
                                          f"{time.monotonic() - watch.since:.1f} s after "
                                          "the start")

    def _arm(self, dom: DomainObj) -> None:
        """A guest with an unconfirmed update started: its heartbeat is now due."""
        if dom.uuid in self.watches:
            return
        state = self.load_state(dom)
        if state is None or state.pending is None:
            return
        try:
            policy = read_settings(dom.current()).heartbeat
        except QemudError:
            policy = None
        if policy is None:
            self._confirm(dom.uuid, "the guest has no heartbeat policy: confirmed when it "
                                    "started")
            return
        deadline = self.config.appliance.update_deadline
        uuid = dom.uuid
        watch = _Watch(uuid, time.monotonic(),
                       self.loop.call_later(deadline, lambda: self._expired(uuid)))
        self.watches[uuid] = watch
        watch.poll = self.loop.call_later(CONFIRM_POLL, lambda: self._poll(uuid))
        log.info("domain %s: update %s -> %s waits for a heartbeat (%g s)", dom.name,
                 state.pending["from"], state.pending["to"], deadline)

    def _poll(self, uuid: str) -> None:
        """The heartbeat duty's own counters (its DOMAIN_STATS params): a heartbeat seen
        since this start confirms the update, as the events of CONFIRM_KINDS do."""
        watch = self.watches.get(uuid)
        if watch is None:
            return
        watch.poll = None
        dom = self._by_uuid(uuid)
        if dom is not None and dom.active:
            for hook in list(self.driver.stats_hooks):
                try:
                    params = hook(dom)
                except Exception:
                    log.exception("domain %s: stats hook failed", dom.name)
                    continue
                for p in params:
                    if p.name == "heartbeat.count" and p.int_value > 0:
                        self._confirm(uuid, f"heartbeat seen "
                                            f"{time.monotonic() - watch.since:.1f} s after "
                                            "the start")
                        return
        watch.poll = self.loop.call_later(CONFIRM_POLL, lambda: self._poll(uuid))

    def _disarm(self, uuid: str) -> _Watch | None:
        watch = self.watches.pop(uuid, None)
        if watch is not None:
            watch.deadline.cancel()
            if watch.poll is not None:
                watch.poll.cancel()
        return watch

    def _confirm(self, uuid: str, how: str) -> None:
        self._disarm(uuid)
        dom = self._by_uuid(uuid)
        if dom is None:
            return
        state = self.load_state(dom)
        if state is None or state.pending is None:
            return
        pending, state.pending = state.pending, None
        try:
            self.save_state(state)
        except QemudError as exc:
            log.error("domain %s: %s", dom.name, exc.message)
        log.info("domain %s: update %s -> %s confirmed (%s)", dom.name, pending["from"],
                 pending["to"], how)
        self.events.appliance(dom.ref(), "update-confirmed",
                              f"{state.appliance} {pending['from']} -> {pending['to']}: {how}")

    def _expired(self, uuid: str) -> None:
        watch = self.watches.get(uuid)
        dom = self._by_uuid(uuid)
        if watch is None or dom is None:
            self._disarm(uuid)
            return
        if uuid in self.busy or dom.job is not None:  # e.g. a start in progress: soon
            watch.deadline = self.loop.call_later(1.0, lambda: self._expired(uuid))
            return
        self._disarm(uuid)
        deadline = self.config.appliance.update_deadline
        self.busy[uuid] = "rollback"
        restart = dom.active

        def task() -> Task:
            try:
                yield from self._rollback(dom, f"no heartbeat within {deadline:g} s of the "
                                               "start", restart=restart)
            finally:
                self.busy.pop(uuid, None)

        def done(d: Deferred) -> None:
            if d.error is not None:
                log.error("domain %s: rollback failed: %s", dom.name, d.error.message)
                self.events.appliance(dom.ref(), "update-rollback-failed", d.error.message)
        run_task(self.loop, task(), "appliance rollback").add_done_callback(done)

    def _rollback(self, dom: DomainObj, why: str, restart: bool) -> Task:
        """Back to the previous slot and version (the failed overlay is deleted)."""
        self._disarm(dom.uuid)
        state = self.load_state(dom)
        if state is None or state.previous is None:
            raise OperationFailed(f"domain '{dom.name}': no previous system disk to roll "
                                  "back to")
        yield self._stop(dom)
        previous = state.previous
        failed_version = state.version
        failed = {t: state.disks[t]["path"] for t in state.targets("system")}
        for target in state.targets("scratch"):
            yield from self._create_scratch(Path(state.disks[target]["path"]),
                                            int(state.disks[target]["size"]))
        definition = (dom.next_definition or dom.definition).copy()
        _switch(definition, previous["system"], previous["os"],
                Origin(state.appliance, previous["version"]))
        for target, path in previous["system"].items():
            state.disks[target]["path"] = path
        state.version, state.slot = previous["version"], previous["slot"]
        state.previous = state.pending = None
        self.save_state(state)
        self._define(definition)
        for path in failed.values():
            if path not in previous["system"].values():
                try:
                    os.unlink(path)
                except OSError:
                    pass
        log.warning("domain %s: update to %s rolled back to %s: %s", dom.name,
                    failed_version, previous["version"], why)
        self.events.appliance(dom.ref(), "update-rolled-back",
                              f"{state.appliance} {failed_version} -> back to "
                              f"{previous['version']}: {why}")
        if restart:
            yield self.driver.lifecycle.start(dom)

    # -- factory reset -------------------------------------------------------------------

    def handle_reset(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        state = self.state_for_change(dom, "reset")
        desc, directory = self.store.get(state.appliance, state.version)
        self.qemu_img()
        self.busy[dom.uuid] = "factory reset"
        return run_task(self.loop, self._reset(dom, state, desc, directory),
                        "APPLIANCE_RESET")

    def _reset(self, dom: DomainObj, state: VMState, desc: Descriptor, directory: Path
               ) -> Task:
        try:
            was_running = dom.active
            yield self._stop(dom)
            for target in state.targets("system"):
                disk = desc.disk(target)
                if disk is None or disk.file is None:
                    raise OperationFailed(f"appliance {desc.ref} has no system disk {target}")
                yield from self._create_overlay(Path(state.disks[target]["path"]),
                                                directory / disk.file, disk.format)
            for target in state.targets("scratch"):
                yield from self._create_scratch(Path(state.disks[target]["path"]),
                                                int(state.disks[target]["size"]))
            log.info("domain %s: factory reset to %s", dom.name, desc.ref)
            self.events.appliance(dom.ref(), "factory-reset",
                                  f"system disk(s) {', '.join(state.targets('system'))} back "
                                  f"to {desc.ref}; data disks kept, scratch disks emptied")
            if was_running:
                yield self.driver.lifecycle.start(dom)
        finally:
            self.busy.pop(dom.uuid, None)
        return Empty()


# -- helpers -----------------------------------------------------------------------------


def _disk_file(disk: DiskSpec, slot: str) -> str:
    if disk.cls == "system":
        return f"{disk.target}.{slot}.qcow2"
    if disk.cls == "scratch":
        return f"{disk.target}.scratch.qcow2"
    return f"{disk.target}.qcow2"


def _find_root(staging: Path, source: str) -> Path:
    """Where the descriptor is: the top of the tarball, or its one top directory."""
    entries = list(staging.iterdir())
    candidates = [staging]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        candidates.append(entries[0])
    for candidate in candidates:
        found = [n for n in DESCRIPTOR_NAMES
                 if (candidate / n).is_file() and not (candidate / n).is_symlink()]
        if len(found) > 1:
            raise DescriptorError(f"{source}: holds both appliance.json and appliance.toml: "
                                  "keep one")
        if found:
            return candidate
    top = sorted(p.name for p in entries)[:8]
    raise DescriptorError(f"{source}: no appliance.json (or appliance.toml) at the top of the "
                          f"tarball (it holds: {', '.join(top) or 'nothing'})")


def _check_members(root: Path, source: str) -> None:
    """Only regular files and directories: a symlink or device could reach host files."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                continue
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
            raise DescriptorError(f"{source}: member '{path.relative_to(root)}' is {kind}: an "
                                  "appliance tarball may hold only regular files and "
                                  "directories")


def _check_image(text: str, disk: DiskSpec, where: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        raise DescriptorError(f"{where}: qemu-img info gave no JSON") from None
    fmt = info.get("format")
    if fmt != disk.format:
        raise DescriptorError(f"{where}: the descriptor says format {disk.format} but the "
                              f"image is {fmt}")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        raise DescriptorError(f"{where}: has a backing file ('{backing}'): appliance images "
                              "must be self-contained")
    data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if data_file:
        raise DescriptorError(f"{where}: has an external data file ('{data_file}'): "
                              "appliance images must be self-contained")
    return {"format": fmt, "virtual_size": int(info.get("virtual-size", 0))}


def _check_compatible(state: VMState, new: Descriptor) -> None:
    have = {t: d["class"] for t, d in state.disks.items()}
    want = {d.target: d.cls for d in new.disks}
    if have != want:
        def show(m: dict[str, str]) -> str:
            return ", ".join(f"{t}={c}" for t, c in sorted(m.items()))
        raise OperationInvalid(f"appliance {new.ref} has other disks ({show(want)}) than the "
                               f"VM ({show(have)}): an update keeps the disk layout")


def _os_values(definition: DomainDef) -> dict[str, str | None]:
    return {"kernel": definition.os.kernel, "initrd": definition.os.initrd,
            "cmdline": definition.os.cmdline}


def _new_os(desc: Descriptor, directory: Path) -> dict[str, str | None]:
    if desc.boot.kernel is None:
        return {"kernel": None, "initrd": None, "cmdline": None}
    return {"kernel": str(directory / desc.boot.kernel),
            "initrd": str(directory / desc.boot.initrd) if desc.boot.initrd else None,
            "cmdline": desc.boot.cmdline or None}


def _switch(definition: DomainDef, system: dict[str, str], os_values: dict[str, Any],
            origin: Origin) -> None:
    for disk in definition.disks:
        if disk.target_dev in system:
            disk.source = system[disk.target_dev]
    definition.os.kernel = os_values.get("kernel")
    definition.os.initrd = os_values.get("initrd")
    definition.os.cmdline = os_values.get("cmdline")
    settings = read_settings(definition)
    settings.origin = origin
    write_settings(definition, settings)


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return ImagesDuty(ctx).install()
