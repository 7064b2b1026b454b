"""Typed loader for ``devices.toml``, the per-architecture device table.

The table is data reviewed by humans, so the loader is strict: unknown keys,
missing keys and wrong types fail loudly at import time with the offending
key named, instead of surfacing later as a strange argv.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from qemud.qemu.errors import ArchTableError as TableError

__all__ = ["PANIC_BUILTIN", "PCI_IMPLICIT", "ArchTable", "DeviceNames", "MachineProfile",
           "load_tables"]

_PROFILE_KEYS: Final = frozenset(
    {
        "disk_buses",
        "cdrom_bus",
        "builtin_ide",
        "builtin_sata",
        "machine_props",
        "tcg_machine_props",
        "default_memballoon",
        "pci_bus",
        "pci_builtin_slots",
        "pci_slots",
        "panic_models",
    }
)
_PROFILE_OPTIONAL: Final = frozenset(
    {"builtin_ide", "builtin_sata", "machine_props", "tcg_machine_props", "default_memballoon",
     "pci_bus", "pci_builtin_slots", "pci_slots", "panic_models"}
)
#: the ``panic_models`` value of a model the machine provides itself (no -device)
PANIC_BUILTIN: Final = "builtin"
#: the devices qemud adds by itself (no element of theirs in the definition), each of
#: which gets a fixed slot of ``pci_slots``
PCI_IMPLICIT: Final = ("video", "virtio_serial", "sata", "scsi", "usb")
_PCI_SLOTS: Final = range(1, 32)
_ARCH_KEYS: Final = frozenset(
    {
        "binary",
        "wordsize",
        "kvm_host_archs",
        "default_machine",
        "tcg_cpu",
        "kvm_cpu",
        "memory_align_kib",
        "default_disk_bus",
        "default_nic_model",
        "nic_models",
        "serial_model",
        "max_serials",
        "acpi",
        "powerdown",
        "graphics",
        "watchdog_models",
        "default_panic_model",
        "devices",
        "machine",
    }
)
_ARCH_OPTIONAL: Final = frozenset({"video_model", "machine", "default_panic_model"})
_DEVICE_KEYS: Final = frozenset(
    {
        "virtio_blk",
        "virtio_scsi",
        "virtio_serial",
        "virtio_balloon",
        "usb_controller",
        "sata_controller",
    }
)


@dataclass(frozen=True)
class DeviceNames:
    """QEMU device names by role (``-pci`` vs ``-ccw`` and such)."""

    virtio_blk: str
    virtio_scsi: str
    virtio_serial: str
    virtio_balloon: str
    usb_controller: str
    sata_controller: str


@dataclass(frozen=True)
class MachineProfile:
    """Facts that depend on the machine type, not just on the arch."""

    disk_buses: tuple[str, ...]
    cdrom_bus: str
    builtin_ide: str | None
    builtin_sata: str | None
    machine_props: tuple[str, ...]
    tcg_machine_props: tuple[str, ...]
    default_memballoon: bool = False
    #: QEMU's id of the root PCI bus (``pci.0``, ``pcie.0``); None: the machine has none
    pci_bus: str | None = None
    #: root-bus slots the machine's own devices take (PIIX3 in slot 1, ICH9 in 0x1f)
    pci_builtin_slots: tuple[int, ...] = ()
    #: fixed slot of each device qemud adds by itself (:data:`PCI_IMPLICIT`)
    pci_slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: libvirt ``<panic model>`` -> QEMU device, or :data:`PANIC_BUILTIN` for one the
    #: machine has itself; empty: no panic device
    panic_models: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class _MachineFamily:
    patterns: tuple[str, ...]
    overrides: Mapping[str, Any]
    #: the arch's profile with ``overrides`` applied, made once when the table is loaded
    #: (define asks for it twice per domain)
    profile: MachineProfile


@dataclass(frozen=True)
class ArchTable:
    """One ``[ARCH]`` table of devices.toml."""

    name: str
    binary: str
    wordsize: int
    kvm_host_archs: tuple[str, ...]
    default_machine: str
    tcg_cpu: str
    kvm_cpu: str
    memory_align_kib: int
    default_disk_bus: str
    default_nic_model: str
    nic_models: Mapping[str, str]
    serial_model: str
    max_serials: int
    acpi: bool
    powerdown: bool
    graphics: tuple[str, ...]
    video_model: str | None
    watchdog_models: Mapping[str, str]
    #: model of a ``<panic>`` without one (libvirt's per-arch default); None: none
    default_panic_model: str | None
    devices: DeviceNames
    base_profile: MachineProfile
    families: tuple[_MachineFamily, ...]

    def profile(self, machine: str) -> MachineProfile:
        """Effective profile of ``machine``: the arch's, overridden by its family."""
        for family in self.families:
            if any(fnmatch.fnmatchcase(machine, pattern) for pattern in family.patterns):
                return family.profile
        return self.base_profile


