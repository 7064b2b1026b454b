"""A/B update of a deployed VM (APPLIANCE_UPDATE), its confirmation by the guest's
heartbeat, and the rollback when that does not come.

The VM is stopped (if running), its system disk gets a new overlay in the other slot on
the new version's image (the previous overlay is kept), data disks are kept, scratch
disks recreated, and the guest started again if it was running. The update is pending
until the guest's heartbeat is seen (an appliance event of :data:`CONFIRM_KINDS`, or the
heartbeat duty's ``heartbeat.count`` stats, looked at every :data:`CONFIRM_POLL` s) within
``appliance.update_deadline`` of its start; otherwise it is rolled back to the previous
slot and version by itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from protocol.constants import EventId, LifecycleEvent
from qemud.dispatch import Deferred
from qemud.driver.discard import discard
from qemud.errors import (
    InvalidArg,
    NoDomain,
    OperationFailed,
    OperationInvalid,
    QemudError,
    StartInterrupted,
)
from qemud.loop import Timer
from qemud.tasks import Task, run_task

from ..metadata import Origin, read_settings, write_settings
from .base import ImageOps, abandon_prepared, disk_file
from .descriptor import Descriptor, check_host
from .layout import STATE_NAME
from .store import VMState

if TYPE_CHECKING:
    from qemud.conf import DomainDef
    from qemud.config import Config
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.driver.tools import ToolRunner

    from .store import ImageStore

__all__ = ["UpdateOps", "CONFIRM_KINDS", "CONFIRM_POLL"]

log = logging.getLogger(__name__)

#: appliance events that confirm a pending update of their domain (see the module docs)
CONFIRM_KINDS = ("heartbeat-seen", "heartbeat", "heartbeat-ok", "heartbeat-resumed")
#: seconds between looks at the heartbeat duty's published counters while confirming
CONFIRM_POLL = 0.5


@dataclass
class _Watch:
    """A started guest whose update waits for its heartbeat."""

    uuid: str
    since: float
    deadline: Timer
    poll: Timer | None = None


class UpdateOps(ImageOps):
    """APPLIANCE_UPDATE; confirmation and rollback (the duty routes events to
    :meth:`on_event` and arms the guests it re-attached with :meth:`arm`)."""

    def __init__(self, driver: QemuDriver, config: Config, store: ImageStore,
                 runner: ToolRunner, busy: dict[str, str]) -> None:
        super().__init__(driver, config, store, runner, busy)
        self.watches: dict[str, _Watch] = {}  # domain uuid -> its pending confirmation

    def handle_update(self, ctx: Any, args: pl.UpdateArgs) -> Deferred:
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        state = self.state_for_change(dom, "update")
        if not args.version:
            raise InvalidArg("give the version to update to")
        if args.version == state.version:
            raise OperationInvalid(f"domain '{dom.name}' already runs {state.appliance} "
                                   f"{state.version}")
        new, new_dir = self.store.get(state.appliance, args.version)
        check_host(new, self.driver.caps)
        _check_compatible(state, new)
        self.qemu_img()
        self.busy[dom.uuid] = f"update to {new.ref}"
        return run_task(self.loop, self._update(dom, state, new, new_dir), "APPLIANCE_UPDATE")

    def _update(self, dom: DomainObj, state: VMState, new: Descriptor, new_dir: Path) -> Task:
        """Stop, new overlays in the other slot, new scratch images beside the scratch
        disks, then the definition and the state switched by :meth:`_commit_switch`
        (the scratch images renamed into place only once the define succeeded: a failed
        update leaves the VM as it was, scratch contents included), and the restart."""
        old_version = state.version
        was_running = dom.active
        switched = False
        prepared: list[tuple[Path, Path]] = []  # (new scratch image, scratch disk)
        try:
            yield from self._stop_to_restart(dom, state, "update")
            vmdir = self.vm_dir(dom.name)
            slot = "b" if state.slot == "a" else "a"
            system: dict[str, str] = {}
            for disk in new.disks_of("system"):
                assert disk.file is not None
                path = vmdir / disk_file(disk, slot)
                yield from self._create_overlay(path, new_dir / disk.file, disk.format)
                system[disk.target] = str(path)
            after = state.copy()
            for disk in new.disks_of("scratch"):
                assert disk.size is not None
                scratch = Path(state.disks[disk.target]["path"])
                tmp = yield from self._prepare_scratch(scratch, disk.size)
                prepared.append((tmp, scratch))
                after.disks[disk.target]["size"] = disk.size
            definition = dom.persistent_definition.copy()
            after.previous = {
                "version": old_version, "slot": state.slot,
                "system": {t: state.disks[t]["path"] for t in state.targets("system")},
                # (a rollback recreates the scratch disks at these sizes, not the new ones)
                "scratch": {t: state.disks[t]["size"] for t in state.targets("scratch")},
                "os": _os_values(definition)}
            for target, overlay in system.items():
                after.disks[target]["path"] = overlay
            after.version, after.slot = new.version, slot
            after.pending = {"from": old_version, "to": new.version, "since": time.time()}
            after.disks_changed(f"update from {old_version} to {new.version}")
            _switch(definition, system, _new_os(new, new_dir),
                    Origin(state.appliance, new.version))
            yield from self._commit_switch(dom, state, after, definition, prepared)
            switched = True
            deadline = self.config.appliance.update_deadline
            self.events.appliance(dom.ref(), "update-applied",
                                  f"{state.appliance} {old_version} -> {new.version}: system "
                                  f"disk(s) {', '.join(sorted(system))} switched to slot "
                                  f"{slot}; heartbeat due within {deadline:g} s of the "
                                  f"{'restart' if was_running else 'next start'}")
            log.info("domain %s: updated %s %s -> %s (slot %s)", dom.name, state.appliance,
                     old_version, new.version, slot)
            if was_running:
                try:
                    yield self.driver.lifecycle.start(dom, busy_ok=True)
                except StartInterrupted:  # a client's destroy: not the new version's fault
                    raise OperationFailed(
                        f"update of '{dom.name}' to {new.ref} is installed, but the guest "
                        "was destroyed during its restart: it stays shut off on "
                        f"{new.version}, and the update is confirmed or rolled back after "
                        "its next start") from None
                except QemudError as exc:
                    why = f"the guest did not start on {new.version}: {exc.message}"
                    yield from self._rollback(dom, why, restart=True)
                    raise OperationFailed(f"update of '{dom.name}' to {new.ref} failed and "
                                          f"was rolled back to {old_version}: {why}") from None
        except QemudError:
            if not switched and was_running and not dom.active:
                try:  # nothing changed: the guest runs on as it was
                    yield self.driver.lifecycle.start(dom, busy_ok=True)
                except QemudError as exc:
                    log.error("domain %s: restart after a failed update: %s", dom.name,
                              exc.message)
            raise
        finally:
            abandon_prepared(prepared)
            if was_running:
                self._restart_handled(dom)
            self.busy.pop(dom.uuid, None)
        return Empty()

    def _commit_switch(self, dom: DomainObj, before: VMState, after: VMState,
                       definition: DomainDef, prepared: list[tuple[Path, Path]]) -> Task:
        """Define ``definition`` of ``dom`` and make ``after`` the VM's state (``before``
        is the state of the definition in place), then rename the ``prepared`` scratch
        images over the scratch disks; the new overlays must exist already. Refused
        (nothing written) when ``dom`` is no longer the persistent domain of its name:
        the define would bring back a domain the user undefined.

        The state file and the definition are two files, written one after the other:
        a daemon killed between the two writes must not leave them disagreeing for
        good. Written first, the new state would say a version, slot and pending update
        the definition never got (the heartbeat then confirms the old version as the
        new, or a rollback finds disks that are "not the appliance's" and never runs);
        written second, a new definition would run with a state that calls its disks
        foreign (every later update or reset refused) and no update pending (no
        confirmation, no rollback). So the new state is written *ahead*, under the
        record's ``switch`` key, the record itself staying ``before``; then the define;
        then ``after`` alone. Whatever point a crash hits, the record holds the state of
        the definition on disk, or a switch that start-up settles by looking at that
        definition (``layout.settle_switch``: its system disks are the switch's, or
        they are not). A failed define writes ``before`` back (should that fail too,
        the switch is settled at the next read of the state, or the next start).

        The scratch images are renamed only after the define, so a failed one leaves
        the scratch disks' contents as they were, and before the final write: a switch
        that start-up finds to have happened renames those still waiting (they were
        complete before the switch was written), one that did not leaves them to
        ``remove_unfinished_disks``. (A failed define also leaves the new overlays in
        the other slot: unused, replaced by the next update's.) Once the define
        succeeded, a failed final write is logged, not raised: the change happened, and
        the switch left in the record is settled by its next read.
        """
        if not self._still_defined(dom):
            raise OperationFailed(f"domain '{dom.name}' is no longer defined: its "
                                  f"definition is not switched to {after.version}")
        before = dataclasses.replace(before, switch=None)  # (only this switch is recorded)
        after = dataclasses.replace(after, switch=None)
        yield self.save_state(before.switching_to(after))
        try:
            yield self._define(definition)
        except QemudError:
            try:
                yield self.save_state(before)
            except QemudError as exc:
                log.error("domain %s: %s (the state is settled at its next use)",
                          before.vm, exc.message)
            raise
        for tmp, scratch in prepared:
            try:
                os.replace(tmp, scratch)
            except OSError as exc:  # (after the point of no return: logged, as below)
                log.error("domain %s: cannot put the new scratch image %s in place: %s "
                          "(removed at the next start; the old contents stay)", before.vm,
                          tmp, exc.strerror or exc)
        prepared.clear()
        try:
            yield self.save_state(after)
        except QemudError as exc:
            # the define was the point of no return: the change happened, and the
            # record's switch says so to its next settling read (``arm`` settles)
            log.error("domain %s: %s (the switch to %s %s is settled at the state's next "
                      "read)", before.vm, exc.message, after.appliance, after.version)

    # -- confirmation and rollback -------------------------------------------------------

    def on_event(self, event_id: EventId, ref: pl.DomainRef, data: tuple[object, ...]
                 ) -> None:
        if event_id == EventId.LIFECYCLE and data and data[0] == LifecycleEvent.STARTED:
            if (self.vms_dir / ref.name / STATE_NAME).exists():
                dom = self._find(ref)
                if dom is not None:
                    self.arm(dom)
        elif event_id == EventId.LIFECYCLE and data and data[0] == LifecycleEvent.UNDEFINED:
            # (undefined, or renamed: a shut-off VM, whose update waits for its next start)
            if self._disarm(_uuid_text(ref)) is not None:
                log.info("domain %s: no longer defined under this name while its update "
                         "waited for a heartbeat: its deadline is dropped", ref.name)
        elif event_id == EventId.APPLIANCE and data and data[0] in CONFIRM_KINDS:
            watch = self.watches.get(_uuid_text(ref))
            if watch is not None:
                self._confirm(watch.uuid, f"appliance event '{data[0]}' "
                                          f"{time.monotonic() - watch.since:.1f} s after "
                                          "the start")

    def arm(self, dom: DomainObj) -> None:
        """A guest with an unconfirmed update started: its heartbeat is now due."""
        if dom.uuid in self.watches or not dom.persistent:
            return  # (a transient domain: no definition to roll back, see _still_defined)
        # settled even during the operation's own restart: its switch, if its final
        # write failed, is complete (the define is on disk)
        state = self.load_state(dom, settle=True)
        if state is None or state.pending is None:
            return
        other = _live_system_disks_differ(dom, state)
        if other:
            log.warning("domain %s: update %s -> %s not armed: %s (the guest does not run "
                        "the new version; it is armed at a start that does)", dom.name,
                        state.pending["from"], state.pending["to"], other)
            return
        try:
            policy = read_settings(dom.current()).heartbeat
        except QemudError:
            policy = None
        if policy is None:
            self._confirm(dom.uuid, "the guest has no heartbeat policy: confirmed when it "
                                    "started")
            return
        deadline = self.config.appliance.update_deadline
        uuid = dom.uuid
        watch = _Watch(uuid, time.monotonic(),
                       self.loop.call_later(deadline, lambda: self._expired(uuid)))
        self.watches[uuid] = watch
        watch.poll = self.loop.call_later(CONFIRM_POLL, lambda: self._poll(uuid))
        log.info("domain %s: update %s -> %s waits for a heartbeat (%g s)", dom.name,
                 state.pending["from"], state.pending["to"], deadline)

    def _poll(self, uuid: str) -> None:
        """The heartbeat duty's own counters (its DOMAIN_STATS params): a heartbeat seen
        since this start confirms the update, as the events of CONFIRM_KINDS do."""
        watch = self.watches.get(uuid)
        if watch is None:
            return
        watch.poll = None
        dom = self._by_uuid(uuid)
        if dom is not None and dom.active:
            for hook in list(self.driver.stats_hooks):
                try:
                    params = hook(dom)
                except Exception:
                    log.exception("domain %s: stats hook failed", dom.name)
                    continue
                for p in params:
                    if p.name == "heartbeat.count" and p.int_value > 0:
                        self._confirm(uuid, f"heartbeat seen "
                                            f"{time.monotonic() - watch.since:.1f} s after "
                                            "the start")
                        return
        watch.poll = self.loop.call_later(CONFIRM_POLL, lambda: self._poll(uuid))

    def _disarm(self, uuid: str) -> _Watch | None:
        watch = self.watches.pop(uuid, None)
        if watch is not None:
            watch.deadline.cancel()
            if watch.poll is not None:
                watch.poll.cancel()
        return watch

    def _confirm(self, uuid: str, how: str) -> None:
        self._disarm(uuid)
        dom = self._by_uuid(uuid)
        if dom is None:
            return
        state = self.load_state(dom)
        if state is None or state.pending is None:
            return
        other = _live_system_disks_differ(dom, state)
        if other:  # (armed for the new disks: a guest on others vouches for nothing)
            log.warning("domain %s: update %s -> %s not confirmed (%s): %s", dom.name,
                        state.pending["from"], state.pending["to"], how, other)
            return
        pending, state.pending = state.pending, None

        def saved(d: Deferred) -> None:
            if d.error is not None:
                log.error("domain %s: %s", dom.name, d.error.message)
            log.info("domain %s: update %s -> %s confirmed (%s)", dom.name,
                     pending["from"], pending["to"], how)
            self.events.appliance(dom.ref(), "update-confirmed", f"{state.appliance} "
                                  f"{pending['from']} -> {pending['to']}: {how}")
        self.save_state(state).add_done_callback(saved)

    def _expired(self, uuid: str) -> None:
        watch = self.watches.get(uuid)
        dom = self._by_uuid(uuid)
        if watch is None or dom is None or not self._still_defined(dom):
            self._disarm(uuid)
            return
        if uuid in self.busy or dom.job is not None:  # e.g. a start in progress: soon
            watch.deadline = self.loop.call_later(1.0, lambda: self._expired(uuid))
            return
        self._disarm(uuid)
        deadline = self.config.appliance.update_deadline
        self._roll_back_in_background(dom, f"no heartbeat within {deadline:g} s of the "
                                           "start", restart=dom.active)

    def roll_back_unstartable(self, dom: DomainObj, why: str) -> bool:
        """A VM whose update is pending and whose start failed outside the update (the
        next daemon's restart of an update a killed daemon cut short): rolled back and
        started again on the previous version, as the update does when its own restart
        fails; whether a rollback began (not: nothing pending, or an operation runs)."""
        state = self.load_state(dom)
        if state is None or state.pending is None or dom.uuid in self.busy or dom.active \
                or not self._still_defined(dom):
            return False
        self._disarm(dom.uuid)
        self._roll_back_in_background(dom, why, restart=True)
        return True

    def _roll_back_in_background(self, dom: DomainObj, why: str, restart: bool) -> None:
        """:meth:`_rollback` as a task of its own, the VM busy meanwhile; a failure is
        logged and reported (event ``update-rollback-failed``)."""
        uuid = dom.uuid
        self.busy[uuid] = "rollback"

        def task() -> Task:
            try:
                yield from self._rollback(dom, why, restart=restart)
            finally:
                self.busy.pop(uuid, None)

        def done(d: Deferred) -> None:
            if d.error is not None:
                log.error("domain %s: rollback failed: %s", dom.name, d.error.message)
                self.events.appliance(dom.ref(), "update-rollback-failed", d.error.message)
        run_task(self.loop, task(), "appliance rollback").add_done_callback(done)

    def _rollback(self, dom: DomainObj, why: str, restart: bool) -> Task:
        """Back to the previous slot and version (the failed overlay is deleted).

        Switched as an update is (:meth:`_commit_switch`): the scratch disks are
        recreated beside them and renamed into place after the define, and the failed
        overlay deleted after the state is written: a rollback whose define fails
        changes nothing but the guest's stop (the update stays pending).

        Only while every disk is still the appliance's (as update and reset check): a
        disk on another image (an external snapshot's overlay, a changed definition) may
        read from the failed overlay or a scratch image, which a rollback deletes or
        recreates. Then nothing is touched (the guest keeps running) and the call fails
        saying why; the update stays pending, and is confirmed or rolled back after the
        VM's next start (see :meth:`arm`)."""
        self._disarm(dom.uuid)
        state = self.load_state(dom, settle=True)  # (busy: this rollback's)
        if state is None or state.previous is None:
            raise OperationFailed(f"domain '{dom.name}': no previous system disk to roll "
                                  "back to")
        foreign = self.foreign_disk(dom, state)
        if foreign:
            pending = state.pending or {"from": state.previous["version"],
                                        "to": state.version}
            message = (f"domain '{dom.name}': update from {pending['from']} to "
                       f"{pending['to']} not rolled back ({why}), nothing was changed: "
                       f"{foreign}. The update stays pending: give the disks back to the "
                       "appliance (delete the snapshots, latest first) and the rollback "
                       "is tried again after the VM's next start")
            raise OperationFailed(message)  # logged and reported by the caller
        # (a rollback after an update's failed restart stops nothing: the update's own
        # restart mark is in the state it copies, and the update drops it)
        was_running = dom.active
        try:
            yield from self._stop_to_restart(dom, state, "rollback")
            if not self._still_defined(dom):  # (undefined meanwhile: nothing to put back)
                raise OperationFailed(f"domain '{dom.name}': update not rolled back "
                                      f"({why}): the domain is no longer defined")
            yield from self._roll_back(dom, state, why, restart)
        finally:
            if was_running:
                self._restart_handled(dom)

    def _roll_back(self, dom: DomainObj, state: VMState, why: str, restart: bool) -> Task:
        """:meth:`_rollback`'s work once the guest is stopped."""
        previous = state.previous
        assert previous is not None
        failed_version = state.version
        failed = {t: state.disks[t]["path"] for t in state.targets("system")}
        prepared: list[tuple[Path, Path]] = []  # renamed into place by _commit_switch
        try:
            # the previous version's sizes (a previous record from before they were
            # recorded: the current ones)
            sizes = {t: int(previous.get("scratch", {}).get(t, state.disks[t]["size"]))
                     for t in state.targets("scratch")}
            for target, size in sizes.items():
                scratch = Path(state.disks[target]["path"])
                tmp = yield from self._prepare_scratch(scratch, size)
                prepared.append((tmp, scratch))
            definition = dom.persistent_definition.copy()
            _switch(definition, previous["system"], previous["os"],
                    Origin(state.appliance, previous["version"]))
            after = state.copy()
            for target, path in previous["system"].items():
                after.disks[target]["path"] = path
            for target, size in sizes.items():
                after.disks[target]["size"] = size
            after.version, after.slot = previous["version"], previous["slot"]
            after.previous = after.pending = None
            after.disks_changed(f"rollback from {failed_version} to {previous['version']}")
            yield from self._commit_switch(dom, state, after, definition, prepared)
        finally:
            abandon_prepared(prepared)
        discard(self.loop, [p for p in failed.values()
                            if p not in previous["system"].values()])
        log.warning("domain %s: update to %s rolled back to %s: %s", dom.name,
                    failed_version, previous["version"], why)
        self.events.appliance(dom.ref(), "update-rolled-back",
                              f"{state.appliance} {failed_version} -> back to "
                              f"{previous['version']}: {why}")
        if restart and self._still_defined(dom):
            try:
                yield self.driver.lifecycle.start(dom, busy_ok=True)
            except QemudError as exc:
                raise OperationFailed(f"domain '{dom.name}' was rolled back to "
                                      f"{previous['version']}, but did not start again: "
                                      f"{exc.message}") from None

    def _still_defined(self, dom: DomainObj) -> bool:
        """Whether ``dom`` is still the persistent domain of its name: a confirmation or
        rollback of one that was undefined (or runs on as a transient domain) must not
        define it again, nor start an object the registry no longer holds."""
        return self.driver.registry.holds(dom) and dom.persistent

    def _find(self, ref: pl.DomainRef) -> DomainObj | None:
        try:
            return self.driver.registry.find(ref.name, ref.uuid)
        except QemudError:
            return None

    def _by_uuid(self, uuid: str) -> DomainObj | None:
        try:
            return self.driver.registry.by_uuid(uuid)
        except NoDomain:
            return None


def _uuid_text(ref: pl.DomainRef) -> str:
    try:
        return str(uuidlib.UUID(bytes=bytes(ref.uuid)))
    except ValueError:
        return ""


def _live_system_disks_differ(dom: DomainObj, state: VMState) -> str:
    """Why running ``dom`` does not run ``state``'s system disks ("" if it does, or
    does not run). Its heartbeat vouches for the disks it runs: a guest started from
    an older definition (its XML, a save image) on the previous slot must not confirm
    the new version, which it never booted."""
    live = dom.live if dom.active else None
    if live is None:
        return ""
    sources = {d.target_dev: d.source for d in live.disks}
    for target in state.targets("system"):
        if sources.get(target) != state.disks[target]["path"]:
            return (f"its live system disk {target} is {sources.get(target) or 'none'}, not "
                    f"the update's {state.disks[target]['path']}")
    return ""


def _check_compatible(state: VMState, new: Descriptor) -> None:
    have = {t: d["class"] for t, d in state.disks.items()}
    want = {d.target: d.cls for d in new.disks}
    if have != want:
        def show(m: dict[str, str]) -> str:
            return ", ".join(f"{t}={c}" for t, c in sorted(m.items()))
        raise OperationInvalid(f"appliance {new.ref} has other disks ({show(want)}) than the "
                               f"VM ({show(have)}): an update keeps the disk layout")


def _os_values(definition: DomainDef) -> dict[str, str | None]:
    return {"kernel": definition.os.kernel, "initrd": definition.os.initrd,
            "cmdline": definition.os.cmdline}


def _new_os(desc: Descriptor, directory: Path) -> dict[str, str | None]:
    if desc.boot.kernel is None:
        return {"kernel": None, "initrd": None, "cmdline": None}
    return {"kernel": str(directory / desc.boot.kernel),
            "initrd": str(directory / desc.boot.initrd) if desc.boot.initrd else None,
            "cmdline": desc.boot.cmdline or None}


def _switch(definition: DomainDef, system: dict[str, str], os_values: dict[str, Any],
            origin: Origin) -> None:
    for disk in definition.disks:
        if disk.target_dev in system:
            disk.source = system[disk.target_dev]
    definition.os.kernel = os_values.get("kernel")
    definition.os.initrd = os_values.get("initrd")
    definition.os.cmdline = os_values.get("cmdline")
    settings = read_settings(definition)
    settings.origin = origin
    write_settings(definition, settings)
