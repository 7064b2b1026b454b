"""The TLS transport of client connections (see :mod:`qemud.transport` for the interface).

Its own module so that only a daemon with a TLS listener imports ``ssl``: the server
imports this module when it opens one. TLS sockets, handshake steps and the words for a
failed handshake live here and nowhere else.
"""

from __future__ import annotations

import socket
import ssl

from .loop import READ, WRITE
from .transport import Transport, WouldBlock

__all__ = ["TLSTransport", "tls_failure_reason"]


class TLSTransport(Transport):
    kind = "tls"

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        sock.setblocking(False)
        self.raw = sock
        self.tls: ssl.SSLSocket = context.wrap_socket(sock, server_side=True,
                                                      do_handshake_on_connect=False)
        self.sock = self.tls
        self.handshake_done = False

    def handshake_step(self) -> None:
        try:
            self.tls.do_handshake()
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

    def send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.sock.send(data)
        except ssl.SSLWantReadError:
            raise WouldBlock(READ) from None
        except ssl.SSLWantWriteError:
            raise WouldBlock(WRITE) from None
        except (BlockingIOError, InterruptedError):
            raise WouldBlock(WRITE) from None

    def pending(self) -> int:
        return self.tls.pending()

    def peer_certificate(self) -> bytes | None:
        return self.tls.getpeercert(binary_form=True)

    def shutdown_write(self) -> None:
        """Send FIN after our last words (an alert or error frame); TLS is done with.

        Closing with unread input would make the kernel answer with RST, which can
        destroy those last words before the client reads them: see :meth:`drain`.
        """
        self.sock.shutdown(socket.SHUT_WR)  # also detaches the SSL object: raw from here

    def drain(self) -> bool:
        """Discard what the client still sends; True once it has closed its side."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True


#: X509_V_ERR_* codes meaning "not issued by a CA we trust"
_UNTRUSTED = {2, 18, 19, 20, 21, 30}
#: OpenSSL reasons for bytes on the TLS port that are not a TLS ClientHello
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
            "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_MESSAGE"}


def tls_failure_reason(exc: BaseException) -> str:
    """Why a client's TLS handshake failed, in words that tell the admin what to fix.

    OpenSSL only says ``CERTIFICATE_VERIFY_FAILED`` for an expired, not-yet-valid and a
    foreign certificate alike; the verify code tells them apart.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, message = exc.verify_code, exc.verify_message
        if code == 10:
            return ("client certificate has expired (issue a new one: qemud-certs client "
                    "--cn NAME)")
        if code == 9:
            return ("client certificate is not yet valid (check the clocks of the client, "
                    "the daemon and the machine that issued it)")
        if code in _UNTRUSTED:
            return (f"client certificate is not signed by the CA in tls.ca_file ({message}); "
                    "issue it with this daemon's CA")
        return f"client certificate rejected: {message}"
    reason = getattr(exc, "reason", None)
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return ("client presented no certificate (a client needs clientcert.pem and "
                "clientkey.pem signed by the daemon's CA)")
    if reason in _NOT_TLS:
        return (f"not a TLS client ({reason}): plaintext or another protocol was sent to the "
                "TLS port (clients must use a qemud+tls:// URI)")
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "NO_SHARED_CIPHER",
                  "TLSV1_ALERT_PROTOCOL_VERSION"):
        return f"no TLS version or cipher in common ({reason}; the daemon requires TLS >= 1.2)"
    if isinstance(reason, str) and "ALERT" in reason:
        # an alert from the client: it gave up, usually on our certificate
        return (f"the client aborted the handshake ({reason}); it most likely rejected the "
                "daemon's certificate (its CA file or the hostname it connects to does not "
                "match servercert.pem)")
    if isinstance(exc, ssl.SSLEOFError | ConnectionError) or reason == \
            "UNEXPECTED_EOF_WHILE_READING":
        return "the client closed the connection during the TLS handshake"
    return str(reason or exc)
