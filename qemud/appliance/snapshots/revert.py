"""Going back to a snapshot (DOMAIN_SNAPSHOT_REVERT) and forgetting all snapshots when a
domain is undefined (deleting one is in ``delete``).

**Revert** to S: the guest is destroyed if it runs, each disk of S gets a NEW empty
overlay on the image S froze (S stays reusable), the definition points there, and the
guest is started again if it ran (paused if it was paused). What it wrote since S is
discarded, as in libvirt.

**Undefine** (as libvirt): an inactive domain with snapshots is only undefined with
``UndefineFlags.SNAPSHOTS_METADATA``, which discards them all here first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from protocol.constants import DomainState, UndefineFlags
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, OperationInvalid, QemudError

from .base import SnapshotOps, gather

if TYPE_CHECKING:
    from qemud.driver.domain import DomainObj

__all__ = ["RevertOps"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")


class RevertOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_REVERT and the undefine check."""

    def revert(self, ctx: Any, args: pl.SnapshotArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom)  # a disk is being unplugged
        meta = self.store.load(dom)
        snap = meta.get(args.name, dom.name)
        if dom.active and not dom.persistent:
            raise OperationInvalid(f"cannot revert transient domain '{dom.name}': it would "
                                   "vanish when stopped (define it first)")
        for d in snap.disks.values():
            if not Path(d.base).is_file():
                raise OperationFailed(f"cannot revert to snapshot '{snap.name}': image "
                                      f"{d.base} of disk '{d.target}' is missing")
        qemu_img = self.qemu_img()
        stopping = dom.active and dom.stop_intent is not None  # already on its way down
        was_running = dom.active and not stopping
        was_paused = dom.state == DomainState.PAUSED
        out = Deferred()
        created: list[Path] = []

        def fail(error: QemudError) -> None:
            dom.job = None
            self._unlink(created)
            log.warning("domain %s: revert to %s failed: %s", dom.name, snap.name,
                        error.message)
            out.fail(error)

        def stopped(_: Any = None) -> None:
            dom.job = "snapshot-revert"
            moves: dict[str, tuple[str | None, str]] = {}
            steps = []
            for target, d in snap.disks.items():
                overlay = self._overlay_path(dom, target, f"{snap.name}-revert")
                created.append(overlay)
                moves[target] = (None, str(overlay))
                meta.images[str(overlay)] = d.base
                steps.append(self.tools.run([qemu_img, "create", "-q", "-f", "qcow2", "-F",
                                             d.format, "-b", d.base, str(overlay)]))
            gather(steps).add_done_callback(
                lambda g: fail(g.error) if g.error else pointed(moves))

        def pointed(moves: dict[str, tuple[str | None, str]]) -> None:
            try:
                self._point_disks(dom, moves)
            except QemudError as exc:
                fail(exc)
                return
            meta.current = snap.name
            garbage = self._collect(dom, meta)
            if not self._end_job(dom, meta, out):
                return
            self._unlink(garbage)
            audit_log.info("appliance snapshot domain=%r uuid=%s revert=%r", dom.name,
                           dom.uuid, snap.name)
            log.info("domain %s: reverted to snapshot %s%s", dom.name, snap.name,
                     f"; discarded {', '.join(map(str, garbage))}" if garbage else "")
            self.events.appliance(dom.ref(), "snapshot-reverted", snap.name)
            if not was_running:
                out.resolve(Empty())
                return
            try:
                started = self.lifecycle.start(dom, paused=was_paused)
            except QemudError as exc:
                out.fail(OperationFailed(f"reverted to snapshot '{snap.name}', but the "
                                         f"guest did not start again: {exc.message}"))
                return
            started.chain(out, lambda _: Empty())

        if was_running:
            dom.job = "snapshot-revert"
            self.lifecycle.destroy(dom).add_done_callback(stopped)
        elif stopping:  # let it finish stopping (keeps its reason); it stays off after
            dom.job = "snapshot-revert"
            waiter = Deferred()
            dom.stop_waiters.append(waiter)
            waiter.add_done_callback(stopped)
        else:
            stopped()
        return out

    def before_undefine(self, dom: DomainObj, flags: int) -> None:
        """Called before DOMAIN_UNDEFINE: libvirt's rule for snapshot metadata.

        An inactive persistent domain with snapshots is refused unless ``flags`` has
        ``UndefineFlags.SNAPSHOTS_METADATA``; then its metadata is removed, with the
        overlays only the snapshots needed. What a definition still uses (the disk the
        guest would boot on and its backing chain) stays. A running domain is left to
        the driver: it goes on as a transient domain and keeps its snapshots.
        """
        if dom.active or not dom.persistent:
            return
        self.lifecycle.require_no_job(dom)  # a qemu-img of ours may be about to finish
        meta = self.store.load(dom)  # damaged metadata: refused, until fixed or moved away
        if not meta.snapshots:
            return
        names = sorted(meta.snapshots)
        if not flags & UndefineFlags.SNAPSHOTS_METADATA:
            raise OperationInvalid(f"Requested operation is not valid: cannot delete "
                                   f"inactive domain with {len(names)} snapshots")
        meta.snapshots.clear()
        meta.current = ""
        garbage = self._collect(dom, meta)
        self.store.remove(dom.name)  # metadata first: a crash leaves a stray file, no hole
        self._unlink(garbage)
        self.store.prune(dom.name)
        audit_log.info("appliance snapshot domain=%r uuid=%s discard=%r removed=%r",
                       dom.name, dom.uuid, names, [str(p) for p in garbage])
        log.info("domain %s: snapshot metadata removed (%s) for undefine%s", dom.name,
                 ", ".join(names), f"; removed {', '.join(map(str, garbage))}"
                 if garbage else "")
