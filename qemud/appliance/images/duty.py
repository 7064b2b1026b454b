"""The images duty's wiring: one store, tool runner and ``busy`` map, the operations
over them, the procedures they answer, and the start-up clean-up."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from protocol import Procedure
from qemud.driver.store import remove_dead_writes_below

from ..tools import ToolRunner
from .base import remove_unfinished_disks, rmtree, tool_failure
from .deploy import DeployOps
from .importer import STAGING_PREFIX, ImportOps
from .store import ImageStore, store_root, vms_root
from .update import UpdateOps

if TYPE_CHECKING:
    from qemud.dispatch import Handler

    from .. import ApplianceContext

__all__ = ["ImagesDuty", "install"]

log = logging.getLogger(__name__)


class ImagesDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.events = ctx.driver.events
        config = ctx.daemon.config
        self.store = ImageStore(store_root(config))
        self.vms_dir = vms_root(config)
        runner = ToolRunner(ctx.driver.loop, tool_failure)
        busy: dict[str, str] = {}  # domain uuid -> what is in progress
        self.imports = ImportOps(self.driver, config, self.store, runner, busy)
        self.deploys = DeployOps(self.driver, config, self.store, runner, busy)
        self.updates = UpdateOps(self.driver, config, self.store, runner, busy)

    def install(self) -> dict[Procedure, Handler]:
        for directory, mode in ((self.store.root, 0o755), (self.vms_dir, 0o700)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, mode)
            except OSError as exc:  # the calls say so again; the daemon serves on
                log.error("appliance images: cannot use %s: %s", directory,
                          exc.strerror or exc)
        self.remove_debris()
        self.events.add_listener(self.updates.on_event)
        for dom in self.driver.registry:  # a pending update of a guest that was re-attached
            if dom.active:
                self.updates.arm(dom)
        P = Procedure
        return {P.APPLIANCE_IMPORT: self.imports.handle_import,
                P.APPLIANCE_DEPLOY: self.deploys.handle_deploy,
                P.APPLIANCE_UPDATE: self.updates.handle_update,
                P.APPLIANCE_RESET: self.deploys.handle_reset,
                P.APPLIANCE_LIST: self.deploys.handle_list}

    def remove_debris(self) -> None:
        """What a killed daemon left: unfinished imports, the temp files of VM state
        writes it never renamed (see ``remove_dead_writes``) and the disks of VMs it never
        finished creating (``remove_unfinished_disks``); start-up only, under the pidfile
        lock. An import's index is written inside its staging directory."""
        for stale in self.store.root.glob(f"{STAGING_PREFIX}*"):
            log.info("image store: removing %s (an import the daemon did not finish)", stale)
            rmtree(stale)
        remove_dead_writes_below(self.vms_dir)
        remove_unfinished_disks(self.vms_dir)


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return ImagesDuty(ctx).install()
