"""One daemon per run, config and state directory: files held with flock for the
daemon's lifetime (the pidfile in the run directory, ``.qemud.lock`` in the others)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import AlreadyRunning, QemudError

__all__ = ["DaemonLocks", "PidfileLock"]


class PidfileLock:
    """Exclusive, non-blocking flock on a pidfile that records the holder's pid.

    The kernel drops the lock when the process dies (even by kill -9), so a stale
    pidfile never blocks a restart.
    """

    def __init__(self, path: Path, directory: str = "run directory",
                 key: str = "paths.run_dir") -> None:
        self.path = path
        self.directory, self.key = directory, key  # what the lock guards, for messages
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise QemudError(f"cannot open the lock file {self.path} (in {self.key}): "
                                 f"{exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise AlreadyRunning(
                    f"another qemud (pid {holder}) is already running with {self.directory} "
                    f"{self.path.parent} (lock {self.path} is held)") from None
            # A holder that released between our open() and flock() unlinked the file
            # first: we then hold a lock on an orphan that the next daemon would not see.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


class DaemonLocks:
    """The locks of one daemon: its run directory's pidfile, then its config and state
    directories. Two daemons with different run directories but the same config (or
    state) directory would otherwise both manage the same guests: start them twice,
    merge the same snapshots. A directory given twice is locked once."""

    def __init__(self, pidfile: Path, config_dir: Path, state_dir: Path) -> None:
        self.locks = [PidfileLock(pidfile)]
        for directory, kind, key in ((config_dir, "config directory", "paths.config_dir"),
                                     (state_dir, "state directory", "paths.state_dir")):
            path = directory / ".qemud.lock"
            if all(lock.path != path for lock in self.locks):
                self.locks.append(PidfileLock(path, kind, key))

    def acquire(self) -> None:
        """All of them, in order; none held if one is taken."""
        try:
            for lock in self.locks:
                lock.acquire()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
