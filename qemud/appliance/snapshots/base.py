"""What every snapshot operation shares: the domain's disks, the overlay files, the
backing chains the garbage collection walks, ``qemu-img`` and small Deferred helpers.

:class:`SnapshotOps` is the base of each operation's class (create, revert/delete,
backup); the duty makes one of each over the same store and tool runner.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemud import testhooks
from qemud.dispatch import Deferred
from qemud.driver.discard import discard
from qemud.driver.tools import ToolRunner, find_tool
from qemud.errors import (
    ConfigUnsupported,
    InvalidArg,
    OperationFailed,
    OperationInvalid,
    QemudError,
)
from qemud.qemu import naming, qcow2

from ..images.layout import require_no_pending_update
from .records import DomainSnapshots, SnapshotStore

if TYPE_CHECKING:
    from qemud.conf import Disk, DomainDef
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.events import EventBus

__all__ = ["SnapshotOps", "JobToken", "end_job", "gather", "then", "qemu_failure",
           "log_failure", "block_nodes", "tool_failure", "JOB_SPEED", "job_speed",
           "check_flags", "report_backup_failed"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

#: Test hook for a daemon run as a subprocess: ``QEMUD_TEST_JOB_SPEED=<bytes/s>`` in its
#: environment (read once, at import) limits QEMU's live merge (``block-commit``) and
#: backup (``blockdev-backup``) jobs to that speed, so that a test can kill the daemon
#: while the job runs. For tests only; never set it in production.
JOB_SPEED_ENV = "QEMUD_TEST_JOB_SPEED"
JOB_SPEED = testhooks.rate(JOB_SPEED_ENV)


def job_speed(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` of a block job, with the test hook's ``speed`` when it is set."""
    if JOB_SPEED:
        args["speed"] = JOB_SPEED
    return args


def tool_failure(argv: list[str], code: int, stderr: str) -> str:
    """How a snapshot operation words a ``qemu-img`` failure: the subcommand, all of
    stderr."""
    return f"{Path(argv[0]).name} {argv[1]} failed (exit {code}): {stderr or 'no message'}"


def check_flags(flags: int, known: int, what: str, names: dict[int, str]) -> None:
    """Refuse the bits of ``flags`` not in ``known``, as libvirt's ``virCheckFlags``
    (INVALID_ARG, "unsupported flags (0x1) in ..."), before anything is looked up: a
    flag ignored would do what the caller did not ask for (``names``: libvirt's names
    of flags qemud does not have)."""
    unknown = flags & ~known
    if unknown:
        bits = [1 << i for i in range(unknown.bit_length()) if unknown >> i & 1]
        raise InvalidArg(f"unsupported flags ({unknown:#x}) in {what}: " + ", ".join(
            f"'{names[b]}' is not supported" if b in names else f"unknown flag {b:#x}"
            for b in bits))


class JobToken(str):
    """A snapshot operation's ``dom.job``: its name, one object per operation.

    A guest's stop clears ``dom.job`` (``Lifecycle``), and the job set after that (the
    start of an ``<on_poweroff>restart``, another client's call) is not this operation's
    to end: :func:`end_job` ends only its own, compared by identity."""

    __slots__ = ()


def end_job(dom: DomainObj, job: JobToken) -> None:
    """End ``job`` if it is still ``dom``'s."""
    if dom.job is job:
        dom.job = None


def then(d: Deferred, failed: Callable[[QemudError], object],
         succeeded: Callable[[], object]) -> None:
    """Once ``d`` is done: ``failed(its error)``, or ``succeeded()``."""
    d.add_done_callback(lambda d: failed(d.error) if d.error is not None else succeeded())


def gather(items: list[Deferred]) -> Deferred:
    """Resolves with every result once all are done; fails with the first error (but
    only after all are done, so a caller can clean up knowing nothing is in flight)."""
    out = Deferred()
    results: list[Any] = [None] * len(items)
    errors: list[QemudError] = []
    remaining = [len(items)]
    if not items:
        out.resolve(results)
        return out

    def done(index: int, d: Deferred) -> None:
        if d.error is not None:
            errors.append(d.error)
        results[index] = d.result
        remaining[0] -= 1
        if remaining[0] == 0:
            if errors:
                out.fail(errors[0])
            else:
                out.resolve(results)
    for i, item in enumerate(items):
        item.add_done_callback(functools.partial(done, i))
    return out


def qemu_failure(what: str, error: QemudError) -> QemudError:
    return OperationFailed(f"{what}: {error.detail}")


