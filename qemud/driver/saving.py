"""A guest's memory state in a file: DOMAIN_SAVE / DOMAIN_RESTORE (a file the user
names) and libvirt's managed save (a file the daemon keeps per domain).

A save is a QMP migration to a file behind a header that holds the domain XML: the
daemon opens the file and passes QEMU a descriptor (``getfd``, ``migrate fd:NAME``), so
that QEMU writes it itself and every byte is in it once QEMU reports the migration
complete (``exec:cat >> FILE`` would leave the last bytes to a child QEMU kills 10 ms
after closing its pipe). A restore starts QEMU with ``-incoming defer`` and passes it a
descriptor of the file at the end of the header (``getfd``, ``migrate-incoming
fd:NAME``): an image that ends early or cannot be read fails the restore, QEMU saying
so as it exits, where ``exec:tail`` of a file that was gone left QEMU's incoming
migration waiting for ever (QEMU 7.2 never noticed the empty pipe's end). The file is
written under a
temporary name, fsynced (off the loop), renamed once complete and its directory synced
before the guest is stopped, so a crash never leaves a half-written image under the
final name, a power cut never takes the only copy of a stopped guest's state, and a
failed save leaves the guest as it was.

Managed save (virDomainManagedSave and friends), as libvirt's QEMU driver does it:

* the image is ``<state_dir>/save/<name>.save`` (DomainStore.managed_save_path); whether a
  domain has one is ``DomainObj.managed_save``, derived from the file when the daemon
  loads its definitions, so images survive daemon restarts;
* only a running or paused persistent domain is saved; it is shut off as ``saved``;
* DOMAIN_CREATE and autostart go through :meth:`Saving.start`, libvirt's
  qemuDomainObjStart: an image is restored (running, or paused if the guest was paused,
  or asked so at save or start time) and removed once the guest runs; with
  VIR_DOMAIN_START_FORCE_BOOT it is removed first and the guest boots afresh. A
  restore that fails is reported and the image stays, as in libvirt ("Unable to restore
  from managed state ... Maybe the file is corrupted?" in its log): the user decides,
  with ``start --force-boot`` or ``managedsave-remove``. (libvirt removes an image only
  when its header says it is incomplete; qemud never has one under the final name.)
* undefine refuses while an image exists, unless VIR_DOMAIN_UNDEFINE_MANAGED_SAVE, which
  removes it too (:meth:`Saving.before_undefine`), and while a managed save runs (busy:
  its image is not in place yet, and the domain would vanish as the save stops it,
  leaving an orphan image); a define over the domain keeps it.

The image header: ``QEMUD-SAVE-2\\n<running|paused>\\n[pci\\n]<length>\\n<xml>``, for a
save and a managed save: it records the state the guest comes back in (libvirt's header
``was_running``): the state it had, or the one VIR_DOMAIN_SAVE_RUNNING / _PAUSED asked
for; those flags at the restore (DOMAIN_RESTORE) override it, as START_PAUSED does at
a start.
``QEMUD-SAVE-1\\n[pci\\n]<length>\\n<xml>``, a plain save of a qemud that recorded no
state, is still read: restored running, as then. The
``pci`` line says the guest's QEMU placed its PCI devices where the XML's addresses say,
so the restore's QEMU is started the same way; an image without it (written by a qemud
that kept no addresses) is restored with QEMU placing the devices itself, as then
(``DomainObj.pci_addressed``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import (
    MAX_STRING,
    DomainState,
    RunningReason,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
    UndefineFlags,
)
from qemud.conf import ConfError, DomainDef, parse_domain_xml
from qemud.dispatch import Deferred, Handler
from qemud.errors import (
    InvalidArg,
    OperationDenied,
    OperationFailed,
    OperationInvalid,
    QemudError,
    SystemCallFailed,
    XMLError,
)
from qemud.fileopen import WrongFileKind, open_for_reading
from qemud.qemu.arch import strategy_for
from qemud.qemu.command import build_argv
from qemud.qemu.errors import QemuError

from .discard import discard, replace_keeping
from .domain import DomainObj, StopIntent
from .firmware import START_RESET_NVRAM
from .flags import check_flags
from .jobs import MIGRATING
from .stats import QMP_TIMEOUT
from .store import NAME_MAX, fsync_dir, sync_directory_async

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Saving", "SaveImage", "Incoming", "read_image", "SAVE_MAGIC", "OLD_SAVE_MAGIC",
           "START_FORCE_BOOT", "UNDEFINE_MANAGED_SAVE"]

log = logging.getLogger(__name__)

#: the name a save's file descriptor has in QEMU (``getfd``), for ``migrate fd:<name>``
SAVE_FD_NAME = "qemud-save"
#: the name a restore's file descriptor has in QEMU, for ``migrate-incoming fd:<name>``
RESTORE_FD_NAME = "qemud-restore"
#: the header of every image written now: the state the guest comes back in follows
SAVE_MAGIC = b"QEMUD-SAVE-2\n"
#: a plain save's header before qemud recorded that state in it: restored running
OLD_SAVE_MAGIC = b"QEMUD-SAVE-1\n"
_RUNNING_LINE, _PAUSED_LINE = b"running\n", b"paused\n"
_PCI_LINE = b"pci\n"
#: the longest header line read_image reads (the magic, the state, ``pci``, the XML's
#: length): a longer one is no header of a qemud save file
_MAX_LINE = 64
#: the longest XML a header may hold: no definition is larger than the protocol carries
#: (a string of MAX_STRING bytes), and read_image reads it whole on the loop
_MAX_XML = MAX_STRING
#: an abort waits this long (in steps of _ABORT_RETRY) for the save's migration to begin
_ABORT_RETRY, _ABORT_WAIT = 0.05, 5.0

#: libvirt's VIR_DOMAIN_SAVE_* flags (DOMAIN_SAVE, DOMAIN_RESTORE, DOMAIN_MANAGED_SAVE):
#: BYPASS_CACHE is a caching hint (O_DIRECT in libvirt), accepted and not needed here;
#: RUNNING / PAUSED pick the state the guest comes back in (else the state it had at the
#: save, which the image records)
SAVE_BYPASS_CACHE, SAVE_RUNNING, SAVE_PAUSED = 1, 2, 4
#: libvirt's VIR_DOMAIN_START_PAUSED / _FORCE_BOOT (DOMAIN_CREATE)
START_PAUSED, START_FORCE_BOOT = 1, 8
#: libvirt's VIR_DOMAIN_UNDEFINE_MANAGED_SAVE (DOMAIN_UNDEFINE)
UNDEFINE_MANAGED_SAVE = int(UndefineFlags.MANAGED_SAVE)
#: libvirt's VIR_DOMAIN_SAVE_IMAGE_XML_SECURE (= VIR_DOMAIN_XML_SECURE): the VNC password
XML_SECURE = 1


@dataclass(frozen=True)
class SaveImage:
    """What a save file's header says."""

    xml: str
    #: where QEMU's migration stream starts
    offset: int
    #: the guest runs after a restore (else it stays paused): it ran at the save, or the
    #: save was asked so; an image of a qemud that did not record it (QEMUD-SAVE-1): True
    running: bool
    #: the saved QEMU had its PCI devices in the XML's slots (the header's ``pci`` line)
    pci_addressed: bool = False


