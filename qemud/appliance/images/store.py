"""Where appliance images and deployed VMs are kept, and what is recorded of them.

``<store>/<name>/<version>/`` (``appliance.image_store``, default
``<state_dir>/images``) holds an imported appliance, every file mode 0444, with its
checked descriptor as ``.qemud-appliance.json``; ``<state_dir>/vms/<vm>/`` holds a
deployed VM's overlays and scratch disks and its :class:`VMState`
(``appliance-state.json``, atomic writes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemud.errors import InvalidArg, QemudError

from .descriptor import Descriptor, parse_descriptor, version_key
from .layout import CHANGED_KEY, DEPLOYING_KEY, RESTART_KEY, SWITCH_KEY

__all__ = ["ImageStore", "VMState", "INDEX_NAME"]

log = logging.getLogger(__name__)

#: the checked descriptor as JSON, written into each stored version at import
INDEX_NAME = ".qemud-appliance.json"


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


@dataclass
class VMState:
    """What the daemon remembers of a deployed VM (``<state_dir>/vms/<vm>/``).

    ``switch`` is set only while an update or a rollback defines the VM's new
    definition: the state that definition goes with (the fields above stay the ones of
    the definition in place until then). Start-up settles a switch a killed daemon left
    (``layout.settle_switch``): see ``UpdateOps._commit_switch`` for why.

    ``deploying`` is set only between a deploy's first write of the state and its
    define: a VM directory whose state still says so at start-up and names no domain is
    a deploy a killed daemon cut short (``layout.settle_deploys``).

    ``restart`` names the image operation ("update", "rollback", "factory reset") that
    stopped the running VM to change its disks, from before that stop until the
    operation has started it again (or decided not to): a daemon killed in between
    starts it at its next start (``layout.restart_marks``), so the guest does not stay
    off because its daemon died mid-way.

    ``changed`` records the last time an update, rollback or factory reset replaced the
    VM's disks (``{"at": time.time(), "by": "update from 1.0 to 2.0"}``): a memory state
    saved before then belongs to disks that are gone, and its restore is refused
    (``layout.require_restorable``).
    """

    vm: str
    uuid: str
    appliance: str
    version: str
    slot: str  # "a" | "b": the system overlay(s) in use
    disks: dict[str, dict[str, Any]]  # target -> {"class", "path", "size"?}
    previous: dict[str, Any] | None = None  # {"version", "slot", "system": {t: path},
    #                                          "scratch": {t: size}, "os"}
    pending: dict[str, Any] | None = None  # {"from", "to", "since"}: unconfirmed update
    switch: dict[str, Any] | None = None  # the state of a definition being defined
    deploying: bool = False  # written before the deploy's define, cleared after it
    restart: str | None = None  # the operation that stopped the VM, until it restarted it
    changed: dict[str, Any] | None = None  # {"at", "by"}: the disks' last replacement

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vm": self.vm, "uuid": self.uuid, "appliance": self.appliance,
            "version": self.version, "slot": self.slot, "disks": self.disks,
            "previous": self.previous, "pending": self.pending}
        if self.switch is not None:  # (absent from most files, and from older ones)
            out[SWITCH_KEY] = self.switch
        if self.deploying:
            out[DEPLOYING_KEY] = True
        if self.restart is not None:
            out[RESTART_KEY] = self.restart
        if self.changed is not None:  # (absent from a new VM's file, and older ones)
            out[CHANGED_KEY] = self.changed
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMState:
        return cls(vm=data["vm"], uuid=data["uuid"], appliance=data["appliance"],
                   version=data["version"], slot=data["slot"], disks=data["disks"],
                   previous=data.get("previous"), pending=data.get("pending"),
                   switch=data.get(SWITCH_KEY), deploying=bool(data.get(DEPLOYING_KEY)),
                   restart=data.get(RESTART_KEY), changed=data.get(CHANGED_KEY))

    @classmethod
    def from_json(cls, text: str) -> VMState:
        return cls.from_dict(json.loads(text))

    def copy(self) -> VMState:
        """A deep copy (the nested records too)."""
        return VMState.from_json(self.to_json())

    def switching_to(self, after: VMState) -> VMState:
        """This state, recording that a define of ``after``'s definition is under way.
        The restart mark is the record's own, not the switch's: dropping it from the
        record drops it, whichever state the switch settles on (``settle_switch``)."""
        return dataclasses.replace(self.copy(), switch=dataclasses.replace(
            after.copy(), switch=None, restart=None).as_dict())

    def disks_changed(self, by: str) -> None:
        """Record that ``by`` (an update, rollback or reset) replaces the disks now."""
        self.changed = {"at": time.time(), "by": by}

    def targets(self, cls: str) -> list[str]:
        return sorted(t for t, d in self.disks.items() if d["class"] == cls)
