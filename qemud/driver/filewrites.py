"""Whole-file durable writes that wait for the disk off the loop, landing in call order
per file.

The appliance layer keeps small records beside the definitions (a domain's snapshot
metadata, ``snapshots.json``). Each write is temp file + fsync + rename + fsync of the
directory, like a define's (:func:`.store.commit_async`): the temp file is written in the
call (the page cache; a full disk fails it there, before anything changed), both fsyncs
wait off the loop, and the returned Deferred resolves once the new file is durable. On a
disk busy with a guest's or a backup's writes one fsync takes seconds, and done on the
loop it stalled every client, QEMU monitor and heartbeat for as long.

Two writes of one file never overtake each other: a write renames its temp file only
after the write made before it has ended, whatever its outcome. So the file ends as
the last write left it, as it would on the loop. Until then the file still holds what
it held; a reader in the daemon asks :meth:`FileWrites.newest` first, so that what it
reads, changes and writes back builds on every write made before it (as
:mod:`.persist` does for definitions: a write that then fails is carried by the next
one, which was built on it).
"""

from __future__ import annotations

from pathlib import Path

from qemud.asyncfsync import AsyncFsync
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed

from .store import TempFile, commit_async

__all__ = ["FileWrites"]


class FileWrites:
    """Durable atomic writes of whole files, their fsyncs off the loop, in order per path."""

    def __init__(self, fsync: AsyncFsync) -> None:
        self._fsync = fsync
        #: the newest write of each path, and its data, while any of that path is in flight
        self._newest: dict[Path, tuple[Deferred, bytes]] = {}

    def pending(self, path: Path) -> bool:
        """Whether a write of ``path`` has not ended yet."""
        return path in self._newest

    def newest(self, path: Path) -> bytes | None:
        """What the newest write of ``path`` in flight writes; None when none is."""
        entry = self._newest.get(path)
        return entry[1] if entry is not None else None

    def settled(self, path: Path) -> Deferred:
        """Resolves (with None) once every write of ``path`` made so far has ended."""
        entry = self._newest.get(path)
        out = Deferred()
        if entry is None:
            out.resolve(None)
        else:
            entry[0].add_done_callback(lambda _: out.resolve(None))
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
        before = self._newest.get(path)
        self._newest[path] = (out, raw)
        out.add_done_callback(lambda _: self._ended(path, out))

        def commit(_: object = None) -> None:
            commit_async(self._fsync, temp, _no_check, _nothing, finished)

        def finished(_: None, error: BaseException | None) -> None:
            if error is None:
                out.resolve(None)
            elif isinstance(error, OSError):
                out.fail(_failure(what, path, error))
            else:  # (no check, no apply: nothing else raises in commit_async)
                out.fail(OperationFailed(f"cannot write {what} {path}: {error}"))

        if before is None:
            commit()
        else:
            before[0].add_done_callback(commit)
        return out

    def _ended(self, path: Path, write: Deferred) -> None:
        # the first callback of each write: its caller's continuation sees the path as
        # no longer pending, unless a later write of it is queued
        entry = self._newest.get(path)
        if entry is not None and entry[0] is write:
            del self._newest[path]


def _no_check() -> None:
    return None


def _nothing(_: None) -> None:
    return None


def _failure(what: str, path: Path, exc: OSError) -> OperationFailed:
    return OperationFailed(f"cannot write {what} {path}: {exc.strerror or exc}")