def log_failure(what: str, d: Deferred) -> None:
    if d.error is not None:
        log.warning("%s: %s", what, d.error.message)


def report_backup_failed(events: EventBus, dom: DomainObj, files: str, why: str) -> None:
    """A backup of ``dom`` to ``files`` failed (or a daemon restart ended it): the audit
    line and the ``backup-failed`` event, the same for every way a backup can fail."""
    audit_log.info("appliance backup domain=%r uuid=%s files=%r result=error %r",
                   dom.name, dom.uuid, files, why)
    events.appliance(dom.ref(), "backup-failed", why)


def _inserted(result: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """query-block -> (device id, its ``inserted`` medium), each id of a device path
    (``/machine/peripheral/disk-vda/virtio-backend``: both parts)."""
    for entry in result or []:
        inserted = entry.get("inserted")
        if not inserted:
            continue
        qdev = str(entry.get("qdev") or entry.get("device") or "")
        for part in qdev.split("/"):
            if part:
                yield part, inserted


def block_nodes(result: Any) -> dict[str, tuple[str, int]]:
    """query-block -> {device id: (top node name, virtual size)}."""
    nodes: dict[str, tuple[str, int]] = {}
    for device, inserted in _inserted(result):
        size = int(inserted.get("image", {}).get("virtual-size", 0))
        nodes.setdefault(device, (str(inserted.get("node-name", "")), size))
    return nodes


def block_files(result: Any) -> dict[str, str]:
    """query-block -> {device id: the image file its top node reads}."""
    files: dict[str, str] = {}
    for device, inserted in _inserted(result):
        if inserted.get("file"):
            files.setdefault(device, str(inserted["file"]))
    return files


def disk_roots(dom: DomainObj) -> list[tuple[str, str | None, str]]:
    """The images ``dom``'s disks open (persistent, pending and live definitions), as
    (image, format, who reads it): the roots of the backing chains it reads."""
    return [(d.source, d.driver_type or "raw", f"disk {d.target_dev} of domain {dom.name}")
            for definition in (dom.definition, dom.next_definition, dom.live)
            if definition is not None for d in definition.disks if d.source]


class SnapshotOps:
    """The driver's pieces, the store, the tool runner and the disk/file helpers."""

    def __init__(self, driver: QemuDriver, store: SnapshotStore, tools: ToolRunner) -> None:
        self.driver = driver
        self.loop = driver.loop
        self.events = driver.events
        self.lifecycle = driver.lifecycle
        self.store = store
        self.tools = tools

    def _dom(self, args: Any) -> DomainObj:
        return self.driver.registry.find(args.dom.name, args.dom.uuid)

    def require_no_pending_update(self, dom: DomainObj, what: str) -> None:
        """See :func:`..images.layout.require_no_pending_update` (a snapshot would
        freeze the overlay the rollback deletes; a revert would move the disks off the
        appliance's images, so the rollback could not run; a delete is not refused: its
        merge gives the disks back to the appliance). Also while an image update,
        rollback or factory reset runs on the VM (``Registry.operations``): it defines the
        VM on new disks from a definition read before the snapshot's."""
        self.driver.registry.require_no_operation(dom)
        require_no_pending_update(self.driver.config, dom, what, self.driver.files)

    @staticmethod
    def qemu_img() -> str:
        return find_tool("qemu-img", "to create snapshot overlays and backup images")

    @staticmethod
    def snapshot_disks(dom: DomainObj, definition: DomainDef) -> list[Disk]:
        """The disks a snapshot covers; refuses what cannot have an overlay."""
        disks = []
        for disk in definition.disks:
            if disk.device != "disk" or disk.readonly or not disk.source:
                continue
            if disk.type != "file":
                raise ConfigUnsupported(
                    f"disk '{disk.target_dev}' of domain "
                    f"'{dom.name}' is a host block device ({disk.source}): external "
                    "snapshots need qcow2 image files")
            fmt = disk.driver_type or "raw"
            if fmt != "qcow2":
                raise ConfigUnsupported(
                    f"cannot snapshot disk '{disk.target_dev}' "
                    f"of domain '{dom.name}': {disk.source} is a {fmt} image; external "
                    "snapshots need qcow2 disks (convert it with qemu-img convert -O qcow2 "
                    "and use <driver name='qemu' type='qcow2'/>)")
            disks.append(disk)
        if not disks:
            raise OperationInvalid(f"domain '{dom.name}' has no writable disk to snapshot")
        return disks

    @staticmethod
    def _top_nodes(dom: DomainObj, targets: list[str]) -> Deferred:
        """QMP ``query-block``: resolves with {target: (top node name, virtual size)} of
        each disk in ``targets``; fails if one is not open in QEMU."""
        out = Deferred()
        assert dom.monitor is not None

        def queried(d: Deferred) -> None:
            if d.error is not None:
                out.fail(qemu_failure("cannot query the disks", d.error))
                return
            found = block_nodes(d.result)
            nodes: dict[str, tuple[str, int]] = {}
            for target in targets:
                entry = found.get(naming.disk_device_id(target))
                if entry is None or not entry[0]:
                    out.fail(OperationFailed(f"disk '{target}' of domain '{dom.name}' is "
                                             "not open in QEMU"))
                    return
                nodes[target] = entry
            out.resolve(nodes)
        dom.monitor.execute("query-block").add_done_callback(queried)
        return out

    def _overlay_path(self, dom: DomainObj, target: str, label: str) -> Path:
        directory = self.store.images_dir(dom.name)
        path = directory / f"{target}.{label}.qcow2"
        n = 1
        while path.exists():
            n += 1
            path = directory / f"{target}.{label}.{n}.qcow2"
        return path

    def _end_job(self, dom: DomainObj, job: JobToken, meta: DomainSnapshots,
                 out: Deferred, saved: Callable[[], object]) -> None:
        """The last step of ``dom``'s ``job``: save ``meta``, then ``saved()``. The job
        ends once the file is written, not before: the next operation reads it. If the
        save failed, ``out`` fails with why instead."""
        def ended(d: Deferred) -> None:
            end_job(dom, job)
            if d.error is not None:
                out.fail(d.error)
            else:
                saved()
        self.store.save(meta).add_done_callback(ended)

    def _unlink(self, paths: list[Path]) -> None:
        """Remove image files without blocking the loop (unlinking a large fragmented
        image takes seconds): each path is renamed away at once, so it is gone when
        this returns, and an ``rm`` child frees the space (see ``discard.discard``).

        An overlay of the store is renamed into the store's root, not into its images
        directory: an undefine prunes that directory right after, and a directory a
        snapshot delete emptied reads as empty at once."""
        discard(self.loop, paths, spool=self.store.root)

    def point_disks(self, dom: DomainObj, moves: dict[str, tuple[str | None, str]],
                    job: str | None = None) -> Deferred:
        """Persistently point disk ``target`` at a new image: ``moves`` is target ->
        (only if its source is this, or None for any; new source).

        The persistent definition changes in memory at once and its file is written
        with its fsyncs off the loop (``Registry.save_persistent``). The Deferred
        resolves once the file is durable, or fails with OperationFailed, memory back
        to what the file holds. A transient domain has no file: the definition it
        restarts from (``on_crash``/``on_poweroff`` restart, the heartbeat's) follows in
        memory, and the Deferred is resolved at once (it restarted on the image the
        snapshot froze, and wrote into it).

        With ``job``, the calls that change the persistent definition are refused as
        busy with it until the file is written (``Registry.operations``): a change
        queued on this write would carry it even if this write failed, and the
        caller then removes the images it names."""
        def moved(definition: DomainDef) -> DomainDef:
            new = definition.copy()
            for disk in new.disks:
                move = moves.get(disk.target_dev or "")
                if move is None or disk.device != "disk":
                    continue
                if move[0] is not None and disk.source != move[0]:
                    log.warning("domain %s: disk %s of the persistent definition uses %s, "
                                "not %s: left alone", dom.name, disk.target_dev,
                                disk.source, move[0])
                    continue
                disk.source = move[1]
                disk.driver_type = "qcow2"
            return new
        if not dom.persistent:
            dom.definition = moved(dom.definition)
            return Deferred.resolved(None)
        registry = self.driver.registry
        try:
            saved = registry.save_persistent(dom, moved(dom.persistent_definition))
        except QemudError as exc:
            return Deferred.failed(exc)
        if job is not None and not saved.done:
            mark = registry.operations[dom.uuid] = JobToken(job)  # (none was: not refused)
            saved.add_done_callback(lambda _: registry.operations.pop(dom.uuid)
                                    if registry.operations.get(dom.uuid) is mark else None)
        if dom.active and dom.next_definition is not None:
            # the definition it started with follows too: the merge plan and the garbage
            # collection read every definition of the domain. (Memory's persistent one
            # is then the pending one, which a failed write puts back.)
            dom.definition = moved(dom.definition)
        return saved

    @staticmethod
    def record_follow(meta: DomainSnapshots, moves: dict[str, tuple[str | None, str]]
                      ) -> None:
        """The guest now runs on ``moves``' new images (target -> (image the persistent
        definition names, new image)) but the definition's write failed: recorded in
        ``meta.follow`` (the caller saves ``meta``), so that the next start boots the
        new image and the next snapshot operation writes the definition first. A move
        on top of a recorded one keeps the image the definition names."""
        for target, (old, new) in moves.items():
            if old is None:
                continue
            earlier = meta.follow.get(target)
            meta.follow[target] = [earlier[0] if earlier and earlier[1] == old else old,
                                   new]

    def follow_definition(self, dom: DomainObj, what: str, *, job_ok: bool = False
                          ) -> Deferred:
        """Write ``dom``'s persistent definition on the images its guest moved to if an
        earlier write failed (``DomainSnapshots.follow``; nothing to do otherwise):
        resolves once the definition and then the metadata without the record are
        written, or fails with why, worded for ``what`` is refused ("create a
        snapshot"). Refused while a job runs on the domain, unless ``job_ok`` (the
        start's own, which leaves the persistent definition alone); the domain is busy
        with the write meanwhile (``Registry.operations``)."""
        meta = self.store.load(dom)
        if not meta.follow:
            return Deferred.resolved(None)
        if not job_ok:
            self.require_no_job(dom)
        now = {d.target_dev: d.source for d in dom.persistent_definition.disks
               if d.device == "disk"}
        moves: dict[str, tuple[str | None, str]] = {
            t: (old, new) for t, (old, new) in meta.follow.items() if now.get(t) != new}
        out = Deferred()
        recorded = sorted(meta.follow.items())

        def failed(error: QemudError) -> None:
            out.fail(OperationFailed(
                f"cannot {what}: the persistent definition of domain '{dom.name}' still "
                "names images its guest has left ("
                + ", ".join(f"disk {t}: {old}, now {new}" for t, (old, new) in recorded)
                + f"; an earlier write failed), and writing it failed again: "
                  f"{error.detail}"))

        def unrecorded(error: QemudError) -> None:  # (the definition is right: only this)
            out.fail(OperationFailed(
                f"cannot {what}: the persistent definition of domain '{dom.name}' now "
                f"names the images its guest runs on, but the snapshot metadata could not "
                f"record it: {error.detail}"))

        def pointed() -> None:
            log.info("domain %s: the persistent definition follows its guest's disks now "
                     "(%s)", dom.name, ", ".join(f"{t} -> {new}" for t, (_, new)
                                                 in recorded))
            meta.follow.clear()
            then(self.store.save(meta), unrecorded, lambda: out.resolve(None))
        then(self.point_disks(dom, moves, "definition update") if moves
             else Deferred.resolved(None), failed, pointed)
        return out

    def follow_live(self, dom: DomainObj, live: DomainDef) -> None:
        """A start hook: ``live`` (what ``dom`` is about to start from) names the images
        its guest moved to where the persistent definition still names the ones it
        left (``DomainSnapshots.follow``), and the definition is written again once
        the start is under way (a failure is logged: the next start follows again).
        Raises OperationFailed, refusing the start, if the metadata cannot be read:
        the image the definition names may be a snapshot's, frozen."""
        meta = self.store.load(dom)
        for disk in live.disks:
            move = meta.follow.get(disk.target_dev or "")
            if move is None or disk.device != "disk" or disk.source != move[0]:
                continue
            log.warning("domain %s: disk %s starts on %s, where the guest last ran, not on "
                        "%s, which the persistent definition names (its write failed)",
                        dom.name, disk.target_dev, move[1], move[0])
            disk.source, disk.driver_type = move[1], "qcow2"

        def write() -> None:  # (outside the start's call: its reply does not wait for it)
            registry = self.driver.registry
            if not registry.holds(dom) or dom.uuid in registry.operations:
                return  # (busy: a UEFI start's NVRAM copy, an image operation's start)
            try:
                written = self.follow_definition(dom, "follow the disks", job_ok=True)
            except QemudError as exc:
                written = Deferred.failed(exc)
            written.add_done_callback(lambda d: log_failure(f"domain {dom.name}", d))
        self.loop.call_soon(write)

    def require_no_job(self, dom: DomainObj) -> None:
        """No job on ``dom`` (``Lifecycle.require_no_job``), no appliance image operation
        (``Registry.require_no_operation``), and no snapshot operation that ended its
        job still writing the definition before its metadata (``SnapshotStore.
        settling``): what it then writes would undo this call's."""
        self.lifecycle.require_no_job(dom)
        # an appliance image operation: its define would drop what the snapshot points
        self.driver.registry.require_no_operation(dom)
        busy = self.store.settling.get(dom.uuid)
        if busy is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {busy} in progress")

    def _collect(self, dom: DomainObj, meta: DomainSnapshots) -> list[Path]:
        """Overlays (ours) no chain needs any more: forgotten in ``meta``, returned for
        deletion once ``meta`` is saved.

        The chains are those of the disks, of the snapshots, of the images unplugged
        disks used last (``meta.unplugged``): such an image holds what the guest wrote
        to that disk since a snapshot, the user's data, as libvirt never deletes a
        detached disk's files; and of the images a metadata-only delete left to the
        user (``meta.kept``)."""
        roots: set[str] = set(meta.unplugged) | set(meta.kept)
        roots.update(new for _, new in meta.follow.values())
        for definition in (dom.definition, dom.next_definition, dom.live):
            if definition is not None:
                roots.update(d.source for d in definition.disks if d.source)
        for snap in meta.snapshots.values():
            roots.update(d.base for d in snap.disks.values())
        needed: set[str] = set()
        for root in roots:
            link: str | None = root
            while link is not None and link not in needed:
                needed.add(link)
                link = meta.images.get(link)
        ours = self.store.images_dir(dom.name).resolve()
        unneeded = [p for p in meta.images if p not in needed]
        candidates = {os.path.realpath(p): p for p in unneeded
                      if Path(p).resolve().parent == ours}  # (never what it did not create)
        readers = self._readers(dom, candidates) if candidates else {}
        garbage: list[Path] = []
        for path_text in unneeded:
            why = readers.get(path_text)
            if why:  # (stays in meta.images: collected once nothing reads it)
                log.warning("domain %s: %s is kept although no snapshot of it needs it: %s",
                            dom.name, path_text, why)
                continue
            del meta.images[path_text]
            if path_text in candidates.values():
                garbage.append(Path(path_text))
        return garbage

    def _readers(self, dom: DomainObj, images: dict[str, str]) -> dict[str, str]:
        """Which of ``images`` (realpath -> path) a disk still reads through its backing
        chain as the qcow2 headers say, path -> who: a disk of ``dom`` (its metadata may
        lack a link that a daemon killed between two writes did not record), or a disk,
        snapshot or overlay of another domain (a clone made by hand with ``qemu-img
        create -b``). A chain that cannot be followed counts as reading them all."""
        roots, unknown = self.chain_roots(dom, "it")
        if unknown:
            return {path: unknown for path in images.values()}
        roots += disk_roots(dom)
        found: dict[str, str] = {}
        for root, fmt, who in roots:
            try:
                for link, _ in qcow2.backing_chain(root, fmt):
                    path = images.get(os.path.realpath(link))
                    if path is not None:
                        found.setdefault(path, f"it is in the backing chain of {who}")
            except qcow2.ChainError as exc:
                why = f"the backing chain of {who} cannot be read ({exc})"
                return {path: why for path in images.values()}
        return found

    def chain_roots(self, dom: DomainObj, what: str
                    ) -> tuple[list[tuple[str, str | None, str]], str]:
        """The images the other domains read, (image, format or None to probe, who reads
        it): their disks (persistent, pending and live definitions), the images of their
        snapshot records and their snapshot overlays; and why they cannot all be known,
        worded for ``what`` is asked about ("" when they can: a snapshot metadata file
        that does not load)."""
        roots: list[tuple[str, str | None, str]] = []
        for other in self.driver.registry:
            if other is dom:
                continue
            roots += disk_roots(other)
            try:
                meta = self.store.load(other)
            except QemudError as exc:
                return [], (f"cannot tell whether domain {other.name}'s snapshots read "
                            f"{what}: {exc.message}")
            for s in meta.snapshots.values():
                for t, d in s.disks.items():
                    who = f"snapshot {s.name} (disk {t}) of domain {other.name}"
                    roots += [(d.base, d.format, who), (d.overlay, "qcow2", who)]
            roots += [(image, "qcow2", f"a snapshot overlay of domain {other.name}")
                      for image in meta.images]
        return roots, ""
