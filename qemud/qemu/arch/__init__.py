"""Per-architecture strategies (one class per arch, facts in devices.toml).

Usage::

    strategy = strategy_for(dom, host_arch)
    strategy.fill_defaults(dom)   # at define time
    strategy.validate(dom)        # raises UnsupportedForArch

Adding an architecture: a ``[NAME]`` table in devices.toml and a module here
with one ``@register``-ed :class:`ArchStrategy` subclass, imported below.
"""

from __future__ import annotations

from qemud.qemu.arch import aarch64, ppc64, x86_64
from qemud.qemu.arch.aarch64 import AArch64
from qemud.qemu.arch.base import ACCELS, ArchStrategy, DiskBus
from qemud.qemu.arch.ppc64 import PPC64
from qemud.qemu.arch.registry import get_strategy, register, registered_archs, strategy_for
from qemud.qemu.arch.table import ArchTable, DeviceNames, MachineProfile, load_tables
from qemud.qemu.arch.x86_64 import X86_64

__all__ = [
    "ACCELS",
    "AArch64",
    "ArchStrategy",
    "ArchTable",
    "DeviceNames",
    "DiskBus",
    "MachineProfile",
    "PPC64",
    "X86_64",
    "aarch64",
    "get_strategy",
    "load_tables",
    "ppc64",
    "register",
    "registered_archs",
    "strategy_for",
    "x86_64",
]
