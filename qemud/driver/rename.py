"""DOMAIN_RENAME (virsh ``domrename``): a shut-off persistent domain gets a new name.

libvirt's rules (qemuDomainRename, virDomainObjListRename): only an inactive, persistent
domain, with no managed save image and no snapshots, to a name no other domain has;
flags must be 0; the uuid stays. The events are libvirt's: UNDEFINED (RENAMED) for the
old name, then DEFINED (RENAMED) for the new.

What the daemon keeps under a domain's name follows it:

* ``<config_dir>/domains/<name>.xml`` and ``<config_dir>/autostart/<name>``;
* ``<log_dir>/qemu/<name>.log`` (and its rotated ``.1``), when no log of the new name is
  there already (a log is never overwritten);
* a UEFI domain's NVRAM file at the default ``<state_dir>/nvram/<name>_VARS.fd`` (and
  the definition's ``<nvram>`` path), as libvirt moves it;
* the path of a unix socket of a serial, console or channel in the domain's run
  directory ``<run_dir>/qemu/<name>/`` (nothing there to move: the domain is shut off);
* the appliance layer's ``<state_dir>/vms/<name>/`` (a deployed VM's disks and its
  ``appliance-state.json``, whose name and paths are rewritten, as are the definition's
  disk sources under it) and an empty snapshot record ``<state_dir>/snapshots/<name>/
  snapshots.json``. A record with snapshots refuses the rename (libvirt's rule); one that
  still lists images of ours (overlays a snapshot left) refuses it too: their qcow2
  backing chains name the directory, which cannot move.

Runtime files (``<run_dir>/qemu/<name>*``, the managed save image) exist only for a
running or saved domain, which cannot be renamed.

**Crash safety.** A rename is several file operations; an intent record
``<config_dir>/domains/.rename-<uuid>.json`` (:class:`RenamePlan`, written durably
first) makes them one. The commit point is the durable write of the new definition
file: before it the moves are undone, after it they are finished -- by the call itself,
or, if the daemon died in between, by the next daemon before it loads any definition
(:func:`recover`, from :meth:`.registry.Registry.load`). So after a crash at any point
the domain is defined under exactly one of its two names, with its files where that
name expects them, and the loader never meets two definitions of one uuid. Every step is
idempotent (a step already done is skipped), so a recovery cut short is simply run again.

**Off the loop.** A rename makes up to a dozen fsyncs (each move's two directories, the
intent record, the new definition, the clean-up); on a disk busy with a guest's writes
one takes seconds. The steps are written once, as generators that yield what they wait
for (:data:`Steps`): the call runs them as a task whose fsyncs wait off the loop
(:func:`waited`), start-up's recovery runs them in place (:func:`run_now`). Meanwhile
the domain is busy (``Registry.operations``: start, define over it, undefine, autostart,
snapshots and every ``--config`` change are refused) and the new name is taken
(``Registry.reserved``: a define, create, restore or deploy of it is refused). Before
it plans, the rename waits for what was under way when it came, checks made: a define,
an autostart or ``--config`` change of the domain (``Registry.in_flight``) and a write
of the records it moves (the snapshot metadata, a deployed VM's state,
:class:`.filewrites.FileWrites`). So none lands under the old name after the files
moved, and the rename renames what they wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid as uuidlib
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Procedure
from protocol import payloads as pl
from protocol.constants import DefinedDetail, LifecycleEvent, UndefinedDetail
from qemud.conf import ConfError, DomainDef
from qemud.dispatch import Deferred, Handler
from qemud.errors import OperationFailed, OperationInvalid, XMLError
from qemud.tasks import Task, run_task

from .firmware import nvram_default_path
from .flags import check_flags
from .store import DomainStore, Fsyncs, TempFile, fsync_directory_async

if TYPE_CHECKING:
    from .domain import DomainObj
    from .driver import QemuDriver

__all__ = ["Renamer", "RenamePlan", "recover", "drop_finished_record", "JOURNAL_PREFIX",
           "RENAME_BUSY"]

log = logging.getLogger(__name__)

#: ``<domains_dir>/.rename-<uuid>.json``: a rename in progress (not ``*.xml``, not
#: ``.*.tmp``: neither the loader nor the debris sweep takes it for something else)
JOURNAL_PREFIX = ".rename-"

#: the appliance layer's per-domain directories under ``<state_dir>`` (see
#: qemud.appliance.images.layout and qemud.appliance.snapshots.records)
VMS_DIR, VM_STATE = "vms", "appliance-state.json"
SNAPSHOTS_DIR, SNAPSHOT_INDEX = "snapshots", "snapshots.json"
#: what the images duty appends to a disk while ``qemu-img`` writes it
UNFINISHED_DISK = ".qcow2.new"
#: the domain's mark in ``Registry.operations`` while it is renamed ("busy: ... in progress")
RENAME_BUSY = "rename"


@dataclass
class RenamePlan:
    """Everything a rename does, with absolute paths: what :func:`recover` replays
    without knowing the daemon's layout."""

    uuid: str
    old: str
    new: str
    xml: str  # the definition under the new name: the commit is its file
    autostart: bool
    #: [src, dst] renamed before the commit (directories or files)
    moves: list[list[str]] = field(default_factory=list)
    #: [json file (after the moves), its name key, old path prefix, new path prefix]
    records: list[list[str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RenamePlan:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


def journal_path(store: DomainStore, uuid: str) -> Path:
    return store.domains_dir / f"{JOURNAL_PREFIX}{uuid}.json"


# -- the file operations (also run at start-up by recover) ---------------------------------

#: a sequence of file operations that yields what it waits for between them: a temp
#: file (its fsync, before its rename) or a directory (its fsync, after a rename or
#: removal in it); a failed fsync is thrown back in at the ``yield``
Steps = Generator["TempFile | Path", None, None]


class _InPlace:
    """:class:`.store.Fsyncs` done at once, on the caller's stack (start-up, before the
    loop)."""

    @staticmethod
    def fsync(fd: int, done: Callable[[OSError | None], None]) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            done(exc)
            return
        done(None)


def waited(fsync: Fsyncs, steps: Steps) -> Task:
    """``steps`` as a task (:mod:`qemud.tasks`): each fsync it yields waits off the loop,
    its error, if any, raised back in ``steps``."""
    error: OSError | None = None
    while True:
        try:
            item = steps.throw(error) if error is not None else next(steps)
        except StopIteration:
            return
        error = yield _synced(fsync, item)


def run_now(steps: Steps) -> None:
    """``steps`` with every fsync done in place: start-up's recovery, before the loop
    serves anyone."""
    task = waited(_InPlace, steps)
    result: Any = None
    while True:
        try:
            deferred = task.send(result)
        except StopIteration:
            return
        assert deferred.done, "an in-place fsync is done once asked for"
        result = deferred.result


def _synced(fsync: Fsyncs, item: TempFile | Path) -> Deferred:
    """The fsync of a temp file or a directory (one gone: nothing to do); resolves with
    its error, or None."""
    out = Deferred()
    if isinstance(item, TempFile):
        fsync.fsync(item.fd, out.resolve)
    else:
        fsync_directory_async(fsync, item, lambda error: out.resolve(
            None if isinstance(error, FileNotFoundError) else error))
    return out


def _write(path: Path, text: str, mode: int = 0o600) -> Steps:
    """An atomic, durable write (as :func:`.store.atomic_write`, but a failed fsync of
    the directory fails it too: a rename undoes or is finished again)."""
    temp = TempFile(path, text, mode)
    try:
        yield temp
        temp.rename()
    except BaseException:
        temp.abandon()
        raise
    yield path.parent


def _committed(store: DomainStore, plan: RenamePlan) -> bool:
    """Whether the rename happened: a definition of the new name names the domain's
    uuid. Before the commit there is none (the rename is refused when a file of that
    name exists, and the name is taken while it runs); the commit puts it there whole
    (a rename of a temp file), and the failed commit's undo removes it first. Its text
    is not compared with the plan's: once renamed, the domain may have been changed
    (a define, a ``--config`` change) before a next start finishes the clean-up."""
    return _names_uuid(store.definition_path(plan.new), plan.uuid)


def _move(src: str, dst: str, undoing: bool = False) -> Steps:
    """``src`` -> ``dst`` unless done already (``src`` gone, ``dst`` there). Undoing, a
    ``dst`` that is there too means the move being undone never happened (its own
    destination was taken): both are left as they are."""
    if not os.path.lexists(src):
        return
    if os.path.lexists(dst):
        if undoing:
            log.warning("undoing a rename: %s and %s are both there, so %s was never moved "
                        "to %s (its destination was taken) or has been made again since: "
                        "both are left as they are", dst, src, dst, src)
            return
        raise OSError(17, "the destination exists", dst)  # never replace anything
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    yield Path(src).parent
    yield Path(dst).parent


def _rewrite_record(path: str, key: str, name: str, old_prefix: str, new_prefix: str,
                    uuid: str) -> Steps:
    """Set ``key`` of the JSON file ``path`` to ``name`` and move every path in it from
    ``old_prefix`` to ``new_prefix``; nothing to do, nothing written. A record of
    another domain (its ``uuid``; one the rename's move never reached) is left alone."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return
    if isinstance(data, dict) and data.get("uuid", uuid) != uuid:
        return
    changed = _reprefix(data, old_prefix, new_prefix)
    if isinstance(data, dict) and data.get(key) != name:
        data[key] = name
        changed = True
    if changed:
        yield from _write(Path(path), json.dumps(data, indent=1))


def _reprefix(value: Any, old: str, new: str) -> bool:
    """Replace the leading directory ``old`` by ``new`` in every string of ``value``
    (a JSON tree, in place); whether anything changed."""
    changed = False
    items: Any = (value.items() if isinstance(value, dict) else
                  enumerate(value) if isinstance(value, list) else ())
    for key, item in list(items):
        if isinstance(item, str):
            moved = _moved_path(item, old, new)
            if moved != item:
                value[key] = moved
                changed = True
        elif _reprefix(item, old, new):
            changed = True
    return changed


def _moved_path(path: str, old: str, new: str) -> str:
    """``path`` with its leading directory ``old`` replaced by ``new`` (else as it is)."""
    return new + path[len(old):] if _under(path, Path(old)) else path


def _under(path: str, directory: Path) -> bool:
    return path == str(directory) or path.startswith(f"{directory}/")


def _forward(plan: RenamePlan) -> Steps:
    """The moves and record rewrites, before the commit."""
    for src, dst in plan.moves:
        yield from _move(src, dst)
    for path, key, old_prefix, new_prefix in plan.records:
        yield from _rewrite_record(path, key, plan.new, old_prefix, new_prefix, plan.uuid)


def _undo(store: DomainStore, plan: RenamePlan) -> Steps:
    """Put back what :func:`_forward` did (the rename did not commit)."""
    for path, key, old_prefix, new_prefix in plan.records:
        yield from _rewrite_record(path, key, plan.old, new_prefix, old_prefix, plan.uuid)
    for src, dst in reversed(plan.moves):
        yield from _move(dst, src, undoing=True)
    _remove(journal_path(store, plan.uuid))


def _finish(store: DomainStore, plan: RenamePlan) -> Steps:
    """After the commit: the autostart flag follows, the old name's files go, and the
    intent record last (until then a restarted daemon finishes it)."""
    yield from _forward(plan)  # (all done already, unless a recovery is completing it)
    old = store.definition_path(plan.old)
    if _names_uuid(old, plan.uuid):  # (not a domain defined under the old name since)
        # the flag first, as undefine does: never a flag without its definition
        _remove(store.autostart_dir / plan.old)
        _remove(old)
    # the old definition goes before anything here can fail: a record this leaves (a
    # failed write) is then either finished, or, should the renamed domain be
    # undefined meanwhile, dropped by the next start, never undone (:func:`recover`)
    yield store.autostart_dir
    yield store.domains_dir
    if plan.autostart:
        yield from _write(store.autostart_path(plan.new), "", 0o644)
    _remove(journal_path(store, plan.uuid))
    yield store.domains_dir


def _names_uuid(definition: Path, uuid: str) -> bool:
    """Whether the stored definition file is the domain ``uuid``'s (written by the
    daemon: canonical XML, one ``<uuid>`` element)."""
    try:
        return f"<uuid>{uuid}</uuid>" in definition.read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _names_another_uuid(definition: Path, uuid: str) -> bool:
    """Whether the definition file names a uuid, and not ``uuid`` (one that cannot be
    read, or names none: False)."""
    try:
        found = re.search(r"<uuid>\s*([0-9A-Fa-f-]+)\s*</uuid>", definition.read_text())
        return found is not None and uuidlib.UUID(found.group(1)) != uuidlib.UUID(uuid)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def recover(store: DomainStore) -> None:
    """At start-up, before the definitions are read: finish the renames a killed daemon
    committed, undo the ones it did not (see the module doc). A rename that cannot be
    completed now is logged and its intent record kept; the definition the record's
    state calls for is loaded, the other is skipped (one uuid, one domain)."""
    for path in sorted(store.domains_dir.glob(f"{JOURNAL_PREFIX}*.json")):
        try:
            plan = RenamePlan.from_json(path.read_text())
        except (OSError, ValueError, TypeError) as exc:
            log.error("cannot read the rename record %s: %s (left in place)", path, exc)
            continue
        committed = _committed(store, plan)
        old_definition = store.definition_path(plan.old)
        if not committed and (not old_definition.exists()
                              or _names_another_uuid(old_definition, plan.uuid)):
            # no definition of the new name names the domain and the old name has none
            # of it (none at all, or another domain's defined under it since): it was
            # renamed, its clean-up failed, and it was undefined since; there is nothing
            # to finish, and an undo would hand its files to the other domain
            log.warning("domain '%s' (uuid %s): the record %s of its rename to '%s' is "
                        "left from a rename whose domain has been undefined since: "
                        "removed", plan.old, plan.uuid, path, plan.new)
            _remove(path)
            continue
        try:
            run_now(_finish(store, plan) if committed else _undo(store, plan))
        except OSError as exc:
            log.error("domain '%s' (uuid %s): cannot %s its interrupted rename to '%s': "
                      "%s (the record %s stays; the next start tries again)", plan.old,
                      plan.uuid, "finish" if committed else "undo", plan.new,
                      exc.strerror or exc, path)
            continue
        log.warning("domain '%s' (uuid %s): a rename to '%s' was interrupted; %s", plan.old,
                    plan.uuid, plan.new, f"finished: the domain is '{plan.new}'" if committed
                    else f"undone: the domain is '{plan.old}'")


def drop_finished_record(store: DomainStore, uuid: str) -> None:
    """Before an autostart change of the domain ``uuid``: a rename record its failed
    clean-up left, with only the new name's autostart flag still to write (committed,
    the old definition gone), is dropped, so that the next start does not write the
    flag the rename planned over the admin's choice. (A record whose old definition
    is still there stays: the next start must remove that.)"""
    path = journal_path(store, uuid)
    try:
        plan = RenamePlan.from_json(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError):
        return  # (the next start says what is wrong with it)
    if _committed(store, plan) and not _names_uuid(store.definition_path(plan.old), uuid):
        _remove(path)
        log.info("domain '%s': the record of its rename from '%s' is dropped: its autostart "
                 "is set anew", plan.new, plan.old)


# -- the procedure ---------------------------------------------------------------------------

class Renamer:
    """DOMAIN_RENAME's handler: libvirt's checks, the plan, its execution."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        self.store = driver.store
        self.registry = driver.registry
        paths = driver.config.paths
        self.vms_dir = paths.state_dir / VMS_DIR
        self.snapshots_dir = paths.state_dir / SNAPSHOTS_DIR
        self.log_dir = paths.guest_log_dir

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_RENAME: self.rename}

    def rename(self, ctx: Any, args: pl.RenameArgs) -> Deferred:
        check_flags(args.flags, 0, "qemuDomainRename")
        dom = self.registry.find(args.dom.name, args.dom.uuid)
        self._check_domain(dom)
        new = args.new_name
        self._check_name(dom, new)
        self._new_definition(dom, new)  # (refused now if it will be)
        return run_task(self.driver.loop, self._rename(dom, new),
                        f"the rename of '{dom.name}'")

    def _rename(self, dom: DomainObj, new: str) -> Task:
        """The rename, with the domain busy and the new name taken until it ends."""
        registry = self.registry
        registry.operations[dom.uuid] = RENAME_BUSY
        registry.reserved[new] = f"domain '{dom.name}' is being renamed to it"
        try:
            # what was under way when the call came, its checks made, lands first: a
            # define, an autostart or --config change, the records the rename moves
            while (writes := registry.in_flight(dom)) is not None:
                yield writes
            for record in (self.snapshots_dir / dom.name / SNAPSHOT_INDEX,
                           self.vms_dir / dom.name / VM_STATE):
                yield self.driver.files.settled(record)
            self._check_still(dom)
            self._check_snapshots(dom)  # (again, on what landed)
            definition = self._new_definition(dom, new)
            plan = self._plan(dom, definition)
            yield from self._execute(plan)
            old_ref = dom.ref()
            renamed = registry.rename(dom, definition)
        finally:
            registry.operations.pop(dom.uuid, None)
            registry.reserved.pop(new, None)
        log.info("domain '%s' (uuid %s) renamed to '%s'", plan.old, plan.uuid, plan.new)
        self.driver.events.lifecycle(old_ref, LifecycleEvent.UNDEFINED,
                                     UndefinedDetail.RENAMED)
        self.driver.events.lifecycle(renamed.ref(), LifecycleEvent.DEFINED,
                                     DefinedDetail.RENAMED)
        return pl.DomainReply(renamed.ref())

    # -- checks ----------------------------------------------------------------------------

    def _check_domain(self, dom: DomainObj) -> None:
        """libvirt's refusals, in its order and words (qemuDomainRename)."""
        if dom.active:
            raise OperationInvalid("cannot rename active domain")
        if not dom.persistent:
            raise OperationInvalid("cannot rename a transient domain")
        self.driver.lifecycle.require_not_busy(dom)
        if dom.managed_save or self.store.has_managed_save(dom.name):
            raise OperationInvalid("domain with a managed saved state can't be renamed")
        self._check_snapshots(dom)

    def _check_still(self, dom: DomainObj) -> None:
        """After the waits: the domain is still the shut-off persistent one of its name.
        (Every call that could change that is refused meanwhile; this holds the rename
        to it should a write that landed during the waits have done so.)"""
        if not self.registry.holds(dom) or not dom.persistent:
            raise OperationInvalid(f"cannot rename domain '{dom.name}': it was undefined "
                                   "meanwhile")
        if dom.active:
            raise OperationInvalid("cannot rename active domain")

    def _check_snapshots(self, dom: DomainObj) -> None:
        """Refused with snapshots (libvirt), and while the domain's snapshot record still
        lists images of ours: their backing chains name its directory."""
        index = self.snapshots_dir / dom.name / SNAPSHOT_INDEX
        record = self._read_json(index, "snapshot metadata")
        if record is None or record.get("uuid", dom.uuid) != dom.uuid:
            return  # none, or an earlier domain's (set aside by the snapshot code)
        if record.get("snapshots"):
            raise OperationInvalid("cannot rename domain with snapshots")
        images = sorted({*record.get("images", {}), *record.get("unplugged", {}),
                         *record.get("kept", {})})
        if images:
            raise OperationInvalid(
                f"cannot rename domain '{dom.name}': its snapshot metadata {index} still "
                f"records disk images of its former snapshots ({', '.join(images)}), "
                "whose backing chains name its directory")

    def _read_json(self, path: Path, what: str) -> dict[str, Any] | None:
        """A record of the appliance layer, as its newest write in flight has it."""
        try:
            data = json.loads(self.driver.files.read_text(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"cannot rename: the {what} {path} is unreadable "
                                  f"({exc}); fix or move it away") from None
        if not isinstance(data, dict):
            raise OperationFailed(f"cannot rename: the {what} {path} is damaged (not a "
                                  "JSON object); fix or move it away")
        return data

    def _check_name(self, dom: DomainObj, new: str) -> None:
        """The name checks of libvirt (virDomainObjListRename, qemuDomainRenameCallback)
        and of the define path."""
        if new == dom.name:
            raise OperationInvalid("Can't rename domain to itself")
        if "/" in new:
            raise XMLError(f"name {new} cannot contain '/'")
        if self.registry.has_name(new):
            raise OperationInvalid(f"domain with name '{new}' already exists")
        taken = self.registry.reserved.get(new)
        if taken is not None:
            raise OperationInvalid(f"domain with name '{new}' already exists: {taken}")
        from .registry import check_name
        check_name(new)
        path = self.store.definition_path(new)
        if path.exists():  # a definition that did not load: never replaced
            raise OperationInvalid(f"domain with name '{new}' already exists: its "
                                   f"definition {path} is there (it did not load)")

    @staticmethod
    def _new_definition(dom: DomainObj, new: str) -> DomainDef:
        """The persistent definition under ``new``."""
        definition = dom.definition.copy()
        try:
            definition.name = new
            definition.check()
        except ConfError as exc:
            raise XMLError(str(exc)) from None
        return definition

    # -- plan and execution -------------------------------------------------------------

    def _plan(self, dom: DomainObj, definition: DomainDef) -> RenamePlan:
        old, new = dom.name, definition.name
        plan = RenamePlan(uuid=dom.uuid, old=old, new=new, xml="", autostart=dom.autostart)
        self._plan_vm_dir(dom, definition, plan)
        self._plan_snapshot_record(dom, plan)
        self._plan_nvram(dom, definition, plan)
        self._plan_sockets(dom, definition)
        for suffix in (".log", ".log.1"):
            src, dst = self.log_dir / f"{old}{suffix}", self.log_dir / f"{new}{suffix}"
            if src.exists() and not dst.exists():
                plan.moves.append([str(src), str(dst)])
            elif src.exists():
                log.warning("domain '%s': %s stays (renamed to '%s', whose log %s is "
                            "there already)", old, src, new, dst)
        plan.xml = definition.to_xml()
        return plan

    def _plan_vm_dir(self, dom: DomainObj, definition: DomainDef, plan: RenamePlan) -> None:
        """A deployed VM's directory follows, with its state record and the disk paths."""
        src, dst = self.vms_dir / dom.name, self.vms_dir / definition.name
        state = self._read_json(src / VM_STATE, "appliance state")
        ours = state is not None and state.get("uuid") == dom.uuid
        disks_inside = [d for d in definition.disks if d.source and _under(d.source, src)]
        if not ours and not disks_inside:
            return  # none, or an earlier VM's (the images duty ignores it too)
        if dst.exists():
            raise OperationInvalid(f"cannot rename domain '{dom.name}' to "
                                   f"'{definition.name}': {dst} exists (disks of an earlier "
                                   "VM of that name?); remove it first")
        if any(src.glob(f"*{UNFINISHED_DISK}")):
            raise OperationInvalid(f"domain '{dom.name}' is busy: an appliance disk is being "
                                   f"written in {src}")
        plan.moves.append([str(src), str(dst)])
        for disk in disks_inside:
            assert disk.source is not None
            disk.source = _moved_path(disk.source, str(src), str(dst))
        if ours:
            plan.records.append([str(dst / VM_STATE), "vm", str(src), str(dst)])

    def _plan_nvram(self, dom: DomainObj, definition: DomainDef, plan: RenamePlan) -> None:
        """A UEFI domain's NVRAM at the default path follows the name (libvirt's
        qemuDomainRenameCallback); one at a path of the user's stays where it is."""
        nvram_dir = self.driver.firmware.nvram_dir
        src = nvram_default_path(nvram_dir, dom.name)
        if definition.os.nvram != str(src):
            return
        dst = nvram_default_path(nvram_dir, definition.name)
        if dst.exists():
            raise OperationInvalid(f"cannot rename domain '{dom.name}' to "
                                   f"'{definition.name}': the NVRAM file {dst} exists")
        definition.os.nvram = str(dst)
        if src.exists():
            plan.moves.append([str(src), str(dst)])

    def _plan_sockets(self, dom: DomainObj, definition: DomainDef) -> None:
        """A unix socket of a serial, console or channel in the domain's own run
        directory (``<run_dir>/qemu/<name>/``, the driver's per-name layout that each
        start makes: what the appliance layer's deploys wrote for the console before
        they left the path to the driver) follows the name. Left there, it would be
        shared with a later domain of the old name, and missing once the run directory
        is emptied (a tmpfs at boot: "Failed to bind socket"). Nothing moves: the
        domain is shut off, its runtime files are gone."""
        lifecycle = self.driver.lifecycle
        old = str(lifecycle.guest_paths(dom.name).run_dir)
        new = str(lifecycle.guest_paths(definition.name).run_dir)
        for dev in (*definition.serials, *definition.consoles, *definition.channels):
            if dev.type == "unix" and dev.source_path and _under(dev.source_path, Path(old)):
                dev.source_path = _moved_path(dev.source_path, old, new)

    def _plan_snapshot_record(self, dom: DomainObj, plan: RenamePlan) -> None:
        """An empty snapshot record (checked by :meth:`_check_snapshots`) follows, unless
        the new name has one of its own (an earlier domain's: it stays, and this empty
        one is left to be set aside like any stale record)."""
        src = self.snapshots_dir / dom.name / SNAPSHOT_INDEX
        dst = self.snapshots_dir / plan.new / SNAPSHOT_INDEX
        record = self._read_json(src, "snapshot metadata")
        if record is None or record.get("uuid", dom.uuid) != dom.uuid:
            return
        if dst.exists():
            log.warning("domain '%s': its (empty) snapshot record %s stays: %s is there",
                        dom.name, src, dst)
            return
        plan.moves.append([str(src), str(dst)])
        plan.records.append([str(dst), "domain", str(src.parent), str(dst.parent)])

    def _execute(self, plan: RenamePlan) -> Task:
        """Intent record, moves, commit (the new definition), then the rest, each fsync
        waited for off the loop. A failure before the commit undoes what was done and
        raises; one after it is only logged: the domain is renamed, and the next daemon
        start finishes the clean-up."""
        store = self.store
        assert store.fsync is not None, "the driver's store has one"
        journal = journal_path(store, plan.uuid)
        try:
            yield from waited(store.fsync, _write(journal, plan.to_json()))
        except OSError as exc:
            _remove(journal)
            raise OperationFailed(f"cannot rename domain '{plan.old}': cannot write "
                                  f"{journal}: {exc.strerror or exc} (nothing was "
                                  "changed)") from None
        try:
            yield from waited(store.fsync, _forward(plan))
            yield from waited(store.fsync, _write(store.definition_path(plan.new),
                                                  plan.xml))  # the commit
        except OSError as exc:
            cause = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            outcome = "nothing was changed"
            try:
                _remove(store.definition_path(plan.new))
                yield from waited(store.fsync, _undo(store, plan))
            except OSError as again:
                log.error("domain '%s': cannot undo the rename to '%s': %s (the record %s "
                          "stays: the next daemon start undoes it)", plan.old, plan.new,
                          again.strerror or again, journal)
                outcome = (f"the undo failed too, {again.strerror or again}: the domain "
                           "keeps its name, and the next daemon start moves back what was "
                           "moved")
            raise OperationFailed(f"cannot rename domain '{plan.old}' to '{plan.new}': "
                                  f"{cause} ({outcome})") from None
        try:
            yield from waited(store.fsync, _finish(store, plan))
        except OSError as exc:
            log.error("domain '%s' renamed to '%s', but its clean-up (the old name's "
                      "files, the autostart flag) failed: %s (the record %s stays: the "
                      "next daemon start finishes it)", plan.old, plan.new,
                      exc.strerror or exc, journal)
