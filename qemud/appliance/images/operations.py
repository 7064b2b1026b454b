"""The image operations over one store, tool runner and ``busy`` map, built together.

The duty builds them on the first image call or the start of a guest with an appliance
state (see :mod:`.duty`); importing this module imports every operation module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qemud.driver.tools import ToolRunner

from .base import tool_failure
from .deploy import DeployOps
from .importer import ImportOps
from .layout import store_root
from .store import ImageStore
from .update import UpdateOps

if TYPE_CHECKING:
    from qemud.config import Config
    from qemud.driver import QemuDriver

__all__ = ["Operations"]


class Operations:
    def __init__(self, driver: QemuDriver, config: Config) -> None:
        store = ImageStore(store_root(config))
        runner = ToolRunner(driver.loop, tool_failure)
        busy = driver.busy  # (domain uuid -> the image operation in progress on it)
        self.imports = ImportOps(driver, config, store, runner, busy)
        self.deploys = DeployOps(driver, config, store, runner, busy)
        self.updates = UpdateOps(driver, config, store, runner, busy)
