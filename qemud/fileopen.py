"""Opening a file the loop reads when someone else chose the path.

A disk's source, a restore image, a backing file, the file QEMU wrote a screenshot to:
whatever sits at such a path is opened here, on the daemon's one thread. ``open(2)`` of
a FIFO blocks until a writer comes, and ``read(2)`` of one (or of a terminal) until data
does, so every such open is ``O_NONBLOCK`` (which regular files and block devices
ignore) and the open file is checked with ``fstat`` before the caller reads: anything
but the kinds the caller reads is closed again and refused with :class:`WrongFileKind`,
which each caller words its own way.

A hung network mount still blocks ``open`` itself; nothing here helps with that.
"""

from __future__ import annotations

import os
import stat

__all__ = ["WrongFileKind", "open_for_reading", "file_kind"]

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def file_kind(mode: int) -> str:
    """What ``mode`` (``st_mode``) is, for a message: "a FIFO", "a directory"..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "an unknown kind of file"


class WrongFileKind(Exception):
    """``path`` is not a kind of file the caller reads; ``kind`` says what it is
    (:func:`file_kind`). Not an OSError: the open itself worked."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode
        self.kind = file_kind(mode)
        super().__init__(f"{path} is {self.kind}")

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def open_for_reading(path: str | os.PathLike[str], *, block_devices: bool = False
                     ) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only without blocking the loop, and its ``fstat``; only a
    regular file (or also a block device, with ``block_devices``) is kept open, anything
    else is closed and raises :class:`WrongFileKind`. Raises OSError as ``open`` and
    ``fstat`` do. The caller closes the fd."""
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or (block_devices and stat.S_ISBLK(st.st_mode))):
            raise WrongFileKind(os.fsdecode(path), st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st