def read_image(path: Path) -> SaveImage:
    """The header of save file ``path``; a file that is not one is INVALID_ARG, one that
    cannot be read OPERATION_FAILED (only the header is read: a few KiB).

    ``path`` may be the client's (DOMAIN_RESTORE) and this runs on the loop, so nothing
    here may block or read without bound: only a regular file is opened (a FIFO, a
    device such as ``/dev/zero``, a socket are refused, before the open and again after
    it, on the open file), every header line is read with a small limit, and the XML's
    length is checked against :data:`_MAX_XML` and the file's size before it is read.
    """
    not_a_file = InvalidArg(f"{path} is not a qemud save file (not a regular file)")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # no open of a FIFO or a device
            raise not_a_file
        fd, st = open_for_reading(path)
    except WrongFileKind:  # (replaced since the stat above)
        raise not_a_file from None
    except OSError as exc:
        raise OperationFailed(f"cannot read save file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            magic = f.readline(_MAX_LINE)
            if magic not in (SAVE_MAGIC, OLD_SAVE_MAGIC):
                raise InvalidArg(f"{path} is not a qemud save file")
            running = True
            if magic == SAVE_MAGIC:
                state = f.readline(_MAX_LINE)
                if state not in (_RUNNING_LINE, _PAUSED_LINE):
                    raise ValueError(state)
                running = state == _RUNNING_LINE
            line = f.readline(_MAX_LINE)
            pci_addressed = line == _PCI_LINE
            if pci_addressed:
                line = f.readline(_MAX_LINE)
            digits = line[:-1] if line.endswith(b"\n") else b""
            if not digits.isdigit():  # (ASCII digits only, unlike int())
                raise ValueError(line)
            length = int(digits)
            if length > _MAX_XML or f.tell() + length > st.st_size:
                raise ValueError(length)
            data = f.read(length)
            if len(data) != length:  # (shrunk since the fstat)
                raise ValueError(length)
            xml = data.decode()
            offset = f.tell()
    except OSError as exc:
        raise OperationFailed(f"cannot read save file {path}: {exc.strerror}") from None
    except ValueError:  # (UnicodeDecodeError too)
        raise InvalidArg(f"{path} is not a valid qemud save file") from None
    return SaveImage(xml, offset, running, pci_addressed)


def _header(dom: DomainObj, running: bool) -> bytes:
    """A save image's header for active ``dom``, whose guest comes back running (else
    paused) at the restore (see the module docstring)."""
    assert dom.live is not None
    xml = dom.live.to_xml().encode()
    pci = _PCI_LINE if dom.pci_addressed else b""
    state = _RUNNING_LINE if running else _PAUSED_LINE
    return SAVE_MAGIC + state + pci + f"{len(xml)}\n".encode() + xml


def _state_flags(flags: int, function: str) -> bool | None:
    """The VIR_DOMAIN_SAVE_* ``flags`` of a save, restore or managed save, checked as
    libvirt does (``function``'s virCheckFlags, and its public API's "mutually
    exclusive"): the state asked for, True (RUNNING) or False (PAUSED), or None (the
    guest's own: the one it has at a save, the one the image records at a restore)."""
    if flags & SAVE_RUNNING and flags & SAVE_PAUSED:  # (the public API's check: first)
        raise InvalidArg("Flags 'VIR_DOMAIN_SAVE_RUNNING' and 'VIR_DOMAIN_SAVE_PAUSED' "
                         "are mutually exclusive")
    check_flags(flags, SAVE_BYPASS_CACHE | SAVE_RUNNING | SAVE_PAUSED, function)
    if flags & (SAVE_RUNNING | SAVE_PAUSED):
        return bool(flags & SAVE_RUNNING)
    return None


def _image_definition(path: Path, image: SaveImage) -> DomainDef:
    """The domain XML of the image. qemud writes it with its uuid and MAC addresses; a
    file made otherwise gets them as a define would (libvirt's parser does the same),
    not an internal error at the start."""
    try:
        definition = parse_domain_xml(image.xml, validate_schema=False)
    except ConfError as exc:
        raise XMLError(f"save file {path} holds bad XML: {exc}") from None
    definition.assign_missing_ids()
    return definition


class Saving:
    """DOMAIN_SAVE, DOMAIN_RESTORE, the managed save procedures, and the start path that
    resumes a managed save image."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        self.registry = driver.registry
        self.lifecycle = driver.lifecycle
        self.store = driver.store
        #: uuids of the domains whose save DOMAIN_ABORT_JOB cancelled (its error says so)
        self._aborted: set[str] = set()
        #: the targets of the saves in progress (:func:`_target_key`): the name of the
        #: domain each saves, until its call is answered
        self._writing: dict[tuple[int, int, str], str] = {}
        driver.jobs.aborters["save"] = self.abort

    # -- domjobabort of a save -----------------------------------------------------------

    def abort(self, dom: DomainObj) -> Deferred:
        """``migrate_cancel`` once the save's migration runs: a cancel sent before the
        save's ``migrate`` would be lost (QEMU has no migration to cancel yet), so the
        abort looks first and waits for it (a few ms: the save pauses the guest first).
        The save then fails as any failed migration does (the guest runs on as it was,
        the partial file is removed), saying it was cancelled.
        """
        out = Deferred()
        deadline = time.monotonic() + _ABORT_WAIT
        log.info("domain %s: aborting its save at the client's request", dom.name)

        def look() -> None:
            if dom.job != "save":
                out.fail(OperationInvalid("no job is active on the domain"))
                return
            if dom.monitor is None or dom.monitor.closed:
                out.fail(OperationFailed(f"cannot abort the save of domain '{dom.name}': "
                                         "QEMU's monitor is not connected"))
                return
            dom.monitor.execute("query-migrate", timeout=QMP_TIMEOUT).add_done_callback(
                status)

        def status(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            state = d.result.get("status") if isinstance(d.result, dict) else None
            if state in MIGRATING and dom.monitor is not None:
                self._aborted.add(dom.uuid)
                dom.monitor.execute("migrate_cancel", timeout=QMP_TIMEOUT).add_done_callback(
                    cancelled)
            elif state == "cancelling":
                out.resolve(Empty())
            elif state == "completed":  # (the image is being synced: the save finishes)
                out.fail(OperationFailed(f"cannot abort the save of domain '{dom.name}': "
                                         "its migration is completed"))
            elif time.monotonic() < deadline and dom.job == "save":
                self.driver.loop.call_later(_ABORT_RETRY, look)
            else:
                out.fail(OperationFailed(f"cannot abort the save of domain '{dom.name}': "
                                         f"its migration is {state or 'not started'}"))

        def cancelled(d: Deferred) -> None:
            if d.error is not None:
                self._aborted.discard(dom.uuid)
                out.fail(d.error)
            else:
                out.resolve(Empty())

        look()
        return out

    def handlers(self) -> dict[Procedure, Handler]:
        P = Procedure
        return {
            P.DOMAIN_SAVE: self._save,
            P.DOMAIN_RESTORE: self._restore,
            P.DOMAIN_MANAGED_SAVE: self._managed_save,
            P.DOMAIN_HAS_MANAGED_SAVE: self._has_managed_save,
            P.DOMAIN_MANAGED_SAVE_REMOVE: self._managed_save_remove,
            P.DOMAIN_MANAGED_SAVE_GET_XML: self._managed_save_xml,
        }

    def _dom(self, args: Any) -> DomainObj:
        return self.registry.find(args.dom.name, args.dom.uuid)

    # -- save ----------------------------------------------------------------------------

    def _require_savable(self, dom: DomainObj) -> None:
        self.registry.require_no_operation(dom)  # (an image update stops the VM itself)
        self.lifecycle.require_active(dom)
        self.lifecycle.require_no_job(dom)
        # a disk or NIC half unplugged would be restored plugged in, its unplug lost
        # (first: it passes, where a changed PCI layout needs a restart)
        self.driver.devices.require_no_unplug(dom)
        self.require_pci_unchanged(dom)

    # -- the guest's PCI layout ----------------------------------------------------------

    def require_pci_unchanged(self, dom: DomainObj) -> None:
        """Refuse to write a migration stream of ``dom`` (a save, a managed save) once
        its PCI devices changed since its QEMU started (``dom.pci_changes``), when that
        QEMU placed them itself (``dom.pci_addressed`` false: started by a qemud that
        kept no PCI addresses, or restored from such a version's image).

        A restore of such a guest starts QEMU from the saved live XML and QEMU places
        the devices in the order of that command line, while the running guest has a
        hot-plugged device where a slot was free, or a hole where an unplugged one was.
        The restore's QEMU then refuses the stream ("Unknown ramblock
        0000:00:03.0/virtio-net-pci.rom") and the saved state is lost in practice. A
        guest started with addresses (:mod:`qemud.qemu.pci`) is restored with each
        device in its slot and never gets here. Checked before anything is written: the
        way out, a fresh QEMU, loses nothing the user defined.
        """
        if dom.pci_changes:
            raise OperationInvalid(
                f"domain '{dom.name}' cannot be saved: its PCI devices changed since it "
                f"started ({', '.join(dom.pci_changes)}), and a restore could not place "
                "them as they are now: shut it down and start it again first")

    def note_pci_change(self, dom: DomainObj, what: str, unplugged: str | None = None
                        ) -> None:
        """Record that the PCI devices of running ``dom`` changed: ``what`` was
        hot-plugged ("hot-plugged interface 52:54:00:...") or, with ``unplugged`` (its
        device id), hot-unplugged: the guest released it, and it is still in the live
        XML. The caller saves the status afterwards (see :meth:`require_pci_unchanged`).

        An unplug that leaves every other device where a fresh start would put it is not
        a change: the device was the last PCI device of the command line, and nothing
        changed before (the devices left are a prefix of those QEMU placed at start, in
        the same order, so a restore gives each the same slot).
        """
        if dom.live is None or dom.pci_addressed:
            return  # (each device has its slot in the live XML: a restore keeps them)
        if unplugged is not None and not dom.pci_changes and \
                self._last_pci_device(dom, dom.live) == unplugged:
            log.info("domain %s: %s, the last PCI device: the others keep their slots",
                     dom.name, what)
            return
        if what not in dom.pci_changes:
            dom.pci_changes.append(what)
        log.info("domain %s: %s: no save until it is started again", dom.name, what)

    def _last_pci_device(self, dom: DomainObj, live: DomainDef) -> str | None:
        """The id of the device a start of ``live`` puts in the last PCI slot: the last
        ``-device`` of its command line that is not one of the known non-PCI devices
        (:data:`_NOT_PCI`; an unknown one counts as PCI); None if it cannot be told."""
        try:
            strategy = strategy_for(live, self.driver.caps.host_arch)
            argv = build_argv(live, strategy, self.driver.caps,
                              self.lifecycle.guest_paths(dom.name), pci_addresses=False)
        except QemuError as exc:
            log.warning("domain %s: cannot tell its PCI layout: %s", dom.name, exc)
            return None
        last = None
        for option, value in zip(argv, argv[1:], strict=False):
            if option != "-device":
                continue
            driver, *props = value.replace(",,", "\0").split(",")
            if driver in _NOT_PCI:
                continue
            last = next((p[3:] for p in props if p.startswith("id=")), None)
        return last

    def _save(self, ctx: Any, args: pl.SaveArgs) -> Deferred:
        """virDomainSaveFlags: the image records whether the guest runs (a paused one is
        restored paused), unless SAVE_RUNNING / SAVE_PAUSED say how it comes back."""
        asked = _state_flags(int(args.flags), "qemuDomainSaveFlags")
        dom = self._dom(args)
        self._require_savable(dom)
        assert dom.live is not None
        target = Path(args.path)
        if not target.is_absolute():
            raise InvalidArg(f"save path must be absolute, got '{args.path}'")
        # checked before the guest is touched: the rename at the end cannot replace these
        if target.is_dir():
            raise OperationFailed(f"cannot save to {target}: it is a directory")
        if not target.parent.is_dir():
            raise OperationFailed(f"cannot save to {target}: no directory {target.parent}")
        running = dom.state == DomainState.RUNNING if asked is None else asked
        return self._write(dom, target, _header(dom, running))

    def _managed_save(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        """virDomainManagedSave: as a save, to the daemon's file for the domain."""
        asked = _state_flags(int(args.flags), "qemuDomainManagedSave")
        dom = self._dom(args)
        self._require_savable(dom)
        if not dom.persistent:
            raise OperationInvalid("cannot do managed save for transient domain")
        assert dom.live is not None
        running = dom.state == DomainState.RUNNING if asked is None else asked
        target = self.store.managed_save_path(dom.name)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create {target.parent}: "
                                  f"{exc.strerror or exc}") from None
        header = _header(dom, running)

        def saved() -> None:
            dom.managed_save = True

        def unwanted() -> QemudError | None:
            """The last guard (check_undefine refuses an undefine while this runs): a
            domain undefined meanwhile is transient, and its image would be an orphan
            no start restores, its guest, stopped, gone with its definition. The save
            fails then, the guest goes on: the user loses nothing."""
            if dom.persistent:
                return None
            return OperationInvalid(
                f"cannot do managed save for domain '{dom.name}': it was undefined during "
                "the save, and a transient domain has no managed save image; the image is "
                "discarded and the domain runs on as it was")
        return self._write(dom, target, header, saved, unwanted,
                           temp=self.store.managed_save_temp(dom.name))

    def _write(self, dom: DomainObj, target: Path, header: bytes,
               saved: Callable[[], None] | None = None,
               unwanted: Callable[[], QemudError | None] | None = None, *,
               temp: Path | None = None) -> Deferred:
        """Migrate ``dom`` into a temp file after ``header``, stop it as saved, rename
        the file to ``target``, then call ``saved``. A failure before the guest stopped
        removes the file and leaves the guest as it was (running or paused); so does
        ``unwanted`` saying why the image is no longer wanted, asked before the rename
        and again before the guest is stopped.

        The temp file is ``temp`` (a managed save's: its domain's name, which only
        that domain's save writes, one at a time: a killed daemon's leftover is
        replaced), else a fresh name next to ``target`` that no other save has. A save
        to a target another save in progress writes is refused before anything is done:
        each would rename its own image over the other's, and one guest, stopped as
        saved, would have lost its state."""
        assert dom.monitor is not None
        key = _target_key(target)
        other = self._writing.get(key)
        if other is not None:
            raise OperationInvalid(f"cannot save domain '{dom.name}' to {target}: a save of "
                                   f"domain '{other}' to that file is in progress")
        try:
            if temp is not None:
                _write_new(temp, header, replace=True)
                partial = temp
            else:
                partial = self._new_temp(target, header)
        except OSError as exc:
            raise OperationFailed(f"cannot write save file {temp or target}: "
                                  f"{exc.strerror or exc}") from None
        was_running = dom.state == DomainState.RUNNING  # a paused guest stays paused
        dom.job, dom.job_file = "save", str(partial)
        self.lifecycle.save_status(dom)  # a restarted daemon undoes it (see _reconnect)
        monitor = dom.monitor
        process = dom.process
        out = Deferred()
        self._writing[key] = dom.name  # (until the call is answered, whatever the outcome)
        out.add_done_callback(lambda _: self._writing.pop(key, None))
        finished = Deferred()
        dom.device_waiters["__migration__"] = finished

        def gone() -> bool:
            """The guest stopped since the save began (destroyed, crashed, maybe started
            again while the image was synced): the save no longer speaks for it."""
            return dom.process is not process

        def fail(error: Any) -> None:
            if dom.uuid in self._aborted:
                self._aborted.discard(dom.uuid)
                error = OperationFailed(f"save of domain '{dom.name}' was cancelled: its "
                                        "job was aborted")
            if gone():  # (its stop reset the job; a new QEMU's state is not this save's)
                if dom.job_file != str(partial):  # (else a new managed save's file)
                    discard(self.driver.loop, [partial])
                out.fail(error)
                return
            dom.job, dom.job_file = None, ""
            dom.device_waiters.pop("__migration__", None)
            discard(self.driver.loop, [partial])
            if dom.monitor is not None:  # (QEMU's copy, if the migration did not take it)
                dom.monitor.execute("closefd", {"fdname": SAVE_FD_NAME})
            # the save stopped the vCPUs (its STOP is not a state change: dom.job was set)
            if was_running and dom.monitor is not None:
                dom.monitor.execute("cont")
            self.lifecycle.save_status(dom)
            out.fail(error)

        def migrated(d: Deferred) -> None:
            if d.error is not None:
                fail(d.error)
                return
            self._aborted.discard(dom.uuid)  # (a cancel that came too late)
            # The file holds the guest's whole state now. Recorded first: a daemon killed
            # from here on finishes this save when it comes back (finish_completed),
            # where before it would undo it and remove the file.
            dom.job_target = str(target)
            self.lifecycle.save_status(dom)
            # on disk before the guest is stopped: a power cut must not take the only
            # copy of its state with the page cache (the fsync waits off the loop)
            self._sync(partial).add_done_callback(synced)

        def synced(d: Deferred) -> None:
            if gone():
                fail(OperationFailed(f"domain '{dom.name}' stopped during its save"))
                return
            error = d.error if d.error is not None else unwanted() if unwanted else None
            if error:  # the guest is not stopped yet: it goes on as it was
                dom.job_target = ""
                fail(error)
                return
            moved = self._move_complete(dom, partial, target)
            if moved is not None:
                dom.job_target = ""
                fail(OperationFailed(f"cannot finish save file {target}: {moved}"))
                return
            assert self.driver.fsync is not None
            sync_directory_async(self.driver.fsync, target, stop)

        def stop() -> None:
            if gone():  # (in the directory's fsync: no start may restore this image)
                discard(self.driver.loop, [target])
                out.fail(OperationFailed(f"domain '{dom.name}' stopped during its save"))
                return
            error = unwanted() if unwanted else None
            if error:  # (in the directory's fsync)
                discard(self.driver.loop, [target])
                dom.job_target = ""
                fail(error)
                return
            self.lifecycle.destroy(dom, StopIntent(ShutoffReason.SAVED, StoppedDetail.SAVED)
                                   ).add_done_callback(stopped_as_saved)

        def stopped_as_saved(_: Deferred) -> None:
            dom.job_file = dom.job_target = ""
            if saved is not None:
                saved()
            out.resolve(Empty())

        finished.add_done_callback(migrated)

        def paused(d: Deferred) -> None:
            if d.error is not None:
                fail(d.error)
                return
            monitor.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]})
            # QEMU writes the file itself, through a descriptor of ours: when it reports
            # the migration complete, every byte is in the file (a ``cat`` child, as
            # ``exec:`` would run, could still hold some, and QEMU kills it on close)
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                fail(OperationFailed(f"cannot open save file {partial}: "
                                     f"{exc.strerror or exc}"))
                return
            try:
                passed = monitor.execute("getfd", {"fdname": SAVE_FD_NAME}, fds=[fd])
            finally:
                os.close(fd)

            def got_fd(g: Deferred) -> None:
                if g.error is not None:
                    fail(g.error)
                    return
                monitor.execute("migrate", {"uri": f"fd:{SAVE_FD_NAME}"}).add_done_callback(
                    lambda m: fail(m.error) if m.error else None)
            passed.add_done_callback(got_fd)
        monitor.execute("stop").add_done_callback(paused)
        return out

    @staticmethod
    def _new_temp(target: Path, header: bytes) -> Path:
        """A new temp file for a save to ``target``, holding ``header``: a free name
        (:func:`_save_temp`), never one another save writes."""
        for _ in range(8):
            partial = _save_temp(target)
            try:
                _write_new(partial, header)
            except FileExistsError:  # (64 random bits: as good as never)
                continue
            return partial
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))

    def _sync(self, path: Path) -> Deferred:
        """fsync ``path`` off the loop; fails with OperationFailed naming it."""
        out = Deferred()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            out.fail(OperationFailed(f"cannot sync save file {path}: {exc.strerror or exc}"))
            return out

        def synced(error: OSError | None) -> None:
            os.close(fd)
            if error is not None:
                out.fail(OperationFailed(f"cannot sync save file {path}: "
                                         f"{error.strerror or error}"))
            else:
                out.resolve(None)
        assert self.driver.fsync is not None
        self.driver.fsync.fsync(fd, synced)
        return out

    def _move_complete(self, dom: DomainObj, partial: Path, target: Path) -> str | None:
        """Rename a complete save file to its target; the reason it failed, or None.

        Done as soon as QEMU reports the migration complete, before the guest stops: the
        status file says so by then (``job_target``), so a daemon killed before or after
        the rename finishes the save either way, and the image is never left under its
        temporary name for a later start-up to sweep away. A rename that fails (the
        target replaced by a directory meanwhile) fails the save while the guest can
        still go on as it was."""
        try:
            replace_keeping(self.driver.loop, partial, target)
        except OSError as exc:
            log.error("domain %s: cannot rename its save file %s to %s: %s", dom.name,
                      partial, target, exc.strerror or exc)
            return str(exc.strerror or exc)
        return None

    def finish_completed(self, dom: DomainObj, job_file: str, job_target: str) -> None:
        """The last daemon stopped after a save's migration had completed, before the
        guest had stopped: the file holds the guest's whole state, so the save is
        finished rather than undone (undoing it would throw the state away, and resume a
        guest whose QEMU may have had its SIGTERM). The file goes to its target if it is
        not there yet, and a managed save is known as one. The caller stops QEMU if it
        still runs, as the save would have (shut off, saved)."""
        partial, target = Path(job_file), Path(job_target)
        if os.path.lexists(partial):
            if self._move_complete(dom, partial, target) is not None:
                log.error("domain %s: its saved state is in %s", dom.name, partial)
                return
            fsync_dir(target.parent)  # (at start-up: on the loop)
        if not target.is_file():  # (removed by hand since)
            log.error("domain %s: a save had completed when the last daemon stopped, but "
                      "its file %s is gone", dom.name, target)
            return
        if target == self.store.managed_save_path(dom.name):
            dom.managed_save = True
        log.warning("domain %s: a save had completed when the last daemon stopped: "
                    "finished, the saved state is in %s", dom.name, target)

    def sync_completed(self, dom: DomainObj, job_file: str, job_target: str,
                       alive: bool) -> bool:
        """At start-up, before :meth:`finish_completed`: fsync the complete image the last
        daemon was syncing when it stopped (the temp file, or the target if renamed);
        whether it is on disk. Where it is not (EIO) and its QEMU runs (``alive``), the
        caller cancels the save instead, as the daemon would have: the image (renamed or
        not) is removed, so that no start restores it. Where QEMU is gone, the image is
        all there is of the guest's state: it stays, and the save is finished."""
        partial, target = Path(job_file), Path(job_target)
        path = partial if os.path.lexists(partial) else target
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # (a rare path, at start-up: on the loop)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("domain %s: cannot sync save file %s: %s", dom.name, path,
                      exc.strerror or exc)
            if alive and path == target:
                discard(self.driver.loop, [target])
            return False
        return True

    # -- restore -------------------------------------------------------------------------

    def _restore(self, ctx: Any, args: pl.RestoreArgs) -> Deferred:
        """virDomainRestoreFlags: the guest comes back in the state its image records,
        unless SAVE_RUNNING / SAVE_PAUSED say otherwise."""
        asked = _state_flags(int(args.flags), "qemuDomainRestoreFlags")
        path = Path(args.path)
        if not path.is_absolute():  # (the daemon's working directory is nobody's)
            raise InvalidArg(f"restore path must be absolute, got '{args.path}'")
        image = read_image(path)
        definition = _image_definition(path, image)
        existing = self.registry.check_clash(definition)
        if existing is not None and existing.active:
            raise OperationInvalid(f"domain '{existing.name}' is already running")
        dom = existing or DomainObj(definition, persistent=False)
        if existing is None:
            self.registry.add(dom)
        try:
            running = image.running if asked is None else asked
            started = self.lifecycle.start(dom, definition, incoming=_incoming(path, image),
                                           paused=not running,
                                           pci_addresses=image.pci_addressed,
                                           reason=RunningReason.RESTORED,
                                           detail=StartedDetail.RESTORED)
        except Exception:
            if existing is None:
                self.registry.remove(dom)
            raise
        return _ref_reply(started)

    # -- start (managed save aware) ------------------------------------------------------

    def start(self, dom: DomainObj, flags: int = 0) -> Deferred:
        """Start a defined domain: libvirt's qemuDomainObjStart (DOMAIN_CREATE, autostart).

        With a managed save image the guest is restored from it (START_PAUSED, or a guest
        saved paused, stays paused) and the image is removed once it runs; START_FORCE_BOOT
        removes the image and boots. START_RESET_NVRAM: the NVRAM file is copied afresh
        from its template before the boot; refused with an image to restore, which holds
        the firmware state the guest was saved with. The Deferred resolves with the
        DomainRef.
        """
        paused = bool(flags & START_PAUSED)
        reset_nvram = bool(flags & START_RESET_NVRAM)
        if dom.active:  # before the image is touched (libvirt checks first too)
            raise OperationInvalid(f"domain '{dom.name}' is already running")
        # before the image is touched too: a start waiting for its NVRAM file (the
        # domain inactive meanwhile) may be restoring that image
        self.lifecycle.require_not_busy(dom)
        path = self.store.managed_save_path(dom.name)
        if not path.exists():
            dom.managed_save = False  # (removed by hand: the file is the truth)
            return self.lifecycle.start(dom, paused=paused, reset_nvram=reset_nvram)
        if reset_nvram and not flags & START_FORCE_BOOT:
            raise self.driver.firmware.managed_save_refusal(dom)
        if flags & START_FORCE_BOOT:
            failed = self._discard(path)
            if failed is not None and not isinstance(failed, FileNotFoundError):
                raise SystemCallFailed(f"cannot remove managed save file {path}: "
                                       f"{failed.strerror or failed}") from None
            dom.managed_save = False
            log.info("domain %s: managed save image %s discarded (force boot)", dom.name, path)
            return self.lifecycle.start(dom, paused=paused, reset_nvram=reset_nvram)
        dom.managed_save = True
        return self._restore_managed(dom, path, paused)

    def _restore_managed(self, dom: DomainObj, path: Path, paused: bool) -> Deferred:
        def unable(error: QemudError) -> QemudError:
            # libvirt logs this and returns the cause; the cause alone does not say that
            # an image was restored, nor what the user can do about it
            log.warning("Unable to restore from managed state %s. Maybe the file is "
                        "corrupted? (%s)", path, error.message)
            return OperationFailed(
                f"Unable to restore domain '{dom.name}' from its managed save image "
                f"{path} ({error.detail}); the image is kept: 'start --force-boot' boots "
                "the domain afresh, 'managedsave-remove' discards it")

        try:
            image = read_image(path)
            definition = _image_definition(path, image)
            if definition.name != dom.name or definition.uuid != dom.uuid:
                raise OperationFailed(
                    f"cannot restore domain '{dom.name}' uuid {dom.uuid} from a file which "
                    f"belongs to domain '{definition.name}' uuid {definition.uuid}")
            started = self.lifecycle.start(
                dom, definition, paused=paused or not image.running,
                incoming=_incoming(path, image), pci_addresses=image.pci_addressed,
                reason=RunningReason.RESTORED, detail=StartedDetail.RESTORED)
        except QemudError as exc:
            raise unable(exc) from None
        out = Deferred()

        def done(d: Deferred) -> None:
            if d.error is not None:
                out.fail(unable(d.error))
                return
            failed = self._discard(path)
            if failed is None or isinstance(failed, FileNotFoundError):
                dom.managed_save = False
            else:  # libvirt's words; it stays listed as an image then
                log.warning("Failed to remove the managed state %s: %s", path, failed)
            out.resolve(d.result)
        started.add_done_callback(done)
        return out

    # -- the other managed save procedures -----------------------------------------------

    def _has_managed_save(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.BoolReply:
        check_flags(args.flags, 0, "qemuDomainHasManagedSaveImage")
        return pl.BoolReply(self._dom(args).managed_save)

    def _managed_save_remove(self, ctx: Any, args: pl.DomainFlagsArgs) -> Empty:
        """virDomainManagedSaveRemove: no image is an error, as in libvirt (virsh asks
        DOMAIN_HAS_MANAGED_SAVE first and says it skipped the removal)."""
        check_flags(args.flags, 0, "qemuDomainManagedSaveRemove")
        dom = self._dom(args)
        self.remove_image(dom)
        return Empty()

    def remove_image(self, dom: DomainObj) -> None:
        # a save: its image may be in place already, the guest stopping; a start or a
        # restore: the image is (to be) read; a start waiting for its NVRAM file first
        # (Registry.operations) restores it then
        if dom.job in ("save", "start", "restore"):
            raise OperationInvalid(f"domain '{dom.name}' is busy: {dom.job} in progress")
        self.driver.registry.require_no_operation(dom)
        path = self.store.managed_save_path(dom.name)
        failed = self._discard(path)
        if isinstance(failed, FileNotFoundError):
            dom.managed_save = False
        if failed is not None:
            raise SystemCallFailed(f"Failed to remove managed save file '{path}': "
                                   f"{failed.strerror or failed}") from None
        dom.managed_save = False
        log.info("domain %s: managed save image %s removed", dom.name, path)

    def _discard(self, path: Path) -> OSError | None:
        """Remove a save image off the loop (``discard.discard``: it is the guest's RAM,
        gigabytes): None once its name is gone, else why not (FileNotFoundError: there was
        none)."""
        failed: dict[Path, OSError] = {}
        if discard(self.driver.loop, [path], failed=failed) or failed:
            return failed.get(path)
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    def _managed_save_xml(self, ctx: Any, args: pl.DomainFlagsArgs) -> pl.StringReply:
        """virDomainManagedSaveGetXMLDesc: the domain XML in the image; secrets (the VNC
        password) only with XML_SECURE, which a read-only connection may not ask for."""
        check_flags(args.flags, XML_SECURE, "qemuDomainManagedSaveGetXMLDesc")
        secure = bool(args.flags & XML_SECURE)
        if secure and ctx.readonly:
            raise OperationDenied("virDomainManagedSaveGetXMLDesc with secure flag")
        dom = self._dom(args)
        path = self.store.managed_save_path(dom.name)
        if not path.exists():
            raise OperationInvalid("domain does not have managed save image")
        definition = _image_definition(path, read_image(path))
        if not secure:
            for graphics in definition.graphics:
                graphics.passwd = None
        return pl.StringReply(definition.to_xml())

    def require_no_image(self, dom: DomainObj, what: str) -> None:
        """Refuse ``what`` (a change of the domain's disks: a snapshot revert, an
        appliance update or reset) while the domain has a managed save image: the memory
        state in it belongs to the disks as they are, and a later start would restore it
        onto the changed ones. Nothing is discarded for the user; they choose."""
        if dom.managed_save:
            raise OperationInvalid(
                f"domain '{dom.name}' has a managed save image, whose memory state belongs "
                f"to its disks as they are now: no {what} while it exists; start the "
                "domain to resume it first, or remove the image (managedsave-remove "
                f"{dom.name})")

    def check_undefine(self, dom: DomainObj, flags: int) -> bool:
        """libvirt's rule at undefine: refused while an image exists, unless ``flags``
        has UNDEFINE_MANAGED_SAVE; True when there is an image to remove. Changes
        nothing: a wrapper of DOMAIN_UNDEFINE that removes things of its own (the
        snapshot duty) can ask first.

        Refused as busy too while a managed save of the domain runs (whatever the
        flags): its image is not in place yet (libvirt writes it under its final name,
        and refuses for it then), and an undefine would leave the guest transient, to
        vanish as the save stops it, its image an orphan no start restores."""
        if self.managed_save_running(dom):
            raise OperationInvalid(f"domain '{dom.name}' is busy: {dom.job} in progress")
        path = self.store.managed_save_path(dom.name)
        if not dom.persistent or not path.exists():
            return False  # (a transient domain: the registry refuses the undefine)
        if not flags & UNDEFINE_MANAGED_SAVE:
            raise OperationInvalid("Refusing to undefine while domain managed save image "
                                   "exists")
        return True

    def managed_save_running(self, dom: DomainObj) -> bool:
        """A managed save of ``dom`` runs (its image written, synced, or in place while
        the guest stops)."""
        return dom.job == "save" and \
            dom.job_file == str(self.store.managed_save_temp(dom.name))

    def before_undefine(self, dom: DomainObj, flags: int) -> None:
        """:meth:`check_undefine`, then the image goes (before the definition, as in
        libvirt)."""
        if self.check_undefine(dom, flags):
            self.remove_image(dom)


#: the ``-device`` drivers of the argv builder that sit on no PCI slot (ISA, IDE, SCSI,
#: virtio-serial and USB buses): they do not move the PCI devices after them
_NOT_PCI = frozenset({"isa-serial", "ib700", "ide-hd", "ide-cd", "scsi-hd", "scsi-cd",
                      "virtconsole", "virtserialport", "usb-tablet", "usb-kbd",
                      "usb-mouse", "usb-storage"})


@dataclass(frozen=True)
class Incoming:
    """What a restore's QEMU reads: the save image ``path`` from ``offset`` (the end of
    its header) on, through a descriptor the daemon passes it (``Lifecycle.start``)."""

    path: Path
    offset: int

    def open(self) -> int:
        """The image, open for reading at :attr:`offset`. Opened without blocking and
        only if it is still a regular file (the path is the user's: it was checked when
        the header was read, and may have changed since), then made blocking again for
        QEMU."""
        try:
            fd, _ = open_for_reading(self.path)
        except WrongFileKind as exc:
            raise OperationFailed(f"cannot read save file {self.path}: it is {exc.kind}, "
                                  "not a regular file") from None
        except OSError as exc:
            raise OperationFailed(f"cannot read save file {self.path}: "
                                  f"{exc.strerror or exc}") from None
        try:
            os.set_blocking(fd, True)
            os.lseek(fd, self.offset, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            raise OperationFailed(f"cannot read save file {self.path}: "
                                  f"{exc.strerror or exc}") from None
        return fd


def _incoming(path: Path, image: SaveImage) -> Incoming:
    return Incoming(path, image.offset)


def _ref_reply(deferred: Deferred) -> Deferred:
    out = Deferred()
    deferred.chain(out, lambda ref: pl.DomainReply(ref))
    return out


def _save_temp(target: Path) -> Path:
    """A name a save to ``target`` may write under until it is complete: hidden, in the
    same directory (the final rename stays on one file system), never a file the user
    could have named (``target.part`` could be theirs), and random: unique to this
    save, so that no other save (another daemon's, one of a daemon that had the same
    pid) writes it. :func:`_write_new` takes it only if it is free."""
    # (os.urandom, not secrets: that imports OpenSSL's libcrypto, ~4 MiB of RSS)
    suffix = f".qemud-save-{os.urandom(8).hex()}.part"
    name = f".{target.name}{suffix}"
    if len(os.fsencode(name)) > NAME_MAX:  # (a target name near the limit)
        name = suffix
    return target.with_name(name)


def _write_new(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Create ``path`` (0600, not following a symlink) holding ``data``. An existing
    file is another save's (FileExistsError), unless ``replace``: a name only one save
    at a time writes (a domain's managed save temp file), left by a killed daemon."""
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _target_key(target: Path) -> tuple[int, int, str]:
    """What a save's target is, however its path is spelt (``..``, a symlink to its
    directory, a bind mount): its directory's device and inode, and its name there (the
    name the final rename replaces)."""
    try:
        st = os.stat(target.parent)
    except OSError as exc:
        raise OperationFailed(f"cannot save to {target}: {exc.strerror or exc}") from None
    return st.st_dev, st.st_ino, target.name
