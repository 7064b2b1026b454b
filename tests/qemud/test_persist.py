"""PersistentWrites (qemud/driver/persist.py) against defines, renames
and undefines that land while a ``--config`` write waits for its fsync.

A real Registry and DomainStore write real files in a temp dir; only the completion of
each fsync is in the test's hands (``HeldFsync`` stands in for the kernel's AIO, so that
every interleaving can be chosen, and an fsync can fail with EIO, which a real disk
here cannot be made to do on demand). The slow-disk tests (tests/faults/
test_slow_config_change.py) run the same paths through a daemon on a FUSE disk.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from qemud.dispatch import Deferred, ReplyWaits
from qemud.driver.domain import DomainObj
from qemud.driver.registry import Registry
from qemud.driver.store import DomainStore
from qemud.errors import OperationFailed
from qemud.qemu.capabilities import Capabilities, EmulatorCaps, MachineType
from qemud.qemu.kvmprobe import KvmStatus

UUID = "11111111-2222-3333-4444-555555555555"
EIO = OSError(errno.EIO, "Input/output error")


class HeldFsync:
    """AsyncFsync's interface; each fsync completes when the test says."""

    def __init__(self) -> None:
        self.held: list[Callable[[OSError | None], None]] = []

    def fsync(self, fd: int, done: Callable[[OSError | None], None]) -> None:
        self.held.append(done)

    def release(self, index: int = 0, error: OSError | None = None) -> None:
        self.held.pop(index)(error)

    def release_all(self) -> None:
        while self.held:
            self.release()


class Events:
    def lifecycle(self, *args: object) -> None:
        pass


class Setup:
    def __init__(self, root: Path) -> None:
        self.fsync = HeldFsync()
        self.store = DomainStore(root / "domains", root / "autostart", root / "run",
                                 fsync=self.fsync)  # type: ignore[arg-type]
        for path in (self.store.domains_dir, self.store.autostart_dir,
                     self.store.status_dir):
            path.mkdir(parents=True)
        machines = (MachineType("pc", "Standard PC", alias_of="pc-i440fx-7.2"),
                    MachineType("pc-i440fx-7.2", "Standard PC", is_default=True))
        emulator = EmulatorCaps("x86_64", "/usr/bin/qemu-system-x86_64", (7, 2, 0),
                                "7.2.0", machines)
        caps = Capabilities("x86_64", "uuid-1", {"x86_64": emulator},
                            KvmStatus(False, "test"))
        self.registry = Registry(self.store, caps, Events(),  # type: ignore[arg-type]
                                 ReplyWaits())

    def define(self, memory_mib: int) -> Deferred:
        return self.registry.define(xml(memory_mib))

    def defined(self, memory_mib: int) -> DomainObj:
        done = self.define(memory_mib)
        self.fsync.release_all()
        assert done.done and done.error is None, done.error
        dom = done.result
        assert isinstance(dom, DomainObj)
        return dom

    def change(self, dom: DomainObj, title: str | None = None,
               memory_mib: int | None = None) -> Deferred:
        """A --config change as the handlers make it."""
        definition = dom.persistent_definition.copy()
        if title is not None:
            definition.title = title
        if memory_mib is not None:
            definition.memory_kib = definition.current_memory_kib = memory_mib * 1024
        return self.registry.save_persistent(dom, definition)

    def on_disk(self, name: str = "g") -> str:
        return self.store.definition_path(name).read_text()


def xml(memory_mib: int, name: str = "g") -> str:
    return (f"<domain type='qemu'><name>{name}</name><uuid>{UUID}</uuid>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64'>hvm</type></os></domain>")


def outcome(d: Deferred) -> str:
    if not d.done:
        return "pending"
    return "ok" if d.error is None else d.error.message


