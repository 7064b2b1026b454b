"""Non-blocking byte transports for client connections: the interface and unix sockets.

TLS is :mod:`qemud.tls_transport`, imported only by a daemon with a TLS listener: the
``ssl`` module and OpenSSL cost ~5 MiB of memory that a daemon without one never needs.
A handshake is advanced one step per readiness event (:meth:`Transport.handshake_step`),
so a client stalling mid-handshake costs the loop nothing; the server enforces the
deadline.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .loop import READ, WRITE

__all__ = ["Transport", "UnixTransport", "PeerCred", "WouldBlock"]


class WouldBlock(Exception):
    """The operation cannot progress until the fd is ready (``wants`` says for what)."""

    def __init__(self, wants: int) -> None:
        super().__init__(wants)
        self.wants = wants


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


class Transport:
    """A connected, non-blocking stream socket."""

    kind = "unix"

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.handshake_done = True

    def fileno(self) -> int:
        return self.sock.fileno()

    def handshake_step(self) -> None:
        """Advance the handshake; raises WouldBlock until it completes."""

    def recv(self, size: int) -> bytes:
        """Bytes read (``b""`` at EOF); raises WouldBlock when nothing is available."""
        try:
            return self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(READ) from None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(WRITE) from None

    def pending(self) -> int:
        """Bytes already decrypted and buffered inside the transport (TLS only)."""
        return 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class UnixTransport(Transport):
    def peercred(self) -> PeerCred:
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                   struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return PeerCred(pid, uid, gid)
