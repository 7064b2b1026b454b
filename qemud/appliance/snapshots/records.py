"""Snapshot metadata: what a snapshot froze, and where a domain's records are kept.

``<root>/<domain>/snapshots.json`` holds a :class:`DomainSnapshots` (atomic writes; what
a killed write left is removed by the duty at start-up);
``<root>/<domain>/images/`` the overlays the daemon created. A record that belongs to an
earlier domain of the same name (another uuid) is never used nor overwritten: it is set
aside as ``snapshots.<uuid>.json`` at the next change. The record of a transient domain
goes away with the domain (as libvirt drops it): it is set aside as
``snapshots.<uuid>.transient-ended.json`` when the domain stops (:meth:`SnapshotStore.
set_aside`), so a domain created again with the same name and uuid starts without
snapshots. Setting a record aside never removes an image: the overlays stay in
``images/``, and no later garbage collection knows them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemud.dispatch import Deferred
from qemud.errors import InvalidArg, NoSnapshot, OperationFailed, OperationInvalid

if TYPE_CHECKING:
    from qemud.driver.domain import DomainObj
    from qemud.driver.filewrites import FileWrites

__all__ = ["DiskRecord", "SnapshotRecord", "DomainSnapshots", "SnapshotStore",
           "check_name", "META_VERSION"]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}\Z")
META_VERSION = 1
#: this daemon run, as a merge mark names it (``SnapshotRecord.merging``): a mark of
#: another run is a merge that daemon never finished (killed): see SnapshotStore.load
RUN_ID = f"{os.getpid()}@{time.time():.6f}"


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
    #: a merge into this snapshot's images (its deletion) is in progress: the daemon run
    #: (:data:`RUN_ID`) that started it; written before the first commit, so a daemon
    #: killed meanwhile leaves it, and the next one knows the images may have changed
    merging: str = ""
    #: why and when a merge into its images failed or was interrupted ("" if never): the
    #: snapshot is kept but its images hold part (or all) of the later data, so it is no
    #: longer the state it was taken in; a revert to it is refused
    merge_failed: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotRecord:
        disks = {t: DiskRecord(**d) for t, d in data.get("disks", {}).items()}
        return cls(name=data["name"], description=data.get("description", ""),
                   creation_time=int(data.get("creation_time", 0)),
                   state=int(data.get("state", 0)), parent=data.get("parent", ""),
                   disks=disks, xml=data.get("xml", ""),
                   merging=str(data.get("merging", "")),
                   merge_failed=str(data.get("merge_failed", "")))


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
    #: overlay -> target: the image a disk used last when it left the domain (hot-
    #: unplugged after a snapshot gave it an overlay), kept with its chain for the user;
    #: see :meth:`find_unplugged`
    unplugged: dict[str, str] = field(default_factory=dict)
    #: overlay -> snapshot name: an image of ours a snapshot froze, left to the user by a
    #: metadata-only delete of that snapshot; never removed nor merged into (nor below)
    kept: dict[str, str] = field(default_factory=dict)
    #: disk target -> [image the persistent definition names, image it must name]: the
    #: guest moved to the second (a live snapshot's overlay, a live merge's pivot) but
    #: the definition's write failed. Until a write succeeds the guest starts on the
    #: second anyway, and every snapshot operation first writes the definition
    #: (:meth:`.base.SnapshotOps.follow_definition`): the first is a snapshot's frozen
    #: image, or a layer already merged below, and booting it would write into it
    follow: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": META_VERSION, "domain": self.domain, "uuid": self.uuid,
                           "current": self.current,
                           "snapshots": [asdict(s) for s in self.snapshots.values()],
                           "images": self.images, "unplugged": self.unplugged,
                           "kept": self.kept, "follow": self.follow}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DomainSnapshots:
        data = json.loads(text)
        snaps = [SnapshotRecord.from_dict(s) for s in data.get("snapshots", [])]
        return cls(domain=data["domain"], uuid=data.get("uuid", ""),
                   current=data.get("current", ""),
                   snapshots={s.name: s for s in snaps},
                   images={str(k): str(v) for k, v in data.get("images", {}).items()},
                   unplugged={str(k): str(v)
                              for k, v in data.get("unplugged", {}).items()},
                   kept={str(k): str(v) for k, v in data.get("kept", {}).items()},
                   follow={str(k): _move(v) for k, v in data.get("follow", {}).items()})

    def find_unplugged(self, in_use: set[str], targets: set[str]) -> None:
        """Update ``unplugged`` from the domain's definitions: ``in_use`` is every disk
        source, ``targets`` every disk target of its persistent, pending and live
        definitions.

        A disk whose target is in none of them has left the domain outside the daemon's
        snapshot code (hot-unplugged, or removed from the definition). If the image it
        used last is a recorded overlay, that overlay is the top of a chain (no other
        overlay reads from it, no snapshot froze it, no definition uses it) and holds
        what the guest wrote to the disk after the snapshot, the only copy of it: it is
        kept from then on, also once the snapshots that name its target are gone, or a
        disk is plugged again under that target. It goes back to the normal rules when
        a definition uses it again. A disk whose target is still there but points
        elsewhere (the user redefined its source) is not kept: its old overlay is
        discarded as before. Run when the metadata is loaded, before an operation
        changes it (a merge leaves its layer C with nothing on it for a moment).
        """
        kept = {path: target for path, target in self.unplugged.items()
                if path in self.images and path not in in_use}
        backing = set(self.images.values())
        frozen = {d.base for s in self.snapshots.values() for d in s.disks.values()}
        for path in self.images:
            if path in kept or path in backing or path in frozen or path in in_use \
                    or path in self.kept:
                continue
            target = self._target_of(path)
            if target not in targets:
                kept[path] = target
        self.unplugged = kept

    def _target_of(self, path: str) -> str:
        """The disk target an overlay belongs to: the one whose snapshot image its
        recorded chain reaches, else the name the daemon gave it (``vdb.s1.qcow2``)."""
        for snap in self.snapshots.values():
            for target, d in snap.disks.items():
                if d.overlay == path or self.chain_reaches(path, d.base):
                    return target
        return Path(path).name.split(".", 1)[0]

    def chain_reaches(self, top: str, image: str) -> bool:
        """Whether the recorded backing chain of ``top`` goes down to ``image``."""
        link: str | None = top
        seen: set[str] = set()
        while link is not None and link not in seen:
            if link == image:
                return True
            seen.add(link)
            link = self.images.get(link)
        return False

    def get(self, name: str) -> SnapshotRecord:
        snap = self.snapshots.get(name)
        if snap is None:
            # libvirt's words (virDomainSnapshotFindByName's caller): the domain is the
            # one the client named, so the message does not repeat it
            raise NoSnapshot(f"no domain snapshot with matching name '{name}'")
        return snap

    def forget(self, snap: SnapshotRecord) -> None:
        """Take ``snap`` out of the tree: its children and, if it was current, the
        current snapshot go to its parent (libvirt's order after a delete)."""
        for other in self.snapshots.values():
            if other.parent == snap.name:
                other.parent = snap.parent
        if self.current == snap.name:
            self.current = snap.parent
        del self.snapshots[snap.name]


def _move(value: Any) -> list[str]:
    """A ``follow`` entry as read: [from, to], two paths."""
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(p, str) and p for p in value)):
        raise ValueError(f"a follow entry is not [image, image]: {value!r}")
    return [value[0], value[1]]


