"""Serial console streams: a guest's serial chardev relayed to one client, both ways."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from protocol import Procedure, StreamAbort, StreamData, StreamEnd
from qemud.dispatch import Deferred, error_payload
from qemud.errors import InternalError, OperationFailed, QemudError
from qemud.loop import READ, WRITE, EventLoop
from qemud.server import StreamHandler

from .domain import DomainObj

if TYPE_CHECKING:
    from qemud.server import Client, Server

__all__ = ["CONSOLE_FORCE", "CONSOLE_SAFE", "ConsoleManager"]

#: libvirt's VIR_DOMAIN_CONSOLE_FORCE: take the console over from the session holding it
CONSOLE_FORCE = 1
#: libvirt's VIR_DOMAIN_CONSOLE_SAFE: open only with safe handling of concurrent sessions,
#: which qemud always has (one session per domain, see :meth:`ConsoleManager.open`)
CONSOLE_SAFE = 2

log = logging.getLogger(__name__)


class ConsoleStream(StreamHandler):
    def __init__(self, manager: ConsoleManager, dom: DomainObj, client: Client, serial: int,
                 fd: int, sock: socket.socket | None) -> None:
        self.manager, self.dom, self.client, self.serial = manager, dom, client, serial
        self.fd, self.sock = fd, sock
        self.out = bytearray()
        self.closed = False
        manager.loop.add(fd, READ, self._on_io)

    def _on_io(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if mask & READ:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close(notify=True)
                return
            self.manager.server.send_stream(self.client, StreamData(
                Procedure.DOMAIN_OPEN_CONSOLE, self.serial, data))

    def on_data(self, data: bytes) -> None:
        self.out += data
        self._flush()

    def _flush(self) -> None:
        while self.out and not self.closed:
            try:
                n = os.write(self.fd, self.out)
            except BlockingIOError:
                break
            except OSError:
                self.close(notify=True)
                return
            del self.out[:n]
        if not self.closed:
            self.manager.loop.add(self.fd, READ | (WRITE if self.out else 0), self._on_io)

    def on_end(self) -> None:
        self.close(notify=False)

    def abort(self, error: QemudError) -> None:
        """End the session with ``error`` for its client (another took the console)."""
        if self.closed:
            return
        self.close(notify=False)
        self.manager.server.send_stream(self.client, StreamAbort(
            Procedure.DOMAIN_OPEN_CONSOLE, self.serial, error_payload(error)))

    def close(self, notify: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.manager.loop.remove(self.fd)
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)
        self.manager.active.pop(self.dom.uuid, None)
        self.client.streams.pop(self.serial, None)
        if notify:
            self.manager.server.send_stream(self.client, StreamEnd(
                Procedure.DOMAIN_OPEN_CONSOLE, self.serial))


class ConsoleManager:
    def __init__(self, loop: EventLoop, server: Server) -> None:
        self.loop = loop
        self.server = server
        self.active: dict[str, ConsoleStream] = {}

    def open(self, dom: DomainObj, client: Any, serial: int, device: str,
             chardev_paths: dict[str, str], *, force: bool = False) -> Deferred:
        """Attach ``client`` to the console ``device`` ("" = the first console, else the
        first serial port).

        One session per domain, as libvirt's virChrdevOpen: a second one is refused, or
        with ``force`` takes over (the first session's client gets an error saying so).
        """
        # error codes as libvirt's: OPERATION_FAILED for a taken console (virChrdevOpen),
        # INTERNAL_ERROR for a name that is no console (qemuDomainOpenConsole)
        holder = self.active.get(dom.uuid)
        if holder is not None and not force:
            raise OperationFailed("Active console session exists for this domain")
        if not chardev_paths:
            raise InternalError(f"cannot find character device: domain '{dom.name}' has no "
                                "serial port or console to open")
        key = device or next(iter(chardev_paths))
        path = chardev_paths.get(key)
        if path is None:
            raise InternalError(f"cannot find character device '{device}' (have: "
                                f"{', '.join(chardev_paths)})")
        if holder is not None:
            # before opening: a unix socket serial takes one connection at a time
            log.info("console of %s taken over by client %s (force)", dom.name,
                     getattr(client, "id", "?"))
            holder.abort(OperationFailed(f"console of domain '{dom.name}' was taken over "
                                         "by another session (console --force)"))
        sock: socket.socket | None = None
        try:
            if path.startswith("unix:"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect(path[5:])
                fd = sock.fileno()
            else:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise OperationFailed(f"cannot open console {key} of '{dom.name}' ({path}): "
                                  f"{exc.strerror or exc}") from None
        stream = ConsoleStream(self, dom, client, serial, fd, sock)
        self.active[dom.uuid] = stream
        client.streams[serial] = stream
        from protocol import Empty
        return Deferred.resolved(Empty())

    def close_for(self, dom: DomainObj) -> None:
        stream = self.active.get(dom.uuid)
        if stream is not None:
            stream.close(notify=True)
