"""Going back to a snapshot (DOMAIN_SNAPSHOT_REVERT) and forgetting all snapshots when a
domain is undefined (deleting one is in ``delete``).

**Revert** to S: each disk of S gets a NEW empty overlay on the image S froze (S stays
reusable; made first, while the guest runs on: a failure there changes nothing), then
the guest is destroyed if it runs, the definition points at the overlays, and the guest
is started again if it ran (paused if it was paused); with REVERT_RUNNING or
REVERT_PAUSED it is started running or paused, whatever it was before. A failure after
the stop puts the disks back as they were and starts the guest again as it was; the
error says so. What the guest wrote since S is discarded, as in libvirt. A disk of S
the domain no longer has (hot-unplugged since, or taken out of the definition) refuses
the revert, naming the disk, before anything changes: the revert would otherwise come
back without it, or discard where its data is.

The image an unplugged disk used last (an overlay of ours when a snapshot covered it)
is kept by every garbage collection here, as by the deletes: it is the user's data.

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
from qemud.errors import InvalidArg, OperationFailed, OperationInvalid, QemudError

from .base import JobToken, SnapshotOps, check_flags, end_job, gather, then

if TYPE_CHECKING:
    from qemud.driver.domain import DomainObj

    from .records import DomainSnapshots, SnapshotRecord

__all__ = ["RevertOps"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

#: DOMAIN_SNAPSHOT_REVERT flags: libvirt's VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING / _PAUSED
#: (the guest runs, or is paused, after the revert, whatever it was before)
REVERT_RUNNING = 1
REVERT_PAUSED = 2


class RevertOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_REVERT and the undefine check."""

    def revert(self, ctx: Any, args: pl.SnapshotArgs) -> Deferred:
        check_flags(args.flags, REVERT_RUNNING | REVERT_PAUSED, "snapshot revert",
                    {4: "force", 8: "reset-nvram"})
        if args.flags & REVERT_RUNNING and args.flags & REVERT_PAUSED:
            raise InvalidArg("Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' and "
                             "'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive")
        dom = self._dom(args)
        self.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom, disks_only=True)  # a disk is being unplugged
        self.require_no_pending_update(dom, "revert to a snapshot")
        self.driver.saving.require_no_image(dom, "revert to a snapshot")
        meta = self.store.load(dom)
        snap = meta.get(args.name)
        if snap.merge_failed:
            raise OperationInvalid(
                f"cannot revert domain '{dom.name}' to snapshot '{snap.name}': its image "
                f"holds part of the data written after it, or all of it ({snap.merge_failed}"
                "), so it is no longer the state of the snapshot. Nothing was changed; "
                f"delete the snapshot again (snapshot-delete {dom.name} {snap.name}) to "
                "finish the merge")
        if dom.active and not dom.persistent:
            raise OperationInvalid(f"cannot revert transient domain '{dom.name}': it would "
                                   "vanish when stopped (define it first)")
        self._require_disks(dom, meta, snap)
        for d in snap.disks.values():
            if not Path(d.base).is_file():
                raise OperationFailed(f"cannot revert to snapshot '{snap.name}': image "
                                      f"{d.base} of disk '{d.target}' is missing")
        qemu_img = self.qemu_img()
        stopping = dom.active and dom.stop_intent is not None  # already on its way down
        was_running = dom.active and not stopping
        was_paused = dom.state == DomainState.PAUSED
        # what the guest is after the revert: as the flag says, else as it was before
        # (libvirt without a flag: the snapshot's state, see docs/CONFORMANCE.md)
        start_after = was_running or bool(args.flags & (REVERT_RUNNING | REVERT_PAUSED))
        paused_after = (bool(args.flags & REVERT_PAUSED) if args.flags
                        else was_paused)
        out = Deferred()
        created: list[Path] = []
        definition = dom.persistent_definition
        before = {d.target_dev: d.source for d in definition.disks if d.target_dev}
        moves: dict[str, tuple[str | None, str]] = {}
        job = JobToken("snapshot-revert")

        def fail(error: QemudError) -> None:
            """Before the guest was stopped: nothing changed, it runs on as it was."""
            end_job(dom, job)
            self._unlink(created)
            log.warning("domain %s: revert to %s failed: %s", dom.name, snap.name,
                        error.message)
            out.fail(error)

        def fail_stopped(error: QemudError, pointed: bool) -> None:
            """After the guest was stopped: the disks go back to what they were (if
            they were pointed at the new overlays), and a guest that ran is started
            again as it was; the error says so."""
            if not pointed:
                restore(error)
                return

            def not_back(exc: QemudError) -> None:  # the definition names the new overlays
                log.error("domain %s: cannot point the disks back after a failed "
                          "revert: %s", dom.name, exc.message)
                end_job(dom, job)
                out.fail(OperationFailed(
                    f"{error.message}; the definition now names the new overlays "
                    f"({', '.join(n for _, n in moves.values())}) but the snapshot "
                    f"metadata does not, and it could not be set back: "
                    f"{exc.message}; the guest was stopped for the revert"))
            then(self.point_disks(dom, {t: (new, old) for t, (_, new) in moves.items()
                                        if (old := before.get(t))}, job),
                 not_back, lambda: restore(error))

        def restore(error: QemudError) -> None:
            """The definition as it was: a guest that ran starts again."""
            end_job(dom, job)
            self._unlink(created)
            log.warning("domain %s: revert to %s failed after the guest was stopped: %s",
                        dom.name, snap.name, error.message)
            if not was_running:
                out.fail(error)
                return
            what = "paused" if was_paused else "running"
            try:
                started = self.lifecycle.start(dom, paused=was_paused)
            except QemudError as exc:
                out.fail(OperationFailed(f"{error.message}; the disks are as they were, "
                                         "but the guest, stopped for the revert, did not "
                                         f"start again: {exc.message}"))
                return

            def restarted(d: Deferred) -> None:
                if d.error is not None:
                    out.fail(OperationFailed(
                        f"{error.message}; the disks are as they were, but the guest, "
                        f"stopped for the revert, did not start again: {d.error.message}"))
                else:
                    out.fail(OperationFailed(
                        f"{error.message}; nothing was reverted: the guest was stopped "
                        f"for the revert and started again ({what}) on its disks as they "
                        "were (what it had not written to disk is lost)"))
            started.add_done_callback(restarted)

        def prepared(_: Any = None) -> None:
            """The new overlays exist, their backing links are in the metadata file
            (before any definition names them: see create's ``linked``): only now is a
            running guest stopped (it may have stopped by itself meanwhile, or be on its
            way down)."""
            then(self.store.save(meta), fail, stop)

        def stop() -> None:
            if dom.active and dom.process is not None:
                # (a stop under way keeps its reason; a graceful destroy that gives up
                # would otherwise leave this call waiting for a stop that never comes)
                try:
                    self.lifecycle.destroy(dom, dom.stop_intent).add_done_callback(stopped)
                except QemudError as exc:
                    fail(exc)
            elif dom.active:  # let it finish stopping
                waiter = Deferred()
                dom.stop_waiters.append(waiter)
                waiter.add_done_callback(stopped)
            else:
                stopped()

        def stopped(_: Any = None) -> None:
            # the guest's stop ended the job: the revert's again until its files are
            # written (a start, a snapshot call would build on the disks as they were)
            if dom.job is None:
                dom.job = job
            # failed: the definitions were left as they were
            then(self.point_disks(dom, moves, job),
                 lambda exc: fail_stopped(exc, pointed=False), pointed)

        def pointed() -> None:
            meta.current = snap.name
            garbage = self._collect(dom, meta)
            then(self.store.save(meta), lambda exc: fail_stopped(exc, pointed=True),
                 lambda: reverted(garbage))

        def reverted(garbage: list[Path]) -> None:
            end_job(dom, job)
            self._unlink(garbage)
            audit_log.info("appliance snapshot domain=%r uuid=%s revert=%r", dom.name,
                           dom.uuid, snap.name)
            log.info("domain %s: reverted to snapshot %s%s", dom.name, snap.name,
                     f"; discarded {', '.join(map(str, garbage))}" if garbage else "")
            self.events.appliance(dom.ref(), "snapshot-reverted", snap.name)
            if not start_after:
                out.resolve(Empty())
                return
            try:
                started = self.lifecycle.start(dom, paused=paused_after)
            except QemudError as exc:
                out.fail(OperationFailed(f"reverted to snapshot '{snap.name}', but the "
                                         f"guest did not start again: {exc.message}"))
                return
            started.chain(out, lambda _: Empty())

        # what can fail first, while the guest runs on: the frozen images are only read
        dom.job = job
        steps = []
        for target, d in snap.disks.items():
            overlay = self._overlay_path(dom, target, f"{snap.name}-revert")
            created.append(overlay)
            moves[target] = (None, str(overlay))
            meta.images[str(overlay)] = d.base
            steps.append(self.tools.run([qemu_img, "create", "-q", "-f", "qcow2", "-F",
                                         d.format, "-b", d.base, str(overlay)]))
        gather(steps).add_done_callback(lambda g: fail(g.error) if g.error else prepared())
        return out

    @staticmethod
    def _require_disks(dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord) -> None:
        """Refuse a revert to ``snap`` if a disk of it is not in the definition the
        domain has after the revert (the pending one of a running domain, else the
        persistent one).

        A revert points the disks of ``snap`` at new overlays and keeps the rest of the
        definition: a disk unplugged since (or only hot-plugged, live, when ``snap`` was
        taken) has nothing to point, so the domain would come back without it while
        ``snap`` had it, a half revert. Bringing the disk back instead (libvirt restores
        the snapshot's whole definition) would re-add a device the user removed, maybe
        under a target now used by another disk, and discard the disk's data since
        ``snap``, which lives in an overlay the user may have moved on with. So the user
        decides: attach the disk again with ``--config`` (then the revert resets it to
        the snapshot), or delete the snapshot. Nothing has changed when this raises.
        """
        definition = dom.persistent_definition
        present = {d.target_dev for d in definition.disks if d.device == "disk"}
        for target, d in snap.disks.items():
            if target in present:
                continue
            last = [p for p, t in meta.unplugged.items() if t == target]
            where = (f"; what it held last is in {', '.join(last)}" if last else "")
            raise OperationInvalid(
                f"cannot revert domain '{dom.name}' to snapshot '{snap.name}': its disk "
                f"'{target}' ({d.base}) is not in the domain's persistent definition "
                f"(unplugged since, or attached live only){where}. Attach the disk with "
                "--config to revert it too, or delete the snapshot")

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
        self.require_no_job(dom)  # a qemu-img of ours may be about to finish
        # damaged metadata: refused, until fixed or moved away
        meta = self.store.load(dom, record=False)
        if not meta.snapshots:
            return
        names = sorted(meta.snapshots)
        if not flags & UndefineFlags.SNAPSHOTS_METADATA:
            raise OperationInvalid(f"cannot delete "
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
