"""The snapshot duty's wiring: one store and tool runner, the operations over them, the
procedures they answer and the driver hooks and procedure they watch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import Procedure

from ..tools import ToolRunner
from .backup import BackupOps
from .base import tool_failure
from .create import CreateOps
from .delete import DeleteOps
from .records import SnapshotStore
from .revert import RevertOps

if TYPE_CHECKING:
    from protocol import payloads as pl
    from protocol.fields import Payload
    from qemud.dispatch import Deferred, Handler

    from .. import ApplianceContext

__all__ = ["SnapshotDuty", "install"]


class SnapshotDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.dispatcher = ctx.daemon.dispatcher
        self.store = SnapshotStore(ctx.daemon.config.paths.state_dir / "snapshots")
        self.tools = ToolRunner(ctx.driver.loop, tool_failure)
        self.creating = CreateOps(self.driver, self.store, self.tools)
        self.reverting = RevertOps(self.driver, self.store, self.tools)
        self.deleting = DeleteOps(self.driver, self.store, self.tools)
        self.backups = BackupOps(self.driver, self.store, self.tools)

    def install(self) -> dict[Procedure, Handler]:
        self.driver.qmp_event_hooks.append(self.backups.on_qmp_event)
        self.driver.stop_hooks.append(self.backups.on_stop)
        self.driver.qmp_event_hooks.append(self.deleting.on_qmp_event)
        self.driver.stop_hooks.append(self.deleting.on_stop)
        # the driver's handlers are registered before the appliance's: check them first
        self.dispatcher.wrap(Procedure.DOMAIN_UNDEFINE, self.undefine)
        P = Procedure
        return {
            P.DOMAIN_SNAPSHOT_CREATE: self.creating.create,
            P.DOMAIN_SNAPSHOT_LIST: self.creating.list_snapshots,
            P.DOMAIN_SNAPSHOT_REVERT: self.reverting.revert,
            P.DOMAIN_SNAPSHOT_DELETE: self.deleting.delete,
            P.DOMAIN_BACKUP: self.backups.backup,
        }

    def undefine(self, inner: Handler, ctx: Any, args: pl.DomainFlagsArgs
                 ) -> Payload | Deferred:
        """DOMAIN_UNDEFINE: the snapshot metadata rule first, then the driver's own."""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        self.reverting.before_undefine(dom, args.flags)
        return inner(ctx, args)


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return SnapshotDuty(ctx).install()
