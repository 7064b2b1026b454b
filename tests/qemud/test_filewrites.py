"""FileWrites (qemud/driver/filewrites.py): durable whole-file writes whose fsyncs wait off
the loop and that land in call order per file, on a real loop with Linux AIO, on the
temp dir's disk and on a FUSE file system whose fsyncs the test holds, lets go or fails
(tests/helpers/slowfs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemud.asyncfsync import AsyncFsync
from qemud.dispatch import Deferred
from qemud.driver.filewrites import FileWrites
from qemud.loop import EventLoop
from tests.helpers.daemon import wait_for
from tests.helpers.loop import run_for, run_until
from tests.helpers.slowfs import SlowFS


@pytest.fixture
def files(fsyncs: AsyncFsync) -> FileWrites:
    return FileWrites(fsyncs)


def ended(loop: EventLoop, *writes: Deferred) -> None:
    run_until(loop, lambda: all(w.done for w in writes))


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_write_ends_on_a_later_loop_turn_with_the_file_in_place(
        tmp_path: Path, loop: EventLoop, files: FileWrites) -> None:
    path = tmp_path / "meta.json"
    path.write_text("old")
    write = files.write(path, '{"new": 1}', "test record")
    assert not write.done  # never from inside write()
    assert files.pending(path) and files.newest(path) == b'{"new": 1}'
    assert path.read_text() == "old"  # until its fsync has ended
    ended(loop, write)
    assert write.error is None
    assert path.read_text() == '{"new": 1}'
    assert (path.stat().st_mode & 0o777) == 0o600
    assert not files.pending(path) and files.newest(path) is None
    assert temps(tmp_path) == []


def test_a_temp_file_that_cannot_be_written_fails_at_once_naming_the_file(
        tmp_path: Path, loop: EventLoop, files: FileWrites) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    write = files.write(blocker / "meta.json", "{}", "test record")
    assert write.done and write.error is not None
    assert write.error.message == ("operation failed: cannot write test record "
                                   f"{blocker / 'meta.json'}: Not a directory")
    assert not files.pending(blocker / "meta.json")


def test_writes_of_one_file_land_in_call_order(
        slowfs: SlowFS, loop: EventLoop, files: FileWrites) -> None:
    path = slowfs.mount / "meta.json"
    path.write_text("old")
    slowfs.hold()
    first = files.write(path, "first", "test record")
    second = files.write(path, "second", "test record")
    assert files.newest(path) == b"second"
    [held] = slowfs.wait_held()
    assert held.startswith("/.meta.json.") and held.endswith(".tmp")
    run_for(loop, 0.3)
    # the second write waits for the first: its fsync is not even asked for
    assert slowfs.held() == [held]
    assert len(temps(slowfs.mount)) == 2
    slowfs.let(held)
    run_until(loop, lambda: slowfs.held() == ["/"])  # renamed; its directory's fsync
    run_for(loop, 0.3)
    assert path.read_text() == "first" and not first.done and not second.done
    slowfs.let()
    ended(loop, first)
    assert first.error is None and not second.done
    # only now the second write's temp file is synced; the file still holds the first
    [held] = slowfs.wait_held()
    assert held.startswith("/.meta.json.") and path.read_text() == "first"
    assert files.pending(path) and files.newest(path) == b"second"
    slowfs.release()
    ended(loop, second)
    assert second.error is None and path.read_text() == "second"
    assert not files.pending(path) and temps(slowfs.mount) == []


def test_a_failed_fsync_leaves_the_file_and_the_next_write_lands(
        slowfs: SlowFS, loop: EventLoop, files: FileWrites) -> None:
    path = slowfs.mount / "meta.json"
    path.write_text("old")
    slowfs.hold()
    failing = files.write(path, "lost", "test record")
    later = files.write(path, "later", "test record")
    slowfs.wait_held()
    slowfs.fail()
    # its EIO decided; the loop is not turned meanwhile, so the next write's fsync is
    # asked for only after the release
    wait_for(lambda: slowfs.held() == [], timeout=10, message="the fsync failed")
    slowfs.release()
    ended(loop, failing)
    assert failing.error is not None
    assert failing.error.message == (f"operation failed: cannot write test record {path}: "
                                     "Input/output error")
    assert path.read_text() == "old" and not later.done
    ended(loop, later)
    assert later.error is None and path.read_text() == "later"
    assert temps(slowfs.mount) == []


def test_settled_waits_for_every_write_made_so_far(
        slowfs: SlowFS, loop: EventLoop, files: FileWrites) -> None:
    path = slowfs.mount / "meta.json"
    assert files.settled(path).done  # nothing in flight
    slowfs.hold()
    files.write(path, "1", "test record")
    last = files.write(path, "2", "test record")
    settled = files.settled(path)
    slowfs.wait_held()
    run_for(loop, 0.3)
    assert not settled.done
    slowfs.release()
    ended(loop, settled)
    assert last.done and path.read_text() == "2"


def test_writes_of_different_files_do_not_wait_for_each_other(
        slowfs: SlowFS, loop: EventLoop, files: FileWrites) -> None:
    slowfs.hold()
    held_write = files.write(slowfs.mount / "a.json", "a", "test record")
    slowfs.wait_held()
    free = files.write(slowfs.mount / "b.json", "b", "test record")
    held = slowfs.wait_held(2)
    slowfs.let(next(p for p in held if p.startswith("/.b.json.")))
    run_until(loop, lambda: "/" in slowfs.held())
    slowfs.let("/")
    ended(loop, free)
    assert free.error is None and (slowfs.mount / "b.json").read_text() == "b"
    assert not held_write.done
    slowfs.release()
    ended(loop, held_write)
    assert (slowfs.mount / "a.json").read_text() == "a"


def test_a_callback_that_raises_holds_back_no_later_write(
        tmp_path: Path, loop: EventLoop, files: FileWrites,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "meta.json"
    first = files.write(path, "first", "test record")

    def broken(_: Deferred) -> None:
        raise RuntimeError("a caller's bug")
    first.add_done_callback(broken)
    second = files.write(path, "second", "test record")
    ended(loop, first, second)
    assert second.error is None and path.read_text() == "second"
    assert not files.pending(path)
    assert "a caller's bug" in caplog.text  # (the loop logs it and goes on)
