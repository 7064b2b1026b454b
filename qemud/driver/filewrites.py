"""Whole-file durable writes that wait for the disk off the loop, landing in call order
per file.

The appliance layer keeps small records beside the definitions (a domain's snapshot
metadata ``snapshots.json``, a deployed VM's ``appliance-state.json``, an imported
appliance's index). Each write is temp file + fsync + rename + fsync of the
directory, like a define's (:func:`.store.commit_async`): the temp file is written in the
call (the page cache; a full disk fails it there, before anything changed), both fsyncs
wait off the loop, and the returned Deferred resolves once the new file is durable. On a
disk busy with a guest's or a backup's writes one fsync takes seconds, and done on the
loop it stalled every client, QEMU monitor and heartbeat for as long.

Two writes of one file never overtake each other: a write renames its temp file only
after the write made before it has ended, whatever its outcome. So the file ends as
the last write left it, as it would on the loop. Until then the file still holds what
it held; a reader in the daemon reads through :meth:`FileWrites.read_text`, so that what it
reads, changes and writes back builds on every write made before it (as
:mod:`.persist` does for definitions: a write that then fails is carried by the next
one, which was built on it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qemud.asyncfsync import AsyncFsync
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed

from .store import TempFile, land_async

__all__ = ["FileWrites"]


class _Write:
    """One write: what it writes, its caller's Deferred, and the write of the same file
    made after it (started when this one ends)."""

    __slots__ = ("data", "done", "start", "next")

    def __init__(self, data: bytes, done: Deferred, start: Callable[[], None]) -> None:
        self.data = data
        self.done = done
        self.start = start
        self.next: _Write | None = None


class FileWrites:
    """Durable atomic writes of whole files, their fsyncs off the loop, in order per path."""

    def __init__(self, fsync: AsyncFsync) -> None:
        self._fsync = fsync
        #: the newest write of each path while any of that path is in flight
        self._newest: dict[Path, _Write] = {}

    def pending(self, path: Path) -> bool:
        """Whether a write of ``path`` has not ended yet."""
        return path in self._newest

    def newest(self, path: Path) -> bytes | None:
        """What the newest write of ``path`` in flight writes; None when none is."""
        write = self._newest.get(path)
        return write.data if write is not None else None

    def read_text(self, path: Path) -> str:
        """``path`` as the daemon's next read must see it: what the newest write in
        flight writes, else the file (raising as ``Path.read_text`` does)."""
        data = self.newest(path)
        return data.decode() if data is not None else path.read_text()

    def settled(self, path: Path) -> Deferred:
        """Resolves (with None) once every write of ``path`` made so far has ended."""
        write = self._newest.get(path)
        out = Deferred()
        if write is None:
            out.resolve(None)
        else:
            write.done.add_done_callback(lambda _: out.resolve(None))
        return out

    def write(self, path: Path, data: str | bytes, what: str, mode: int = 0o600) -> Deferred:
        """Replace ``path`` with ``data``; the Deferred resolves (with None) once the new
        file is durable, or fails with an OperationFailed that names ``what`` and the
        file: at once when the temp file cannot be written (``path`` untouched), later
        when a fsync or the rename fails (``path`` untouched too). A failed directory
        fsync is logged and counts as done (see :func:`.store.commit_async`)."""
        out = Deferred()
        raw = data.encode() if isinstance(data, str) else data
        try:
            temp = TempFile(path, raw, mode)
        except OSError as exc:
            out.fail(_failure(what, path, exc))
            return out

        def finished(error: BaseException | None) -> None:
            # the next write of the file goes first, and the path's record is settled,
            # before the caller hears: nothing its callbacks do can hold them back
            if write.next is not None:
                write.next.start()
            elif self._newest.get(path) is write:
                del self._newest[path]
            if error is None:
                out.resolve(None)
            elif isinstance(error, OSError):
                out.fail(_failure(what, path, error))
            else:  # (nothing else raises in land_async)
                out.fail(OperationFailed(f"cannot write {what} {path}: {error}"))

        write = _Write(raw, out, lambda: land_async(self._fsync, temp, finished))
        before = self._newest.get(path)
        self._newest[path] = write
        if before is None:
            write.start()
        else:
            before.next = write
        return out


def _failure(what: str, path: Path, exc: OSError) -> OperationFailed:
    return OperationFailed(f"cannot write {what} {path}: {exc.strerror or exc}")
