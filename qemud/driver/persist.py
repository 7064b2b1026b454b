"""Changes to a domain's persistent definition, made durable without waiting on the loop.

A ``--config`` change (setmem, attach-device, vcpupin, metadata...; the snapshot code
pointing disks at new overlays) reads the persistent definition, changes a copy and
hands it to :meth:`PersistentWrites.save`. The copy
becomes the domain's persistent definition in memory at once: the handler's next steps
(the live half of ``--live --config``) and every later call build on it, so two changes
in a row never start from the same old definition (libvirt gets the same from its job
lock). Its file is written as a define's is (temp file, fsync, rename, directory fsync:
:func:`.store.commit_async`), with the fsyncs off the loop, and the caller's Deferred
resolves once the file is durable; the dispatcher holds the reply until then
(:class:`qemud.dispatch.ReplyWaits`).

One write per domain is in flight at a time. Changes made meanwhile are coalesced: when
the write ends, the next one writes the definition memory holds by then and answers all
of them, so the file only ever moves forward. When its fsync ends, a write is renamed
into place if memory still holds its definition, or a change made on top of it (the
next write follows). It is dropped if a define replaced the definition meanwhile (the
define's file must not be undone), or the domain was undefined or renamed (they wrote
the files themselves); its callers are answered as if their change had come first,
once the domains directory is synced (what overtook the write may still wait for its
own directory fsync).

The first change's temp file is written in the call, so a full disk refuses it before
memory moves. A write that fails later (a queued change's temp file; a fsync or rename)
fails the callers it carried. If no change came after it, memory goes back to the last
definition known on disk (the other writer, a define, says what it wrote:
:meth:`PersistentWrites.written`), so a failed change changes nothing; a
change that came after it is written next, and that write carries the failed change too
(it was built on it). A write that fails after another writer replaced the file, or
after the domain was renamed or undefined, is overtaken, not failed: what they did
stands. A start waits for the domain's writes (:meth:`PersistentWrites.pending`), so
that a guest never runs a change that is then taken back.

Callers are answered last, once memory and the chain are settled and the next write has
begun: an answer's callbacks may run the caller's next call at once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from qemud.conf import DomainDef
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, QemudError

from .domain import DomainObj
from .store import DomainStore, TempFile, commit_async, sync_directory_async

__all__ = ["PersistentWrites"]

log = logging.getLogger(__name__)


def _set_persistent(dom: DomainObj, definition: DomainDef) -> None:
    """Make ``definition`` ``dom``'s persistent definition: at once for a shut-off
    domain, at its stop for a running one (it runs from its live definition)."""
    if dom.active or dom.next_definition is not None:
        dom.next_definition = None if definition is dom.definition else definition
    else:
        dom.definition = definition


class _Superseded(Exception):
    """The write's definition is no longer the domain's: someone else wrote the file."""


@dataclasses.dataclass(eq=False)
class _Chain:
    """One domain's writes while any is in flight."""

    dom: DomainObj
    #: the definition the file holds (as far as this chain knows; another writer tells
    #: it through :meth:`PersistentWrites.written`)
    durable: DomainDef
    #: the newest definition a change gave
    latest: DomainDef
    #: callers the write in flight answers
    waiting: list[Deferred]
    #: callers whose change came after it started (the next write answers them)
    queued: list[Deferred] = dataclasses.field(default_factory=list)
    #: something else (a define) wrote the file since the write in
    #: flight started: that write must not land after it, and what it wrote is what
    #: the file holds
    replaced: bool = False
    #: callers waiting for the domain's writes to end (:meth:`PersistentWrites.pending`)
    settled: list[Deferred] = dataclasses.field(default_factory=list)


_Answers = list[tuple[Deferred, "QemudError | None"]]


def _answer(answers: _Answers) -> None:
    """Resolve or fail each Deferred; a callback's bug does not keep the others
    unanswered."""
    for deferred, error in answers:
        try:
            if error is None:
                deferred.resolve(None)
            else:
                deferred.fail(error)
        except Exception:
            log.exception("a callback failed after a definition was written")


