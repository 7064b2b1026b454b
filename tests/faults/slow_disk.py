"""Client calls on a daemon whose config directory is on a disk that takes its time
(:class:`tests.helpers.slowfs.SlowFS`), for test_slow_disk, test_slow_config_change and
tests/appliance/test_image_switch: a call in the background whose fsyncs the test holds,
the daemon on the slow file system, and what it has defined, in memory and on disk;
for the snapshot metadata and rename tests, the held fsync of one file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background

from .conftest import NO_GUEST_EMULATOR, bare_domain_xml

UUID_A = "6a0d2c3e-1111-4c5b-9c1d-0123456789ab"


def domain_xml(name: str, uuid: str, memory_mib: int = 64) -> str:
    return bare_domain_xml(name, memory_mib=memory_mib, emulator=NO_GUEST_EMULATOR).replace(
        "<domain type='qemu'>", f"<domain type='qemu'><uuid>{uuid}</uuid>")


def on_slowfs(slowfs: SlowFS, daemon_factory: DaemonFactory) -> DaemonProcess:
    """A daemon whose config directory (definitions, autostart flags) is on ``slowfs``."""
    return daemon_factory(config={"paths": {"config_dir": str(slowfs.mount / "config")}})


def held_call(slowfs: SlowFS, d: DaemonProcess, call: Callable[[Any], Any]) -> Background:
    """``call`` on its own connection, once its first fsync is held by ``slowfs`` (and
    every later fsync, until the test lets them go)."""
    slowfs.hold()
    background = Background(d, call)
    slowfs.wait_held()
    return background


def definitions(slowfs: SlowFS) -> list[str]:
    """The files in the domains directory, as the backing directory has them."""
    return sorted(p.name for p in (slowfs.backing / "config" / "domains").iterdir())


def names(conn: Any) -> set[str]:
    return {d.name for d in conn.list_domains()}


def held_until(slowfs: SlowFS, wanted: Callable[[str], bool]) -> str:
    """The held fsync ``wanted`` picks, once it comes; the others (``qemu-img``'s own
    flush of an overlay) are let go meanwhile."""
    while True:
        held = slowfs.wait_held()
        for path in held:
            if wanted(path):
                return path
        for path in held:
            slowfs.let(path)


def metadata_temp(name: str) -> Callable[[str], bool]:
    prefix = f"/state/snapshots/{name}/.snapshots.json."
    return lambda path: path.startswith(prefix) and path.endswith(".tmp")


def recorded(index: Path) -> list[str]:
    """The snapshots ``snapshots.json`` names, as the backing directory has it."""
    return [s["name"] for s in json.loads(index.read_text())["snapshots"]]
