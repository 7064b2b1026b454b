"""Removing files and trees off the loop (``qemud.driver.discard``): the name is gone when
the call returns, a child frees the space, read-only trees and symlinks are handled, and
what a killed daemon left is found at the next start. A real loop and real children."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from qemud.driver.discard import (
    _REMOVE_ARGV,
    DISCARD_MARK,
    discard,
    discard_tree,
    remove_discarded_below,
    replace_keeping,
)
from qemud.loop import EventLoop
from tests.conftest import DaemonFactory


def hidden_in(directory: Path) -> list[Path]:
    return sorted(directory.glob(f".*{DISCARD_MARK}*"))


def until_gone(loop: EventLoop, *paths: Path) -> None:
    """Run the loop until none of ``paths`` exists (the child ran and was reaped)."""
    deadline = time.monotonic() + 10
    while any(os.path.lexists(p) for p in paths) and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert not [p for p in paths if os.path.lexists(p)]


def read_only_tree(root: Path, outside: Path) -> None:
    """What a tarball can unpack to: read-only and unreadable directories, read-only
    files, a symlink to a file outside."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "closed").mkdir()
    for name in ("a/f", "a/b/g", "closed/h"):
        (root / name).write_text(name)
        (root / name).chmod(0o444)
    (root / "a" / "outside").symlink_to(outside)
    (root / "a" / "b").chmod(0o555)
    (root / "a").chmod(0o555)
    (root / "closed").chmod(0)


def test_discard_renames_at_once_and_a_child_removes(loop: EventLoop, tmp_path: Path
                                                     ) -> None:
    one, two = tmp_path / "one.qcow2", tmp_path / "two.qcow2"
    one.write_bytes(b"1" * 4096)
    two.write_bytes(b"2")
    hidden = discard(loop, [one, str(two), tmp_path / "never-was"])
    assert list(hidden) == [one, two]  # the one that did not exist is skipped
    assert not one.exists() and not two.exists()  # gone when the call returns
    for path, name in hidden.items():
        assert name.parent == tmp_path and name.name.startswith(f".{path.name}{DISCARD_MARK}")
    until_gone(loop, *hidden.values())
    assert list(tmp_path.iterdir()) == []


def test_discard_into_a_spool(loop: EventLoop, tmp_path: Path) -> None:
    spool = tmp_path / "store"
    images = spool / "vm" / "images"
    images.mkdir(parents=True)
    overlay = images / "vda.snap1.qcow2"
    overlay.write_text("x")
    elsewhere = tmp_path / "target.qcow2"
    elsewhere.write_text("y")
    hidden = discard(loop, [overlay, elsewhere], spool=spool)
    assert hidden[overlay].parent == spool  # images/ reads as empty at once
    assert hidden[elsewhere].parent == tmp_path  # not below the spool: its own directory
    assert list(images.iterdir()) == []
    until_gone(loop, *hidden.values())


