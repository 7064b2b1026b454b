"""What every image operation shares: a deployed VM's state and disks, ``qemu-img``, and
which VMs are busy (the operations are generator tasks, :mod:`qemud.tasks`).

:class:`ImageOps` is the base of each operation's class (import, deploy/reset/list,
update); the duty makes one of each over the same store, tool runner and ``busy`` map.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from qemud.dispatch import Deferred
from qemud.driver.discard import discard
from qemud.driver.tools import ToolRunner, find_tool
from qemud.errors import OperationInvalid
from qemud.tasks import Task

from ..snapshots.duty import follow_pending
from .descriptor import DiskSpec
from .layout import STATE_NAME, UNFINISHED_SUFFIX, settle_switch, vms_root
from .store import ImageStore, VMState

if TYPE_CHECKING:
    from qemud.conf import DomainDef
    from qemud.config import Config
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj

__all__ = ["ImageOps", "tool_failure", "disk_file", "abandon_prepared"]

log = logging.getLogger(__name__)


def tool_failure(argv: list[str], code: int, stderr: str) -> str:
    """How an image operation words a tool's failure: its last lines of stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()][-4:]
    return f"{Path(argv[0]).name} failed (exit {code}): {' / '.join(lines) or 'no message'}"


def disk_file(disk: DiskSpec, slot: str) -> str:
    """The file name of ``disk`` in a VM's directory (system disks: one per slot)."""
    if disk.cls == "system":
        return f"{disk.target}.{slot}.qcow2"
    if disk.cls == "scratch":
        return f"{disk.target}.scratch.qcow2"
    return f"{disk.target}.qcow2"


def abandon_prepared(prepared: list[tuple[Path, Path]]) -> None:
    """Remove the disks ``ImageOps._prepare_scratch`` made that were not renamed into
    place (``(prepared, disk)`` pairs; the list is emptied)."""
    for tmp, _ in prepared:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as exc:  # (removed at the next start: remove_unfinished_disks)
            log.warning("cannot remove %s: %s", tmp, exc.strerror or exc)
    prepared.clear()


