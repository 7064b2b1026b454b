"""The snapshot duty's wiring: the procedures it answers, the DOMAIN_UNDEFINE check, and
the start-up clean-up of the metadata directories.

The operations (:class:`.operations.Operations`: every other module of the package, with
``secrets`` and ``hashlib``, ~0.5 MiB of RSS) are built by the first snapshot procedure or
undefine, not at start-up (see :mod:`qemud.appliance`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import Procedure
from qemud.driver.store import remove_dead_writes_below

if TYPE_CHECKING:
    from protocol import payloads as pl
    from protocol.fields import Payload
    from qemud.dispatch import Deferred, Handler
    from qemud.driver.domain import DomainObj

    from .. import ApplianceContext
    from .operations import Operations

__all__ = ["SnapshotDuty", "install"]


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
        # the temp files of metadata writes a killed daemon never renamed: only now, while
        # the pidfile lock guarantees no write is in flight (see remove_dead_writes)
        remove_dead_writes_below(self.root)
        # the driver's handlers are registered before the appliance's: check them first
        self.dispatcher.wrap(Procedure.DOMAIN_UNDEFINE, self.undefine)
        self.driver.disk_removed_hooks.append(self.disk_removed)
        P = Procedure
        return {
            P.DOMAIN_SNAPSHOT_CREATE: lambda c, a: self.ops.creating.create(c, a),
            P.DOMAIN_SNAPSHOT_LIST: lambda c, a: self.ops.creating.list_snapshots(c, a),
            P.DOMAIN_SNAPSHOT_REVERT: lambda c, a: self.ops.reverting.revert(c, a),
            P.DOMAIN_SNAPSHOT_DELETE: lambda c, a: self.ops.deleting.delete(c, a),
            P.DOMAIN_BACKUP: lambda c, a: self.ops.backups.backup(c, a),
        }

    def undefine(self, inner: Handler, ctx: Any, args: pl.DomainFlagsArgs
                 ) -> Payload | Deferred:
        """DOMAIN_UNDEFINE: the snapshot metadata rule first, then the driver's own."""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        self.ops.reverting.before_undefine(dom, args.flags)
        return inner(ctx, args)

    def disk_removed(self, dom: DomainObj) -> None:
        """A disk was detached: if the domain has snapshots, read their metadata now.

        Reading it records the image of a disk that left every definition (its data
        since a snapshot, see ``DomainSnapshots.find_unplugged``) at once, not at the
        next snapshot call, by which time a disk plugged again under the same target
        would hide it. A domain without snapshot metadata costs a ``stat``.
        """
        if (self.root / dom.name / "snapshots.json").is_file():
            self.ops.store.load(dom)


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return SnapshotDuty(ctx).install()
