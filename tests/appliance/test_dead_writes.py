"""Start-up removes the temp files of appliance-layer writes a killed daemon never renamed:
``atomic_write``'s ``.<file>.<random>.tmp`` in the snapshot metadata directories
(``<state_dir>/snapshots/<domain>/``) and in deployed VMs' directories
(``<state_dir>/vms/<vm>/``), and unfinished imports (``<store>/.staging-*``).
Anything else there stays.
"""

from __future__ import annotations

from pathlib import Path

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
