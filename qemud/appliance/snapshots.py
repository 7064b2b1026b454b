"""External disk snapshots, revert, delete and point-in-time backups — inside the loop.

The seed's "Backup/Restore: periodically take guest's image snapshots" done with qcow2
overlays instead of LVM. See docs/SNAPSHOTS.md for the user's view; in short:

**Create** (DOMAIN_SNAPSHOT_CREATE). Every writable qcow2 disk (CD-ROMs and
``<readonly/>`` disks are left out) gets a new, empty qcow2 overlay whose backing file is
the disk's current image; from then on the guest writes to the overlay and the old
image is frozen: it *is* the snapshot. With a running guest the overlays are created with
``qemu-img create -u`` (sized from ``query-block``, the backing file is not opened: QEMU
holds its lock), added with ``blockdev-add`` and switched to in one QMP ``transaction``
of ``blockdev-snapshot`` actions, so all disks are cut at the same instant and the guest
never stops. The live and the persistent definitions then point at the overlays (a
restart boots on them). Raw disks are refused: a raw image cannot have a backing file.

**Revert** (DOMAIN_SNAPSHOT_REVERT) to S: the guest is destroyed if it runs, each disk
of S gets a NEW empty overlay on top of the image that was frozen when S was taken (S
stays reusable: revert to it twice and get the same disks twice), the definition points
there, and the guest is started again if it ran (paused if it was paused). What the
guest wrote since is discarded, exactly as a revert in libvirt.

**Delete** (DOMAIN_SNAPSHOT_DELETE) removes the metadata only; children of S get S's
parent. Images are never merged. An overlay file the daemon created is removed once
nothing needs it any more: no disk (persistent, pending or live definition) and no
remaining snapshot has it in its backing chain. Images the daemon did not create (the
user's originals) are never deleted.

**Backup** (DOMAIN_BACKUP): ``blockdev-backup sync=full`` of the disk(s) to new target
nodes in one ``transaction`` (one consistent instant for all disks; QEMU's
copy-before-write keeps it consistent while the guest writes on), tracked by the
BLOCK_JOB_COMPLETED event, progress from ``query-jobs`` every 0.5 s as appliance events
``backup-progress`` ("NN%"), then ``backup-completed`` (or ``backup-failed``). A shut-off
guest is backed up with ``qemu-img convert``. The reply comes when the copy is complete.

Metadata lives in ``<state_dir>/snapshots/<domain>/snapshots.json`` (atomic writes), the
overlays in ``<state_dir>/snapshots/<domain>/images/``. ``qemu-img`` runs as a child the
loop reaps (``watch_child``): nothing here blocks or waits.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import DomainState, ShutoffReason
from qemud.dispatch import Deferred
from qemud.driver.store import atomic_write
from qemud.errors import (
    ConfigUnsupported,
    InvalidArg,
    NoSnapshot,
    OperationFailed,
    OperationInvalid,
    QemudError,
)
from qemud.qemu import naming

if TYPE_CHECKING:
    from qemud.conf import Disk, DomainDef
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj
    from qemud.loop import EventLoop, Timer
    from qemud.qemu.qmp import QMPEvent

    from . import ApplianceContext

__all__ = ["SnapshotDuty", "SnapshotStore", "DomainSnapshots", "SnapshotRecord",
           "DiskRecord", "install"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

PROGRESS_INTERVAL = 0.5
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}\Z")
META_VERSION = 1


# -- metadata --------------------------------------------------------------------------


@dataclass
class DiskRecord:
    """One disk of a snapshot: ``base`` is the image frozen by the snapshot (the disk's
    state at that instant), ``overlay`` the file the guest wrote to afterwards."""

    target: str
    base: str
    format: str
    overlay: str


@dataclass
class SnapshotRecord:
    name: str
    description: str
    creation_time: int
    state: int  # DomainState when taken
    parent: str
    disks: dict[str, DiskRecord]
    xml: str  # the domain's definition when taken

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotRecord:
        disks = {t: DiskRecord(**d) for t, d in data.get("disks", {}).items()}
        return cls(name=data["name"], description=data.get("description", ""),
                   creation_time=int(data.get("creation_time", 0)),
                   state=int(data.get("state", 0)), parent=data.get("parent", ""),
                   disks=disks, xml=data.get("xml", ""))


@dataclass
class DomainSnapshots:
    """Everything known about one domain's snapshots; ``images`` maps every overlay file
    the daemon created to its backing file (how the garbage collection walks chains)."""

    domain: str
    uuid: str
    current: str = ""
    snapshots: dict[str, SnapshotRecord] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    #: uuid of a previous domain of the same name whose metadata file is still there
    #: (undefined, then a new domain defined): set aside, never reused, at the next save
    stale_uuid: str = ""

    def to_json(self) -> str:
        return json.dumps({"version": META_VERSION, "domain": self.domain, "uuid": self.uuid,
                           "current": self.current,
                           "snapshots": [asdict(s) for s in self.snapshots.values()],
                           "images": self.images}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DomainSnapshots:
        data = json.loads(text)
        snaps = [SnapshotRecord.from_dict(s) for s in data.get("snapshots", [])]
        return cls(domain=data["domain"], uuid=data.get("uuid", ""),
                   current=data.get("current", ""),
                   snapshots={s.name: s for s in snaps},
                   images={str(k): str(v) for k, v in data.get("images", {}).items()})

    def get(self, name: str, domain: str) -> SnapshotRecord:
        snap = self.snapshots.get(name)
        if snap is None:
            raise NoSnapshot(f"Domain snapshot not found: no domain snapshot with matching "
                             f"name '{name}' (domain '{domain}')")
        return snap


class SnapshotStore:
    """``<root>/<domain>/snapshots.json`` and ``<root>/<domain>/images/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, domain: str) -> Path:
        return self.root / domain

    def images_dir(self, domain: str) -> Path:
        return self.dir(domain) / "images"

    def index(self, domain: str) -> Path:
        return self.dir(domain) / "snapshots.json"

    def load(self, dom: DomainObj) -> DomainSnapshots:
        path = self.index(dom.name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return DomainSnapshots(dom.name, dom.uuid)
        except OSError as exc:
            raise OperationFailed(f"cannot read snapshot metadata {path}: "
                                  f"{exc.strerror or exc}") from None
        try:
            meta = DomainSnapshots.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            # never overwrite it: every snapshot operation of this domain stops here
            raise OperationFailed(f"snapshot metadata {path} is damaged ({exc}); fix or "
                                  "move it away") from None
        if meta.uuid and meta.uuid != dom.uuid:
            log.warning("snapshot metadata %s belongs to an earlier domain '%s' (uuid %s), "
                        "not to uuid %s: ignored (kept aside at the next change)", path,
                        dom.name, meta.uuid, dom.uuid)
            return DomainSnapshots(dom.name, dom.uuid, stale_uuid=meta.uuid)
        return meta

    def save(self, meta: DomainSnapshots) -> None:
        path = self.index(meta.domain)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if meta.stale_uuid:  # never overwrite another domain's record: keep it aside
                aside = path.with_name(f"snapshots.{meta.stale_uuid}.json")
                if path.exists():
                    os.replace(path, aside)
                    log.warning("snapshot metadata of the earlier domain '%s' moved to %s",
                                meta.domain, aside)
                meta.stale_uuid = ""
            atomic_write(path, meta.to_json())
        except OSError as exc:
            raise OperationFailed(f"cannot write snapshot metadata {path}: "
                                  f"{exc.strerror or exc}") from None


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidArg(f"invalid snapshot name '{name}': use letters, digits and _ . + - "
                         "(up to 100, not starting with . + or -)")


# -- children and deferreds ------------------------------------------------------------


class ToolRunner:
    """Runs ``qemu-img`` as a child the loop reaps; a Deferred tells the outcome."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop

    def run(self, argv: list[str]) -> Deferred:
        """Resolves with None on exit status 0, else fails with the tool's stderr."""
        result = Deferred()
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in exited()
        log.debug("running %s", " ".join(argv))
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=errors, close_fds=True)
        except OSError as exc:
            errors.close()
            result.fail(OperationFailed(f"cannot run {argv[0]}: {exc.strerror or exc}"))
            return result

        def exited(code: int) -> None:
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip()
            errors.close()
            if code == 0:
                result.resolve(None)
            else:
                result.fail(OperationFailed(f"{Path(argv[0]).name} {argv[1]} failed (exit "
                                            f"{code}): {text or 'no message'}"))
        self.loop.watch_popen(child, exited)
        return result


