"""Removing large files and trees without blocking the loop.

Unlinking a large, fragmented disk image frees its extents before ``unlink`` returns
(seconds), and removing an unpacked tarball walks every file; neither may happen on the
daemon's one thread. :func:`discard` renames each file to a hidden name in its directory
(instant, whatever its size) and one child (:class:`~qemud.driver.tools.ToolRunner`,
``rm``) removes them; :func:`discard_tree` does the same for a directory the daemon made
(a deployed VM's, an import's staging tree), and :func:`replace_keeping` renames a file
over another without dropping the old one's last link on the loop.
:func:`remove_discarded_below` removes what a daemon killed meanwhile left, at start-up.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from qemud.dispatch import Deferred

from .store import NAME_MAX, directories_below
from .tools import ToolRunner

if TYPE_CHECKING:
    from qemud.loop import EventLoop

__all__ = ["discard", "discard_tree", "replace_keeping", "remove_discarded_below",
           "DISCARD_MARK"]

log = logging.getLogger(__name__)

#: in the name :func:`discard` gives a file: ``.<name>.qemud-discard-<pid>-<n>``
DISCARD_MARK = ".qemud-discard-"
_discard_serial = itertools.count(1)


def _rm_failure(argv: list[str], code: int, stderr: str) -> str:
    return f"rm exited with status {code}: {stderr or 'no message'}"


def _discard_name(path: Path, directory: Path) -> Path:
    """A free hidden name for ``path`` in ``directory``: never an existing file, which
    the rename would replace (and unlink, on the loop)."""
    while True:
        suffix = f"{DISCARD_MARK}{os.getpid()}-{next(_discard_serial)}"
        name = f".{path.name}{suffix}"
        if len(os.fsencode(name)) > NAME_MAX:
            name = f".image{suffix}"
        target = directory / name
        if not os.path.lexists(target):
            return target


def _rename_away(path: Path, directory: Path) -> Path | None:
    """Rename ``path`` to a free hidden name in ``directory`` (on its file system); the
    new name, or None if ``path`` is gone. Raises OSError as ``rename`` does."""
    while True:
        target = _discard_name(path, directory)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            if os.path.lexists(target):
                continue  # (taken since _discard_name looked)
            return None
        log.debug("removing %s (renamed to %s)", path, target)
        return target


def _discard_one(path: Path, spool: Path | None) -> Path | None:
    """:func:`_rename_away` into ``spool`` for a path below it, else into its own
    directory (also when the spool is on another file system). A directory is refused
    (EISDIR), as ``unlink`` would: a file the caller names is never a tree."""
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if spool is not None and path.is_relative_to(spool):
        try:
            return _rename_away(path, spool)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    return _rename_away(path, path.parent)


#: removes what it is given, files and trees; a directory a tarball made read-only (or
#: unreadable) is made the owner's first, without following symlinks (``find`` runs
#: ``chmod`` on each such directory before it reads it)
_REMOVE_ARGV = ["sh", "-c", 'find "$@" -type d ! -perm -u=rwx -exec chmod u+rwx {} \\; ; '
                'exec rm -rf -- "$@"', "qemud-discard"]


def _remove_in_child(loop: EventLoop, paths: list[Path], why: str) -> None:
    """One child removes ``paths`` (names this module gave); the loop reaps it, a
    failure is logged."""
    def done(d: Deferred) -> None:
        if d.error is not None:
            log.error("cannot remove %s (%s): %s", ", ".join(map(str, paths)), why,
                      d.error.message)
    ToolRunner(loop, _rm_failure).run([*_REMOVE_ARGV, *map(str, paths)]) \
        .add_done_callback(done)


def discard(loop: EventLoop, paths: Iterable[Path | str], spool: Path | None = None, *,
            failed: dict[Path, OSError] | None = None) -> dict[Path, Path]:
    """Remove the files ``paths`` without blocking the loop; returns each renamed path
    with the hidden name the child removes.

    Each is renamed at once to ``.<name>.qemud-discard-<token>`` on its own file system
    (an atomic rename, whatever the file's size), so ``path`` no longer exists when this
    returns; then one child, reaped by the loop, frees the space. The new name is in
    ``spool`` for a path below ``spool`` (a directory the caller may remove at once must
    not hold it), else in the path's own directory. A file already gone is skipped
    silently. A file that cannot be renamed (or is a directory) stays: it is put in
    ``failed`` with the error when the caller passes that dict, else logged. A daemon
    killed before the child is done leaves hidden names: :func:`remove_discarded_below`
    removes them at the next start.
    """
    hidden: dict[Path, Path] = {}
    for p in map(Path, paths):
        try:
            target = _discard_one(p, spool)
        except OSError as exc:
            if failed is None:
                log.error("cannot remove %s: %s", p, exc.strerror or exc)
            else:
                failed[p] = exc
            continue
        if target is not None:
            hidden[p] = target
    if hidden:
        _remove_in_child(loop, list(hidden.values()), "discarded")
    return hidden


def discard_tree(loop: EventLoop, path: Path) -> Path | None:
    """Remove the directory ``path`` (one the daemon made) and all below it without
    blocking the loop: renamed at once to a hidden name next to it, then removed by a
    child, read-only directories included. Returns the hidden name (None: ``path`` did
    not exist, or could not be renamed: that is logged and nothing is removed). A
    symlink or a file at ``path`` is removed itself, not followed."""
    try:
        target = _rename_away(path, path.parent)
    except OSError as exc:
        log.error("cannot remove %s: %s", path, exc.strerror or exc)
        return None
    if target is not None:
        _remove_in_child(loop, [target], "discarded")
    return target


def replace_keeping(loop: EventLoop, src: Path, dst: Path) -> None:
    """``os.replace(src, dst)``, except that a file at ``dst`` (a save image of
    gigabytes, say) is not freed by the rename on the loop: it is first linked to a hidden
    name, which a child removes after. Raises OSError as ``os.replace`` does. Where the
    link cannot be made (a file system without hard links), the plain replace is
    done."""
    held: Path | None = None
    try:
        if stat.S_ISREG(os.lstat(dst).st_mode):
            held = _discard_name(dst, dst.parent)
            os.link(dst, held, follow_symlinks=False)
    except OSError:
        held = None
    try:
        os.replace(src, dst)
    finally:
        if held is not None:
            _remove_in_child(loop, [held], "replaced")


def remove_discarded_below(loop: EventLoop, root: Path, sub: str = "", *,
                           depth: int = 1) -> list[Path]:
    """At start-up: remove (in a child) the files and trees :func:`discard` and
    :func:`discard_tree` renamed whose child a killed daemon never saw done, in ``root``
    (a spool) and, with ``depth`` 1, in ``<root>/<each directory>/<sub>`` (symlinks not
    followed); returns them. Only while no discard can be in flight (the pidfile lock:
    every such file is an earlier daemon's)."""
    if not root.is_dir():
        return []
    dirs = [root]
    if depth:
        dirs += [p / sub if sub else p for p in directories_below(root)]
    found = []
    for directory in dirs:
        try:
            found.extend(sorted(directory.glob(f".*{DISCARD_MARK}*")))
        except OSError:
            continue
    if found:
        log.info("removing %d file(s) an earlier daemon discarded but did not remove: %s",
                 len(found), ", ".join(map(str, found)))
        _remove_in_child(loop, found, "left by an earlier daemon")
    return found
