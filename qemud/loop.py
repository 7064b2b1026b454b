"""The daemon's one event loop: every fd, every timer, every signal, every child exit.

Follows CPython's selectors idiom: the handler lives in the selector key's data and the
loop calls ``key.data(mask)``. Signals arrive through ``signal.set_wakeup_fd`` on a
socketpair, so the loop never polls and never sleeps longer than the next timer. Child
processes (QEMU) are reaped on SIGCHLD with ``waitpid(WNOHANG)``, never by waiting.

A handler that raises is logged and, if it registered a ``on_error`` for its fd, told so;
one bad connection must not take the daemon down.
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import logging
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

FdHandler = Callable[[int], None]  # called with the ready mask


#: cancelled timers the heap may hold before it is compacted (and at least half of it)
COMPACT_CANCELLED = 256


def _nothing() -> None:
    pass


@dataclass(order=True)
class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op.

    A cancelled timer lets go of its callback at once: a call's deadline (300 s) is
    cancelled when the call completes, and its closure holds the call; kept until the
    deadline passed, every deferred call would stay in memory for five minutes.
    """

    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    #: the loop whose heap holds it (None once it ran or was removed from the heap)
    loop: EventLoop | None = field(default=None, compare=False, repr=False)

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = _nothing
        if self.loop is not None:
            self.loop._timer_cancelled()


class EventLoop:
    """Selector + timer heap + signal and child-exit dispatch, single-threaded."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        #: cancelled timers still in the heap
        self._cancelled = 0
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._child_handlers: dict[int, Callable[[int], None]] = {}
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup_fd: int | None = None
        self._old_signal_handlers: dict[int, Any] = {}
        self.add_reader(self._wake_r.fileno(), self._on_wakeup)

    # -- fds -----------------------------------------------------------------------------

    def add(self, fd: int, events: int, handler: FdHandler) -> None:
        """Watch ``fd`` for ``events`` (READ|WRITE); replaces any previous registration."""
        try:
            self._selector.modify(fd, events, handler)
        except KeyError:
            self._selector.register(fd, events, handler)

    def add_reader(self, fd: int, handler: Callable[[], None]) -> None:
        self.add(fd, READ, lambda mask: handler())

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (no error if it was not watched)."""
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def watching(self, fd: int) -> bool:
        try:
            self._selector.get_key(fd)
            return True
        except (KeyError, ValueError):
            return False

    # -- timers --------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), next(self._seq), callback,
                      loop=self)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        """Drop the cancelled timers from the heap once they are most of it (as asyncio
        does), so that many cancelled long deadlines do not pile up."""
        self._cancelled += 1
        if self._cancelled > COMPACT_CANCELLED and 2 * self._cancelled > len(self._timers):
            kept = []
            for timer in self._timers:
                if timer.cancelled:
                    timer.loop = None
                else:
                    kept.append(timer)
            heapq.heapify(kept)
            self._timers = kept
            self._cancelled = 0

    def _pop_timer(self) -> Timer:
        timer = heapq.heappop(self._timers)
        timer.loop = None
        if timer.cancelled:
            self._cancelled -= 1
        return timer

    def call_soon(self, callback: Callable[[], None]) -> Timer:
        return self.call_later(0.0, callback)

    # -- signals and children ------------------------------------------------------------

    def add_signal_handler(self, signum: int, handler: Callable[[int], None]) -> None:
        """Run ``handler(signum)`` from the loop (not from the signal context)."""
        self._signal_handlers[signum] = handler
        previous = signal.signal(signum, _noop_signal_handler)
        self._old_signal_handlers.setdefault(signum, previous)
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(),
                                                       warn_on_full_buffer=False)

    def watch_child(self, pid: int, handler: Callable[[int], None]) -> None:
        """Call ``handler(wait_status)`` once ``pid`` exits; reaped without blocking."""
        if signal.SIGCHLD not in self._signal_handlers:
            self.add_signal_handler(signal.SIGCHLD, lambda _s: self._reap_children())
        self._child_handlers[pid] = handler
        self.call_soon(self._reap_children)  # it may already be gone

    def watch_popen(self, child: subprocess.Popen[bytes],
                    on_exit: Callable[[int], None]) -> None:
        """Call ``on_exit(exit_code)`` once ``child`` exits (negative: killed by a signal).

        The Popen object is held until then: if it were garbage-collected while the child
        runs, subprocess's own cleanup could reap it behind the loop's back.
        """
        self._popens[child.pid] = child

        def exited(status: int) -> None:
            self._popens.pop(child.pid, None)
            child.returncode = os.waitstatus_to_exitcode(status)
            on_exit(child.returncode)
        self.watch_child(child.pid, exited)

    def forget_child(self, pid: int) -> None:
        self._child_handlers.pop(pid, None)

    def _reap_children(self) -> None:
        for pid in list(self._child_handlers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0  # reaped elsewhere or not our child
            if done == pid:
                handler = self._child_handlers.pop(pid)
                self._guard(functools.partial(handler, status), f"child {pid} exit handler")

    def _on_wakeup(self) -> None:
        while True:
            try:
                data = self._wake_r.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                handler = self._signal_handlers.get(signum)
                if handler is not None:
                    self._guard(functools.partial(handler, signum), f"signal {signum} handler")

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Dispatch until :meth:`stop` is called."""
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = self._next_timeout()
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        try:
            ready = self._selector.select(timeout)
        except OSError as exc:  # pragma: no cover - EINTR is retried by select()
            if exc.errno != errno.EINTR:
                raise
            ready = []
        for key, mask in ready:
            handler: FdHandler = key.data
            self._guard(functools.partial(handler, mask), f"fd {key.fd} handler")
        self._run_timers()

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            self._pop_timer()
        if not self._timers:
            return None
        return max(0.0, self._timers[0].when - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            timer = self._pop_timer()
            if not timer.cancelled:
                self._guard(timer.callback, "timer")

    @staticmethod
    def _guard(fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except Exception:
            log.exception("unhandled error in %s", what)

    def close(self) -> None:
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        for signum in self._signal_handlers:  # restore what was there before us
            previous = self._old_signal_handlers.get(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _noop_signal_handler(signum: int, frame: object) -> None:
    """Installed so the signal interrupts select(); the byte on the wakeup fd does the work."""


def connect_unix(path: str) -> socket.socket | None:
    """A non-blocking connect to a unix socket some child process listens on.

    Returns the connected socket, or None while nobody listens there yet (ENOENT,
    ECONNREFUSED, EAGAIN: try again from a timer); any other failure raises OSError.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex(path)
    if err == 0:
        return sock
    sock.close()
    if err in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
        return None
    raise OSError(err, os.strerror(err), path)