def test_what_cannot_be_discarded_stays(loop: EventLoop, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "a-directory"
    (directory / "inside").mkdir(parents=True)
    failed: dict[Path, OSError] = {}
    assert discard(loop, [directory], failed=failed) == {}
    assert isinstance(failed[directory], IsADirectoryError)
    assert (directory / "inside").is_dir()  # a file was asked for: a tree is never removed
    with caplog.at_level(logging.ERROR, logger="qemud.driver.discard"):
        assert discard(loop, [directory]) == {}
    assert f"cannot remove {directory}: Is a directory" in caplog.text


def test_discard_tree_read_only_and_symlinks(loop: EventLoop, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.write_text("keep me")
    outside.chmod(0o600)
    vmdir = tmp_path / "vms" / "web1"
    vmdir.mkdir(parents=True)
    read_only_tree(vmdir, outside)
    hidden = discard_tree(loop, vmdir)
    assert hidden is not None and hidden.parent == vmdir.parent
    assert not vmdir.exists()
    until_gone(loop, hidden)
    assert list((tmp_path / "vms").iterdir()) == []
    assert outside.read_text() == "keep me"  # the symlink was removed, not followed
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert discard_tree(loop, vmdir) is None  # gone already


def test_a_tree_that_cannot_be_renamed_is_logged_and_left(
        loop: EventLoop, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.ERROR, logger="qemud.driver.discard"):
        assert discard_tree(loop, not_a_dir / "tree") is None
    assert f"cannot remove {not_a_dir / 'tree'}: Not a directory" in caplog.text
    assert not_a_dir.read_text() == "x" and hidden_in(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                    reason="needs root to run the child as another user")
def test_the_child_removes_a_read_only_tree_as_its_owner(
        request: pytest.FixtureRequest) -> None:
    """Root removes anything; a session daemon's user must first make each read-only
    or unreadable directory its own again (``find`` before it reads it)."""
    base = Path(tempfile.mkdtemp(prefix="qemud-test-discard-"))  # (tmp_path is 0700)
    request.addfinalizer(lambda: shutil.rmtree(base))
    base.chmod(0o777)
    outside = base / "precious"
    outside.write_text("keep me")
    tree = base / "tree"
    script = (f"mkdir {tree} && cd {tree} && mkdir -p a/b closed && "
              "touch a/f a/b/g closed/h && chmod 444 a/f a/b/g closed/h && "
              f"ln -s {outside} a/outside && chmod 555 a/b a && chmod 0 closed")
    subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", script], check=True)
    assert (tree / "a").stat().st_uid != 0
    done = subprocess.run(["runuser", "-u", "nobody", "--", *_REMOVE_ARGV, str(tree)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not tree.exists()
    assert outside.read_text() == "keep me"


def test_replace_keeping(loop: EventLoop, tmp_path: Path) -> None:
    target = tmp_path / "guest.save"
    target.write_bytes(b"old" * 1000)
    old_inode = target.stat().st_ino
    new = tmp_path / ".guest.save.part"
    new.write_bytes(b"new")
    replace_keeping(loop, new, target)
    assert target.read_bytes() == b"new" and not new.exists()
    held = hidden_in(tmp_path)  # the old file's last link, for the child to drop
    assert [p.stat().st_ino for p in held] == [old_inode]
    until_gone(loop, *held)
    # no file at the target: a plain rename, nothing held
    other = tmp_path / "other.save"
    new.write_bytes(b"first")
    replace_keeping(loop, new, other)
    assert other.read_bytes() == b"first" and hidden_in(tmp_path) == []
    # a failure is the rename's, and nothing is left held
    with pytest.raises(FileNotFoundError):
        replace_keeping(loop, tmp_path / "missing.part", target)
    until_gone(loop, *hidden_in(tmp_path))
    assert target.read_bytes() == b"new"


def test_leftovers_are_found_at_start(loop: EventLoop, tmp_path: Path) -> None:
    """A killed daemon's hidden files and trees: in the root and, with depth 1, one
    level below (symlinked directories are not entered)."""
    root = tmp_path / "vms"
    (root / "web1").mkdir(parents=True)
    top_tree = root / f".web2{DISCARD_MARK}99-1"
    (top_tree / "sub").mkdir(parents=True)
    (top_tree / "sub").chmod(0o555)
    below = root / "web1" / f".vda.a.qcow2{DISCARD_MARK}99-2"
    below.write_text("x")
    kept = root / "web1" / "vda.a.qcow2"
    kept.write_text("in use")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f".x{DISCARD_MARK}99-3").write_text("not ours to look at")
    (root / "link").symlink_to(elsewhere)

    assert remove_discarded_below(loop, root, depth=0) == [top_tree]
    until_gone(loop, top_tree)
    assert below.exists()
    assert remove_discarded_below(loop, root) == [below]
    until_gone(loop, below)
    assert kept.read_text() == "in use"
    assert (elsewhere / f".x{DISCARD_MARK}99-3").exists()
    assert remove_discarded_below(loop, tmp_path / "no-such-dir") == []


def test_a_restarted_daemon_removes_the_save_images_it_was_discarding(
        daemon_factory: DaemonFactory) -> None:
    """A daemon killed right after ``managedsave-remove`` (or a restore) leaves the
    image under its hidden name in ``<state_dir>/save``: the next start removes it, and
    leaves the images of other domains alone."""
    daemon = daemon_factory(start=False)
    saves = daemon.state_dir / "save"
    saves.mkdir(parents=True)
    hidden = saves / f".web.save{DISCARD_MARK}4242-1"
    hidden.write_bytes(b"QemudManagedSave\n" + b"\0" * 4096)
    kept = saves / "db.save"
    kept.write_bytes(b"QemudManagedSave\n")
    daemon.start()
    deadline = time.monotonic() + 10
    while hidden.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hidden.exists()
    assert kept.exists()
