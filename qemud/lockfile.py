"""One daemon per run directory: a pidfile held with flock for the daemon's lifetime."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import AlreadyRunning, QemudError

__all__ = ["PidfileLock"]


class PidfileLock:
    """Exclusive, non-blocking flock on a pidfile that records the holder's pid.

    The kernel drops the lock when the process dies (even by kill -9), so a stale
    pidfile never blocks a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise QemudError(f"cannot open the pidfile {self.path} (in paths.run_dir): "
                                 f"{exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise AlreadyRunning(
                    f"another qemud (pid {holder}) is already running with run directory "
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


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