def memory_mib(dom: DomainObj) -> int:
    return dom.persistent_definition.memory_kib // 1024


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.mark.parametrize("failure", ["fsync", "temp file"])
def test_a_failed_write_after_a_define_keeps_the_define(setup: Setup, failure: str,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    dom = setup.defined(64)
    first = setup.change(dom, title="A")  # its fsync held
    define = setup.define(128)
    setup.fsync.release(1)  # the define's temp file: renamed into place
    setup.fsync.release(1)  # its directory
    assert outcome(define) == "ok" and memory_mib(dom) == 128
    second = setup.change(dom, title="B")  # queued: built on the define
    if failure == "fsync":
        setup.fsync.release()  # the first write: overtaken by the define
        setup.fsync.release(error=EIO)  # the second write's fsync
    else:
        def full(name: str, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(setup.store, "begin_definition", full)
        setup.fsync.release()  # the first write, overtaken; the second cannot begin
        monkeypatch.undo()
    setup.fsync.release_all()
    assert outcome(first) == "ok"  # (overtaken by the define: as if it came first)
    assert "cannot save the definition of 'g'" in outcome(second)
    # memory goes back to what the file holds: the define's, not the one before it
    assert memory_mib(dom) == 128 and dom.persistent_definition.title is None
    assert "131072" in setup.on_disk()
    third = setup.change(dom, title="C")
    setup.fsync.release_all()
    assert outcome(third) == "ok" and "131072" in setup.on_disk()
    assert not setup.registry.writes._chains


def test_a_write_that_fails_after_the_domain_was_renamed_is_not_reported_failed(
        setup: Setup) -> None:
    dom = setup.defined(64)
    change = setup.change(dom, memory_mib=32)
    new = dom.persistent_definition.copy()  # domrename writes memory under the new name
    new.name = "h"
    setup.store.save_definition("h", new.to_xml())
    setup.store.delete_definition("g")
    renamed = setup.registry.rename(dom, new)
    setup.fsync.release(error=EIO)
    setup.fsync.release_all()  # (the directory, before the answer)
    assert outcome(change) == "ok"  # the rename wrote it, durably
    assert memory_mib(renamed) == 32 and "32768" in setup.on_disk("h")


def test_an_overtaken_write_is_answered_once_the_define_is_durable(setup: Setup) -> None:
    dom = setup.defined(64)
    change = setup.change(dom, title="A")
    define = setup.define(128)
    setup.fsync.release(1)  # the define's rename; its directory fsync is held
    setup.fsync.release(0)  # the change's fsync ends: overtaken
    assert outcome(change) == "pending" and outcome(define) == "pending"
    setup.fsync.release_all()
    assert outcome(change) == "ok" and outcome(define) == "ok"
    assert memory_mib(dom) == 128


def test_callers_are_answered_after_the_chain_is_settled(setup: Setup) -> None:
    """An answer's callbacks may make the caller's next call at once (the server reads
    on): a change made from the failed caller's callback is not swallowed, and a
    caller's next change is not built on its failed one."""
    dom = setup.defined(64)
    failed = setup.change(dom, memory_mib=32)
    seen: list[tuple[int, Deferred]] = []

    def next_call(_: Deferred) -> None:
        seen.append((memory_mib(dom), setup.change(dom, title="next")))
    failed.add_done_callback(next_call)
    setup.fsync.release(error=EIO)
    assert isinstance(failed.error, OperationFailed)
    assert "(the persistent definition was not changed)" in failed.error.message
    [(seen_memory, following)] = seen
    assert seen_memory == 64  # memory was back before the caller heard
    setup.fsync.release_all()
    assert outcome(following) == "ok"
    assert "65536" in setup.on_disk() and "<title>next</title>" in setup.on_disk()


def test_a_callback_that_raises_does_not_keep_the_others_waiting(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    dom = setup.defined(64)
    first = setup.change(dom, title="A")

    def broken(_: Deferred) -> None:
        raise RuntimeError("a bug in a caller")
    first.add_done_callback(broken)
    settled = setup.registry.writes.pending(dom)
    assert settled is not None
    setup.fsync.release_all()
    assert outcome(first) == "ok" and outcome(settled) == "ok"
    assert "a callback failed after a definition was written" in caplog.text
    assert setup.registry.writes.pending(dom) is None
    again = setup.change(dom, title="B")
    setup.fsync.release_all()
    assert outcome(again) == "ok"


def test_pending_resolves_when_the_last_write_ends(setup: Setup) -> None:
    dom = setup.defined(64)
    assert setup.registry.writes.pending(dom) is None
    setup.change(dom, title="A")
    settled = setup.registry.writes.pending(dom)
    assert settled is not None
    setup.change(dom, title="B")  # queued: the chain goes on
    setup.fsync.release(error=EIO)
    assert outcome(settled) == "pending"
    setup.fsync.release_all()
    assert outcome(settled) == "ok"
