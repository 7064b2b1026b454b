"""Start-up removes the temp files of appliance-layer writes a killed daemon never renamed:
``atomic_write``'s ``.<file>.<random>.tmp`` in the snapshot metadata directories
(``<state_dir>/snapshots/<domain>/``) and in deployed VMs' directories
(``<state_dir>/vms/<vm>/``), the ``<disk>.new`` of disks whose ``qemu-img create`` it
never renamed (deployed VMs' directories), and unfinished imports (``<store>/.staging-*``).
Anything else there stays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory

#: names atomic_write does not use: never touched
KEPT = ("x.json.abc123.tmp", ".x.json", "x.json", ".x.json.abc123.tmp.keep")


def plant(directory: Path, record: str) -> Path:
    """A dead write of ``record`` and files of other names next to it."""
    directory.mkdir(parents=True)
    for name in KEPT:
        (directory / name).write_text("not the daemon's temp file")
    dead = directory / f".{record}.abc123.tmp"
    dead.write_text('{"half": ')
    return dead


def test_start_up_removes_dead_appliance_writes(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False)
    state = daemon.state_dir
    dead = [plant(state / "snapshots" / "guest1", "snapshots.json"),
            plant(state / "vms" / "vm1", "appliance-state.json")]
    (state / "snapshots" / "guest2").mkdir()  # nothing to remove: nothing happens
    dead.append(state / "snapshots" / "guest2" / ".x.json.abc123.tmp")
    dead[-1].write_text("")
    staging = state / "images" / ".staging-k1ll3d"
    (staging / "demo").mkdir(parents=True)
    (staging / "demo" / "system.qcow2").write_text("half an import")
    daemon.start()
    try:
        with daemon.connect() as conn:
            assert conn.list_domains(0) == []  # serving
        for path in dead:
            assert not path.exists(), path
        for directory in (state / "snapshots" / "guest1", state / "vms" / "vm1"):
            assert sorted(p.name for p in directory.iterdir()) == sorted(KEPT)
        assert not staging.exists()
        log = daemon.log_text()
        for path in dead:
            assert f"removed {path}, left by an interrupted write" in log
    finally:
        daemon.stop()


#: what ImageOps._create leaves of each kind of disk (disk_file's names + ".new")
UNFINISHED = ("vda.a.qcow2.new", "vdb.b.qcow2.new", "vdc.scratch.qcow2.new", "sdd.qcow2.new")
#: names _create does not make, or not directly in a VM's directory: never touched
NOT_UNFINISHED = ("vda.a.qcow2", "vda.c.qcow2.new", "notes.qcow2.new", "vda.a.qcow2.new.keep",
                  ".vda.a.qcow2.new", "vda.a.b.qcow2.new", "vda.a.raw.new")


def test_start_up_removes_disks_whose_creation_was_interrupted(
        daemon_factory: DaemonFactory) -> None:
    """A daemon killed while ``qemu-img create`` wrote a deployed VM's new overlay or
    scratch disk leaves ``<disk>.new`` next to the disk: the next start removes it, and
    only it (a real qcow2 from qemu-img, as _create leaves it)."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img is not installed")
    daemon = daemon_factory(start=False)
    state = daemon.state_dir
    vm = state / "vms" / "vm1"
    (vm / "sub").mkdir(parents=True)
    dead = [vm / name for name in UNFINISHED]
    for path in dead:
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    kept = [vm / name for name in NOT_UNFINISHED]
    kept += [vm / "sub" / "vda.a.qcow2.new", state / "images" / "vda.a.qcow2.new"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not a disk the daemon was creating")
    (vm / "vde.qcow2.new").mkdir()  # not a file
    os.symlink(kept[0], vm / "vdf.qcow2.new")  # not a file either: the link stays
    daemon.start()
    try:
        with daemon.connect() as conn:
            assert conn.list_domains(0) == []  # serving
        for path in dead:
            assert not path.exists(), path
        for path in [*kept, vm / "vde.qcow2.new", vm / "vdf.qcow2.new"]:
            assert path.exists(), path
        log = daemon.log_text()
        for path in dead:
            assert f"removed {path}, left by an interrupted disk creation" in log
        assert log.count("left by an interrupted disk creation") == len(dead)
    finally:
        daemon.stop()
