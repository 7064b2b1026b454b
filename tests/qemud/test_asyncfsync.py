"""fsync off the loop (``qemud.asyncfsync``): Linux AIO on a real loop, real files, and a
real file system whose fsyncs wait (FUSE, ``tests/helpers/slowfs.py``)."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest

from qemud import asyncfsync
from qemud.asyncfsync import MAX_IN_FLIGHT, AsyncFsync
from qemud.loop import EventLoop
from tests.helpers.loop import run_until
from tests.helpers.slowfs import SlowFS


class Outcomes:
    """Collects what the callbacks were called with, and runs the loop until they were."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.results: list[OSError | None] = []

    def __call__(self, error: OSError | None) -> None:
        self.results.append(error)

    def wait(self, count: int) -> list[OSError | None]:
        run_until(self.loop, lambda: len(self.results) >= count)
        assert len(self.results) == count, self.results
        return self.results


def written_file(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 8192)
    return fd


def test_a_file_and_its_directory_are_synced_on_a_later_loop_turn(
        tmp_path: Path, loop: EventLoop, fsyncs: AsyncFsync) -> None:
    done = Outcomes(loop)
    fd = written_file(tmp_path / "f")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsyncs.fsync(fd, done)
        fsyncs.fsync(dir_fd, done)
        assert done.results == []  # never from inside fsync()
        assert fsyncs.in_flight == 2
        assert done.wait(2) == [None, None]
        assert fsyncs.in_flight == 0
    finally:
        os.close(fd)
        os.close(dir_fd)


def test_what_fsync_refuses_is_reported_as_fsync_would(
        tmp_path: Path, loop: EventLoop, fsyncs: AsyncFsync) -> None:
    done = Outcomes(loop)
    r, w = os.pipe()
    closed = written_file(tmp_path / "f")
    os.close(closed)
    try:
        fsyncs.fsync(w, done)  # a pipe has no fsync: EINVAL
        fsyncs.fsync(closed, done)
        errors = done.wait(2)
    finally:
        os.close(r)
        os.close(w)
    assert [e.errno if e else None for e in errors] == [errno.EINVAL, errno.EBADF]


def test_more_than_the_kernel_queue_wait_their_turn(
        tmp_path: Path, loop: EventLoop, fsyncs: AsyncFsync) -> None:
    done = Outcomes(loop)
    count = MAX_IN_FLIGHT * 2 + 3
    fds = [written_file(tmp_path / f"f{i}") for i in range(count)]
    try:
        for fd in fds:
            fsyncs.fsync(fd, done)
        assert fsyncs.in_flight == count
        assert done.wait(count) == [None] * count
    finally:
        for fd in fds:
            os.close(fd)


def test_without_aio_the_fsync_runs_in_place_and_the_callback_still_comes_later(
        tmp_path: Path, loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "qemud.asyncfsync"):
        fsyncs = AsyncFsync(loop, use_aio=False)
    assert fsyncs.unavailable == "turned off"
    assert "fsync runs on the loop (Linux AIO: turned off)" in caplog.text
    done = Outcomes(loop)
    fd = written_file(tmp_path / "f")
    try:
        fsyncs.fsync(fd, done)
        assert done.results == []
        assert done.wait(1) == [None]
    finally:
        os.close(fd)
        fsyncs.close()


def test_an_architecture_without_known_numbers_falls_back(
        loop: EventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncfsync.platform, "machine", lambda: "riscv64")
    fsyncs = AsyncFsync(loop)
    assert fsyncs.unavailable == "no AIO system call numbers for riscv64"
    fsyncs.close()


def test_the_loop_runs_while_the_disk_holds_an_fsync(
        slowfs: SlowFS, loop: EventLoop, fsyncs: AsyncFsync) -> None:
    done = Outcomes(loop)
    fd = written_file(slowfs.mount / "f")
    try:
        slowfs.hold()
        fsyncs.fsync(fd, done)
        assert slowfs.wait_held() == ["/f"]
        ticks: list[float] = []
        for _ in range(5):
            loop.call_later(0.01, lambda: ticks.append(time.monotonic()))
            loop.run_once(0.5)
        assert len(ticks) == 5 and done.results == []  # timers ran; the fsync still waits
        slowfs.release()
        assert done.wait(1) == [None]
        slowfs.hold()
        fsyncs.fsync(fd, done)
        slowfs.wait_held()
        slowfs.fail()
        error = done.wait(2)[1]
        assert error is not None and error.errno == errno.EIO
    finally:
        os.close(fd)
