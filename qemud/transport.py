"""Non-blocking byte transports for client connections: plain unix sockets and TLS.

TLS lives here and nowhere else. A TLS handshake is advanced one step per readiness
event (:meth:`Transport.handshake_step`), so a client stalling mid-handshake costs the
loop nothing; the server enforces the deadline.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass

from .loop import READ, WRITE

__all__ = ["Transport", "UnixTransport", "TLSTransport", "PeerCred", "WouldBlock"]


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

    def send(self, data: bytes | memoryview) -> int:
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


class TLSTransport(Transport):
    kind = "tls"

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self.raw = sock
        self.sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.handshake_done = False

    def handshake_step(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            raise WouldBlock(READ) from None
        except ssl.SSLWantWriteError:
            raise WouldBlock(WRITE) from None
        self.handshake_done = True

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except ssl.SSLWantReadError:
            raise WouldBlock(READ) from None
        except ssl.SSLWantWriteError:
            raise WouldBlock(WRITE) from None
        except ssl.SSLZeroReturnError:
            return b""
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(READ) from None

    def send(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except ssl.SSLWantReadError:
            raise WouldBlock(READ) from None
        except ssl.SSLWantWriteError:
            raise WouldBlock(WRITE) from None
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(WRITE) from None

    def pending(self) -> int:
        return self.sock.pending()

    def peer_certificate(self) -> bytes | None:
        return self.sock.getpeercert(binary_form=True)
