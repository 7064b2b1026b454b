"""The set of known domains: lookup, listing, definition and undefinition.

Persistent definitions are written to disk before memory changes, so a failed write
(disk full, permissions) leaves both exactly as they were and the caller gets the cause.
A define waits for the disk off the loop (:meth:`Registry.define`).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import platform
import stat
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from protocol.constants import (
    DefinedDetail,
    DomainState,
    ErrorDomain,
    LifecycleEvent,
    ListFlags,
    UndefinedDetail,
)
from qemud.conf import ConfError, DomainDef, parse_domain_xml
from qemud.dispatch import Deferred, ReplyWaits, all_ended
from qemud.errors import (
    ConfigUnsupported,
    DomainExists,
    InternalError,
    NoDomain,
    OperationFailed,
    OperationInvalid,
    QemudError,
    SystemCallFailed,
    XMLError,
)
from qemud.events import EventBus
from qemud.qemu.arch import get_strategy, strategy_for
from qemud.qemu.capabilities import Capabilities
from qemud.qemu.errors import QemuError

from .domain import DomainObj
from .persist import PersistentWrites
from .rename import drop_finished_record, recover
from .store import NAME_MAX, DomainStore, commit_async, sync_directory_async

__all__ = ["Registry"]

log = logging.getLogger(__name__)

#: The longest domain name, in bytes of UTF-8: the name is a file name in the store
#: (``<name>.xml``, ``<name>.status.json``) and the guest log (``<name>.log``), and the
#: longest of those must stay within NAME_MAX.
MAX_NAME_BYTES = NAME_MAX - len(".status.json")


class Registry:
    def __init__(self, store: DomainStore, caps: Capabilities, events: EventBus,
                 reply_waits: ReplyWaits) -> None:
        self.store = store
        self.caps = caps
        self.events = events
        self._by_name: dict[str, DomainObj] = {}
        self._by_uuid: dict[str, DomainObj] = {}
        self._by_id: dict[int, DomainObj] = {}
        self._next_id = 1
        #: every domain in listing order; None after a change that can move one (a
        #: definition added or removed, an id assigned or released)
        self._ordered: list[DomainObj] | None = None
        #: bumped when a domain is added or removed (with DomainObj.listed_generation: the
        #: key of a cached listing)
        self.membership = 0
        #: extra checks run on every new definition (the appliance layer's metadata)
        self.validators: list[Callable[[DomainDef], None]] = []
        #: changes to persistent definitions, written off the loop one domain at a time
        self.writes = PersistentWrites(store, self._by_name.get, self._save_failed)
        #: where a call's writes are handed for its reply to wait on (the dispatcher's)
        self.reply_waits = reply_waits
        #: domain uuid -> a long operation that runs on it: an appliance image update,
        #: rollback or factory reset ("update to demo:2.0"), which stops, defines and
        #: starts the domain itself, so it is no ``dom.job``; a deploy, from its define
        #: to its state's last write; a rename (:mod:`.rename`), while its files wait
        #: for the disk. The calls that would change the domain meanwhile are
        #: refused (:meth:`require_no_operation`): start, define over it, rename,
        #: undefine, autostart, save, snapshot create and revert, and every change to
        #: its persistent definition (an update's or rollback's define would drop it; a
        #: factory reset, which defines nothing, refuses the same calls, for one rule)
        self.operations: dict[str, str] = {}
        #: a name no domain has yet -> what is taking it ("domain 'X' is being renamed to
        #: it": :mod:`.rename`, whose file work waits off the loop; "an appliance is being
        #: deployed under it"): refused meanwhile to every define, create and restore
        #: (:meth:`check_clash`), rename and deploy
        self.reserved: dict[str, str] = {}
        #: domain uuid -> its defines and autostart changes whose files are in flight
        #: (:meth:`in_flight`)
        self._writing: dict[str, list[Deferred]] = {}

    # -- lookup --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[DomainObj]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def by_name(self, name: str) -> DomainObj:
        dom = self._by_name.get(name)
        if dom is None:
            raise NoDomain(f"no domain with matching name '{name}'")
        return dom

    def has_name(self, name: str) -> bool:
        return name in self._by_name

    def holds(self, dom: DomainObj) -> bool:
        """Whether ``dom`` is still the domain of its name (not undefined, renamed or
        replaced since a caller looked it up)."""
        return self._by_name.get(dom.name) is dom

    def by_uuid(self, uuid: bytes | str) -> DomainObj:
        key = str(uuidlib.UUID(bytes=uuid)) if isinstance(uuid, bytes) else uuid
        dom = self._by_uuid.get(key)
        if dom is None:
            raise NoDomain(f"no domain with matching uuid '{key}'")
        return dom

    def by_id(self, id: int) -> DomainObj:
        dom = self._by_id.get(id)
        if dom is None:
            raise NoDomain(f"no domain with matching id {id}")
        return dom

    def find(self, name: str, uuid: bytes) -> DomainObj:
        """Resolve a DomainRef from the wire: uuid first, name as the fallback."""
        if len(uuid) == 16 and uuid != bytes(16):
            dom = self._by_uuid.get(str(uuidlib.UUID(bytes=uuid)))
            if dom is not None:
                return dom
            raise NoDomain(f"no domain with matching uuid "
                           f"'{uuidlib.UUID(bytes=uuid)}' (name '{name}')")
        return self.by_name(name)

    def matching(self, flags: int) -> list[DomainObj]:
        """Domains selected by libvirt's list flags (groups ANDed, bits in a group ORed).

        Plain int masks on purpose: IntFlag arithmetic per domain was a quarter of a
        1,000-domain listing (bench/run.py profile).
        """
        flags = int(flags)
        if self._ordered is None:
            self._ordered = sorted(self._by_name.values(), key=_list_order)
        if flags:
            return [d for d in self._ordered if _selected(d, flags)]
        return list(self._ordered)

    # -- ids -----------------------------------------------------------------------------

    def assign_id(self, dom: DomainObj, id: int | None = None) -> None:
        dom.id = self._next_id if id is None else id
        self._next_id = max(self._next_id, dom.id + 1)
        self._by_id[dom.id] = dom
        self._ordered = None

    def release_id(self, dom: DomainObj) -> None:
        self._by_id.pop(dom.id, None)
        dom.id = -1
        self._ordered = None

    # -- parsing and checking ------------------------------------------------------------

    def parse(self, xml: str) -> DomainDef:
        """XML -> checked definition, with arch defaults and generated ids filled in."""
        try:
            definition = parse_domain_xml(xml)
        except ConfError as exc:
            raise XMLError(str(exc)) from None
        check_name(definition.name)
        self.check_for_host(definition)
        for validate in self.validators:
            validate(definition)
        definition.assign_missing_ids()
        return definition

    def check_for_host(self, definition: DomainDef) -> None:
        """Fill in the arch defaults, then refuse what this host cannot run: libvirt's
        post-parse and validation at define, so a guest that could never start is refused
        at define (or create), not at its first start."""
        arch = definition.os.arch or platform.machine()
        try:
            strategy = get_strategy(arch)
            strategy.fill_defaults(definition)
            strategy.validate(definition)
        except QemuError as exc:
            raise ConfigUnsupported(str(exc)) from None
        if definition.emulator is not None:
            check_emulator(definition.emulator)
        elif self.caps.emulator(arch) is None:
            raise ConfigUnsupported(f"no emulator for arch "
                                    f"'{arch}' on this host (qemu-system-{arch} not found)")
        self._check_machine(definition, arch)
        if definition.type == "kvm" and not self.caps.kvm_usable_for(arch):
            raise ConfigUnsupported(f"domain type 'kvm' is not "
                                    f"available here: {self.caps.kvm_reason} (use "
                                    "<domain type='qemu'>)")

    def _check_machine(self, definition: DomainDef, arch: str) -> None:
        """libvirt's define-time checks against the emulator's capabilities: the machine
        type is one the emulator has (virQEMUCapsIsMachineSupported) and the vCPUs are no
        more than it takes (qemuValidateDomainDefVcpus, its probed ``cpu-max``), rather
        than QEMU refusing them at start. Not checked where the capabilities are unknown
        (an ``<emulator>`` other than the probed one)."""
        probed = self.caps.emulator(arch)
        if probed is None or (definition.emulator is not None and
                              os.path.abspath(definition.emulator) != probed.path):
            return
        name = definition.os.machine or ""
        machine = probed.find_machine(name)
        if name and machine is None:
            raise ConfigUnsupported(f"Emulator '{probed.path}' does not support machine "
                                    f"type '{name}'")
        limit = machine.max_cpus if machine is not None else None
        if limit and definition.max_vcpus > limit:
            raise ConfigUnsupported(f"Maximum CPUs greater than specified machine type "
                                    f"limit {limit}")

    # -- define / undefine ---------------------------------------------------------------

    def add(self, dom: DomainObj) -> None:
        self._by_name[dom.name] = dom
        self._by_uuid[dom.uuid] = dom
        self._ordered = None
        self.membership += 1

    def remove(self, dom: DomainObj) -> None:
        self._by_name.pop(dom.name, None)
        self._by_uuid.pop(dom.uuid, None)
        self._ordered = None
        self.membership += 1
        if dom.active:
            self.release_id(dom)

    def check_clash(self, definition: DomainDef, claimed: bool = False) -> DomainObj | None:
        """The existing domain this definition updates, or None; raises on a clash (a
        name :attr:`reserved` too, unless the caller holds it: ``claimed``)."""
        taken = None if claimed else self.reserved.get(definition.name)
        if taken is not None:
            raise DomainExists(f"operation failed: domain '{definition.name}' already exists:"
                               f" {taken}")
        same_name = self._by_name.get(definition.name)
        same_uuid = self._by_uuid.get(definition.uuid)
        if same_name is not None and same_name.uuid != definition.uuid:
            raise DomainExists(f"operation failed: domain '{definition.name}' already exists "
                               f"with uuid {same_name.uuid}")
        if same_uuid is not None and same_uuid.name != definition.name:
            raise DomainExists(f"operation failed: domain '{same_uuid.name}' already exists "
                               f"with uuid {definition.uuid} (domrename renames a domain)")
        return same_name

    def define(self, xml: str, disk_removed: Callable[[DomainObj], None] | None = None, *,
               claimed: bool = False,
               guards: Sequence[Callable[[DomainObj], None]] = ()) -> Deferred:
        """Define (or redefine) a persistent domain from ``xml``; the Deferred resolves
        with the domain once its definition is on disk, durably.

        The disk's work (two fsyncs) is waited for off the loop (:func:`commit_async`),
        so other calls run meanwhile. Memory changes only when the file is renamed into
        place, after the name and uuid are checked again: a define, undefine or rename
        that ran in between is seen, as if it had come first. A failed write changes
        nothing. ``disk_removed`` is called with the domain when the new definition
        drops a disk target the persistent definition had (the driver's disk-removed
        hooks: the snapshot duty records the image that disk used last, as after a
        detach). ``claimed``: the caller holds the name's reservation (a deploy).
        ``guards``: checks a redefine of an existing domain must pass (the driver's
        ``config_change_guards``).
        """
        definition = self.parse(xml)
        existing = self.check_clash(definition, claimed)  # refused before anything is written
        if existing is not None:
            for guard in guards:
                guard(existing)
        name = definition.name
        stale = (existing is None or not existing.persistent) and self.store.autostart(name)
        try:
            temp = self.store.begin_definition(name, definition.to_xml())
        except OSError as exc:
            raise self._save_failed(name, exc) from None
        if stale:
            try:
                self._clear_stale_autostart(name)
            except QemudError:
                temp.abandon()
                raise

        def check() -> DomainObj | None:
            existing = self.check_clash(definition, claimed)
            if existing is None or not existing.persistent:
                self._drop_stale_autostart(name)
            return existing

        out = Deferred()

        def done(dom: DomainObj | None, error: BaseException | None) -> None:
            if error is None:
                out.resolve(dom)
            else:
                _fail(out, error, functools.partial(self._save_failed, name),
                      f"the define of '{name}'")

        fsync = self.store.fsync
        assert fsync is not None, "the driver's store has one"

        def commit() -> None:
            commit_async(fsync, temp, check,
                         lambda existing: self._install(definition, existing, disk_removed),
                         done)
        if stale:  # its removal durable before the definition is in place, off the loop
            sync_directory_async(fsync, self.store.autostart_path(name), commit)
        else:
            commit()
        self._track(definition.uuid, out)
        return out

    def set_autostart(self, dom: DomainObj, enabled: bool) -> Deferred:
        """Write or remove ``dom``'s autostart flag; the Deferred resolves (with None)
        once the change is durable, waited for off the loop as a define's.

        Enabling: the flag's temp file is synced, then, if ``dom`` is still the persistent
        domain of its name (an undefine or rename may have run meanwhile: then the call
        fails as if it had come after, and no flag is left), renamed into place.
        Disabling: the flag goes at once; the directory's fsync is waited for.
        """
        if not dom.persistent:
            raise OperationInvalid("cannot set autostart for transient domain")
        self.require_no_operation(dom)  # (a rename moves the flag, an update redefines)
        drop_finished_record(self.store, dom.uuid)
        name = dom.name
        out = Deferred()
        if not enabled:
            try:
                self.store.clear_autostart(name)
            except OSError as exc:
                raise _autostart_failed(name, exc) from None
            dom.autostart = False
            assert self.store.fsync is not None, "the driver's store has one"
            sync_directory_async(self.store.fsync, self.store.autostart_path(name),
                                 lambda: out.resolve(None))
            self._track(dom.uuid, out)
            return out
        try:
            temp = self.store.begin_autostart(name)
        except OSError as exc:
            raise _autostart_failed(name, exc) from None

        def check() -> None:
            if not self.holds(dom) or not dom.persistent:
                raise NoDomain(f"no domain with matching name '{name}' (it was undefined "
                               "or renamed while its autostart flag was written)")

        def apply(_: None) -> None:
            dom.autostart = True

        def done(_: None, error: BaseException | None) -> None:
            if error is None:
                out.resolve(None)
            else:
                _fail(out, error, functools.partial(_autostart_failed, name),
                      f"the autostart of '{name}'")

        assert self.store.fsync is not None, "the driver's store has one"
        commit_async(self.store.fsync, temp, check, apply, done)
        self._track(dom.uuid, out)
        return out

    def _track(self, uuid: str, out: Deferred) -> None:
        """``out`` (a define's or an autostart change's) is in flight until it ends."""
        writes = self._writing.setdefault(uuid, [])
        writes.append(out)

        def ended(_: Deferred) -> None:
            writes.remove(out)
            if not writes and self._writing.get(uuid) is writes:
                del self._writing[uuid]
        out.add_done_callback(ended)

    def in_flight(self, dom: DomainObj) -> Deferred | None:
        """None when no define, autostart change or ``--config`` change of ``dom`` has its
        file in flight; else a Deferred that resolves once those made so far have ended.
        A rename waits for them: their checks, made before its own, would let them land
        under the old name while it moves the files."""
        waits = list(self._writing.get(dom.uuid, ()))
        pending = self.writes.pending(dom)
        if pending is not None:
            waits.append(pending)
        return all_ended(waits) if waits else None

    def _install(self, definition: DomainDef, existing: DomainObj | None,
                 disk_removed: Callable[[DomainObj], None] | None) -> DomainObj:
        """Make ``definition`` (just written) the persistent one, in memory."""
        dropped = existing is not None and bool(
            _targets(existing.persistent_definition) - _targets(definition))
        if existing is None:
            # an image left under this name (by hand) is this domain's, as libvirt sees it:
            # a start tries it (and refuses one of another uuid)
            dom = DomainObj(definition, persistent=True,
                            managed_save=self.store.has_managed_save(definition.name))
            self.add(dom)
            detail = DefinedDetail.ADDED
        else:
            dom = existing
            # libvirt: a transient domain made persistent gets its first definition: ADDED
            detail = DefinedDetail.UPDATED if dom.persistent else DefinedDetail.ADDED
            if dom.active:
                dom.next_definition = definition
            else:
                dom.definition = definition
            dom.persistent = True
            self.writes.written(dom, definition)  # (a --config write in flight: dropped)
        self.events.lifecycle(dom.ref(), LifecycleEvent.DEFINED, detail)
        if dropped and disk_removed is not None:
            disk_removed(dom)
        return dom

    def _clear_stale_autostart(self, name: str) -> None:
        """A new definition starts without autostart, on disk as in memory.

        A flag left without its definition (an undefine cut short, a hand edit) would
        otherwise make the next daemon autostart a domain nobody asked to autostart. The
        define removes it when called, and renames its definition into place only once
        the removal is durable (the directory's fsync waits off the loop)."""
        log.warning("removing stale autostart flag of '%s' (it had no definition)", name)
        try:
            self.store.clear_autostart(name)
        except OSError as exc:
            raise _stale_flag_failed(name, exc) from None

    def _drop_stale_autostart(self, name: str) -> None:
        """:meth:`_clear_stale_autostart` at the define's commit, for a flag that came
        while its fsyncs waited (none does but by hand): synced on the loop, as rare as
        that is."""
        if not self.store.autostart(name):
            return
        log.warning("removing stale autostart flag of '%s' (it had no definition)", name)
        try:
            self.store.set_autostart(name, False)
        except OSError as exc:
            raise _stale_flag_failed(name, exc) from None

    @staticmethod
    def _save_failed(name: str, exc: OSError) -> OperationFailed:
        return OperationFailed(f"cannot save the definition of '{name}': "
                               f"{exc.strerror or exc} (nothing was changed)")

    def require_no_operation(self, dom: DomainObj) -> None:
        """No long operation runs on ``dom`` (:attr:`operations`)."""
        busy = self.operations.get(dom.uuid)
        if busy is not None:
            raise OperationInvalid(f"domain '{dom.name}' is busy: {busy} in progress")

    def save_persistent(self, dom: DomainObj, definition: DomainDef) -> Deferred:
        """Make ``definition`` ``dom``'s persistent definition: in memory at once (at its
        stop for a running domain, which runs from its live definition), on disk without
        waiting on the loop (:mod:`.persist`). The Deferred resolves once the file is
        durable; inside a call the reply waits for it anyway (:class:`ReplyWaits`), so
        only code running after the call returned (a QMP answer's callback) chains it.
        A write refused at once (a full disk; an image operation on the domain, whose
        define would drop it) raises and changes nothing."""
        self.require_no_operation(dom)
        done = self.writes.save(dom, definition)
        self.reply_waits.add(done)
        return done

    def after_live(self, dom: DomainObj, live: Deferred,
                   change: Callable[[DomainDef], None],
                   guards: Sequence[Callable[[DomainObj], None]] = ()) -> Deferred:
        """``live`` (the live half of a ``--live --config`` call, done by QEMU), then
        :meth:`_change_persistent` with ``change``; resolves with ``live``'s result once
        both are done, fails as the first fails. ``guards``: checks the persistent
        change must pass then (a device change: the driver's ``config_change_guards``;
        a snapshot job may have begun during the QMP round trips)."""
        out = Deferred()

        def then(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            try:
                saved = self._change_persistent(dom, change, guards)
            except QemudError as exc:
                out.fail(exc)
                return
            saved.chain(out, lambda _: d.result)
        live.add_done_callback(then)
        return out

    def _change_persistent(self, dom: DomainObj, change: Callable[[DomainDef], None],
                           guards: Sequence[Callable[[DomainObj], None]] = ()) -> Deferred:
        """The ``--config`` half of a ``--live --config`` call, once QEMU has made the
        live half: ``change`` is made to a copy of the persistent definition as it is
        *now*, and saved (:meth:`save_persistent`).

        A copy taken before the QMP round trip would overwrite a ``--config`` change
        another client made during it (libvirt's job lock makes that client wait
        instead). ``change`` checks again what depends on the definition (a maximum
        lowered meanwhile) and raises to refuse; the error then says the live half was
        made, since it was.
        """
        if not dom.persistent or not self.holds(dom):
            raise OperationInvalid(f"the live change was made, not the persistent one: "
                                   f"domain '{dom.name}' was undefined meanwhile")
        definition = dom.persistent_definition.copy()
        try:
            self.require_no_operation(dom)  # (one that began meanwhile)
            for guard in guards:
                guard(dom)
            change(definition)
        except QemudError as exc:
            raise OperationInvalid(f"the live change was made, not the persistent one: "
                                   f"{exc.detail}") from None
        return self.save_persistent(dom, definition)

    def rename(self, dom: DomainObj, definition: DomainDef) -> DomainObj:
        """In memory: ``dom`` (inactive) is known by ``definition``'s name from now on.

        A new DomainObj replaces it (its name is fixed at creation, and so is its cached
        listing record); everything else about it is kept. The files were renamed before
        (see :mod:`.rename`).
        """
        assert not dom.active and dom.uuid == definition.uuid
        renamed = dataclasses.replace(dom, definition=definition, next_definition=None)
        self.remove(dom)
        self.add(renamed)
        return renamed

    def undefine(self, dom: DomainObj) -> None:
        if not dom.persistent:
            raise OperationInvalid("cannot undefine transient domain")
        try:
            self.store.delete_definition(dom.name)
        except OSError as exc:
            raise OperationFailed(f"cannot delete the definition of '{dom.name}': "
                                  f"{exc.strerror or exc}") from None
        dom.autostart = False
        dom.next_definition = None
        if dom.active:
            dom.persistent = False  # it runs on as a transient domain
        else:
            self.remove(dom)
        self.events.lifecycle(dom.ref(), LifecycleEvent.UNDEFINED, UndefinedDetail.REMOVED)

    def load(self) -> None:
        """Read every saved definition; bad files are logged and left alone.

        A rename a killed daemon left half-done is finished or undone first (see
        :func:`.rename.recover`): the loader then sees each uuid once. Should two files
        still name one uuid (copied by hand), the first by file name is loaded and the
        other logged and left in place (:meth:`check_clash`).
        """
        self.store.remove_debris()
        recover(self.store)
        for path, text in self.store.definitions():
            try:
                # our own files: the schema was checked when they were defined
                definition = parse_domain_xml(text, validate_schema=False)
                if definition.name != path.stem:
                    raise ConfError(f"file name {path.name} does not match domain name "
                                    f"'{definition.name}'")
                definition.assign_missing_ids()  # a hand-written file may lack a uuid
                self.check_clash(definition)
            except (ConfError, DomainExists) as exc:
                log.error("skipping domain definition %s: %s (file left in place)", path, exc)
                continue
            self._fill_defaults_on_load(definition, path)
            dom = DomainObj(definition, persistent=True,
                            autostart=self.store.autostart(definition.name),
                            managed_save=self.store.has_managed_save(definition.name))
            self.add(dom)
        log.info("loaded %d persistent domain(s)", len(self))

    def _fill_defaults_on_load(self, definition: DomainDef, path: Path) -> None:
        """The defaults define fills in (the arch's machine, buses, NIC models, the default
        memory balloon), also for a stored definition written without them (by an older
        version, or by hand): libvirt runs its post-parse defaults on every load.

        In memory only: the file is rewritten by the next change of the definition. Not
        the host checks of :meth:`check_for_host`: a definition this host cannot run any
        more (its emulator gone) stays defined, and its start says why, as in libvirt;
        one the defaults cannot be filled into (an arch with no strategy) is kept as it is.
        """
        try:
            strategy_for(definition).fill_defaults(definition)
        except (QemuError, ConfError) as exc:
            log.warning("domain definition %s: no arch defaults filled in: %s", path, exc)


def check_emulator(path: str) -> None:
    """Refuse an ``<emulator>`` that is not an executable file, in libvirt's words
    (virQEMUCapsCacheLookup at define): ``Cannot check QEMU binary PATH: <errno text>``."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SystemCallFailed(f"Cannot check QEMU binary {path}: "
                               f"{exc.strerror or exc}", domain=ErrorDomain.QEMU) from None
    if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):
        raise SystemCallFailed(f"QEMU binary {path} is not executable: "
                               f"{os.strerror(errno.EACCES)}", domain=ErrorDomain.QEMU)


def check_name(name: str) -> None:
    """Refuse a name the daemon's file layout cannot hold (XMLError), before any write.

    The model already refuses what libvirt does ('/', a newline, empty). ``.`` and ``..``
    name directories, not files: ``<autostart>/..`` is the config directory itself.
    """
    if name in (".", ".."):
        raise XMLError(f"name: '{name}' cannot be a domain name (it is a"
                       " directory name)")
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        raise XMLError(f"name: too long ({size} bytes in UTF-8; at most"
                       f" {MAX_NAME_BYTES}, as it is part of file names such as"
                       " <name>.status.json)")


_ACTIVE, _INACTIVE = int(ListFlags.ACTIVE), int(ListFlags.INACTIVE)
_PERSISTENT, _TRANSIENT = int(ListFlags.PERSISTENT), int(ListFlags.TRANSIENT)
_RUNNING, _PAUSED = int(ListFlags.RUNNING), int(ListFlags.PAUSED)
_SHUTOFF, _OTHER = int(ListFlags.SHUTOFF), int(ListFlags.OTHER)
_AUTOSTART, _NO_AUTOSTART = int(ListFlags.AUTOSTART), int(ListFlags.NO_AUTOSTART)
_MANAGEDSAVE, _NO_MANAGEDSAVE = int(ListFlags.MANAGEDSAVE), int(ListFlags.NO_MANAGEDSAVE)
_STATE_BITS = _RUNNING | _PAUSED | _SHUTOFF | _OTHER
_RUNNING_STATE, _PAUSED_STATE = int(DomainState.RUNNING), int(DomainState.PAUSED)
_SHUTOFF_STATE = int(DomainState.SHUTOFF)


def _selected(dom: DomainObj, flags: int) -> bool:
    if flags & (_ACTIVE | _INACTIVE) and not (
            (flags & _ACTIVE and dom.active) or (flags & _INACTIVE and not dom.active)):
        return False
    if flags & (_PERSISTENT | _TRANSIENT) and not (
            (flags & _PERSISTENT and dom.persistent) or
            (flags & _TRANSIENT and not dom.persistent)):
        return False
    if flags & _STATE_BITS:
        state = int(dom.state)
        if not ((flags & _RUNNING and state == _RUNNING_STATE) or
                (flags & _PAUSED and state == _PAUSED_STATE) or
                (flags & _SHUTOFF and state == _SHUTOFF_STATE) or
                (flags & _OTHER and state not in (_RUNNING_STATE, _PAUSED_STATE,
                                                   _SHUTOFF_STATE))):
            return False
    if flags & (_AUTOSTART | _NO_AUTOSTART) and not (
            (flags & _AUTOSTART and dom.autostart) or
            (flags & _NO_AUTOSTART and not dom.autostart)):
        return False
    if flags & (_MANAGEDSAVE | _NO_MANAGEDSAVE) and not (
            (flags & _MANAGEDSAVE and dom.managed_save) or
            (flags & _NO_MANAGEDSAVE and not dom.managed_save)):
        return False
    return True


def _list_order(dom: DomainObj) -> tuple[bool, int, str]:
    """Running domains first by id, then the inactive ones by name (virsh's order)."""
    return (not dom.active, dom.id if dom.active else 0, dom.name)


def _targets(definition: DomainDef) -> set[str]:
    """The disk targets (``vda``, ``sdb``...) of ``definition``."""
    return {disk.target_dev for disk in definition.disks if disk.target_dev}


def _stale_flag_failed(name: str, exc: OSError) -> OperationFailed:
    return OperationFailed(f"cannot remove the stale autostart flag of '{name}': "
                           f"{exc.strerror or exc} (nothing was changed)")


def _autostart_failed(name: str, exc: OSError) -> OperationFailed:
    return OperationFailed(f"cannot change autostart of '{name}': {exc}")


def _fail(out: Deferred, error: BaseException, os_error: Callable[[OSError], QemudError],
          what: str) -> None:
    """Fail ``out`` with what a :func:`commit_async` ended with: a QemudError (a check
    refused the write) as it is, an OSError as ``os_error`` words it, anything else (a
    bug) as an internal error naming ``what``."""
    if isinstance(error, QemudError):
        out.fail(error)
    elif isinstance(error, OSError):
        out.fail(os_error(error))
    else:
        log.error("%s failed: %r", what, error)
        out.fail(InternalError(f"internal error in {what}: {error!r}"))