class ImageOps:
    """The driver's pieces, the store, the tool runner and the per-VM helpers."""

    def __init__(self, driver: QemuDriver, config: Config, store: ImageStore,
                 runner: ToolRunner, busy: dict[str, str]) -> None:
        self.driver = driver
        self.loop = driver.loop
        self.events = driver.events
        self.config = config
        self.store = store
        self.vms_dir = vms_root(config)
        self.runner = runner
        #: domain uuid -> what is in progress (an update, a factory reset, a rollback)
        self.busy = busy

    @staticmethod
    def qemu_img() -> str:
        return find_tool("qemu-img", "for appliance disk images")

    def vm_dir(self, name: str) -> Path:
        return self.vms_dir / name

    def load_state(self, dom: DomainObj, settle: bool | None = None) -> VMState | None:
        """The VM's state. One with a switch an update or rollback left (a failed write)
        is settled first (``layout.settle_switch``), unless an image operation runs on
        the VM (its own switch may be in progress) or ``settle`` is False; ``settle``
        True: settled whatever runs (the caller is that operation, before its switch)."""
        path = self.vm_dir(dom.name) / STATE_NAME
        if settle is None:
            settle = dom.uuid not in self.busy
        # a write in flight is newer than the file, and the one to settle it if need be
        files = self.driver.files
        try:
            state = VMState.from_json(files.read_text(path))
            if state.uuid == dom.uuid and state.switch is not None and settle \
                    and not files.pending(path):
                settled = settle_switch(path, dom, lambda paths: discard(self.loop, paths),
                                        write=lambda p, text: self._write_settled(dom, p,
                                                                                  text))
                if settled is not None:
                    state = VMState.from_dict(settled)
            if state.uuid == dom.uuid and state.restart is not None \
                    and dom.uuid not in self.busy and not files.pending(path):
                # a restart mark no operation holds: one whose drop failed (the last
                # daemon's were handled at start-up); left, it would start the VM at a
                # later daemon start after the admin stopped it
                state.restart = None
                self._write_settled(dom, path, state.to_json())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.error("domain %s: unreadable appliance state %s: %s", dom.name, path, exc)
            return None
        return state if state.uuid == dom.uuid else None

    def _write_settled(self, dom: DomainObj, path: Path, text: str) -> None:
        """A settled state record (``load_state``), written off the loop; a failure is
        logged, and the next read settles it again."""
        written = self.driver.files.write(path, text, f"the appliance state of '{dom.name}'")
        written.add_done_callback(lambda d: log.error(
            "domain %s: %s (settled again next time)", dom.name, d.error.detail)
            if d.error is not None else None)

    def save_state(self, state: VMState) -> Deferred:
        """Write the VM's state record. The Deferred resolves once the file is durable,
        its fsyncs having waited off the loop, after the VM's earlier state writes
        (:mod:`qemud.driver.filewrites`); or fails with OperationFailed, the file as it
        was. :meth:`load_state` reads a write in flight."""
        return self.driver.files.write(self.vm_dir(state.vm) / STATE_NAME, state.to_json(),
                                       f"the appliance state of '{state.vm}'")

    def state_for_change(self, dom: DomainObj, what: str) -> VMState:
        """The state of a deployed VM that ``what`` may change now (else a clear error)."""
        state = self.load_state(dom)
        if state is None:
            raise OperationInvalid(f"domain '{dom.name}' was not deployed from an appliance "
                                   f"image: cannot {what} it")
        if not dom.persistent:
            raise OperationInvalid(f"domain '{dom.name}' is not persistent: cannot {what} it")
        if dom.uuid in self.busy:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {self.busy[dom.uuid]} in "
                                   "progress")
        if dom.job is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {dom.job} in progress")
        if state.pending is not None:
            raise OperationInvalid(f"domain '{dom.name}': the update from "
                                   f"{state.pending['from']} to {state.pending['to']} is "
                                   "waiting for the guest's heartbeat: cannot " + what +
                                   " before it is confirmed or rolled back")
        foreign = self.foreign_disk(dom, state)
        if foreign:
            raise OperationInvalid(f"domain '{dom.name}': {foreign}: cannot {what} it")
        self.driver.saving.require_no_image(dom, what)
        return state

    def foreign_disk(self, dom: DomainObj, state: VMState) -> str:
        """Why a disk of ``dom`` is not the appliance's own (its overlay, data or scratch
        image), e.g. an external snapshot's overlay; "" if all are. An image change
        (update, reset, rollback) rewrites or deletes those images: it must not touch a
        disk that no longer is one of them, nor one a snapshot froze. Checked in the
        persistent definition, the live one of a running guest, and the snapshot
        metadata's record of a definition that could not follow the guest's move to a
        snapshot's overlay (its write failed: the definition still names the image the
        snapshot froze, and the next start boots the overlay)."""
        live = dom.live if dom.active else None
        for definition in (dom.persistent_definition, live):
            if definition is None:
                continue
            sources = {d.target_dev: d.source for d in definition.disks}
            for target, disk in sorted(state.disks.items()):
                if sources.get(target) != disk["path"]:
                    return (f"disk {target} is {sources.get(target) or 'gone'}, not the "
                            f"appliance's {disk['path']} (snapshots or a changed "
                            "definition)")
        if follow_pending(self.driver.files, self.config.paths.state_dir / "snapshots",
                          dom.name):
            return ("its guest last ran on a snapshot's overlays, which its persistent "
                    "definition does not name yet (its write failed; the next start or "
                    "snapshot operation writes it)")
        return ""

    def _stop(self, dom: DomainObj) -> Deferred:
        if not dom.active:
            return Deferred.resolved(None)
        log.info("domain %s: stopping it for an appliance image change", dom.name)
        return self.driver.lifecycle.destroy(dom)

    def _stop_to_restart(self, dom: DomainObj, state: VMState, what: str) -> Task:
        """Stop ``dom`` for the image operation ``what`` if it runs, and return whether
        it did. Before the stop, ``state`` (the operation's own, which its later writes
        copy) records durably that the VM is to run again (``VMState.restart``): a
        daemon killed before the operation starts it again does so at its next start.
        The operation drops the mark with :meth:`_restart_handled` once it has started
        the VM again, or decided not to."""
        if not dom.active:
            return False
        state.restart = what
        yield self.save_state(state)
        yield self._stop(dom)
        return True

    def _restart_handled(self, dom: DomainObj) -> None:
        """Drop the VM's restart mark (:meth:`_stop_to_restart`) from the newest state,
        written after the operation's own writes. Not waited for, so that the VM is not
        busy any longer than its change: a mark that outlives the operation is harmless
        once it has started the VM again (a next daemon finds it running and drops it)
        or decided not to (the VM's next read, :meth:`load_state`, drops a mark no
        operation holds). A failed write is logged."""
        state = self.load_state(dom, settle=False)
        if state is None or state.restart is None:
            return
        state.restart = None
        self.save_state(state).add_done_callback(lambda d: log.error(
            "domain %s: %s", dom.name, d.error.message) if d.error is not None else None)

    def _create_overlay(self, path: Path, backing: Path, fmt: str) -> Task:
        """A new, empty qcow2 overlay ``path`` on ``backing`` (replacing ``path``)."""
        return self._create(path, ["-F", fmt, "-b", str(backing)], [])

    def _create_scratch(self, path: Path, size: int) -> Task:
        """A new, empty qcow2 disk of ``size`` bytes (replacing ``path``)."""
        return self._create(path, [], [str(size)])

    def _prepare_scratch(self, path: Path, size: int) -> Task:
        """A new, empty qcow2 disk of ``size`` bytes beside ``path`` (``path`` itself is
        untouched); returns its path, to be renamed over ``path`` (``os.replace``) or
        removed (:func:`abandon_prepared`). An update or rollback prepares the scratch
        disks so, and renames them only once its define succeeded: a failed one leaves
        the scratch disks as they were."""
        return self._prepare(path, [], [str(size)])

    def _prepare(self, path: Path, options: list[str], size: list[str]) -> Task:
        """qemu-img writes ``<path>.new`` (what a killed daemon leaves of it goes at the
        next start: remove_unfinished_disks); returns that path, once complete."""
        tmp = path.with_name(path.name + UNFINISHED_SUFFIX)
        yield self.runner.run([self.qemu_img(), "create", "-q", "-f", "qcow2", *options,
                               str(tmp), *size], f"cannot create {path.name}")
        os.chmod(tmp, 0o600)
        return tmp

    def _create(self, path: Path, options: list[str], size: list[str]) -> Task:
        """:meth:`_prepare`, then the new disk is renamed over ``path``."""
        tmp = yield from self._prepare(path, options, size)
        os.replace(tmp, path)

    def _define(self, definition: DomainDef, claimed: bool = False) -> Deferred:
        """Define ``definition``; the Deferred resolves with the domain (a task yields it).
        ``claimed``: the caller holds the name's reservation (``Registry.reserved``)."""
        return self.driver.registry.define(definition.to_xml(), claimed=claimed)
