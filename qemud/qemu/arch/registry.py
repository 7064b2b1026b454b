"""Name -> strategy registry.

Strategies register themselves with :func:`register` when their module is
imported; :func:`get_strategy` is the only way the rest of the driver gets
one, so an unknown arch fails in exactly one place with a clear error.
"""

from __future__ import annotations

import platform
from functools import cache
from typing import TYPE_CHECKING, TypeVar

from qemud.qemu.arch.base import ArchStrategy
from qemud.qemu.arch.table import ArchTable, load_tables
from qemud.qemu.errors import ArchTableError, UnknownArchError

if TYPE_CHECKING:
    from qemud.conf import DomainDef

__all__ = ["get_strategy", "strategy_for", "register", "registered_archs"]

_S = TypeVar("_S", bound=type[ArchStrategy])
_REGISTRY: dict[str, type[ArchStrategy]] = {}


@cache
def _tables() -> dict[str, ArchTable]:
    return load_tables()


def register(cls: _S) -> _S:
    """Class decorator: make ``cls`` the strategy for ``cls.name``.

    Fails at import time when devices.toml has no table for the arch, so a
    half-added architecture cannot ship.
    """
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"arch {name!r} is already registered by {_REGISTRY[name].__name__}")
    if name not in _tables():
        raise ArchTableError(f"no [{name}] table for strategy {cls.__name__}")
    _REGISTRY[name] = cls
    _instance.cache_clear()
    return cls


def registered_archs() -> tuple[str, ...]:
    """Names of all registered architectures, sorted."""
    return tuple(sorted(_REGISTRY))


@cache
def _instance(arch: str) -> ArchStrategy:
    return _REGISTRY[arch](_tables()[arch])


def get_strategy(arch: str) -> ArchStrategy:
    """The strategy for guest architecture ``arch`` (libvirt arch name)."""
    if arch not in _REGISTRY:
        raise UnknownArchError(arch, list(_REGISTRY))
    return _instance(arch)


def strategy_for(definition: DomainDef, host_arch: str = "") -> ArchStrategy:
    """The strategy for ``definition``'s guest: its ``<os><type arch=...>``, else the
    host's architecture (``host_arch``, the capabilities' when the caller has them; else
    this machine's)."""
    return get_strategy(definition.os.arch or host_arch or platform.machine())
