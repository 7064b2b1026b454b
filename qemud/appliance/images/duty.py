"""The images duty's wiring: the procedures it answers, the event listener, and the
start-up clean-up.

The operations (:class:`.operations.Operations`: the store, the tool runner, ``busy`` and the
import/deploy/update modules with the descriptor rules, ~0.5 MiB of RSS) are built by the
first image call, or by the start of a guest that has an appliance state (its update may
wait for a heartbeat), not at start-up (see :mod:`qemud.appliance`). At start-up only
:mod:`.layout` is needed: the clean-up, and which running guests have such a state.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Procedure
from protocol.constants import EventId, LifecycleEvent
from qemud.conf import ConfError, parse_domain_xml
from qemud.dispatch import Deferred
from qemud.driver.discard import discard, discard_tree, remove_discarded_below
from qemud.driver.saving import read_image
from qemud.driver.store import remove_dead_writes_below
from qemud.errors import NoDomain, QemudError

from .layout import (
    RESTART_KEY,
    STAGING_PREFIX,
    STATE_NAME,
    remove_unfinished_disks,
    require_no_pending_update,
    require_restorable,
    restart_marks,
    settle_deploys,
    settle_switch,
    store_root,
    vms_root,
)

if TYPE_CHECKING:
    from protocol import payloads as pl
    from protocol.fields import Payload
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj

    from .. import ApplianceContext
    from .operations import Operations

__all__ = ["ImagesDuty", "install"]

log = logging.getLogger(__name__)


class ImagesDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.dispatcher = ctx.daemon.dispatcher
        self.events = ctx.driver.events
        self.config = ctx.daemon.config
        self.store_dir = store_root(self.config)
        self.vms_dir = vms_root(self.config)
        self._ops: Operations | None = None

    @property
    def ops(self) -> Operations:
        if self._ops is None:
            from .operations import Operations
            self._ops = Operations(self.driver, self.config)
        return self._ops

    def install(self) -> dict[Procedure, Handler]:
        for directory, mode in ((self.store_dir, 0o755), (self.vms_dir, 0o700)):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, mode)
            except OSError as exc:  # the calls say so again; the daemon serves on
                log.error("appliance images: cannot use %s: %s", directory,
                          exc.strerror or exc)
        unused: list[str] = []  # disks no settled state names (a rollback's overlay)
        cut_short: list[Path] = []  # the directories of deploys never defined
        self.settle_switches(unused.extend)
        marked = restart_marks(self.vms_dir, [d for d in self.driver.registry if d.persistent])
        if marked:
            self.driver.autostart_hooks.append(lambda first: self.restart_cut_short(marked,
                                                                                   first))
        settle_deploys(self.vms_dir, {d.uuid for d in self.driver.registry},
                       {d.name for d in self.driver.registry}, cut_short.append)
        self.remove_debris()
        # removed after remove_debris, which takes any removal in flight for a killed
        # daemon's (and would start its own)
        if unused:
            discard(self.driver.loop, unused)
        for path in cut_short:
            discard_tree(self.driver.loop, path)
        self.events.add_listener(self.on_event)
        # the driver's handlers are registered before the appliance's: checked first
        self.dispatcher.wrap(Procedure.DOMAIN_SAVE, self.saving)
        self.dispatcher.wrap(Procedure.DOMAIN_MANAGED_SAVE, self.saving)
        # (after the snapshot duty's wrapper: asked before it removes any metadata)
        self.dispatcher.wrap(Procedure.DOMAIN_UNDEFINE, self.undefining)
        self.dispatcher.wrap(Procedure.DOMAIN_RESTORE, self.restoring)
        for dom in self.driver.registry:  # a pending update of a guest that was re-attached
            if dom.active and self._has_state(dom.name):
                self.ops.updates.arm(dom)
        P = Procedure
        return {P.APPLIANCE_IMPORT: lambda c, a: self.ops.imports.handle_import(c, a),
                P.APPLIANCE_DEPLOY: lambda c, a: self.ops.deploys.handle_deploy(c, a),
                P.APPLIANCE_UPDATE: lambda c, a: self.ops.updates.handle_update(c, a),
                P.APPLIANCE_RESET: lambda c, a: self.ops.deploys.handle_reset(c, a),
                P.APPLIANCE_LIST: lambda c, a: self.ops.deploys.handle_list(c, a)}

    def saving(self, inner: Handler, ctx: Any, args: Any) -> Payload | Deferred:
        """DOMAIN_SAVE, DOMAIN_MANAGED_SAVE: refused while an update waits for its
        confirmation. Its rollback would delete the new slot's overlay and recreate the
        scratch disks, and the saved memory state belongs to those disks: it could no
        longer be restored (a rollback at the deadline of a managed-saved VM did so).
        (While an image operation runs on the VM, the driver refuses a save itself, as
        it refuses starts, defines, renames, undefines and ``--config`` changes:
        ``Registry.operations``.)"""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        require_no_pending_update(self.config, dom, "save the memory state",
                                  self.driver.files)
        return inner(ctx, args)

    def undefining(self, inner: Handler, ctx: Any, args: Any) -> Payload | Deferred:
        """DOMAIN_UNDEFINE of a running VM: refused while an update waits for its
        confirmation. The guest would run on as a transient domain, and the rollback at
        the deadline would stop it and define the previous version again: a definition
        the user had removed, on a failed overlay just deleted (a guest that could not
        start, its domain gone until a daemon restart brought it back). A shut-off VM's
        undefine is not refused: nothing is armed for it (its update waits for a start
        that no longer comes), and refusing it would leave a VM whose new version
        cannot start with no way out. (While an image operation runs on the VM the
        driver refuses an undefine itself: ``Registry.operations``.)"""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        if dom.active and dom.persistent:
            require_no_pending_update(
                self.config, dom, "undefine the definition", self.driver.files,
                why=", whose confirmation or rollback needs the definition while the "
                    "guest runs",
                remedy="or destroy the domain first")
        return inner(ctx, args)

    def restoring(self, inner: Handler, ctx: Any, args: pl.RestoreArgs
                  ) -> Payload | Deferred:
        """DOMAIN_RESTORE of a deployed VM's save file: refused when an update, rollback
        or factory reset replaced its disks since the file was saved
        (``layout.require_restorable``). (A managed save image needs no such check: an
        update or reset is refused while one exists, and a managed save while an update
        is pending, so no rollback comes after one either.) A file that is not a save
        image, or names no deployed VM, is left to the restore itself."""
        path = Path(args.path)
        if path.is_absolute():
            try:
                image = read_image(path)
                definition = parse_domain_xml(image.xml, validate_schema=False)
            except (QemudError, ConfError):
                definition = None  # (the restore says why)
            if definition is not None and definition.uuid:
                try:
                    dom: DomainObj | None = self.driver.registry.by_uuid(definition.uuid)
                except NoDomain:
                    dom = None
                if dom is None or not dom.active:  # (a running one: the restore refuses)
                    require_restorable(self.config, self.driver.files, path,
                                       dom.name if dom is not None else definition.name,
                                       definition.uuid,
                                       {d.target_dev: d.source for d in definition.disks
                                        if d.target_dev})
        return inner(ctx, args)

    def on_event(self, event_id: EventId, ref: pl.DomainRef, data: tuple[Any, ...]) -> None:
        """The update's listener (a started guest's heartbeat, the guest's confirming
        event), once the operations exist; before that only a guest with an appliance
        state starting can concern it (no update has been armed yet)."""
        if self._ops is None:
            if not (event_id == EventId.LIFECYCLE and data
                    and data[0] == LifecycleEvent.STARTED and self._has_state(ref.name)):
                return
        self.ops.updates.on_event(event_id, ref, data)

    def _has_state(self, name: str) -> bool:
        return (self.vms_dir / name / STATE_NAME).exists()

    def settle_switches(self, unused: Callable[[list[str]], object]) -> None:
        """The states of VMs whose update or rollback a killed daemon cut short between
        its two writes (state, definition) made to agree with the definition again
        (``settle_switch``; the disks no state names any more go to ``unused``);
        start-up only, before ``remove_debris`` (a switch that happened still has its
        prepared scratch images to rename into place)."""
        for dom in self.driver.registry:
            if dom.persistent and self._has_state(dom.name):
                settle_switch(self.vms_dir / dom.name / STATE_NAME, dom, unused)

    def restart_cut_short(self, marked: list[tuple[DomainObj, str, Path]],
                          first: bool) -> None:
        """After autostart (``QemuDriver.autostart_hooks``): start the VMs that an
        update, rollback or factory reset had stopped when a killed daemon cut it short
        (``layout.restart_marks``), as the operation would have, and drop their marks.
        Not after a host reboot (``first``): the guests that run then are the
        autostarted ones, as for any guest; nor one that runs (the operation had
        started it again). One whose QEMU the re-attach is stopping (the operation's
        own start was cut short too) is started once that QEMU has exited."""
        for dom, what, path in marked:
            if not self.driver.registry.holds(dom):
                continue
            if first or (dom.active and dom.stop_intent is None):
                self._drop_restart_mark(dom, path)
            elif dom.active:
                stopped = Deferred()
                dom.stop_waiters.append(stopped)
                stopped.add_done_callback(functools.partial(self._after_stop, dom, what,
                                                            path))
            else:
                self._restart(dom, what, path)

    def _after_stop(self, dom: DomainObj, what: str, path: Path, _: Deferred) -> None:
        # on a later turn: after the stop's own handling (_on_exit) has run
        self.driver.loop.call_soon(lambda: self._restart(dom, what, path))

    def _restart(self, dom: DomainObj, what: str, path: Path) -> None:
        if not self.driver.registry.holds(dom) or dom.active:
            self._drop_restart_mark(dom, path)
            return
        if what == "factory reset":  # (its disks are replaced one by one)
            log.warning("domain %s: its factory reset had stopped it when the daemon ended, "
                        "and may not have replaced every disk (run it again): starting it "
                        "again", dom.name)
        else:
            log.warning("domain %s: its appliance %s had stopped it when the daemon ended: "
                        "starting it again", dom.name, what)
        try:
            started = self.driver.saving.start(dom)
        except Exception as exc:
            log.error("domain %s: start after its appliance %s: %s", dom.name, what, exc)
            self._drop_restart_mark(dom, path)
            return

        def done(d: Deferred) -> None:
            self._drop_restart_mark(dom, path)  # (first: what a rollback reads builds on it)
            if d.error is not None:
                log.error("domain %s: start after its appliance %s: %s", dom.name, what,
                          d.error.message)
                # an update whose define had landed: back to the previous version, as
                # the update itself does when its restart fails (on a later turn: the
                # failed start's QEMU is still being cleaned up when this is called)
                why = (f"the guest did not start again after the daemon ended during its "
                       f"{what}: {d.error.message}")
                self.driver.loop.call_soon(functools.partial(self._roll_back, dom, why))
        started.add_done_callback(done)

    def _roll_back(self, dom: DomainObj, why: str) -> None:
        self.ops.updates.roll_back_unstartable(dom, why)

    def _drop_restart_mark(self, dom: DomainObj, path: Path) -> None:
        """The record without its :data:`RESTART_KEY`, written off the loop (a failure
        is logged: the next daemon finds the mark again)."""
        files = self.driver.files
        try:
            data = json.loads(files.read_text(path))
        except (OSError, ValueError) as exc:
            log.error("domain %s: cannot read %s: %s", dom.name, path, exc)
            return
        if not isinstance(data, dict) or data.pop(RESTART_KEY, None) is None:
            return
        files.write(path, json.dumps(data, indent=1), f"the appliance state of '{dom.name}'"
                    ).add_done_callback(lambda d: log.error("domain %s: %s", dom.name,
                                                            d.error.message)
                                        if d.error is not None else None)

    def remove_debris(self) -> None:
        """What a killed daemon left: unfinished imports, what it was removing (trees
        and disks renamed away, ``discard.discard``), the temp files of VM state writes it
        never renamed (see ``remove_dead_writes``) and the disks of VMs it never finished
        creating (``remove_unfinished_disks``); start-up only, under the pidfile lock. An
        import's index is written inside its staging directory. Trees are removed by a
        child, not here: an unpacked tarball may hold many files."""
        loop = self.driver.loop
        for stale in self.store_dir.glob(f"{STAGING_PREFIX}*"):
            log.info("image store: removing %s (an import the daemon did not finish)", stale)
            discard_tree(loop, stale)
        remove_discarded_below(loop, self.store_dir, depth=0)
        remove_discarded_below(loop, self.vms_dir)
        remove_dead_writes_below(self.vms_dir)
        remove_unfinished_disks(self.vms_dir)


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return ImagesDuty(ctx).install()
