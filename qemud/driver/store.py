"""What the driver keeps on disk, written so that a crash never loses or tears it.

* ``<config_dir>/domains/<name>.xml``: persistent definitions (the XML the user gave,
  canonicalised, plus generated uuid/MACs);
* ``<config_dir>/autostart/<name>``: an empty flag file per autostarted domain;
* ``<run_dir>/qemu/<name>.status.json``: one per running guest (pid, QMP path, start
  time, id, the live XML), so a restarted daemon can find and re-attach to it;
* ``<state_dir>/save/<name>.save``: a domain's managed save image (libvirt keeps it as
  ``/var/lib/libvirt/qemu/save/<name>.save``), written as ``.<name>.part`` and renamed
  when complete (see :mod:`.saving`).

Every write is temp file + fsync + rename + fsync of the directory (:func:`atomic_write`;
a define's and a ``--config`` change's fsyncs wait off the loop, :func:`commit_async`).
A definition that fails to parse at load time is logged and left where it is, never
deleted: the admin may want it back.
"""

from __future__ import annotations

import errno
import glob
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from qemud.asyncfsync import AsyncFsync

__all__ = ["atomic_write", "commit_async", "land_async", "sync_directory_async",
           "fsync_directory_async", "Fsyncs", "TempFile",
           "directories_below", "remove_dead_writes", "remove_dead_writes_below",
           "remove_dead_writes_of",
           "DomainStore", "StatusRecord", "fault_before_rename", "fsync_dir"]

log = logging.getLogger(__name__)

#: Test hook: called between writing+fsyncing the temp file and renaming it over the
#: target. Fault-injection tests set it to raise, to prove the old file survives.
fault_before_rename: Callable[[Path], None] | None = None

#: Test hook for a daemon run as a subprocess, where the global above cannot be set: with
#: ``QEMUD_FAULT_BEFORE_RENAME=<text>`` in the daemon's environment (read once, at
#: import), every :func:`atomic_write` whose target path contains ``<text>`` fails with
#: EIO at the same point; with ``<text>#<n>``, only the n-th such write since the start
#: (counted from 1: a later write of a multi-step change). For tests only; never set it
#: in production.
FAULT_ENV = "QEMUD_FAULT_BEFORE_RENAME"
_fault_env_match, _, _fault_env_nth = os.environ.get(FAULT_ENV, "").partition("#")
_fault_env_seen = itertools.count(1)

_Token = TypeVar("_Token")
_Result = TypeVar("_Result")

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_temp_serial = itertools.count()