def gather(items: list[Deferred]) -> Deferred:
    """Resolves with every result once all are done; fails with the first error (but
    only after all are done, so a caller can clean up knowing nothing is in flight)."""
    out = Deferred()
    results: list[Any] = [None] * len(items)
    errors: list[QemudError] = []
    remaining = [len(items)]
    if not items:
        out.resolve(results)
        return out

    def done(index: int, d: Deferred) -> None:
        if d.error is not None:
            errors.append(d.error)
        results[index] = d.result
        remaining[0] -= 1
        if remaining[0] == 0:
            if errors:
                out.fail(errors[0])
            else:
                out.resolve(results)
    for i, item in enumerate(items):
        item.add_done_callback(functools.partial(done, i))
    return out


def _qemu_failure(what: str, error: QemudError) -> QemudError:
    return OperationFailed(f"{what}: {error.message}")


def _log_failure(what: str, d: Deferred) -> None:
    if d.error is not None:
        log.warning("%s: %s", what, d.error.message)


def _block_nodes(result: Any) -> dict[str, tuple[str, int]]:
    """query-block -> {device id: (top node name, virtual size)}."""
    nodes: dict[str, tuple[str, int]] = {}
    for entry in result or []:
        inserted = entry.get("inserted")
        if not inserted:
            continue
        qdev = str(entry.get("qdev") or entry.get("device") or "")
        size = int(inserted.get("image", {}).get("virtual-size", 0))
        for part in qdev.split("/"):
            if part:
                nodes.setdefault(part, (str(inserted.get("node-name", "")), size))
    return nodes


