"""Crash-safe, no-clobber file writing for keys and certificates.

Why not ``Path.write_bytes``: a private key must never exist on disk, even briefly,
with a group/world-readable mode, a half-written key must never replace a good one
if we crash, and an existing key must not be silently destroyed (losing a CA key
means re-issuing every certificate).  So we write a temporary file created 0600 in
the target directory, fsync it, then move it into place -- ``link()`` when the target
must not exist (atomic no-clobber; no check-then-rename race), ``rename()`` when
replacing is allowed -- and fsync the directory so the new name is durable.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import suppress
from pathlib import Path

from certs.errors import CertFileError, CertFileExistsError

__all__ = ["atomic_write", "ensure_dir"]

# link() failures meaning "this filesystem cannot hard-link", not "target exists".
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


def ensure_dir(path: Path, mode: int) -> None:
    """Create ``path`` (and parents) if missing; ``mode`` applies to ``path`` only.

    Existing directories are left alone: tightening or loosening an admin's
    directory permissions behind their back would be surprising.
    """
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        raise CertFileError(f"cannot create directory {path}: {e.strerror or e}", path) from e


def _exists_error(path: Path) -> CertFileExistsError:
    return CertFileExistsError(f"refusing to overwrite existing file {path}", path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        # No hard links here (e.g. some FUSE/vfat); fall back to a best-effort check.
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write(
    path: Path, data: bytes, *, mode: int, force: bool = False, dir_mode: int = 0o755
) -> None:
    """Atomically create ``path`` with ``data`` and permission bits ``mode``.

    Missing parent directories are created with ``dir_mode``.  Raises
    :class:`CertFileExistsError` if ``path`` exists and ``force`` is false, and
    :class:`CertFileError` (naming ``path``) for any other OS failure.  The mode is
    set explicitly, independent of the umask.
    """
    path = Path(path)
    if not force and os.path.lexists(path):
        raise _exists_error(path)
    ensure_dir(path.parent, dir_mode)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CertFileError(f"cannot write {path}: {e.strerror or e}", path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, force)
        _fsync_dir(path.parent)
    except BaseException as e:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CertFileError(f"cannot write {path}: {e.strerror or e}", path) from e
        raise
