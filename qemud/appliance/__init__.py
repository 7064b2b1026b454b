"""The appliance layer: what makes qemud an appliance host and not only a libvirtd clone.

Each duty is a module with an ``install(ctx)`` function that hooks into the driver (its
power/reset/stop hooks, the event bus, the loop) and returns the handlers of its
procedures. Everything runs inside the daemon's one loop.

A duty's module is imported at every start-up and stays for the daemon's life, so it
should hold only what an idle daemon uses (hooks and listeners that must be in place, the
start-up clean-up). What only a procedure needs is better imported by its first call, as
the snapshot and image operations and template rendering are: a few milliseconds of the
loop, once, on a call that is slow anyway.

==================  ====================================================================
module              duty
==================  ====================================================================
inspect, template   domain XML from host inspection (template + declarative formulas)
power               power-cycle following: guest shutdown/reboot -> host policy
heartbeat           heartbeat watchdog on a virtio-serial channel
hotplug             udev rules: host block devices hot-added to guests (pyudev)
snapshots           external snapshots, revert, delete, backup
images              appliance images: import, deploy, A/B update, factory reset
bundle              support bundle
==================  ====================================================================
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import Procedure

if TYPE_CHECKING:
    from qemud.daemon import Daemon
    from qemud.dispatch import Handler
    from qemud.driver import QemuDriver

__all__ = ["ApplianceContext", "install", "DUTIES"]

log = logging.getLogger(__name__)

DUTIES = ("inspect", "power", "heartbeat", "hotplug", "snapshots", "images", "bundle")


@dataclass
class ApplianceContext:
    daemon: Daemon
    driver: QemuDriver


def install(daemon: Daemon, driver: QemuDriver) -> dict[Procedure, Handler]:
    """Install every duty that is present; returns the handlers they provide."""
    ctx = ApplianceContext(daemon, driver)
    handlers: dict[Procedure, Handler] = {}
    for duty in DUTIES:
        try:
            module = importlib.import_module(f"{__name__}.{duty}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{duty}":
                raise
            log.debug("appliance duty %s not available", duty)
            continue
        handlers.update(module.install(ctx))
    return handlers