class SnapshotStore:
    """``<root>/<domain>/snapshots.json`` and ``<root>/<domain>/images/``.

    The temp files of metadata writes a killed daemon never renamed are removed by the
    duty at start-up, not here: the store is opened later, by the first snapshot
    procedure or undefine.
    """

    def __init__(self, root: Path, files: FileWrites) -> None:
        self.root = root
        #: how :meth:`save` writes (the driver's: fsyncs off the loop, in order per file)
        self.files = files
        #: uuid -> the job: domains whose snapshot operation has ended its job (a merge
        #: the guest's stop ended: ``<on_poweroff>restart`` must not find it busy) but is
        #: still writing the definition before it writes the metadata; until then the
        #: file is stale and a load would build on it (``SnapshotOps.require_no_job``)
        self.settling: dict[str, str] = {}

    def dir(self, domain: str) -> Path:
        return self.root / domain

    def images_dir(self, domain: str) -> Path:
        return self.dir(domain) / "images"

    def index(self, domain: str) -> Path:
        return self.dir(domain) / "snapshots.json"

    def load(self, dom: DomainObj, *, record: bool = True) -> DomainSnapshots:
        """``dom``'s metadata: what the newest write of the file in flight writes, else
        the file (see :mod:`qemud.driver.filewrites`); an empty record if there is
        none. Raises OperationFailed if it cannot be read or is damaged. What it finds
        that the file lacks (an unplugged disk's image, an interrupted merge) is
        written at once, unless ``record`` is false: the caller removes the file."""
        path = self.index(dom.name)
        try:
            text = self.files.read_text(path)
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
        disks = [disk for definition in (dom.definition, dom.next_definition, dom.live)
                 if definition is not None for disk in definition.disks]
        known = dict(meta.unplugged)
        meta.find_unplugged({d.source for d in disks if d.source},
                            {d.target_dev for d in disks if d.target_dev})
        interrupted = self._interrupted_merges(dom, meta)
        if record and (meta.unplugged.keys() - known.keys() or interrupted):
            # recorded at once, not only by the operation that loaded it (which may be
            # refused, or only read): a disk plugged again under the same target would
            # hide the unplugged one from the next load
            self._record(meta, interrupted)
        return meta

    def _record(self, meta: DomainSnapshots, interrupted: list[str]) -> None:
        """Write what :meth:`load` found; a failure is logged (the next load finds the
        same again)."""
        def saved(d: Deferred) -> None:
            if d.error is not None:
                log.warning("%s (images of unplugged disks: %s; interrupted merges: %s)",
                            d.error.message, ", ".join(meta.unplugged) or "none",
                            ", ".join(interrupted) or "none")
        self.save(meta).add_done_callback(saved)

    @staticmethod
    def _interrupted_merges(dom: DomainObj, meta: DomainSnapshots) -> list[str]:
        """Snapshots whose merge an earlier daemon run started and never ended (killed:
        its ``qemu-img commit`` or QEMU's job may have gone on and finished). Treated as
        a failed merge is: the snapshot is kept, its images may hold the later data."""
        found = []
        for snap in meta.snapshots.values():
            if not snap.merging or snap.merging == RUN_ID:
                continue
            snap.merge_failed = (f"the merge of its deletion was interrupted (the daemon "
                                 f"run {snap.merging} that started it stopped)")
            snap.merging = ""
            found.append(snap.name)
            log.warning("domain %s: snapshot %s: a merge into its image was in progress when "
                        "an earlier daemon stopped: treated as a failed merge (the "
                        "snapshot is kept; its image holds part of the later data, or all "
                        "of it). A revert to it is refused; delete it again to finish the "
                        "merge", dom.name, snap.name)
        return found

    def save(self, meta: DomainSnapshots) -> Deferred:
        """Write ``meta`` as its domain's metadata file. The Deferred resolves once the
        file is durable, its fsyncs having waited off the loop (:mod:`qemud.driver.
        filewrites`), or fails with OperationFailed, the file as it was. Until then
        :meth:`load` reads this write, not the file; an operation keeps its domain's
        job until its save has ended."""
        path = self.index(meta.domain)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if meta.stale_uuid:  # never overwrite another domain's record: keep it aside
                aside = _free_name(path, f"snapshots.{meta.stale_uuid}")
                if path.exists():
                    os.rename(path, aside)
                    log.warning("snapshot metadata of the earlier domain '%s' moved to %s",
                                meta.domain, aside)
                meta.stale_uuid = ""
        except OSError as exc:
            return Deferred.failed(OperationFailed(
                f"cannot write snapshot metadata {path}: {exc.strerror or exc}"))
        return self.files.write(path, meta.to_json(), "snapshot metadata")

    def set_aside(self, domain: str, uuid: str) -> Path | None:
        """The transient domain ``domain`` (``uuid``) went away: move its record aside.

        libvirt drops a transient domain's snapshot metadata with the domain and never
        deletes a disk file. Here the record is renamed (never deleted, never an image
        touched): the overlays it names hold what the guest wrote, and with the record
        gone no garbage collection of a later domain of the same name ever sees them.
        Returns where it went; None if there was none, or it belongs to another uuid
        (an earlier domain's record: set aside by the next :meth:`save`). A failure is
        logged, not raised: the domain is gone either way.
        """
        path = self.index(domain)
        if not path.exists():
            return None
        owner = self.owner(domain)
        if owner and owner != uuid:
            return None
        aside = _free_name(path, f"snapshots.{uuid}.transient-ended")
        try:
            os.rename(path, aside)
        except OSError as exc:
            log.error("cannot set aside the snapshot metadata %s of the ended transient "
                      "domain '%s': %s; a domain created again with uuid %s would get its "
                      "snapshots back", path, domain, exc.strerror or exc, uuid)
            return None
        log.warning("transient domain '%s' (uuid %s) ended: its snapshot metadata was "
                    "moved to %s (as libvirt, its snapshots go with it); every image stays "
                    "in %s", domain, uuid, aside, self.images_dir(domain))
        return aside

    def owner(self, domain: str) -> str:
        """The uuid ``domain``'s record names; "" if it names none or cannot be read."""
        path = self.index(domain)
        try:
            return str(json.loads(path.read_text()).get("uuid", ""))
        except FileNotFoundError:
            return ""
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("snapshot metadata %s is unreadable: %s", path, exc)
            return ""

    def remove(self, domain: str) -> None:
        """Forget ``domain``'s metadata (undefine --snapshots-metadata). Refused while
        a write of it is under way (it would bring the file back)."""
        path = self.index(domain)
        if self.files.pending(path):
            raise OperationInvalid(f"domain '{domain}' is busy: its snapshot metadata is "
                                   "being written; nothing was changed")
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise OperationFailed(f"cannot remove snapshot metadata {path}: "
                                  f"{exc.strerror or exc}") from None

    def prune(self, domain: str) -> None:
        """Remove ``domain``'s directories if they are empty; what is left in them (an
        overlay a definition still uses, an earlier domain's record) keeps them."""
        for directory in (self.images_dir(domain), self.dir(domain)):
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty, or not there


def _free_name(index: Path, stem: str) -> Path:
    """``<stem>.json`` next to ``index``, or ``<stem>.N.json`` if taken: a record set
    aside never replaces another one set aside before (the same uuid can end twice)."""
    path = index.with_name(f"{stem}.json")
    n = 1
    while path.exists():
        n += 1
        path = index.with_name(f"{stem}.{n}.json")
    return path


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise InvalidArg(f"invalid snapshot name '{name}': use letters, digits and _ . + - "
                         "(up to 100, not starting with . + or -)")
