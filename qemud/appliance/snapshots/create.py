"""Taking a snapshot (DOMAIN_SNAPSHOT_CREATE) and listing them (DOMAIN_SNAPSHOT_LIST).

Every writable qcow2 disk gets a new, empty overlay whose backing file is its current
image, which is frozen from then on: it *is* the snapshot. A running guest switches to
the overlays in one QMP ``transaction`` of ``blockdev-snapshot`` actions (one instant
for all disks; the guest never stops); the live and the persistent definitions then
point at them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import payloads as pl
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, OperationInvalid, QemudError

from .base import JobToken, SnapshotOps, end_job, gather, qemu_failure, then
from .records import DiskRecord, DomainSnapshots, SnapshotRecord, check_name

if TYPE_CHECKING:
    from qemud.driver.domain import DomainObj

__all__ = ["CreateOps"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")


class CreateOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_LIST and DOMAIN_SNAPSHOT_CREATE."""

    def list_snapshots(self, ctx: Any, args: pl.DomainArgs) -> pl.SnapshotListReply:
        dom = self._dom(args)
        meta = self.store.load(dom)
        return pl.SnapshotListReply([
            pl.SnapshotInfo(s.name, s.description, s.creation_time, s.state,
                            s.parent if s.parent in meta.snapshots else "",
                            s.name == meta.current)
            for s in meta.snapshots.values()])

    def create(self, ctx: Any, args: pl.SnapshotCreateArgs) -> Deferred:
        dom = self._dom(args)
        self.require_no_job(dom)
        self.driver.devices.require_no_unplug(dom, disks_only=True)  # a disk is being unplugged
        self.require_no_pending_update(dom, "create a snapshot")
        meta = self.store.load(dom)
        name = args.name or self._auto_name(meta)
        check_name(name)
        if name in meta.snapshots:
            raise OperationInvalid(f"snapshot '{name}' already exists for domain "
                                   f"'{dom.name}'")
        running = dom.active
        if running:
            self.lifecycle.require_active(dom)
        current = dom.current()
        disks = self.snapshot_disks(dom, current)
        qemu_img = self.qemu_img()
        record = SnapshotRecord(
            name=name, description=args.description, creation_time=int(time.time()),
            state=int(dom.state), parent=meta.current if meta.current in meta.snapshots
            else "", disks={}, xml=current.to_xml())
        for disk in disks:
            target = disk.target_dev or ""
            base = str(Path(disk.source or "").absolute())
            record.disks[target] = DiskRecord(target, base, "qcow2",
                                              str(self._overlay_path(dom, target, name)))
        try:
            self.store.images_dir(dom.name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot create {self.store.images_dir(dom.name)}: "
                                  f"{exc.strerror or exc}") from None
        job = dom.job = JobToken("snapshot")
        out = Deferred()
        created: list[Path] = []
        nodes: dict[str, tuple[str, int]] = {}  # target -> (top node, size) when running

        def fail(error: QemudError) -> None:
            end_job(dom, job)
            self._unlink(created)
            log.warning("domain %s: snapshot %s failed: %s", dom.name, name, error.message)
            out.fail(error)

        def overlays(sizes: dict[str, int] | None) -> None:
            steps = []
            for target, d in record.disks.items():
                argv = [qemu_img, "create", "-q", "-f", "qcow2", "-F", d.format,
                        "-b", d.base, d.overlay]
                if sizes is not None:  # QEMU holds the base's lock: do not open it
                    argv[2:2] = ["-u"]
                    argv.append(str(sizes[target]))
                created.append(Path(d.overlay))
                steps.append(self.tools.run(argv))
            gather(steps).add_done_callback(
                lambda g: fail(g.error) if g.error else linked())

        def linked() -> None:
            """The overlays' backing links go into the metadata file before any
            definition names an overlay: a chain the metadata does not know is one a
            later delete or revert could cut (a daemon killed in between, a failed
            save). Links of overlays that end up unused are collected later."""
            for d in record.disks.values():
                meta.images[d.overlay] = d.base
            then(self.store.save(meta), fail, switch if running else finish)

        def switch() -> None:
            self._switch_live(dom, record, nodes).add_done_callback(
                lambda d: fail(d.error) if d.error else finish())

        def finish() -> None:
            then(self.point_disks(dom, {t: (d.base, d.overlay)
                                        for t, d in record.disks.items()}, job),
                 not_pointed, pointed)

        def not_pointed(error: QemudError) -> None:
            """The definition's write failed. A shut-off domain: nothing happened. A
            running guest writes to the overlays already: the snapshot is taken, and
            the metadata records that the definition must follow (its next start boots
            the overlays, its next snapshot operation writes it first); the call still
            fails, saying so."""
            if not running:
                fail(error)
                return
            meta.snapshots[name] = record
            meta.current = name
            self.record_follow(meta, {t: (d.base, d.overlay)
                                      for t, d in record.disks.items()})

            def recorded(d: Deferred) -> None:
                end_job(dom, job)
                if d.error is not None:
                    log.error("domain %s: snapshot %s: %s", dom.name, name, d.error.message)
                    out.fail(OperationFailed(
                        f"the guest now writes to new overlays, but neither its "
                        f"definition nor the snapshot metadata could be saved: "
                        f"{error.detail}; {d.error.detail}"))
                    return
                announce()
                out.fail(OperationFailed(
                    f"snapshot '{name}' was taken and the guest writes to its overlays, "
                    f"but its persistent definition could not be saved: {error.detail}. "
                    "The domain's next start uses the overlays, and its next snapshot "
                    "operation saves the definition first"))
            self.store.save(meta).add_done_callback(recorded)

        def pointed() -> None:
            meta.snapshots[name] = record
            meta.current = name
            self._end_job(dom, job, meta, out, saved)

        def announce() -> None:
            audit_log.info("appliance snapshot domain=%r uuid=%s create=%r disks=%s",
                           dom.name, dom.uuid, name, ",".join(record.disks))
            log.info("domain %s: snapshot %s taken (%s)", dom.name, name,
                     ", ".join(f"{t} -> {d.overlay}" for t, d in record.disks.items()))
            self.events.appliance(dom.ref(), "snapshot-created", name)

        def saved() -> None:
            announce()
            out.resolve(pl.StringReply(name))

        if not running:
            overlays(None)
            return out
        assert dom.monitor is not None

        def queried(d: Deferred) -> None:
            if d.error is not None:
                fail(d.error)
                return
            nodes.update(d.result)
            overlays({t: n[1] for t, n in nodes.items()})
        self._top_nodes(dom, list(record.disks)).add_done_callback(queried)
        return out

    @staticmethod
    def _auto_name(meta: DomainSnapshots) -> str:
        name = base = str(int(time.time()))
        n = 1
        while name in meta.snapshots:
            n += 1
            name = f"{base}-{n}"
        return name

    def _switch_live(self, dom: DomainObj, record: SnapshotRecord,
                     nodes: dict[str, tuple[str, int]]) -> Deferred:
        """blockdev-add each overlay, then one transaction of blockdev-snapshot."""
        monitor = dom.monitor
        out = Deferred()
        if monitor is None or monitor.closed:
            out.fail(OperationFailed(f"domain '{dom.name}' stopped during the snapshot"))
            return out
        token = os.urandom(3).hex()  # unique, not secret: no secrets/hashlib import
        new_nodes = {t: f"snap-{t}-{token}" for t in record.disks}
        adds = [monitor.execute("blockdev-add", {
            "driver": "qcow2", "node-name": new_nodes[t], "backing": None,
            "file": {"driver": "file", "filename": d.overlay}})
            for t, d in record.disks.items()]

        def added(g: Deferred) -> None:
            if g.error is not None:
                undo()
                out.fail(qemu_failure("cannot open the overlays", g.error))
                return
            actions = [{"type": "blockdev-snapshot",
                        "data": {"node": nodes[t][0], "overlay": new_nodes[t]}}
                       for t in record.disks]
            monitor.execute("transaction", {"actions": actions}).add_done_callback(switched)

        def switched(d: Deferred) -> None:
            if d.error is not None:
                undo()
                out.fail(qemu_failure("cannot switch to the overlays", d.error))
                return
            if dom.live is not None:
                for disk in dom.live.disks:
                    rec = record.disks.get(disk.target_dev or "")
                    if rec is not None and disk.device == "disk":
                        disk.source = rec.overlay
                        disk.driver_type = "qcow2"
                self.lifecycle.save_status(dom)
            out.resolve(None)

        def undo() -> None:
            if not monitor.closed:
                for node in new_nodes.values():
                    monitor.execute("blockdev-del", {"node-name": node})
        gather(adds).add_done_callback(added)
        return out