class PersistentWrites:
    """The per-domain write queue; see the module docstring."""

    def __init__(self, store: DomainStore, current: Callable[[str], DomainObj | None],
                 failed: Callable[[str, OSError], QemudError]) -> None:
        self.store = store
        #: the registry's domain of a name (None: none)
        self._current = current
        #: the registry's error for a write of a name that failed
        self._failed = failed
        self._chains: dict[int, _Chain] = {}

    def save(self, dom: DomainObj, definition: DomainDef) -> Deferred:
        """Make ``definition`` ``dom``'s persistent definition now; the Deferred resolves
        (with None) once it is on disk, durably.

        Raises :class:`QemudError` without changing anything when the temp file cannot
        be written (the disk is full): the common failure is reported before memory
        moves.
        """
        out = Deferred()
        chain = self._chains.get(id(dom))
        if chain is not None:  # one is in flight: the next write carries this one
            chain.replaced = chain.replaced or dom.persistent_definition is not chain.latest
            chain.latest = definition
            chain.queued.append(out)
            _set_persistent(dom, definition)
            return out
        temp = self._begin(dom, definition)  # (raises: nothing changed)
        chain = _Chain(dom, durable=dom.persistent_definition, latest=definition,
                       waiting=[out])
        self._chains[id(dom)] = chain
        _set_persistent(dom, definition)
        self._commit(chain, temp, definition)
        return out

    def written(self, dom: DomainObj, definition: DomainDef) -> None:
        """Another writer (a define) has just written ``definition``
        as ``dom``'s file: a write in flight must not land after it, and a failed one
        puts memory back to it, not to what the file held before."""
        chain = self._chains.get(id(dom))
        if chain is not None:
            chain.durable = definition
            chain.replaced = True

    def pending(self, dom: DomainObj) -> Deferred | None:
        """None when no write of ``dom``'s is in flight; else a Deferred that resolves
        (with None) once the last one has ended, however it ended. A start waits for
        it: a guest must not run a change whose write may still fail."""
        chain = self._chains.get(id(dom))
        if chain is None:
            return None
        done = Deferred()
        chain.settled.append(done)
        return done

    def _begin(self, dom: DomainObj, definition: DomainDef) -> TempFile:
        try:
            return self.store.begin_definition(dom.name, definition.to_xml())
        except OSError as exc:
            raise self._failed(dom.name, exc) from None

    def _commit(self, chain: _Chain, temp: TempFile, definition: DomainDef) -> None:
        dom = chain.dom
        chain.replaced = False

        def check() -> None:
            # The file may move forward to ``definition`` while memory holds it, or a
            # later change built on it (the next write follows); not past a define.
            now = dom.persistent_definition
            if self._current(dom.name) is not dom or not dom.persistent or not (
                    now is definition or (now is chain.latest and not chain.replaced)):
                raise _Superseded

        def done(_: None, error: BaseException | None) -> None:
            self._ended(chain, definition, error)

        assert self.store.fsync is not None, "the driver's store has one"
        commit_async(self.store.fsync, temp, check, lambda _: None, done)

    def _ended(self, chain: _Chain, written: DomainDef, error: BaseException | None
               ) -> None:
        """The write of ``written`` ended: memory and the chain are settled and the next
        write started first, its callers answered last. An answer's callbacks may run
        the caller's next call at once (the server reads on), which must find the
        domain as it now is. The callers of an overtaken write wait for a directory
        fsync, asked for after the next write's temp file exists (on FUSE, a directory
        fsync holds the directory's lock: a file created in it meanwhile would wait)."""
        answers: _Answers = []
        overtaken: list[Deferred] = []
        try:
            self._settle(chain, written, error, answers, overtaken)
        finally:
            _answer(answers)
            self._after_directory_sync(chain.dom, overtaken)

    def _settle(self, chain: _Chain, written: DomainDef, error: BaseException | None,
                answers: _Answers, overtaken: list[Deferred]) -> None:
        dom = chain.dom
        waiting, chain.waiting = chain.waiting, []
        current = self._current(dom.name) is dom and dom.persistent
        if error is not None and not isinstance(error, _Superseded) and (
                chain.replaced or not current):
            # another writer wrote the file meanwhile (a define, a rename), or an
            # undefine removed it: what they did stands, as after a write they overtook
            log.info("a write of the definition of '%s' failed after it was replaced "
                     "(%s): the replacement stands", dom.name, error)
            error = _Superseded()
        failed = error is not None and not isinstance(error, _Superseded)
        if failed:
            assert error is not None
            err = self._async_failure(dom.name, error, carried_on=bool(chain.queued))
            log.error("%s", err.message)
            answers += [(d, err) for d in waiting]
        elif error is None:
            if not chain.replaced:  # (else a define landed after it: the file has that)
                chain.durable = written
            answers += [(d, None) for d in waiting]
        else:  # overtaken: as if their changes had come before what overtook them
            overtaken += waiting
        if not chain.queued or not current:
            self._finish(chain, failed, answers, overtaken)
            return
        chain.waiting, chain.queued = chain.queued, []
        latest = chain.latest = dom.persistent_definition  # (a define's, maybe)
        try:
            temp = self._begin(dom, latest)
        except QemudError as exc:
            log.error("%s", exc.message)
            answers += [(d, exc) for d in chain.waiting]
            chain.waiting = []
            self._finish(chain, True, answers, overtaken)
            return
        self._commit(chain, temp, latest)

    def _after_directory_sync(self, dom: DomainObj, callers: list[Deferred]) -> None:
        """Answer ``callers``, whose write was overtaken, once the domains directory is
        synced: what overtook it (a define's rename, an undefine's unlink) may still be
        waiting for its own directory fsync, and a caller must not hear of its change
        before what now stands in its place is durable."""
        if not callers:
            return
        assert self.store.fsync is not None, "the driver's store has one"
        sync_directory_async(self.store.fsync, self.store.definition_path(dom.name),
                             lambda: _answer([(d, None) for d in callers]))

    @staticmethod
    def _async_failure(name: str, error: BaseException, carried_on: bool) -> QemudError:
        if isinstance(error, OSError):
            why = error.strerror or str(error)
        else:  # (a bug in a check: the file was left as it was)
            why = repr(error)
        # (the live half of --live --config went ahead meanwhile: it stays)
        outcome = ("the change stays in memory: a later change to the domain, made on top "
                   "of it, is written next" if carried_on else
                   "the persistent definition was not changed")
        return OperationFailed(f"cannot save the definition of '{name}': {why} ({outcome})")

    def _finish(self, chain: _Chain, failed: bool, answers: _Answers,
                overtaken: list[Deferred]) -> None:
        """No write left: after a failure, memory goes back to what the file holds
        (unless something else replaced the definition meanwhile)."""
        del self._chains[id(chain.dom)]
        overtaken += chain.queued  # (the domain was undefined or renamed meanwhile)
        chain.queued = []
        dom = chain.dom
        if failed and dom.persistent_definition is chain.latest \
                and self._current(dom.name) is dom:
            _set_persistent(dom, chain.durable)
        answers += [(d, None) for d in chain.settled]
