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
from tests.helpers.daemon import DISCARD_MARK, wait_for

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


def test_start_up_removes_what_a_killed_daemon_was_discarding(
        daemon_factory: DaemonFactory) -> None:
    """A daemon killed before its removal child ended leaves the hidden names it gave a
    failed deploy's VM directory, a rolled-back disk and a refused import's staging tree;
    and one killed mid-import leaves the staging tree itself, read-only directories and
    all. The next start removes them (a child again) and nothing else."""
    daemon = daemon_factory(start=False)
    store, vms = daemon.state_dir / "images", daemon.state_dir / "vms"
    gone = [vms / f".vm9{DISCARD_MARK}4242-1",            # a failed deploy's directory
            vms / "vm1" / f".vda.b.qcow2{DISCARD_MARK}4242-2",  # a rolled-back overlay
            store / f"..staging-ab12{DISCARD_MARK}4242-3",  # a refused import
            store / ".staging-cd34"]                       # an import cut short
    for tree in (gone[0], gone[2], gone[3]):
        (tree / "boot").mkdir(parents=True)
        (tree / "boot" / "vmlinuz").write_text("k")
        (tree / "boot").chmod(0o555)
    gone[1].parent.mkdir(parents=True)
    gone[1].write_text("overlay")
    kept = [vms / "vm1" / "vda.a.qcow2", store / "demo" / "1.0" / "system.qcow2",
            store / "demo" / "1.0" / f".notes{DISCARD_MARK}1-1"]  # not where one is made
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept")
    daemon.start()
    try:
        wait_for(lambda: not [p for p in gone if p.exists()],
                 message=f"the discarded files removed (left: {[p for p in gone if p.exists()]})")
        assert all(p.read_text() == "kept" for p in kept)
        assert f"image store: removing {gone[3]} (an import the daemon did not finish)" in \
            daemon.log_text()
    finally:
        daemon.stop()
