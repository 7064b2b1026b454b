"""The snapshot operations over one store and tool runner, built together.

The duty builds them on the first call that needs one (see :mod:`.duty`); they attach
their driver hooks then, since before that no block job of theirs can be running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qemud.driver.tools import ToolRunner

from .backup import BackupOps
from .base import tool_failure
from .create import CreateOps
from .delete import DeleteOps
from .records import SnapshotStore
from .revert import RevertOps
from .snapshot_xml import XMLOps

if TYPE_CHECKING:
    from pathlib import Path

    from qemud.driver import QemuDriver

__all__ = ["Operations"]


class Operations:
    def __init__(self, driver: QemuDriver, root: Path) -> None:
        self.store = store = SnapshotStore(root, driver.files)
        tools = ToolRunner(driver.loop, tool_failure)
        self.creating = CreateOps(driver, store, tools)
        self.reverting = RevertOps(driver, store, tools)
        self.deleting = DeleteOps(driver, store, tools)
        self.backups = BackupOps(driver, store, tools)
        self.describing = XMLOps(driver, store, tools)
        driver.qmp_event_hooks.append(self.backups.on_qmp_event)
        driver.stop_hooks.append(self.backups.on_stop)
        driver.qmp_event_hooks.append(self.deleting.on_qmp_event)
        driver.stop_hooks.append(self.deleting.on_stop)