def atomic_write(path: Path, data: bytes | str, mode: int = 0o600, *,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and (by default) durably.

    Either the old content or the new content is there afterwards, never a mix, even
    if the daemon is killed or the disk fills up half-way (the temp file is removed).
    ``durable=False`` skips the fsyncs: right for runtime state in the run directory,
    which must survive a daemon crash (the page cache does) but not a power loss (which
    takes the guests with it, and /run is normally tmpfs); it keeps ~15 ms of fsync off
    every guest start and state change. The fsyncs here wait on the loop; a define
    waits for them off it (:func:`commit_async`).
    """
    temp = TempFile(path, data, mode)
    try:
        if durable:
            os.fsync(temp.fd)
        temp.rename()
    except BaseException:
        temp.abandon()
        raise
    if durable:
        _sync_directory(path.parent, path)


class TempFile:
    """The first half of an atomic write: ``data`` written to a temp file next to
    ``path``, not yet synced or renamed; :meth:`rename` puts it in place, :meth:`abandon`
    removes it.

    The temp file is ``.<name>.<pid>-<n>.tmp`` (see :func:`_create_temp`), which
    :func:`remove_dead_writes` sweeps; for a ``<name>`` too long for that to be a file
    name, a digest of it stands in (:func:`_temp_name`), so any name that can be stored
    can be written. Plain ``os.write`` on the descriptor skips the buffered file object,
    whose set-up (an ioctl, an lseek) cost as much as the write. The descriptor stays
    open until the rename, for an fsync in between.

    ``replace=False``: :meth:`rename` never replaces a file at ``path``; one there then
    (which appeared after the caller looked) raises FileExistsError and stays. For a
    file that is the guest's once it exists (an NVRAM file).
    """

    __slots__ = ("path", "tmp", "fd", "replace")

    def __init__(self, path: Path, data: bytes | str, mode: int = 0o600, *,
                 replace: bool = True) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.path = path
        self.replace = replace
        self.tmp = path.parent / _temp_name(path.name)
        self.fd = _create_temp(self.tmp, mode)
        try:
            os.fchmod(self.fd, mode)  # exactly ``mode``, whatever the umask
            _write_all(self.fd, raw)
        except BaseException:
            self.abandon()
            raise

    def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def rename(self) -> None:
        """Close the temp file and rename it over ``path`` (the test hooks fail here)."""
        self._close()
        if fault_before_rename is not None:
            fault_before_rename(self.path)
        if _fault_env_match and _fault_env_match in str(self.path) and (
                not _fault_env_nth or next(_fault_env_seen) == int(_fault_env_nth)):
            log.warning("%s: failing the write of %s before its rename", FAULT_ENV, self.path)
            raise OSError(errno.EIO, f"injected fault before rename ({FAULT_ENV})",
                          str(self.path))
        if self.replace:
            os.rename(self.tmp, self.path)
        else:
            _rename_new(self.tmp, self.path)

    def abandon(self) -> None:
        """Close and remove the temp file (after a failure: ``path`` is untouched)."""
        self._close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _rename_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` exists (FileExistsError). A hard link
    is the atomic no-replace rename (Python has no ``renameat2``); a file system without
    hard links gets a look, then a plain rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def commit_async(fsync: AsyncFsync, temp: TempFile, check: Callable[[], _Token],
                 apply: Callable[[_Token], _Result],
                 done: Callable[[_Result | None, BaseException | None], None]) -> None:
    """The second half of a durable write, without waiting on the loop.

    The temp file is fsynced off the loop; then, in one loop turn, ``check()`` (it may
    raise, to refuse the write: what it checked may have changed while the disk
    worked), the rename and ``apply(check's result)`` (the caller's memory follows the
    disk at once, so every later call sees the two alike); then the directory is
    fsynced, off the loop too, and ``done(apply's result, None)`` says the write is
    durable. ``done(None, error)`` after a failed fsync, a refusal or a failed rename:
    the temp file is gone and ``path`` untouched. A failed directory fsync is logged,
    as in :func:`atomic_write`, and counts as done.
    """
    def synced(error: OSError | None) -> None:
        if error is not None:
            temp.abandon()
            done(None, error)
            return
        try:
            token = check()
            temp.rename()
        except Exception as exc:
            temp.abandon()
            done(None, exc)
            return
        except BaseException:  # (KeyboardInterrupt: the daemon is stopping)
            temp.abandon()
            raise
        try:
            result = apply(token)
        except Exception as exc:  # a bug: the file is in place, memory did not follow
            done(None, exc)
            return
        sync_directory_async(fsync, temp.path, lambda: done(result, None))

    fsync.fsync(temp.fd, synced)


def land_async(fsync: AsyncFsync, temp: TempFile,
               done: Callable[[BaseException | None], None]) -> None:
    """:func:`commit_async` for a file no memory follows (nothing to check or apply):
    ``done(None)`` once ``temp`` is in place and durable, ``done(error)`` when it is
    not (the temp file is gone and ``path`` untouched)."""
    commit_async(fsync, temp, _no_check, _nothing, lambda _, error: done(error))


def _no_check() -> None:
    return None


def _nothing(_: None) -> None:
    return None


class Fsyncs(Protocol):
    """What the async writers need of :class:`qemud.asyncfsync.AsyncFsync`: ``fsync(fd,
    done)``, ``done`` called with the error or None once the fd is flushed."""

    def fsync(self, fd: int, done: Callable[[OSError | None], None]) -> None: ...


def fsync_directory_async(fsync: Fsyncs, directory: Path,
                          done: Callable[[OSError | None], None]) -> None:
    """fsync ``directory`` off the loop, then ``done(error or None)``; a directory that
    cannot be opened (gone, no fd left) is ``done(that error)`` at once."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        done(exc)
        return

    def synced(error: OSError | None) -> None:
        os.close(dir_fd)
        done(error)

    fsync.fsync(dir_fd, synced)


def sync_directory_async(fsync: AsyncFsync, path: Path, then: Callable[[], None]) -> None:
    """:func:`_sync_directory` off the loop, then ``then()`` (whatever the outcome)."""
    def synced(error: OSError | None) -> None:
        if error is not None:
            _directory_not_synced(path, error)
        then()

    fsync_directory_async(fsync, path.parent, synced)


def _sync_directory(directory: Path, path: Path) -> None:
    """fsync ``directory`` after ``path`` was renamed into it, so that the rename
    survives a power loss. A failure here (EIO, or no fd left to open the directory) is
    logged, not raised: the new file is in place and every reader sees it, the daemon
    that restarts included, so a caller told "nothing was changed" would be told wrong
    (its memory would then disagree with the disk). Only the rename's durability is in
    doubt, and the log says so."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        _directory_not_synced(path, exc)


def _directory_not_synced(path: Path, exc: OSError) -> None:
    log.error("%s is written, but its directory could not be synced (%s): the change "
              "may not survive a power loss", path, exc.strerror or exc)


@dataclass
class StatusRecord:
    """Enough to re-attach to a running QEMU after a daemon restart."""

    name: str
    uuid: str
    id: int
    pid: int
    start_ticks: int  # /proc/PID/stat field 22: tells a reused pid from ours
    qmp_path: str
    log_path: str
    live_xml: str
    persistent: bool
    state: int
    reason: int
    started_at: float
    #: the job in progress ("save") and the file it writes: a restarted daemon undoes a
    #: save that its predecessor could not finish (absent from older status files)
    job: str = ""
    job_file: str = ""
    #: DomainObj.job_target: the save's migration completed, its file is complete and
    #: is (being) renamed here; a restarted daemon finishes the save rather than undo
    #: it (absent from older status files: not completed)
    job_target: str = ""
    #: DomainObj.pci_changes: a guest whose PCI devices changed since its QEMU started
    #: stays unsavable after a daemon restart (absent from older status files: none)
    pci_changes: list[str] = field(default_factory=list)
    #: DomainObj.pci_addressed: QEMU was started with qemud's PCI addresses (absent from
    #: the status files of older versions, which started guests without: False)
    pci_addressed: bool = False
    #: DomainObj.unplugs: the unplugs QEMU still has requested, waited for again by the
    #: next daemon (absent from older status files: none known)
    unplugs: list[str] = field(default_factory=list)
    #: DomainObj.shutdown_requested: an admin asked for the ACPI shutdown in progress,
    #: so the guest's power-off is not its own decision (appliance power-following
    #: must not act on it) after a daemon restart either (absent: none asked)
    shutdown_requested: bool = False
    #: DomainObj.fake_reboot: the power-off in progress is a reboot an admin asked for
    #: (QEMU is reset then, not stopped), also after a daemon restart
    fake_reboot: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> StatusRecord:
        """A record from its file; keys this version does not know (a newer daemon's,
        after a downgrade) are left out, so that its QEMU is still re-attached rather
        than left running unaccounted for (and started a second time)."""
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a status record is a JSON object")
        known = {f.name for f in fields(cls)}
        ignored = sorted(set(data) - known)
        if ignored:
            log.warning("status record of %r: ignoring keys this version does not know: %s",
                        data.get("name"), ", ".join(ignored))
        return cls(**{k: v for k, v in data.items() if k in known})


class DomainStore:
    """Files of persistent definitions, autostart flags and runtime status."""

    def __init__(self, domains_dir: Path, autostart_dir: Path, status_dir: Path,
                 save_dir: Path | None = None, fsync: AsyncFsync | None = None) -> None:
        #: how a define's fsyncs wait off the loop (the driver passes the daemon's)
        self.fsync = fsync
        self.domains_dir = domains_dir
        self.autostart_dir = autostart_dir
        self.status_dir = status_dir
        #: managed save images (the daemon passes ``<state_dir>/save``)
        self.save_dir = save_dir if save_dir is not None else status_dir / "save"

    # -- definitions ---------------------------------------------------------------------

    def definition_path(self, name: str) -> Path:
        return self.domains_dir / f"{name}.xml"

    def save_definition(self, name: str, xml: str) -> None:
        atomic_write(self.definition_path(name), xml)

    def begin_definition(self, name: str, xml: str) -> TempFile:
        """The first half of :meth:`save_definition`, for :func:`commit_async`."""
        return TempFile(self.definition_path(name), xml)

    def delete_definition(self, name: str) -> None:
        # the flag first: a crash in between must not leave a flag that a later domain
        # of the same name would inherit (see Registry.define)
        # No directory fsyncs: unlinks survive a daemon crash (they are in the kernel at
        # once), and one undone by a power cut resurrects a definition, never loses one.
        # (Defines stay fully durable; this halves the fsyncs of a define+undefine pair.)
        for path in (self.autostart_dir / name, self.definition_path(name)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def remove_debris(self) -> list[Path]:
        """Delete the temp files of writes a killed daemon never renamed; return them.

        Called at start-up, before anything is written: see :func:`remove_dead_writes`.
        """
        return [path for directory in (self.domains_dir, self.autostart_dir, self.status_dir)
                for path in remove_dead_writes(directory)]

    def definitions(self) -> Iterator[tuple[Path, str]]:
        """(path, xml text) of every saved definition; unreadable files are logged."""
        for path in sorted(self.domains_dir.glob("*.xml")):
            try:
                yield path, path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                log.error("cannot read domain definition %s: %s (left in place)", path, exc)

    # -- autostart -----------------------------------------------------------------------

    def autostart_path(self, name: str) -> Path:
        return self.autostart_dir / name

    def autostart(self, name: str) -> bool:
        return self.autostart_path(name).exists()

    def begin_autostart(self, name: str) -> TempFile:
        """The first half of enabling :meth:`set_autostart`, for :func:`commit_async`."""
        return TempFile(self.autostart_path(name), b"", 0o644)

    def clear_autostart(self, name: str) -> None:
        """Remove the flag, without the directory's fsync (the caller waits for it)."""
        try:
            self.autostart_path(name).unlink()
        except FileNotFoundError:
            pass

    def set_autostart(self, name: str, enabled: bool) -> None:
        if enabled:
            atomic_write(self.autostart_path(name), b"", 0o644)
        else:
            self.clear_autostart(name)
            fsync_dir(self.autostart_dir)

    # -- managed save images -------------------------------------------------------------

    def managed_save_path(self, name: str) -> Path:
        return self.save_dir / f"{name}.save"

    def managed_save_temp(self, name: str) -> Path:
        """Where a managed save writes until it is complete: a name no image has (and
        short enough for the longest domain name: ``.<name>.part``)."""
        return self.save_dir / f".{name}.part"

    def has_managed_save(self, name: str) -> bool:
        return self.managed_save_path(name).is_file()

    # -- runtime status ------------------------------------------------------------------

    def status_path(self, name: str) -> Path:
        return self.status_dir / f"{name}.status.json"

    def save_status(self, record: StatusRecord) -> None:
        atomic_write(self.status_path(record.name), record.to_json(), durable=False)

    def delete_status(self, name: str) -> None:
        try:
            self.status_path(name).unlink()
        except FileNotFoundError:
            pass

    def statuses(self) -> Iterator[tuple[Path, StatusRecord | None]]:
        for path in sorted(self.status_dir.glob("*.status.json")):
            try:
                yield path, StatusRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError) as exc:
                log.error("cannot read status file %s: %s", path, exc)
                yield path, None


def remove_dead_writes(directory: Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left in ``directory``; return them.

    Only its names (``.<file>.<pid>-<n>.tmp``; earlier versions used
    ``.<file>.<random>.tmp``), and only while no write can be in flight: at start-up,
    when the pidfile lock guarantees no other daemon is writing, every such file is a
    write killed before its rename (the file it would have replaced is intact).
    Anything else is left alone.
    """
    return [path for path in directory.glob(".*.tmp") if _remove_dead_write(path)]


def _remove_dead_write(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove %s, left by an interrupted write: %s", path, exc)
        return False
    log.info("removed %s, left by an interrupted write", path)
    return True


def remove_dead_writes_of(path: Path) -> list[Path]:
    """:func:`remove_dead_writes` for one file's temp files only (``.<name>.<pid>-<n>
    .tmp`` next to it): for a file in a directory the daemon does not own, where
    anything else is somebody else's."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9]+-[0-9]+\.tmp")
    try:
        found = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp")
                 if pattern.fullmatch(p.name)]
    except OSError:
        return []
    return [p for p in found if _remove_dead_write(p)]


