"""Deleting a snapshot (DOMAIN_SNAPSHOT_DELETE), merging its data as libvirt does.

Deleting S discards the *point in time* S and keeps the guest's current state. Two cases
merge, both only when nothing else reads from the images written (see ``_merge_plan``):

* S's frozen image is the direct backing file of every disk of S the domain uses now (S
  is the most recent snapshot, or the one just reverted to): the top overlays are
  committed down into S's images and the disks point at them again (libvirt's external
  snapshot deletion): ``qemu-img commit`` for a shut-off guest, QMP ``block-commit`` of
  the active layer, BLOCK_JOB_READY, ``block-job-complete`` (the pivot),
  BLOCK_JOB_COMPLETED for a running one.
* S is deeper in every disk's chain, with exactly one layer C on its image (the overlay
  taken with S) and one layer above C: C is committed into S's image and the layer above
  reads from S's image instead (a non-active commit): ``qemu-img commit`` of C then
  ``qemu-img rebase -u`` of the layer above for a shut-off guest; for a running one QMP
  ``block-commit`` with ``top-node`` C, which ends with BLOCK_JOB_COMPLETED alone (QEMU
  rewrites the above layer's backing link itself), then C's node is closed if QEMU kept
  it. The disks keep their image; snapshots that froze C now name S's image, which holds
  the same data.

In every other case only the metadata is removed (children of S get S's parent) and the
log says why. Either way an overlay the daemon created is removed once no chain needs it
(``SnapshotOps._collect``); the metadata is saved before any file is removed. The image
a disk used when it was unplugged (and its chain) is never removed nor merged into: it
holds that disk's data (``DomainSnapshots.unplugged``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, QemudError
from qemud.qemu import naming, qcow2

from .base import (
    JobToken,
    SnapshotOps,
    check_flags,
    end_job,
    gather,
    job_speed,
    log_failure,
    qemu_failure,
    then,
)
from .records import RUN_ID

if TYPE_CHECKING:
    from protocol.constants import ShutoffReason
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.driver.tools import ToolRunner
    from qemud.qemu.qmp import QMPEvent

    from .records import DomainSnapshots, SnapshotRecord, SnapshotStore

__all__ = ["DeleteOps"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

#: DOMAIN_SNAPSHOT_DELETE flags: libvirt's VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
METADATA_ONLY = 2


@dataclass
class MergePlan:
    """What deleting a snapshot merges: nothing (``why`` says why), the disks' top
    overlays (``above`` empty), or the layer just above S's image on each disk
    (``above``: the layer that reads from it, relinked to S's image)."""

    tops: dict[str, str] = field(default_factory=dict)  # target -> layer into S's image
    above: dict[str, str] = field(default_factory=dict)  # target -> layer reading from it
    why: str = ""


@dataclass
class Merge:
    """A live merge in flight: one commit job per disk of the snapshot, active (the top
    overlays, ``above`` empty) or not (the layers on S's images, ``above`` per disk)."""

    dom: DomainObj
    snap: SnapshotRecord
    meta: DomainSnapshots
    tops: dict[str, str]  # target -> the overlay committed into the snapshot's image
    result: Deferred
    above: dict[str, str] = field(default_factory=dict)  # non-active: the layer above
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> target
    nodes: dict[str, str] = field(default_factory=dict)  # target -> top node name
    ready: set[str] = field(default_factory=set)  # job ids
    done: set[str] = field(default_factory=set)  # targets merged (pivoted if active)
    closed: set[str] = field(default_factory=set)  # non-active: targets whose C is closed
    completing: bool = False
    finished: bool = False
    #: QEMU accepted a commit job: it may have written into S's images (a merge that
    #: failed before that left them as they were)
    started: bool = False


class DeleteOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_DELETE, and the QMP events and stops that end a live merge."""

    def __init__(self, driver: QemuDriver, store: SnapshotStore, tools: ToolRunner) -> None:
        super().__init__(driver, store, tools)
        self._merges: dict[str, Merge] = {}  # domain uuid -> live merge in flight

    def delete(self, ctx: Any, args: pl.SnapshotArgs) -> Empty | Deferred:
        check_flags(args.flags, METADATA_ONLY, "snapshot delete",
                    {1: "children", 4: "children-only"})
        dom = self._dom(args)
        self.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom, disks_only=True)  # a disk is being unplugged
        meta = self.store.load(dom)
        snap = meta.get(args.name)
        if args.flags & METADATA_ONLY:
            return self._job(dom, self._forget(dom, meta, snap))
        plan = self._merge_plan(dom, meta, snap)
        tops = plan.tops
        if not tops:
            log.info("domain %s: snapshot %s: metadata only, no merge (%s)", dom.name,
                     snap.name, plan.why)
            return self._job(dom, self._finish(dom, meta, snap, {}))
        qemu_img = "" if dom.active else self.qemu_img()
        # metadata first: a daemon killed during the merge leaves the mark, and the next
        # one knows S's images may hold the later data (see SnapshotStore.load)
        snap.merging = RUN_ID
        out = Deferred()
        job = dom.job = JobToken("snapshot-delete")
        process = dom.process  # (the QEMU whose disks the plan merges, if running)

        def failed(error: QemudError) -> None:  # nothing changed: the snapshot stays
            end_job(dom, job)
            out.fail(error)

        def marked() -> None:
            if process is not None and (dom.process is not process
                                        or not _ready_to_merge(dom)):
                # stopped while the mark was written (its stop ended the job): no merge
                end_job(dom, job)
                self._settled(dom, meta, snap, {}, OperationFailed(
                    f"domain '{dom.name}' stopped during the snapshot deletion"), out, {},
                    started=False)
                return
            self._merge(dom, meta, snap, plan, qemu_img, out)
        then(self.store.save(meta), failed, marked)
        return out

    def _job(self, dom: DomainObj, work: Deferred) -> Deferred:
        """``dom``'s job while ``work`` (a save of its metadata) runs; Empty after."""
        out = Deferred()
        job = dom.job = JobToken("snapshot-delete")

        def ended(d: Deferred) -> None:
            end_job(dom, job)
            if d.error is not None:
                out.fail(d.error)
            else:
                out.resolve(Empty())
        work.add_done_callback(ended)
        return out

    def _merge(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord,
               plan: MergePlan, qemu_img: str, out: Deferred) -> None:
        """The merge of ``plan``, once the metadata marks it (see :meth:`delete`)."""
        tops = plan.tops
        if dom.active:
            self._merge_live(Merge(dom, snap, meta, tops, out, above=plan.above))
            return
        if plan.above:
            self._merge_below_off(dom, meta, snap, plan, qemu_img, out)
            return
        steps = [self.tools.run([qemu_img, "commit", "-q", "-d", "-f", "qcow2", top])
                 for top in tops.values()]

        def committed(g: Deferred) -> None:
            # a failed commit changes no definition: the overlays still hold their data
            # (a qemu-img commit that failed may have written part of C into S's image)
            self._settle(dom, meta, snap, tops if g.error is None else {}, g.error, out,
                         started=True)
        gather(steps).add_done_callback(committed)

    def _forget(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord
                ) -> Deferred:
        """METADATA_ONLY (libvirt's VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY): forget
        ``snap`` and touch no file: nothing is merged, rewritten or removed.

        The images ``snap`` froze are the point in time the user asked to keep without
        the daemon's record of it (to use or remove by hand). Those the daemon created
        are recorded in ``meta.kept``: no later garbage collection (a revert, another
        delete, ``undefine --snapshots-metadata``) removes them or the chain below them,
        and no merge writes into them or below them, as for the last image of an
        unplugged disk. The images its disks use now stay under the normal rules.
        """
        ours = self.store.images_dir(dom.name).resolve()
        kept = [d.base for d in snap.disks.values()
                if d.base in meta.images and Path(d.base).resolve().parent == ours]
        for path in kept:
            meta.kept[path] = snap.name
        meta.forget(snap)
        saved = self.store.save(meta)  # failed: nothing changed, the snapshot stays
        then(saved, lambda _: None, lambda: self._forgotten(dom, snap, kept))
        return saved

    def _forgotten(self, dom: DomainObj, snap: SnapshotRecord, kept: list[str]) -> None:
        audit_log.info("appliance snapshot domain=%r uuid=%s delete=%r metadata_only=True "
                       "kept=%r", dom.name, dom.uuid, snap.name, kept)
        log.info("domain %s: snapshot %s deleted, metadata only (no image merged or "
                 "removed)%s", dom.name, snap.name,
                 f"; kept for the user: {', '.join(kept)}" if kept else "")
        self.events.appliance(dom.ref(), "snapshot-deleted", snap.name)

    def _merge_plan(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord
                    ) -> MergePlan:
        """What deleting ``snap`` can merge (see :class:`MergePlan`), or why nothing.

        Every disk of S is walked down its chain (the overlays the daemon recorded) to
        S's image: right below the disk's image, the top overlays are merged; deeper in
        every disk, the layer C on S's image is. Both write S's image (and, deeper, the
        header of the layer above C), so they only go ahead when nothing else reads from
        what they change: S's image is reached by no other chain than through C, C by no
        other layer than the one above it (or as a snapshot's frozen image, which then
        names S's image: same data), no other domain's disk or snapshot reads them,
        directly or down its backing chain as the qcow2 headers say (see
        ``_other_domains``), and S's image is neither read-only nor in the appliance
        image store (originals other VMs build on).
        """
        if dom.active and not _ready_to_merge(dom):
            return MergePlan(why="the guest is not ready or is stopping")
        current = dom.live if dom.active and dom.live is not None else dom.definition
        disks = {d.target_dev: d for d in current.disks if d.device == "disk"}
        ours = self.store.images_dir(dom.name).resolve()
        sources: dict[str, str] = {}  # target -> the image the disk uses now
        plan = MergePlan()
        for target, d in snap.disks.items():
            disk = disks.get(target)
            source = disk.source if disk is not None else None
            chain = [source] if source else []
            while chain and chain[-1] != d.base and chain[-1] in meta.images \
                    and meta.images[chain[-1]] not in chain:
                chain.append(meta.images[chain[-1]])
            if len(chain) < 2 or chain[-1] != d.base:
                return MergePlan(why=f"disk {target} does not use an overlay of the "
                                 "snapshot's image")
            written = chain[-3:-1]  # C and the layer above it (its header), or the top
            for path in written:
                if Path(path).resolve().parent != ours or not Path(d.base).is_file():
                    return MergePlan(why=f"disk {target}: {path} is not an overlay of the "
                                     "daemon")
            plan.tops[target] = chain[-2]
            if len(chain) > 2:
                plan.above[target] = chain[-3]
            assert source is not None
            sources[target] = source
        if plan.above and len(plan.above) != len(plan.tops):
            return MergePlan(why="the snapshot's image is right below the image of some "
                             "disks and deeper in the others")
        for definition in (dom.definition, dom.next_definition, dom.live):
            for disk in definition.disks if definition is not None else []:
                want = sources.get(disk.target_dev or "")
                if want is not None and disk.device == "disk" and disk.source != want:
                    return MergePlan(why=f"disk {disk.target_dev} of another definition "
                                     f"uses {disk.source}")
        why = self._shared(dom, meta, snap, plan)
        return MergePlan(why=why) if why else plan

    def _shared(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord,
                plan: MergePlan) -> str:
        """Why the images a merge writes are read by something else, or ""."""
        bases = {snap.disks[t].base: t for t in plan.tops}  # S's images: written
        layers = {plan.tops[t]: t for t in plan.above}  # the C's: dropped from the chain
        roots: list[tuple[str, bool]] = [(d.base, True) for s in meta.snapshots.values()
                                         if s is not snap for d in s.disks.values()]
        for definition in (dom.definition, dom.next_definition, dom.live):
            if definition is not None:
                # the top overlays merged into S's images are read by their disk alone
                roots += [(d.source, False) for d in definition.disks if d.source
                          and (plan.above or d.source not in plan.tops.values())]
        # the image an unplugged disk used last reads its chain as a disk would: a merge
        # into an image under it would change the data the user kept of that disk; so do
        # the images a metadata-only delete left to the user
        roots += [(top, False) for top in meta.unplugged]
        for image, name in meta.kept.items():
            hit = next((x for x in [*bases, *layers] if meta.chain_reaches(image, x)), "")
            if hit:
                return (f"{hit} is in the backing chain of {image}, kept for the user by "
                        f"a metadata-only delete of snapshot {name}")
        for root, frozen in roots:
            link: str | None = root
            below: str | None = None  # the layer that reads from ``link``
            seen: set[str] = set()
            while link is not None and link not in seen:
                if link in bases:
                    target = bases[link]
                    if target not in plan.above or below != plan.tops[target]:
                        return f"{link} is still needed by another snapshot or disk"
                elif link in layers:
                    target = layers[link]
                    if below != plan.above[target] and not (below is None and frozen):
                        return f"{link} has another layer on it than {plan.above[target]}"
                seen.add(link)
                below, link = link, meta.images.get(link)
        config = self.driver.config
        store = Path(config.appliance.image_store or config.paths.state_dir / "images")
        for base in bases:
            if Path(os.path.realpath(base)).is_relative_to(store.resolve()):
                return f"{base} is an image of the appliance image store"
            if not os.access(base, os.W_OK):
                return f"{base} is read-only"
        # what the merge writes, or removes once merged (the top overlays): by realpath
        written = {os.path.realpath(p): p for p in [*bases, *layers, *plan.tops.values()]}
        return self._other_domains(dom, written)

    def _other_domains(self, dom: DomainObj, written: dict[str, str]) -> str:
        """Why another domain reads an image of ``written`` (realpath -> path), or "".

        Its disks (persistent, pending and live definitions) and the images of its
        snapshot records are followed down their backing chains as the qcow2 headers
        say (:mod:`qemud.qemu.qcow2`), not as any metadata does: a VM cloned by hand
        (``qemu-img create -b A's image``) reads A's image without the daemon knowing,
        and a merge into that image would change its disk under it. A chain that cannot
        be followed may reach the images: the merge is refused then too (fail safe).
        """
        roots, unknown = self.chain_roots(dom, "the merged images")
        if unknown:
            return unknown
        clear: set[tuple[str, str]] = set()  # (realpath, format): reaches none of them
        for root, fmt, who in roots:
            if os.path.realpath(root) in written:
                return f"{root} is used by {who}"
            why = _reaches(root, fmt, who, written, clear)
            if why:
                return why
        return ""

    def _merge_below_off(self, dom: DomainObj, meta: DomainSnapshots,
                         snap: SnapshotRecord, plan: MergePlan, qemu_img: str,
                         out: Deferred) -> None:
        """Shut off, S deeper in the chain: per disk ``qemu-img commit`` of C into S's
        image, then ``qemu-img rebase -u`` of the layer above C onto S's image.

        Unsafe rebase is right: after the commit S's image reads as C did, so only the
        link changes. ``-d`` leaves C as it was: until the rebase the chain reads the
        same through C, so a failure at any step leaves the disk intact. A disk is only
        counted as merged once its rebase is done."""
        merged: set[str] = set()

        def one(target: str) -> Deferred:
            step = Deferred()
            layer, upper, d = plan.tops[target], plan.above[target], snap.disks[target]

            def committed(c: Deferred) -> None:
                if c.error is not None:
                    step.fail(c.error)
                    return
                self.tools.run([qemu_img, "rebase", "-q", "-u", "-f", "qcow2", "-b", d.base,
                                "-F", d.format, upper]).add_done_callback(rebased)

            def rebased(r: Deferred) -> None:
                if r.error is not None:
                    step.fail(r.error)
                    return
                merged.add(target)
                step.resolve(None)
            self.tools.run([qemu_img, "commit", "-q", "-d", "-f", "qcow2", layer]
                           ).add_done_callback(committed)
            return step

        gather([one(t) for t in plan.tops]).add_done_callback(
            lambda g: self._settle(dom, meta, snap, {t: plan.tops[t] for t in plan.tops
                                                     if t in merged}, g.error, out,
                                   plan.above, started=True))

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
                base = merge.snap.disks[target].base
                layer_node = ""
                if target in merge.above:  # non-active: C's node is the job's top
                    layer_node = _format_node(d.result, merge.tops[target], {top_node})
                    if not layer_node:
                        self._end_merge(merge, OperationFailed(
                            f"disk '{target}': {merge.tops[target]} is not open in QEMU"))
                        return
                base_node = _format_node(d.result, base, {top_node, layer_node})
                if not base_node:
                    self._end_merge(merge, OperationFailed(
                        f"disk '{target}': {base} is not open in QEMU"))
                    return
                job = f"commit-{target}-{token}"
                merge.jobs[job] = target
                args = {"job-id": job, "device": top_node, "base-node": base_node}
                if layer_node:
                    # the link QEMU writes into the above layer's header: the path the
                    # metadata (and a shut-off merge's rebase) uses, not QEMU's idea of it
                    args.update({"top-node": layer_node, "backing-file": base})
                started = monitor.execute("block-commit", job_speed(args))
                started.add_done_callback(functools.partial(_started, merge))
                commits.append(started)
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
        merge.started = True  # (an event of the job may come before the command's reply)
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
        if target in merge.above:  # non-active: no pivot; C left the chain
            self._close_layer(merge, target)
            return
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

    def _close_layer(self, merge: Merge, target: str) -> None:
        """After a non-active commit of disk ``target``: QEMU dropped C from the chain
        and frees its node unless the monitor owns it (opened by ``blockdev-add`` for a
        live snapshot, or at start-up with its file node): close what is left, then end
        the merge once every disk is done. A close that fails is only logged."""
        dom = merge.dom
        monitor = dom.monitor
        layer = os.path.realpath(merge.tops[target])

        def closed(_: Deferred | None = None) -> None:
            merge.closed.add(target)
            if len(merge.closed) == len(merge.tops):
                self._end_merge(merge, None)

        def named(d: Deferred) -> None:
            if merge.finished or monitor is None or monitor.closed:
                return
            if d.error is not None:
                log.warning("domain %s: cannot query the block nodes after merging %s: %s",
                            dom.name, layer, d.error.message)
                closed()
                return
            left = [(str(n.get("node-name") or ""), n.get("drv")) for n in d.result or []
                    if os.path.realpath(str(n.get("file", ""))) == layer]
            storage, fmt = naming.disk_node_names(target)
            nodes = [n for n, drv in left if n and drv != "file"]
            if fmt in nodes:  # opened at start-up: its file node is a node of its own
                nodes += [n for n, drv in left if n == storage]
            dels = [monitor.execute("blockdev-del", {"node-name": n}) for n in nodes]
            for n, deleted in zip(nodes, dels, strict=True):
                deleted.add_done_callback(functools.partial(
                    log_failure, f"domain {dom.name}: cannot close the merged layer's "
                    f"node {n}"))
            gather(dels).add_done_callback(closed)
        if monitor is None or monitor.closed:
            return  # on_stop ends the merge
        monitor.execute("query-named-block-nodes", {"flat": True}).add_done_callback(named)

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
        pivoted = [t for t in moved if t not in merge.above]
        if pivoted and dom.live is not None:
            for disk in dom.live.disks:
                if disk.device == "disk" and (disk.target_dev or "") in pivoted:
                    disk.source = merge.snap.disks[disk.target_dev or ""].base
            self.lifecycle.save_status(dom)
        self._settle(dom, merge.meta, merge.snap, moved, error, merge.result, merge.above,
                     started=merge.started)

    def _settle(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord,
                moved: dict[str, str], error: QemudError | None, out: Deferred,
                above: dict[str, str] | None = None, *, started: bool = False) -> None:
        """After the commits: the definition follows the ``moved`` disks (target -> old
        overlay) whose top was merged; for those merged deeper (``above``: target -> the
        layer above the merged one) the metadata's chains skip the merged layer. Then S
        is forgotten unless ``error``; ``out`` gets the outcome. ``started``: a commit
        of this call ran (QEMU accepted a live merge's job; a shut-off merge ran
        ``qemu-img commit``), which may have written into S's images before it failed;
        a failure before that wrote nothing.

        The job ends here, not once the files are written: called from the stop of a
        guest, an ``<on_poweroff>restart`` starts it right after. Snapshot calls stay
        refused while the definition is written (``SnapshotStore.settling``); the
        metadata write is then in flight, and the next operation reads it
        (``SnapshotStore.load``). ``out`` waits for both."""
        dom.job = None
        above = above or {}
        points: dict[str, tuple[str | None, str]] = {
            t: (top, snap.disks[t].base) for t, top in moved.items() if t not in above}
        if not points:
            self._settled(dom, meta, snap, moved, error, out, above, started)
            return
        self.store.settling[dom.uuid] = "snapshot-delete"

        def pointed(d: Deferred) -> None:
            self.store.settling.pop(dom.uuid, None)
            if d.error is not None:  # the disks read S's images: the definition must too
                self.record_follow(meta, points)
            self._settled(dom, meta, snap, moved, error or d.error, out, above, started)
        self.point_disks(dom, points).add_done_callback(pointed)

    def _settled(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord,
                 moved: dict[str, str], error: QemudError | None, out: Deferred,
                 above: dict[str, str], started: bool) -> None:
        """:meth:`_settle` once the definition follows the merged disks (``error``: or
        why not): the metadata, then the images nothing needs any more."""
        # whatever else fails, these disks now read S's image where they read the layer
        self._relink(meta, snap, {t: (moved[t], above[t]) for t in moved if t in above})
        if error is not None:
            written = bool(moved) or started
            if written and (moved or dom.active):
                state = "; its image holds part of the later data"
            elif written:  # qemu-img commit failed: before writing, or part-way
                state = "; its image may hold part of the later data"
            elif snap.merge_failed:  # an earlier merge did, not this call
                state = ("; nothing was merged now, its image may still hold part of the "
                         "later data from an earlier merge")
            else:
                state = "; nothing was merged"
            log.warning("domain %s: merging snapshot %s failed (the snapshot is kept%s): %s",
                        dom.name, snap.name, state, error.message)
            snap.merging = ""  # saved below either way: the merge is over
            if written:  # S is no longer what it froze: a revert to it is refused
                snap.merge_failed = (f"{time.strftime('%Y-%m-%d %H:%M:%S')}: the merge of "
                                     f"its deletion failed: {error.message}")
            # the disks that were merged no longer need their overlays
            saved = self._finish(dom, meta, None, moved) if moved else self.store.save(meta)

            def reported(d: Deferred) -> None:
                if d.error is not None:
                    log.error("domain %s: %s", dom.name, d.error.message)
                out.fail(error)
            saved.add_done_callback(reported)
            return
        self._finish(dom, meta, snap, moved, above).chain(out, lambda _: Empty())

    @staticmethod
    def _relink(meta: DomainSnapshots, snap: SnapshotRecord,
                links: dict[str, tuple[str, str]]) -> None:
        """Disks merged deeper (target -> (merged layer C, the layer above it)): the
        layer above reads S's image now, and a snapshot that froze C names S's image,
        which holds C's data. C is then in no chain: ``_collect`` removes it."""
        for target, (layer, upper) in links.items():
            base = snap.disks[target].base
            meta.images[upper] = base
            for other in meta.snapshots.values():
                record = other.disks.get(target)
                if other is not snap and record is not None and record.base == layer:
                    record.base = base

    def _finish(self, dom: DomainObj, meta: DomainSnapshots, snap: SnapshotRecord | None,
                moved: dict[str, str], above: dict[str, str] | None = None) -> Deferred:
        """Forget ``snap`` (if any), save the metadata, then remove what nothing needs.
        The Deferred is the save's: nothing is removed if it failed."""
        above = above or {}
        if snap is not None:
            meta.forget(snap)
        garbage = self._collect(dom, meta)
        saved = self.store.save(meta)  # metadata first: a crash leaves a stray file, no hole
        then(saved, lambda _: None,
             lambda: self._finished(dom, snap, moved, above, garbage))
        return saved

    def _finished(self, dom: DomainObj, snap: SnapshotRecord | None, moved: dict[str, str],
                  above: dict[str, str], garbage: list[Path]) -> None:
        self._unlink(garbage)
        if snap is None:
            return
        audit_log.info("appliance snapshot domain=%r uuid=%s delete=%r merged=%r removed=%r",
                       dom.name, dom.uuid, snap.name, sorted(moved),
                       [str(p) for p in garbage])
        if moved:
            log.info("domain %s: snapshot %s deleted, merged (%s)", dom.name, snap.name,
                     ", ".join(f"{t}: {top} -> {snap.disks[t].base}"
                               + (f", {above[t]} now reads from it" if t in above else "")
                               for t, top in moved.items()))
        self.events.appliance(dom.ref(), "snapshot-deleted", snap.name)


def _ready_to_merge(dom: DomainObj) -> bool:
    """Whether a running guest can take a live merge: its monitor is up and it is not
    on its way down."""
    return dom.monitor is not None and not dom.monitor.closed and dom.stop_intent is None


def _started(merge: Merge, d: Deferred) -> None:
    if d.error is None:
        merge.started = True


def _reaches(root: str, fmt: str | None, who: str, written: dict[str, str],
             clear: set[tuple[str, str]]) -> str:
    """Why the backing chain of ``root`` (read by ``who``) reaches an image of
    ``written`` or cannot be followed, or "". The files of a chain that reaches none are
    added to ``clear`` (realpath, as opened: a file opened as raw reads nothing below
    it, opened as qcow2 it may): a chain that joins one further on is not read again."""
    path: list[tuple[str, str]] = []
    try:
        for link, kind in qcow2.backing_chain(root, fmt):
            real = os.path.realpath(link)
            if (real, kind) in clear:
                break
            if real in written:
                return f"{written[real]} is in the backing chain of {who}"
            path.append((real, kind))
    except qcow2.ChainError as exc:
        return (f"the backing chain of {who} cannot be read ({exc}): it may reach the "
                "merged images")
    clear.update(path)
    return ""


def _format_node(nodes: Any, path: str, exclude: set[str]) -> str:
    """query-named-block-nodes -> the name of the format node that opened ``path`` (not
    a protocol node, none of ``exclude``), or ""."""
    want = os.path.realpath(path)
    return next((str(n.get("node-name")) for n in nodes or []
                 if n.get("drv") != "file" and n.get("node-name") not in exclude
                 and os.path.realpath(str(n.get("file", ""))) == want), "")
