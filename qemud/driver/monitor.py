"""QMP in the daemon's loop: a non-blocking unix socket around the sans-IO QMPProtocol.

Connecting is retried from timers until QEMU has created its socket (it does so a few
milliseconds after exec), so launching never blocks the loop. Commands return a
:class:`~qemud.dispatch.Deferred` resolved with QMP's ``return`` value or failed with
:class:`CommandRejected` (an :class:`~qemud.errors.OperationFailed`) carrying QEMU's
error text.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qemud.dispatch import Deferred
from qemud.errors import OperationFailed, OperationTimeout
from qemud.loop import READ, WRITE, EventLoop, Timer, connect_unix
from qemud.qemu.errors import QemuError
from qemud.qemu.qmp import QMPErrorReply, QMPEvent, QMPGreeting, QMPProtocol, QMPReturn

__all__ = ["CommandRejected", "Monitor"]

CONNECT_RETRY = 0.005


class CommandRejected(OperationFailed):
    """QEMU answered a command with an error reply. Its message is the one every caller
    reports ("QEMU: <desc>"); the QMP ``class`` and ``desc`` are kept as well, for the
    pass-through command, which hands QEMU's error reply back as it came."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU: {desc}")
        self.error_class = error_class
        self.desc = desc


class Monitor:
    """One QMP connection, owned by the loop."""

    def __init__(self, loop: EventLoop, path: str, name: str,
                 on_event: Callable[[QMPEvent], None],
                 on_close: Callable[[str], None]) -> None:
        self.loop = loop
        self.path = path
        self.name = name
        self.on_event = on_event
        self.on_close = on_close
        self.log = logging.getLogger(f"qemud.qemu.monitor.{name}")
        self.sock: socket.socket | None = None
        self.qmp = QMPProtocol()
        self._out = bytearray()
        #: bytes sent so far on this connection: where ``_out`` starts in the stream
        self._sent = 0
        #: (stream offset of a command, the descriptors that go with its first byte):
        #: duplicates this monitor owns until they are sent (SCM_RIGHTS) or it closes
        self._fds: deque[tuple[int, list[int]]] = deque()
        self._pending: dict[int, tuple[Deferred, str]] = {}
        self._ready = Deferred()
        # commands issued before the negotiation ended, sent (in order) once it has
        self._queued: list[tuple[str, Mapping[str, Any] | None, Deferred, list[int]]] = []
        self._ready.add_done_callback(self._release_queued)
        self._retry: Timer | None = None
        self.closed = False

    @property
    def negotiated(self) -> Deferred:
        """Resolved once QMP capabilities are negotiated (failed if that never happens)."""
        return self._ready

    # -- connecting ----------------------------------------------------------------------

    def connect(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> Deferred:
        """Connect and negotiate; resolves (with the greeting) once commands may be sent.

        ``alive`` is asked before each retry, so a QEMU that died at start fails fast.
        """
        deadline = time.monotonic() + timeout
        self._attempt(deadline, alive, timeout)
        return self._ready

    def _attempt(self, deadline: float, alive: Callable[[], bool], timeout: float) -> None:
        self._retry = None
        if self.closed:
            return
        try:
            sock = connect_unix(self.path)
        except OSError as exc:
            self._fail_connect(f"cannot connect to QEMU monitor {self.path}: "
                               f"{errno.errorcode.get(exc.errno or 0, exc.errno)}")
            return
        if sock is not None:
            self.sock = sock
            self.loop.add(sock.fileno(), READ, self._on_io)
            self.log.debug("connected to %s", self.path)
            return
        if not alive():
            self._fail_connect("QEMU exited before its monitor was ready")
            return
        if time.monotonic() > deadline:
            self._fail_connect(f"QEMU monitor {self.path} did not appear within "
                               f"{timeout:g} s: QEMU did not get as far as opening it")
            return
        self._retry = self.loop.call_later(
            CONNECT_RETRY, lambda: self._attempt(deadline, alive, timeout))

    def _fail_connect(self, message: str) -> None:
        self.closed = True
        self._ready.fail(OperationFailed(message))

    # -- commands ------------------------------------------------------------------------

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None,
                timeout: float | None = None, fds: Sequence[int] = ()) -> Deferred:
        """Send ``command``; resolves with QMP's ``return`` value.

        A command issued while the monitor is still connecting or negotiating (a guest
        re-attached after a daemon restart is reported running before its monitor is)
        waits for the negotiation and fails with its error; ``timeout`` counts from now.
        ``fds`` go to QEMU with the command (SCM_RIGHTS), as ``getfd`` wants them: the
        monitor sends duplicates, so the caller keeps (and closes) its own.
        """
        result = Deferred()
        if self.closed:
            result.fail(OperationFailed(f"QEMU monitor of {self.name} is not connected"))
            return result
        if timeout is not None:
            timer = self.loop.call_later(timeout, lambda: result.fail(OperationTimeout(
                f"QEMU did not answer {command} within {timeout:g} s")))
            result.add_done_callback(lambda d: timer.cancel())
        try:
            owned = [os.dup(fd) for fd in fds]
        except OSError as exc:
            result.fail(OperationFailed(f"cannot pass a file to QEMU for {command}: "
                                        f"{exc.strerror or exc}"))
            return result
        if self._ready.done:
            self._send(command, arguments, result, owned)
        else:
            self._queued.append((command, arguments, result, owned))
        return result

    def _release_queued(self, ready: Deferred) -> None:
        """Negotiation ended: send what waited for it, or fail it with the reason."""
        queued, self._queued = self._queued, []
        for command, arguments, result, fds in queued:
            if ready.error is not None:
                _close_all(fds)
                result.fail(ready.error)
            else:
                self._send(command, arguments, result, fds)

    def _send(self, command: str, arguments: Mapping[str, Any] | None,
              result: Deferred, fds: list[int]) -> None:
        if result.done:
            _close_all(fds)
            return  # timed out while the monitor was negotiating
        if self.closed or self.sock is None:
            _close_all(fds)
            result.fail(OperationFailed(f"QEMU monitor of {self.name} is not connected"))
            return
        try:
            cmd_id, data = self.qmp.command(command, arguments)
        except (QemuError, ValueError, TypeError) as exc:
            _close_all(fds)
            result.fail(OperationFailed(f"cannot send {command} to QEMU: {exc}"))
            return
        self._pending[cmd_id] = (result, command)
        if self.log.isEnabledFor(logging.DEBUG):  # (set_password's: not in the log file)
            shown = {k: "***" if k == "password" else v for k, v in arguments.items()} \
                if arguments else ""
            self.log.debug("--> %s %s%s", command, shown,
                           f" (with {len(fds)} file descriptor(s))" if fds else "")
        if fds:
            self._fds.append((self._sent + len(self._out), fds))
        self._write(data)

    def _write(self, data: bytes) -> None:
        self._out += data
        self._flush()

    def _flush(self) -> None:
        if self.sock is None:
            return
        while self._out:
            # a command with descriptors starts a sendmsg of its own, which carries them;
            # no sendmsg goes past the start of the next such command
            fds = self._fds[0][1] if self._fds and self._fds[0][0] == self._sent else None
            marks = [at for at, _ in itertools.islice(self._fds, 1 if fds else 0, None)]
            data = self._out[:marks[0] - self._sent] if marks else self._out
            try:
                if fds is not None:
                    sent = socket.send_fds(self.sock, [bytes(data)], fds)
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._closed(f"write to QEMU monitor failed: {exc}")
                return
            if fds is not None and sent:
                self._fds.popleft()
                _close_all(fds)  # (QEMU has its own now)
            del self._out[:sent]
            self._sent += sent
        self.loop.add(self.sock.fileno(), READ | (WRITE if self._out else 0), self._on_io)

    # -- receiving -----------------------------------------------------------------------

    def _on_io(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if not mask & READ or self.sock is None:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._closed(f"read from QEMU monitor failed: {exc}")
            return
        try:
            self.qmp.receive_data(data)
        except QemuError as exc:
            self._closed(f"QEMU monitor protocol error: {exc}")
            return
        while True:
            msg = self.qmp.next_event()
            if msg is None:
                break
            self._on_message(msg)
        if not data:
            self._closed("QEMU closed its monitor")

    def _on_message(self, msg: object) -> None:
        if isinstance(msg, QMPGreeting):
            self.log.debug("<-- greeting (QEMU %s)", ".".join(map(str, msg.version.as_tuple())))
            cmd_id, data = self.qmp.command("qmp_capabilities")
            self._pending[cmd_id] = (Deferred(), "qmp_capabilities")
            self._pending[cmd_id][0].add_done_callback(
                lambda d: self._ready.resolve(msg) if d.error is None else
                self._ready.fail(d.error))
            self._write(data)
        elif isinstance(msg, QMPReturn):
            pending = self._pending.pop(msg.id, None)
            if pending is not None:
                self.log.debug("<-- %s ok", pending[1])
                pending[0].resolve(msg.value)
        elif isinstance(msg, QMPErrorReply):
            pending = self._pending.pop(msg.id, None)
            if pending is not None:
                self.log.debug("<-- %s error %s: %s", pending[1], msg.error_class, msg.desc)
                pending[0].fail(CommandRejected(msg.error_class, msg.desc))
        elif isinstance(msg, QMPEvent):
            self.log.debug("<-- event %s %s", msg.name, dict(msg.data))
            self.on_event(msg)

    def _closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.log.debug("monitor closed: %s", reason)
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self._drop_fds()
        pending, self._pending = self._pending, {}
        for deferred, command in pending.values():
            deferred.fail(OperationFailed(f"{command}: {reason}"))
        if not self._ready.done:
            self._ready.fail(OperationFailed(reason))
        self.on_close(reason)

    def close(self) -> None:
        """Detach without telling QEMU anything (the guest keeps running)."""
        if self._retry is not None:
            self._retry.cancel()
        if self.sock is not None:
            self.loop.remove(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self.closed = True
        self._drop_fds()
        queued, self._queued = self._queued, []
        for *_, fds in queued:
            _close_all(fds)
        pending = list(self._pending.values()) + [(d, c) for c, _, d, _ in queued]
        self._pending = {}
        for deferred, command in pending:
            deferred.fail(OperationFailed(f"{command}: monitor detached"))

    def _drop_fds(self) -> None:
        """Close the duplicates of descriptors never sent (the monitor is gone)."""
        while self._fds:
            _close_all(self._fds.popleft()[1])


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