def directories_below(root: Path) -> list[Path]:
    """The directories directly under ``root`` (one per domain or VM, as the appliance
    stores keep them), sorted; symlinks are not followed; none if ``root`` cannot be
    read."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def remove_dead_writes_below(root: Path) -> list[Path]:
    """:func:`remove_dead_writes` in every directory of :func:`directories_below`."""
    return [path for directory in directories_below(root)
            for path in remove_dead_writes(directory)]


#: the longest file name most Linux file systems take (NAME_MAX)
NAME_MAX = 255


def _temp_name(name: str) -> str:
    """``.<name>.<pid>-<n>.tmp``, or ``.<digest of name>.<pid>-<n>.tmp`` past NAME_MAX."""
    suffix = f".{os.getpid()}-{next(_temp_serial)}.tmp"
    if len(os.fsencode(f".{name}{suffix}")) <= NAME_MAX:
        return f".{name}{suffix}"
    import hashlib  # here: it loads OpenSSL (~4 MiB), otherwise only TLS needs it
    return f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:32]}{suffix}"


def _create_temp(tmp: Path, mode: int) -> int:
    """Open a new temp file ``tmp`` for writing, creating its directory if needed.

    The name holds this process's pid and a counter, so no live writer shares it: one
    thread per process, and a pid belongs to one process at a time. That saves
    ``mkstemp``'s random names. A file already there is a dead process's leftover that
    happened to have the same pid (pids are reused); it is removed and the open retried.
    """
    for _ in range(3):
        try:
            return os.open(tmp, _TEMP_FLAGS, mode)
        except FileNotFoundError:
            tmp.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
    return os.open(tmp, _TEMP_FLAGS, mode)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write is legal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: Path) -> None:
    """fsync a directory (a rename or unlink in it made durable); gone is nothing to do."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
