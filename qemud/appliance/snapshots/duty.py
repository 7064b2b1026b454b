"""The snapshot duty's wiring: the procedures it answers, the DOMAIN_UNDEFINE check, the
start-up clean-up of the metadata directories, and the end of a transient domain (its
snapshot metadata goes with it, see :meth:`.records.SnapshotStore.set_aside`).

The operations (:class:`.operations.Operations`: every other module of the package, with
``secrets`` and ``hashlib``, ~0.5 MiB of RSS) are built by the first snapshot procedure or
undefine, not at start-up (see :mod:`qemud.appliance`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protocol import Procedure
from qemud.dispatch import Deferred
from qemud.driver.discard import remove_discarded_below
from qemud.driver.store import remove_dead_writes_below
from qemud.errors import OperationFailed, OperationInvalid, QemudError

if TYPE_CHECKING:
    from pathlib import Path

    from protocol import payloads as pl
    from protocol.constants import ShutoffReason
    from protocol.fields import Payload
    from qemud.conf import DomainDef
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj
    from qemud.driver.filewrites import FileWrites
    from qemud.driver.store import StatusRecord

    from .. import ApplianceContext
    from .operations import Operations

__all__ = ["SnapshotDuty", "install", "follow_pending"]

log = logging.getLogger(__name__)

#: ``dom.job`` of a snapshot create, revert and delete (``JobToken``s: :mod:`.base`,
#: not imported here, so that an idle daemon does not load the operations)
SNAPSHOT_JOBS = ("snapshot", "snapshot-revert", "snapshot-delete")
#: the ids a live merge and a backup give their QEMU block jobs (see :mod:`.leftovers`)
JOB_PREFIXES = ("commit-", "backup-")


def follow_pending(files: FileWrites, root: Path, domain: str) -> bool:
    """Whether ``domain``'s snapshot metadata (under the store ``root``; a write in
    flight read rather than the file) records that its persistent definition must still
    follow the images its guest moved to (``DomainSnapshots.follow``). Read from the
    text: the snapshot modules are not loaded for it. A domain without metadata costs a
    failed ``open``."""
    try:
        text = files.read_text(root / domain / "snapshots.json")
    except OSError:
        return False
    return '"follow": {' in text and '"follow": {}' not in text


class SnapshotDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.dispatcher = ctx.daemon.dispatcher
        self.root = ctx.daemon.config.paths.state_dir / "snapshots"
        self._ops: Operations | None = None

    @property
    def ops(self) -> Operations:
        if self._ops is None:
            from .operations import Operations
            self._ops = Operations(self.driver, self.root)
        return self._ops

    def install(self) -> dict[Procedure, Handler]:
        self._make_private()
        # the temp files of metadata writes a killed daemon never renamed: only now, while
        # the pidfile lock guarantees no write is in flight (see remove_dead_writes)
        remove_dead_writes_below(self.root)
        # images a killed daemon had renamed for removal but not removed yet (see discard)
        remove_discarded_below(self.driver.loop, self.root, "images")
        # the driver's handlers are registered before the appliance's: check them first
        self.dispatcher.wrap(Procedure.DOMAIN_UNDEFINE, self.undefine)
        self.driver.disk_removed_hooks.append(self.disk_removed)
        self.driver.config_change_guards.append(self.no_snapshot_job)
        self.driver.stop_hooks.append(self.on_stop)
        self.driver.start_hooks.append(self.follow_at_start)
        # before any re-attached guest's QMP is up (it connects from the loop)
        self.driver.lifecycle.reattach_hooks.append(self.reattached)
        # transient domains that ended while no daemon watched (QEMU gone at reconnect,
        # or a daemon killed before it set their metadata aside); the driver has loaded
        # and reconnected every domain by now
        self.set_aside_ended()
        self.check_interrupted_merges()
        P = Procedure
        return {
            P.DOMAIN_SNAPSHOT_CREATE: lambda c, a: self.followed(
                a, "create a snapshot", lambda: self.ops.creating.create(c, a)),
            P.DOMAIN_SNAPSHOT_LIST: lambda c, a: self.ops.creating.list_snapshots(c, a),
            P.DOMAIN_SNAPSHOT_REVERT: lambda c, a: self.followed(
                a, "revert to a snapshot", lambda: self.ops.reverting.revert(c, a)),
            P.DOMAIN_SNAPSHOT_DELETE: lambda c, a: self.followed(
                a, "delete a snapshot", lambda: self.ops.deleting.delete(c, a)),
            P.DOMAIN_SNAPSHOT_GET_XML: lambda c, a: self.ops.describing.get_xml(c, a),
            P.DOMAIN_BACKUP: lambda c, a: self.followed(
                a, "back up", lambda: self.ops.backups.backup(c, a), uses_metadata=False),
        }

    def followed(self, args: Any, what: str, call: Callable[[], Payload | Deferred], *,
                 uses_metadata: bool = True) -> Payload | Deferred:
        """``call()`` once the persistent definition of the domain ``args`` names
        the images its guest moved to, if an earlier write of it failed
        (``SnapshotOps.follow_definition``): the operation reads that definition, and
        would build on images the guest has left. Nothing to wait for otherwise. A call
        that does not use the snapshot metadata (a backup) is not refused when the
        metadata cannot be read."""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        try:
            written = self.ops.creating.follow_definition(dom, what)
        except OperationFailed:  # (damaged metadata: every snapshot call says so)
            if uses_metadata:
                raise
            return call()
        if written.done and written.error is None:
            return call()
        out = Deferred()

        def then_call(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            try:
                result = call()
            except QemudError as exc:
                out.fail(exc)
                return
            if isinstance(result, Deferred):
                result.chain(out)
            else:
                out.resolve(result)
        written.add_done_callback(then_call)
        return out

    def follow_at_start(self, dom: DomainObj, live: DomainDef) -> None:
        """A start hook: if the persistent definition could not follow the guest's disks
        the last time (see ``DomainSnapshots.follow``), ``live`` does
        (``SnapshotOps.follow_live``). A domain without snapshot metadata costs a failed
        ``open``, one with metadata a read of its text."""
        if follow_pending(self.driver.files, self.root, dom.name):
            self.ops.creating.follow_live(dom, live)

    def _make_private(self) -> None:
        """The snapshot store holds what the guests wrote since their snapshots (the
        overlays, made by ``qemu-img`` under the daemon's umask): only the daemon's user
        may enter it, as the other guest data the daemon makes (save images, appliance
        VM directories, backups) is its user's alone. An existing store made by an
        earlier version (0755) is closed too."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            log.error("cannot make the snapshot store %s private (mode 0700): %s",
                      self.root, exc.strerror or exc)

    def undefine(self, inner: Handler, ctx: Any, args: pl.DomainFlagsArgs
                 ) -> Payload | Deferred:
        """DOMAIN_UNDEFINE: the snapshot metadata rule first, then the driver's own.

        The driver's managed save and NVRAM refusals are asked before anything of the
        snapshots is removed: an undefine they refuse must leave the snapshots as they
        were."""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        self.driver.saving.check_undefine(dom, args.flags)
        self.driver.firmware.check_undefine(dom, args.flags)
        self.ops.reverting.before_undefine(dom, args.flags)
        return inner(ctx, args)

    def no_snapshot_job(self, dom: DomainObj) -> None:
        """Refuse a change of ``dom``'s devices in its persistent definition while a
        snapshot create, revert or delete runs on it (or still writes its definition
        before its metadata): the job writes the metadata it read at its start, and a
        detached disk's image the change recorded as unplugged would be lost, then
        removed as no longer used."""
        job = dom.job
        if job in SNAPSHOT_JOBS:
            busy: str | None = job
        elif self._ops is not None:  # (no snapshot call since the start: none settles)
            busy = self._ops.store.settling.get(dom.uuid)
        else:
            busy = None
        if busy is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {busy} in progress")

    def disk_removed(self, dom: DomainObj) -> None:
        """A disk was detached: if the domain has snapshots, read their metadata now.

        Reading it records the image of a disk that left every definition (its data
        since a snapshot, see ``DomainSnapshots.find_unplugged``) at once, not at the
        next snapshot call, by which time a disk plugged again under the same target
        would hide it. A domain without snapshot metadata costs a ``stat``.
        """
        if (self.root / dom.name / "snapshots.json").is_file():
            self.ops.store.load(dom)

    def reattached(self, dom: DomainObj, record: StatusRecord, jobs: list[Any]) -> None:
        """A guest the last daemon left running is attached again: the merge and backup
        jobs that daemon left in its QEMU are ended, and what a backup left is removed
        (see :mod:`.leftovers`, imported only then). Nothing to do for most guests."""
        mine = [j for j in jobs if isinstance(j, dict)
                and str(j.get("device", "")).startswith(JOB_PREFIXES)]
        failed = self._has_failed_merge(dom)  # (a pivot no daemon recorded?)
        if not mine and record.job != "backup" and not failed:
            return
        from .leftovers import Leftovers, adopt_pivots
        if mine or record.job == "backup":
            Leftovers(self.driver, dom, record, mine).start()
        if failed:
            adopt_pivots(self.ops.deleting, dom)

    def _has_failed_merge(self, dom: DomainObj) -> bool:
        """Whether ``dom``'s snapshot metadata records a failed or interrupted merge,
        from its text (the snapshot modules are not loaded for a guest without)."""
        try:
            text = (self.root / dom.name / "snapshots.json").read_text()
        except OSError:
            return False
        return any(text.count(f'"{key}": "') != text.count(f'"{key}": ""')
                   for key in ("merge_failed", "merging"))

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        """A guest stopped: if it was transient, its snapshot metadata goes with it.

        Checked on the next loop turn: a transient domain that restarts by its
        on_poweroff/on_crash policy is added back to the registry right after the stop
        hooks, and keeps its snapshots then. A domain without metadata costs a ``stat``.
        """
        index = self.root / dom.name / "snapshots.json"
        if dom.persistent or not (index.is_file() or self.driver.files.pending(index)):
            return
        self.driver.loop.call_soon(lambda: self._ended(dom.name, dom.uuid))

    def _ended(self, name: str, uuid: str) -> None:
        if any(d.uuid == uuid or d.name == name for d in self.driver.registry):
            return  # restarted (or a domain of that name exists again): still in use
        from .records import SnapshotStore
        store = SnapshotStore(self.root, self.driver.files)
        index = store.index(name)
        if store.files.pending(index):  # (a merge its stop ended is writing it: after that)
            store.files.settled(index).add_done_callback(lambda _: self._ended(name, uuid))
            return
        store.set_aside(name, uuid)

    def check_interrupted_merges(self) -> None:
        """At start-up: a snapshot whose merge a killed daemon left half-done (its
        ``qemu-img commit`` or QEMU's job may have finished without it) is reported now,
        and recorded as a failed merge, by loading its domain's metadata (see
        ``SnapshotStore.load``). Only files that hold a merge mark are read as JSON."""
        for dom in self.driver.registry:
            path = self.root / dom.name / "snapshots.json"
            try:
                text = path.read_text()
            except OSError:
                continue
            if text.count('"merging": "') == text.count('"merging": ""'):
                continue  # no mark, or only empty ones
            try:
                self.ops.store.load(dom)
            except QemudError as exc:  # damaged metadata: every snapshot call says so
                log.warning("domain %s: %s", dom.name, exc.message)

    def set_aside_ended(self) -> None:
        """At start-up: the metadata of a domain the daemon no longer has and that has no
        persistent definition file either (a transient domain that ended) is set aside.
        A definition file that failed to load keeps its domain's metadata in place."""
        try:
            dirs = sorted(p for p in self.root.iterdir()
                          if (p / "snapshots.json").is_file())
        except OSError:
            return
        names = {d.name for d in self.driver.registry}
        for directory in dirs:
            name = directory.name
            if name in names or self.driver.store.definition_path(name).exists():
                continue
            from .records import SnapshotStore
            store = SnapshotStore(self.root, self.driver.files)
            uuid = store.owner(name)
            if uuid:
                store.set_aside(name, uuid)
            else:
                log.warning("snapshot metadata %s of no known domain names no uuid: left "
                            "where it is", directory / "snapshots.json")


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return SnapshotDuty(ctx).install()