def load_tables(text: str | None = None) -> dict[str, ArchTable]:
    """Parse devices.toml (or ``text``) into one :class:`ArchTable` per arch."""
    if text is None:
        # Next to this file (package data, never zipped): importlib.resources would
        # import zipfile into every daemon for this one read.
        text = Path(__file__).with_name("devices.toml").read_text("utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TableError(str(exc)) from None
    return {name: _make_table(name, body) for name, body in raw.items()}


def _make_table(name: str, body: Any) -> ArchTable:
    where = name
    if not isinstance(body, dict):
        raise TableError(f"{where}: expected a table")
    unknown = set(body) - _ARCH_KEYS - _PROFILE_KEYS - _ARCH_OPTIONAL
    if unknown:
        raise TableError(f"{where}: unknown keys {sorted(unknown)}")
    missing = (_ARCH_KEYS | _PROFILE_KEYS) - _ARCH_OPTIONAL - _PROFILE_OPTIONAL - set(body)
    if missing:
        raise TableError(f"{where}: missing keys {sorted(missing)}")
    devices = body["devices"]
    if not isinstance(devices, dict) or set(devices) != _DEVICE_KEYS:
        raise TableError(f"{where}.devices: expected exactly the keys {sorted(_DEVICE_KEYS)}")
    profile_raw = {k: v for k, v in body.items() if k in _PROFILE_KEYS}
    base_profile = _make_profile(where, profile_raw)
    families = []
    for position, family in enumerate(body.get("machine", []), start=1):
        fwhere = f"{where}.machine[{position}]"
        if not isinstance(family, dict):
            raise TableError(f"{fwhere}: expected a table")
        patterns = _str_list(fwhere, "match", family.get("match"))
        overrides = {k: v for k, v in family.items() if k != "match"}
        if set(overrides) - _PROFILE_KEYS:
            raise TableError(f"{fwhere}: unknown keys {sorted(set(overrides) - _PROFILE_KEYS)}")
        # made now: a bad value fails the load, not the first guest of the family
        profile = _make_profile(f"{where}.machine{list(patterns)}",
                                {**_profile_raw(base_profile), **overrides})
        families.append(_MachineFamily(patterns=patterns, overrides=MappingProxyType(overrides),
                                       profile=profile))
    table = ArchTable(
        name=name,
        binary=_str(where, "binary", body["binary"]),
        wordsize=_int(where, "wordsize", body["wordsize"]),
        kvm_host_archs=_str_list(where, "kvm_host_archs", body["kvm_host_archs"]),
        default_machine=_str(where, "default_machine", body["default_machine"]),
        tcg_cpu=_str(where, "tcg_cpu", body["tcg_cpu"]),
        kvm_cpu=_str(where, "kvm_cpu", body["kvm_cpu"]),
        memory_align_kib=_int(where, "memory_align_kib", body["memory_align_kib"]),
        default_disk_bus=_str(where, "default_disk_bus", body["default_disk_bus"]),
        default_nic_model=_str(where, "default_nic_model", body["default_nic_model"]),
        nic_models=_str_map(where, "nic_models", body["nic_models"]),
        serial_model=_str(where, "serial_model", body["serial_model"]),
        max_serials=_int(where, "max_serials", body["max_serials"]),
        acpi=_bool(where, "acpi", body["acpi"]),
        powerdown=_bool(where, "powerdown", body["powerdown"]),
        graphics=_str_list(where, "graphics", body["graphics"]),
        video_model=(
            _str(where, "video_model", body["video_model"]) if "video_model" in body else None
        ),
        watchdog_models=_str_map(where, "watchdog_models", body["watchdog_models"]),
        default_panic_model=_opt_str(where, "default_panic_model",
                                     body.get("default_panic_model")),
        devices=DeviceNames(**{k: _str(f"{where}.devices", k, v) for k, v in devices.items()}),
        base_profile=base_profile,
        families=tuple(families),
    )
    if table.default_disk_bus not in table.base_profile.disk_buses:
        raise TableError(f"{where}: default_disk_bus is not one of disk_buses")
    if table.default_nic_model not in table.nic_models:
        raise TableError(f"{where}: default_nic_model is not one of nic_models")
    if table.memory_align_kib <= 0 or table.max_serials < 0:
        raise TableError(f"{where}: memory_align_kib/max_serials out of range")
    return table


def _make_profile(where: str, raw: Mapping[str, Any]) -> MachineProfile:
    buses = _str_list(where, "disk_buses", raw["disk_buses"])
    cdrom_bus = _str(where, "cdrom_bus", raw["cdrom_bus"])
    return MachineProfile(
        disk_buses=buses,
        cdrom_bus=cdrom_bus,
        builtin_ide=_opt_str(where, "builtin_ide", raw.get("builtin_ide")),
        builtin_sata=_opt_str(where, "builtin_sata", raw.get("builtin_sata")),
        machine_props=_str_list(where, "machine_props", raw.get("machine_props", [])),
        tcg_machine_props=_str_list(where, "tcg_machine_props", raw.get("tcg_machine_props", [])),
        default_memballoon=_bool(where, "default_memballoon", raw.get("default_memballoon", False)),
        panic_models=_str_map(where, "panic_models", raw.get("panic_models", {})),
        **_pci_facts(where, raw),
    )


def _pci_facts(where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``pci_bus`` ("none": no PCI bus), ``pci_builtin_slots`` and ``pci_slots``, checked:
    every implicit device has a slot of its own, none of them a built-in one."""
    bus = _str(where, "pci_bus", raw.get("pci_bus", "none"))
    if bus == "none":
        return {"pci_bus": None}
    builtin = raw.get("pci_builtin_slots", [])
    if not isinstance(builtin, list) or not all(
            isinstance(v, int) and v in _PCI_SLOTS for v in builtin):
        raise TableError(f"{where}.pci_builtin_slots: expected a list of slots 1..31")
    slots = raw.get("pci_slots")
    if not isinstance(slots, dict) or set(slots) != set(PCI_IMPLICIT):
        raise TableError(f"{where}.pci_slots: expected exactly the keys {list(PCI_IMPLICIT)}")
    taken = [_int(f"{where}.pci_slots", k, v) for k, v in slots.items()]
    if len(set(taken)) != len(taken) or set(taken) & set(builtin) or \
            not all(v in _PCI_SLOTS for v in taken):
        raise TableError(f"{where}.pci_slots: slots must be distinct, in 1..31 and not "
                         "built in")
    return {"pci_bus": bus, "pci_builtin_slots": tuple(builtin),
            "pci_slots": MappingProxyType(dict(slots))}


def _profile_raw(profile: MachineProfile) -> dict[str, Any]:
    return {
        "disk_buses": list(profile.disk_buses),
        "cdrom_bus": profile.cdrom_bus,
        "builtin_ide": profile.builtin_ide,
        "builtin_sata": profile.builtin_sata,
        "machine_props": list(profile.machine_props),
        "tcg_machine_props": list(profile.tcg_machine_props),
        "default_memballoon": profile.default_memballoon,
        "pci_bus": profile.pci_bus or "none",
        "pci_builtin_slots": list(profile.pci_builtin_slots),
        "pci_slots": dict(profile.pci_slots),
        "panic_models": dict(profile.panic_models),
    }


def _str(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TableError(f"{where}.{key}: expected a non-empty string")
    return value


def _opt_str(where: str, key: str, value: Any) -> str | None:
    return None if value is None else _str(where, key, value)


def _int(where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TableError(f"{where}.{key}: expected an integer")
    return value


def _bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TableError(f"{where}.{key}: expected a boolean")
    return value


def _str_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TableError(f"{where}.{key}: expected a list of strings")
    return tuple(_str(where, key, item) for item in value)


def _str_map(where: str, key: str, value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise TableError(f"{where}.{key}: expected a table of strings")
    return MappingProxyType({k: _str(where, f"{key}.{k}", v) for k, v in value.items()})