# -- backups in flight -----------------------------------------------------------------


@dataclass
class BackupTarget:
    target: str  # disk target dev
    path: Path
    fmt: str
    node: str = ""  # target node name once added
    job: str = ""
    size: int = 0
    current: int = 0
    done: bool = False


@dataclass
class Backup:
    dom: DomainObj
    targets: list[BackupTarget]
    result: Deferred
    created: list[Path] = field(default_factory=list)
    timer: Timer | None = None
    last_pct: int = -1
    finished: bool = False

    def job(self, job_id: str) -> BackupTarget | None:
        for t in self.targets:
            if t.job == job_id:
                return t
        return None


# -- the duty --------------------------------------------------------------------------


class SnapshotDuty:
    def __init__(self, ctx: ApplianceContext) -> None:
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.events = ctx.driver.events
        self.lifecycle = ctx.driver.lifecycle
        self.store = SnapshotStore(ctx.daemon.config.paths.state_dir / "snapshots")
        self.tools = ToolRunner(self.loop)
        self._backups: dict[str, Backup] = {}  # domain uuid -> backup in flight

    def install(self) -> dict[Procedure, Handler]:
        self.driver.qmp_event_hooks.append(self.on_qmp_event)
        self.driver.stop_hooks.append(self.on_stop)
        P = Procedure
        return {
            P.DOMAIN_SNAPSHOT_CREATE: self.create,
            P.DOMAIN_SNAPSHOT_LIST: self.list_snapshots,
            P.DOMAIN_SNAPSHOT_REVERT: self.revert,
            P.DOMAIN_SNAPSHOT_DELETE: self.delete,
            P.DOMAIN_BACKUP: self.backup,
        }

    # -- helpers -------------------------------------------------------------------------

    def _dom(self, args: Any) -> DomainObj:
        return self.driver.registry.find(args.dom.name, args.dom.uuid)

    @staticmethod
    def qemu_img() -> str:
        path = shutil.which("qemu-img")
        if path is None:
            raise OperationFailed("qemu-img not found in PATH: it is needed to create "
                                  "snapshot overlays and backup images")
        return path

    @staticmethod
    def snapshot_disks(dom: DomainObj, definition: DomainDef) -> list[Disk]:
        """The disks a snapshot covers; refuses what cannot have an overlay."""
        disks = []
        for disk in definition.disks:
            if disk.device != "disk" or disk.readonly or not disk.source:
                continue
            if disk.type != "file":
                raise ConfigUnsupported(
                    f"unsupported configuration: disk '{disk.target_dev}' of domain "
                    f"'{dom.name}' is a host block device ({disk.source}): external "
                    "snapshots need qcow2 image files")
            fmt = disk.driver_type or "raw"
            if fmt != "qcow2":
                raise ConfigUnsupported(
                    f"unsupported configuration: cannot snapshot disk '{disk.target_dev}' "
                    f"of domain '{dom.name}': {disk.source} is a {fmt} image; external "
                    "snapshots need qcow2 disks (convert it with qemu-img convert -O qcow2 "
                    "and use <driver name='qemu' type='qcow2'/>)")
            disks.append(disk)
        if not disks:
            raise OperationInvalid(f"domain '{dom.name}' has no writable disk to snapshot")
        return disks

    def _overlay_path(self, dom: DomainObj, target: str, label: str) -> Path:
        directory = self.store.images_dir(dom.name)
        path = directory / f"{target}.{label}.qcow2"
        n = 1
        while path.exists():
            n += 1
            path = directory / f"{target}.{label}.{n}.qcow2"
        return path

    @staticmethod
    def _unlink(paths: list[Path]) -> None:
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot remove %s: %s", path, exc)

    def _point_disks(self, dom: DomainObj, moves: dict[str, tuple[str | None, str]]) -> None:
        """Persistently point disk ``target`` at a new image: ``moves`` is target ->
        (only if its source is this, or None for any; new source). Written before
        memory changes; raises OperationFailed if the definition cannot be saved."""
        if not dom.persistent:
            return

        def moved(definition: DomainDef | None) -> DomainDef | None:
            if definition is None:
                return None
            new = definition.copy()
            for disk in new.disks:
                move = moves.get(disk.target_dev or "")
                if move is None or disk.device != "disk":
                    continue
                if move[0] is not None and disk.source != move[0]:
                    log.warning("domain %s: disk %s of the persistent definition uses %s, "
                                "not %s: left alone", dom.name, disk.target_dev,
                                disk.source, move[0])
                    continue
                disk.source = move[1]
                disk.driver_type = "qcow2"
            return new
        old = (dom.definition, dom.next_definition)
        definition, pending = moved(dom.definition), moved(dom.next_definition)
        assert definition is not None
        dom.definition, dom.next_definition = definition, pending
        try:
            self.driver.registry.save(dom)
        except QemudError:
            dom.definition, dom.next_definition = old
            raise

    def _collect(self, dom: DomainObj, meta: DomainSnapshots) -> list[Path]:
        """Overlays (ours) no chain needs any more: forgotten in ``meta``, returned for
        deletion once ``meta`` is saved."""
        roots: set[str] = set()
        for definition in (dom.definition, dom.next_definition, dom.live):
            if definition is not None:
                roots.update(d.source for d in definition.disks if d.source)
        for snap in meta.snapshots.values():
            roots.update(d.base for d in snap.disks.values())
        needed: set[str] = set()
        for root in roots:
            link: str | None = root
            while link is not None and link not in needed:
                needed.add(link)
                link = meta.images.get(link)
        ours = self.store.images_dir(dom.name).resolve()
        garbage: list[Path] = []
        for path_text in [p for p in meta.images if p not in needed]:
            del meta.images[path_text]
            path = Path(path_text)
            if path.resolve().parent == ours:  # never anything the daemon did not create
                garbage.append(path)
        return garbage

    # -- create --------------------------------------------------------------------------

    def create(self, ctx: Any, args: pl.SnapshotCreateArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
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
        dom.job = "snapshot"
        out = Deferred()
        created: list[Path] = []
        nodes: dict[str, tuple[str, int]] = {}  # target -> (top node, size) when running

        def fail(error: QemudError) -> None:
            dom.job = None
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
                lambda g: fail(g.error) if g.error else (
                    switch() if running else finish()))

        def switch() -> None:
            self._switch_live(dom, record, nodes).add_done_callback(
                lambda d: fail(d.error) if d.error else finish())

        def finish() -> None:
            try:
                self._point_disks(dom, {t: (d.base, d.overlay)
                                        for t, d in record.disks.items()})
            except QemudError as exc:
                if running:  # QEMU already writes to the overlays: keep them
                    dom.job = None
                    out.fail(OperationFailed(
                        f"the guest now writes to new overlays, but its definition could "
                        f"not be saved: {exc.message}"))
                else:
                    fail(exc)
                return
            meta.snapshots[name] = record
            meta.current = name
            for d in record.disks.values():
                meta.images[d.overlay] = d.base
            try:
                self.store.save(meta)
            except QemudError as exc:
                dom.job = None
                out.fail(exc)
                return
            dom.job = None
            audit_log.info("appliance snapshot domain=%r uuid=%s create=%r disks=%s",
                           dom.name, dom.uuid, name, ",".join(record.disks))
            log.info("domain %s: snapshot %s taken (%s)", dom.name, name,
                     ", ".join(f"{t} -> {d.overlay}" for t, d in record.disks.items()))
            self.events.appliance(dom.ref(), "snapshot-created", name)
            out.resolve(pl.StringReply(name))

        if not running:
            overlays(None)
            return out
        assert dom.monitor is not None

        def queried(d: Deferred) -> None:
            if d.error is not None:
                fail(_qemu_failure("cannot query the disks", d.error))
                return
            found = _block_nodes(d.result)
            for target in record.disks:
                entry = found.get(naming.disk_device_id(target))
                if entry is None or not entry[0]:
                    fail(OperationFailed(f"disk '{target}' of domain '{dom.name}' is not "
                                         "open in QEMU"))
                    return
                nodes[target] = entry
            overlays({t: n[1] for t, n in nodes.items()})
        dom.monitor.execute("query-block").add_done_callback(queried)
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
        token = secrets.token_hex(3)
        new_nodes = {t: f"snap-{t}-{token}" for t in record.disks}
        adds = [monitor.execute("blockdev-add", {
            "driver": "qcow2", "node-name": new_nodes[t], "backing": None,
            "file": {"driver": "file", "filename": d.overlay}})
            for t, d in record.disks.items()]

        def added(g: Deferred) -> None:
            if g.error is not None:
                undo()
                out.fail(_qemu_failure("cannot open the overlays", g.error))
                return
            actions = [{"type": "blockdev-snapshot",
                        "data": {"node": nodes[t][0], "overlay": new_nodes[t]}}
                       for t in record.disks]
            monitor.execute("transaction", {"actions": actions}).add_done_callback(switched)

        def switched(d: Deferred) -> None:
            if d.error is not None:
                undo()
                out.fail(_qemu_failure("cannot switch to the overlays", d.error))
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

    # -- list ----------------------------------------------------------------------------

    def list_snapshots(self, ctx: Any, args: pl.DomainArgs) -> pl.SnapshotListReply:
        dom = self._dom(args)
        meta = self.store.load(dom)
        return pl.SnapshotListReply([
            pl.SnapshotInfo(s.name, s.description, s.creation_time, s.state,
                            s.parent if s.parent in meta.snapshots else "",
                            s.name == meta.current)
            for s in meta.snapshots.values()])

    # -- revert --------------------------------------------------------------------------

    def revert(self, ctx: Any, args: pl.SnapshotArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
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
            try:
                self.store.save(meta)
            except QemudError as exc:
                dom.job = None
                out.fail(exc)
                return
            self._unlink(garbage)
            dom.job = None
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

    # -- delete --------------------------------------------------------------------------

    def delete(self, ctx: Any, args: pl.SnapshotArgs) -> Empty:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
        meta = self.store.load(dom)
        snap = meta.get(args.name, dom.name)
        for other in meta.snapshots.values():
            if other.parent == snap.name:
                other.parent = snap.parent
        if meta.current == snap.name:
            meta.current = snap.parent
        del meta.snapshots[snap.name]
        garbage = self._collect(dom, meta)
        self.store.save(meta)  # metadata first: a crash leaves a stray file, never a hole
        self._unlink(garbage)
        audit_log.info("appliance snapshot domain=%r uuid=%s delete=%r removed=%r",
                       dom.name, dom.uuid, snap.name, [str(p) for p in garbage])
        self.events.appliance(dom.ref(), "snapshot-deleted", snap.name)
        return Empty()

    # -- backup --------------------------------------------------------------------------

    def backup(self, ctx: Any, args: pl.BackupArgs) -> Deferred:
        dom = self._dom(args)
        self.lifecycle.require_no_job(dom)
        if dom.active:
            self.lifecycle.require_active(dom)
        target = Path(args.target)
        if not args.target or not target.is_absolute():
            raise InvalidArg(f"backup target must be an absolute path, got '{args.target}'")
        disks = [d for d in dom.current().disks if d.device == "disk" and d.source]
        if args.disk:
            disks = [d for d in disks if d.target_dev == args.disk]
            if not disks:
                raise InvalidArg(f"domain '{dom.name}' has no disk '{args.disk}'")
        if not disks:
            raise OperationInvalid(f"domain '{dom.name}' has no disk to back up")
        targets = self._backup_targets(dom, disks, target)
        for t in targets:
            if t.path.exists():
                raise OperationInvalid(f"backup target {t.path} already exists (remove it "
                                       "or choose another name)")
            if not t.path.parent.is_dir():
                raise InvalidArg(f"backup target directory {t.path.parent} does not exist")
        qemu_img = self.qemu_img()
        dom.job = "backup"
        out = Deferred()
        backup = Backup(dom, targets, out)
        self.events.appliance(dom.ref(), "backup-progress", "0%")
        if dom.active:
            self._backup_live(backup, qemu_img)
        else:
            self._backup_offline(backup, {d.target_dev or "": d for d in disks}, qemu_img)
        return out

    @staticmethod
    def _backup_targets(dom: DomainObj, disks: list[Disk], target: Path
                        ) -> list[BackupTarget]:
        if len(disks) == 1 and not target.is_dir():
            fmt = "qcow2" if target.suffix == ".qcow2" else "raw"
            return [BackupTarget(disks[0].target_dev or "", target, fmt)]
        if not target.is_dir():
            raise InvalidArg(f"backup of {len(disks)} disks: target {target} must be an "
                             "existing directory")
        return [BackupTarget(d.target_dev or "", target / f"{dom.name}-{d.target_dev}.qcow2",
                             "qcow2") for d in disks]

    def _finish_backup(self, backup: Backup, error: QemudError | None) -> None:
        if backup.finished:
            return
        backup.finished = True
        dom = backup.dom
        if self._backups.get(dom.uuid) is backup:
            del self._backups[dom.uuid]
        if backup.timer is not None:
            backup.timer.cancel()
        monitor = dom.monitor
        if monitor is not None and not monitor.closed and dom.stop_intent is None:
            for t in backup.targets:
                if error is not None and t.job and not t.done:
                    monitor.execute("block-job-cancel", {"device": t.job, "force": True})
                if t.node:
                    monitor.execute("blockdev-del", {"node-name": t.node}).add_done_callback(
                        functools.partial(_log_failure, f"domain {dom.name}: cannot remove "
                                          f"backup node {t.node}"))
        if dom.job == "backup":
            dom.job = None
        files = ", ".join(str(t.path) for t in backup.targets)
        if error is not None:
            self._unlink(backup.created)
            log.warning("domain %s: backup failed: %s", dom.name, error.message)
            audit_log.info("appliance backup domain=%r uuid=%s files=%r result=error %r",
                           dom.name, dom.uuid, files, error.message)
            self.events.appliance(dom.ref(), "backup-failed", error.message)
            backup.result.fail(error)
            return
        log.info("domain %s: backup written to %s", dom.name, files)
        audit_log.info("appliance backup domain=%r uuid=%s files=%r result=ok", dom.name,
                       dom.uuid, files)
        self.events.appliance(dom.ref(), "backup-progress", "100%")
        self.events.appliance(dom.ref(), "backup-completed", files)
        backup.result.resolve(Empty())

    def _backup_offline(self, backup: Backup, disks: dict[str, Disk], qemu_img: str) -> None:
        steps = []
        for t in backup.targets:
            disk = disks[t.target]
            backup.created.append(t.path)
            steps.append(self.tools.run([qemu_img, "convert", "-f", disk.driver_type or "raw",
                                         "-O", t.fmt, disk.source or "", str(t.path)]))
        gather(steps).add_done_callback(lambda g: self._finish_backup(backup, g.error))

    def _backup_live(self, backup: Backup, qemu_img: str) -> None:
        dom = backup.dom
        monitor = dom.monitor
        assert monitor is not None
        self._backups[dom.uuid] = backup
        token = secrets.token_hex(3)

        def fail(error: QemudError) -> None:
            self._finish_backup(backup, error)

        def queried(d: Deferred) -> None:
            if d.error is not None:
                fail(_qemu_failure("cannot query the disks", d.error))
                return
            found = _block_nodes(d.result)
            sources: dict[str, str] = {}
            for t in backup.targets:
                entry = found.get(naming.disk_device_id(t.target))
                if entry is None or not entry[0]:
                    fail(OperationFailed(f"disk '{t.target}' of domain '{dom.name}' is not "
                                         "open in QEMU"))
                    return
                sources[t.target], t.size = entry
                t.job = f"backup-{t.target}-{token}"
            steps = [self._create_target(backup, t, qemu_img) for t in backup.targets]
            gather(steps).add_done_callback(
                lambda g: fail(g.error) if g.error else add_nodes(sources))

        def add_nodes(sources: dict[str, str]) -> None:
            if backup.finished:
                return
            adds = []
            for t in backup.targets:
                t.node = f"bk-{t.target}-{token}"
                adds.append(monitor.execute("blockdev-add", {
                    "driver": t.fmt, "node-name": t.node,
                    "file": {"driver": "file", "filename": str(t.path)}}))

            def added(g: Deferred) -> None:
                if g.error is not None:
                    fail(_qemu_failure("cannot open the backup target", g.error))
                    return
                actions = [{"type": "blockdev-backup", "data": {
                    "job-id": t.job, "device": sources[t.target], "target": t.node,
                    "sync": "full"}} for t in backup.targets]
                # jobs may complete before this answer: on_qmp_event already tracks them
                monitor.execute("transaction", {"actions": actions}).add_done_callback(
                    lambda d: fail(_qemu_failure("cannot start the backup", d.error))
                    if d.error else progress_soon())
            gather(adds).add_done_callback(added)

        def progress_soon() -> None:
            if not backup.finished:
                backup.timer = self.loop.call_later(PROGRESS_INTERVAL, tick)

        def tick() -> None:
            backup.timer = None
            if backup.finished or monitor.closed:
                return
            monitor.execute("query-jobs").add_done_callback(jobs)

        def jobs(d: Deferred) -> None:
            if backup.finished:
                return
            if d.error is None:
                for job in d.result or []:
                    t = backup.job(str(job.get("id", "")))
                    if t is not None and not t.done:
                        t.current = int(job.get("current-progress", 0))
                        t.size = int(job.get("total-progress", 0)) or t.size
                self._report(backup)
            progress_soon()

        monitor.execute("query-block").add_done_callback(queried)

    def _create_target(self, backup: Backup, t: BackupTarget, qemu_img: str) -> Deferred:
        backup.created.append(t.path)
        if t.fmt == "qcow2":
            return self.tools.run([qemu_img, "create", "-q", "-f", "qcow2", str(t.path),
                                   str(t.size)])
        try:
            fd = os.open(t.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, t.size)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == 17:  # EEXIST: not ours, never removed
                backup.created.remove(t.path)
            return Deferred.failed(OperationFailed(f"cannot create backup target {t.path}: "
                                                   f"{exc.strerror or exc}"))
        return Deferred.resolved(None)

    def _report(self, backup: Backup) -> None:
        total = sum(t.size for t in backup.targets)
        done = sum(t.size if t.done else min(t.current, t.size) for t in backup.targets)
        pct = min(99, done * 100 // total) if total else 0
        if pct != backup.last_pct and pct > 0:
            backup.last_pct = pct
            self.events.appliance(backup.dom.ref(), "backup-progress", f"{pct}%")

    # -- hooks ---------------------------------------------------------------------------

    def on_qmp_event(self, dom: DomainObj, event: QMPEvent) -> None:
        if event.name not in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            return
        backup = self._backups.get(dom.uuid)
        if backup is None or backup.finished:
            return
        t = backup.job(str(event.data.get("device", "")))
        if t is None:
            return
        if event.name == "BLOCK_JOB_CANCELLED":
            why = f"domain '{dom.name}' stopped during the backup" if dom.stop_intent \
                else f"backup of disk '{t.target}' was cancelled"
            self._finish_backup(backup, OperationFailed(why))
            return
        error = event.data.get("error")
        if error:
            self._finish_backup(backup, OperationFailed(
                f"backup of disk '{t.target}' failed: {error}"))
            return
        t.done = True
        if all(x.done for x in backup.targets):
            self._finish_backup(backup, None)
        else:
            self._report(backup)

    def on_stop(self, dom: DomainObj, reason: ShutoffReason) -> None:
        backup = self._backups.get(dom.uuid)
        if backup is not None:
            self._finish_backup(backup, OperationFailed(
                f"domain '{dom.name}' stopped during the backup"))


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    return SnapshotDuty(ctx).install()

