"""Deleting a snapshot (DOMAIN_SNAPSHOT_DELETE), merging its data as libvirt does.

Deleting S discards the *point in time* S and keeps the guest's current state. When S's
frozen image is the direct backing file of every disk of S the domain uses now (S is the
most recent snapshot, or the one just reverted to) and nothing else reads from those
images, the top overlays are committed down into them and the disks point at them again
(libvirt's external snapshot deletion): ``qemu-img commit`` for a shut-off guest, QMP
``block-commit`` of the active layer, BLOCK_JOB_READY, ``block-job-complete`` (the
pivot), BLOCK_JOB_COMPLETED for a running one. In every other case only the metadata is
removed (children of S get S's parent) and the log says why. Either way an overlay the
daemon created is removed once no chain needs it (``SnapshotOps._collect``); the
metadata is saved before any file is removed.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, QemudError
from qemud.qemu import naming

from .base import SnapshotOps, gather, log_failure, qemu_failure

if TYPE_CHECKING:
    from protocol.constants import ShutoffReason
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.qemu.qmp import QMPEvent

    from ..tools import ToolRunner
    from .records import DomainSnapshots, SnapshotRecord, SnapshotStore

__all__ = ["DeleteOps"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")


@dataclass
class Merge:
    """A live merge in flight: one active commit job per disk of the snapshot."""

    dom: DomainObj
    snap: SnapshotRecord
    meta: DomainSnapshots
    tops: dict[str, str]  # target -> the overlay committed into the snapshot's image
    result: Deferred
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> target
    nodes: dict[str, str] = field(default_factory=dict)  # target -> top node name
    ready: set[str] = field(default_factory=set)  # job ids
    done: set[str] = field(default_factory=set)  # targets pivoted to the image
    completing: bool = False
    finished: bool = False


class DeleteOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_DELETE, and the QMP events and stops that end a live merge."""

    def __init__(self, driver: QemuDriver, store: SnapshotStore, tools: ToolRunner) -> None:
        super().__init__(driver, store, tools)
        self._merges: dict[str, Merge] = {}  # domain uuid -> live merge in flight

    def delete(self, ctx: Any, args: pl.SnapshotArgs) -> Empty | Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
        meta = self.store.load(dom)
        snap = meta.get(args.name, dom.name)
        tops, why = self._merge_plan(dom, meta, snap)
        if not tops:
            log.info("domain %s: snapshot %s: metadata only, no merge (%s)", dom.name,
                     snap.name, why)
            self._finish(dom, meta, snap, {})
            return Empty()
        out = Deferred()
        dom.job = "snapshot-delete"
        if dom.active:
            self._merge_live(Merge(dom, snap, meta, tops, out))
            return out
        qemu_img = self.qemu_img()
        steps = [self.tools.run([qemu_img, "commit", "-q", "-d", "-f", "qcow2", top])
                 for top in tops.values()]

        def committed(g: Deferred) -> None:
            # a failed commit changes no definition: the overlays still hold their data
            self._settle(dom, meta, snap, tops if g.error is None else {}, g.error, out)
        gather(steps).add_done_callback(committed)
        return out

    def _merge_plan(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord
                    ) -> tuple[dict[str, str], str]:
        """target -> the overlay to commit into S's image when S can be merged, else
        ``({}, why not)``."""
        if dom.active and (dom.monitor is None or dom.monitor.closed
                           or dom.stop_intent is not None):
            return {}, "the guest is not ready or is stopping"
        current = dom.live if dom.active and dom.live is not None else dom.definition
        disks = {d.target_dev: d for d in current.disks if d.device == "disk"}
        ours = self.store.images_dir(dom.name).resolve()
        tops: dict[str, str] = {}
        for target, d in snap.disks.items():
            disk = disks.get(target)
            top = disk.source if disk is not None else None
            if not top or meta.images.get(top) != d.base:
                return {}, f"disk {target} does not use an overlay of the snapshot's image"
            if Path(top).resolve().parent != ours or not Path(d.base).is_file():
                return {}, f"disk {target}: {top} is not an overlay of the daemon"
            tops[target] = top
        for definition in (dom.definition, dom.next_definition, dom.live):
            for disk in definition.disks if definition is not None else []:
                want = tops.get(disk.target_dev or "")
                if want is not None and disk.device == "disk" and disk.source != want:
                    return {}, (f"disk {disk.target_dev} of another definition uses "
                                f"{disk.source}")
        # the commit writes into S's images: nothing else may read from them
        bases = {snap.disks[t].base for t in tops}
        roots = [d.base for s in meta.snapshots.values() if s is not snap
                 for d in s.disks.values()]
        for definition in (dom.definition, dom.next_definition, dom.live):
            if definition is not None:
                roots += [d.source for d in definition.disks
                          if d.source and d.source not in tops.values()]
        for root in roots:
            link: str | None = root
            seen: set[str] = set()
            while link is not None and link not in seen:
                if link in bases:
                    return {}, f"{link} is still needed by another snapshot or disk"
                seen.add(link)
                link = meta.images.get(link)
        return tops, ""

    def _merge_live(self, merge: Merge) -> None:
        dom = merge.dom
        monitor = dom.monitor
        assert monitor is not None
        self._merges[dom.uuid] = merge
        token = os.urandom(3).hex()  # unique, not secret: no secrets/hashlib import

        def queried(d: Deferred) -> None:
            if d.error is not None:
                self._end_merge(merge, d.error)
                return
            merge.nodes.update({t: n[0] for t, n in d.result.items()})
            monitor.execute("query-named-block-nodes", {"flat": True}).add_done_callback(
                named)

        def named(d: Deferred) -> None:
            if d.error is not None:
                self._end_merge(merge, qemu_failure("cannot query the block nodes", d.error))
                return
            commits = []
            for target, top_node in merge.nodes.items():
                base = os.path.realpath(merge.snap.disks[target].base)
                base_node = next((str(n.get("node-name")) for n in d.result or []
                                  if n.get("drv") != "file" and n.get("node-name") != top_node
                                  and os.path.realpath(str(n.get("file", ""))) == base), "")
                if not base_node:
                    self._end_merge(merge, OperationFailed(
                        f"disk '{target}': {base} is not open in QEMU"))
                    return
                job = f"commit-{target}-{token}"
                merge.jobs[job] = target
                commits.append(monitor.execute("block-commit", {
                    "job-id": job, "device": top_node, "base-node": base_node}))
            gather(commits).add_done_callback(
                lambda g: self._end_merge(merge, qemu_failure("cannot start the merge",
                                                              g.error))
                if g.error else None)
        self._top_nodes(dom, list(merge.tops)).add_done_callback(queried)

    def on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        if event.name not in ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED",
                              "BLOCK_JOB_CANCELLED"):
            return
        merge = self._merges.get(dom.uuid)
        job = str(event.data.get("device", ""))
        if merge is None or merge.finished or job not in merge.jobs:
            return
        target = merge.jobs[job]
        monitor = dom.monitor
        if event.name == "BLOCK_JOB_READY":
            merge.ready.add(job)
            if len(merge.ready) == len(merge.tops) and not merge.completing \
                    and monitor is not None:
                merge.completing = True  # pivot every disk once all are in sync
                for j in merge.jobs:
                    monitor.execute("block-job-complete", {"device": j}).add_done_callback(
                        functools.partial(self._complete_failed, merge))
            return
        error = event.data.get("error")
        if event.name == "BLOCK_JOB_CANCELLED" or error:
            self._end_merge(merge, OperationFailed(
                f"merge of disk '{target}' failed: {error or 'cancelled'}"))
            return
        merge.done.add(target)
        if monitor is not None and not monitor.closed:
            node = merge.nodes[target]
            nodes = [node]
            storage, fmt = naming.disk_node_names(target)
            if node == fmt:  # opened at start-up: its file node is a node of its own
                nodes.append(storage)
            for n in nodes:
                monitor.execute("blockdev-del", {"node-name": n}).add_done_callback(
                    functools.partial(log_failure, f"domain {dom.name}: cannot close the "
                                      f"merged overlay node {n}"))
        if len(merge.done) == len(merge.tops):
            self._end_merge(merge, None)

    def _complete_failed(self, merge: Merge, d: Deferred) -> None:
        if d.error is not None:
            self._end_merge(merge, qemu_failure("cannot complete the merge", d.error))

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        merge = self._merges.get(dom.uuid)
        if merge is not None:
            self._end_merge(merge, OperationFailed(
                f"domain '{dom.name}' stopped during the snapshot deletion"))

    def _end_merge(self, merge: Merge, error: QemudError | None) -> None:
        if merge.finished:
            return
        merge.finished = True
        dom = merge.dom
        if self._merges.get(dom.uuid) is merge:
            del self._merges[dom.uuid]
        monitor = dom.monitor
        if error is not None and monitor is not None and not monitor.closed:
            for job, target in merge.jobs.items():
                if target not in merge.done:  # not pivoted: the disk stays on its overlay
                    monitor.execute("block-job-cancel", {"device": job, "force": True})
        moved = {t: top for t, top in merge.tops.items() if t in merge.done}
        if moved and dom.live is not None:
            for disk in dom.live.disks:
                if disk.device == "disk" and (disk.target_dev or "") in moved:
                    disk.source = merge.snap.disks[disk.target_dev or ""].base
            self.lifecycle.save_status(dom)
        self._settle(dom, merge.meta, merge.snap, moved, error, merge.result)

    def _settle(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord,
                moved: dict[str, str], error: QemudError | None, out: Deferred) -> None:
        """After the commits: the definition follows the ``moved`` disks (target -> old
        overlay), then S is forgotten unless ``error``; ``out`` gets the outcome."""
        dom.job = None
        try:
            self._point_disks(dom, {t: (top, snap.disks[t].base) for t, top in moved.items()})
        except QemudError as exc:
            error = error or exc
        if error is not None:
            log.warning("domain %s: merging snapshot %s failed (the snapshot is kept%s): %s",
                        dom.name, snap.name, "; its image holds part of the later data"
                        if moved or dom.active else "", error.message)
            if moved:  # the disks that were merged no longer need their overlays
                self._finish(dom, meta, None, moved)
            out.fail(error)
            return
        try:
            self._finish(dom, meta, snap, moved)
        except QemudError as exc:
            out.fail(exc)
            return
        out.resolve(Empty())

    def _finish(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord | None,
                moved: dict[str, str]) -> None:
        """Forget ``snap`` (if any), save the metadata, then remove what nothing needs."""
        if snap is not None:
            for other in meta.snapshots.values():
                if other.parent == snap.name:
                    other.parent = snap.parent
            if meta.current == snap.name:
                meta.current = snap.parent
            del meta.snapshots[snap.name]
        garbage = self._collect(dom, meta)
        self.store.save(meta)  # metadata first: a crash leaves a stray file, never a hole
        self._unlink(garbage)
        if snap is None:
            return
        audit_log.info("appliance snapshot domain=%r uuid=%s delete=%r merged=%r removed=%r",
                       dom.name, dom.uuid, snap.name, sorted(moved),
                       [str(p) for p in garbage])
        if moved:
            log.info("domain %s: snapshot %s deleted, merged (%s)", dom.name, snap.name,
                     ", ".join(f"{t}: {top} -> {snap.disks[t].base}"
                               for t, top in moved.items()))
        self.events.appliance(dom.ref(), "snapshot-deleted", snap.name)
