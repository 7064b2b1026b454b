"""Opening the socket for a parsed URI: unix, or TLS with the client's certificate."""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConnectFailed
from .uri import ParsedURI

if TYPE_CHECKING:
    from certs.paths import PKIPaths

__all__ = ["open_socket"]

#: X509_V_ERR_* codes meaning "not issued by a CA we trust"
_UNTRUSTED = {2, 18, 19, 20, 21, 30}
#: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = {62, 64}
#: TLS alerts by which the daemon refuses this client's certificate
_REFUSAL_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the certificate has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the certificate is not signed by the daemon's CA",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "a client certificate is required",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the certificate is revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
    "TLSV1_ALERT_DECRYPT_ERROR": "decrypt error",
}


#: contexts already built, by (files, no_verify): reading and checking the certificate
#: files is ~2 ms of a ~7 ms TLS connect, and a context serves any number of connections
_CONTEXTS: dict[tuple[Path, Path, Path, bool], tuple[tuple[Any, ...], ssl.SSLContext]] = {}


def _files_stamp(*files: Path) -> tuple[Any, ...]:
    """What changes when one of ``files`` is replaced or rewritten (None: missing)."""
    stamps: list[Any] = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def _tls_context(uri: ParsedURI, paths: PKIPaths) -> ssl.SSLContext:
    """The client context from certs.tls (one TLS policy for daemon and client).

    Built once per certificate set and reused while its files stay the same: a renewed
    certificate (a new file, or one rewritten in place) is read on the next connect.
    """
    from certs.errors import CertError
    from certs.tls import client_context
    if uri.no_verify:
        print(f"warning: {uri.uri}: server certificate NOT verified (no_verify=1)",
              file=sys.stderr)
    key = (paths.ca_cert, paths.client_cert, paths.client_key, uri.no_verify)
    stamp = _files_stamp(*key[:3])
    cached = _CONTEXTS.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        ctx = client_context(paths, server_hostname_check=not uri.no_verify,
                             verify=not uri.no_verify)
    except CertError as exc:
        raise ConnectFailed(f"cannot connect to {uri.uri}: {exc} (create certificates with "
                            "qemud-certs, or pass ?pkipath=DIR)") from None
    ctx.sslsocket_class = _TLSSocket
    _CONTEXTS[key] = (stamp, ctx)
    return ctx


def _local_validity(cert_path: Path) -> str:
    """A note for the message when our own certificate is outside its validity window."""
    try:
        from certs.pem import load_cert
        from certs.validity import Validity, not_after, not_before, validity_status
        cert = load_cert(cert_path)
        status = validity_status(cert)
    except Exception:  # only a diagnosis: never hide the real error behind another
        return ""
    if status is Validity.EXPIRED:
        return f"; it expired on {not_after(cert):%Y-%m-%d %H:%M} UTC"
    if status is Validity.NOT_YET_VALID:
        return (f"; it is not valid before {not_before(cert):%Y-%m-%d %H:%M} UTC (check "
                "the clocks)")
    return ""


def _refusal(uri: ParsedURI, cert_path: Path, exc: BaseException) -> ConnectFailed | None:
    """ConnectFailed for a daemon refusing us during/just after the handshake, else None.

    With TLS 1.3 the daemon checks the client certificate after the client considers the
    handshake done, so its verdict (an alert) arrives on the first read.
    """
    where = f"{uri.host}:{uri.port}"
    reason = getattr(exc, "reason", None)
    if reason in _REFUSAL_ALERTS:
        return ConnectFailed(
            f"TLS: the daemon at {where} refused the client certificate {cert_path}: "
            f"{_REFUSAL_ALERTS[reason]}{_local_validity(cert_path)} (inspect it with "
            "'qemud-certs show'; the daemon's log gives its reason)")
    if isinstance(exc, ssl.SSLEOFError | ConnectionError) or reason == \
            "UNEXPECTED_EOF_WHILE_READING":
        return ConnectFailed(
            f"TLS: the daemon at {where} closed the connection during the TLS handshake "
            f"(it may refuse the client certificate {cert_path}, or be at max_clients; "
            "its log says why)")
    return None


class _WantRead(ssl.SSLWantReadError, BlockingIOError):
    """Nothing to read yet on a non-blocking TLS socket (both exception types, so code
    written for plain sockets sees the BlockingIOError it expects)."""


class _WantWrite(ssl.SSLWantWriteError, BlockingIOError):
    """The non-blocking TLS socket cannot proceed until it can write."""


class _TLSSocket(ssl.SSLSocket):
    """Turns the daemon's refusal, seen before its first reply, into a ConnectFailed.

    With TLS 1.3 the daemon checks the client certificate after the client's handshake
    has completed, so its verdict -- an alert, or an error frame for a DN not on the
    allow-list -- arrives on the first read (or, if it already hung up, the first write).
    """

    _qemud_explain: Callable[[BaseException], ConnectFailed | None] | None = None
    _qemud_answered = False

    def _recv(self, buflen: int, flags: int) -> bytes:
        # Readable does not mean application data with TLS (e.g. TLS 1.3 session tickets
        # arrive after the handshake): a non-blocking recv then has nothing to return.
        try:
            return super().recv(buflen, flags)
        except ssl.SSLWantReadError as exc:
            raise _WantRead(*exc.args) from None
        except ssl.SSLWantWriteError as exc:
            raise _WantWrite(*exc.args) from None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._qemud_answered or self._qemud_explain is None:
            return self._recv(buflen, flags)
        try:
            data = self._recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, TimeoutError):
            raise
        except (ssl.SSLError, ConnectionError) as exc:
            failure = self._qemud_explain(exc)
            if failure is None:
                raise
            raise failure from None
        if not data:
            failure = self._qemud_explain(ssl.SSLEOFError())
            assert failure is not None
            raise failure
        self._qemud_answered = True
        return data

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._qemud_answered or self._qemud_explain is None:
            return super().sendall(data, flags)
        try:
            return super().sendall(data, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, TimeoutError):
            raise
        except (ssl.SSLError, ConnectionError) as exc:
            failure = self._qemud_explain(exc)
            if failure is None:
                raise
            raise failure from None


def _server_rejected(uri: ParsedURI, ca_cert: Path, exc: ssl.SSLCertVerificationError) -> str:
    message = f"TLS: server certificate of {uri.host} rejected: {exc.verify_message}"
    if exc.verify_code in _NAME_MISMATCH:
        return (f"{message} (connect with a name or address listed in the daemon's "
                "certificate -- 'qemud-certs show servercert.pem' -- or reissue it with "
                "qemud-certs server --hostname/--ip)")
    if exc.verify_code in _UNTRUSTED:
        return f"{message} (it is not signed by the CA in {ca_cert})"
    if exc.verify_code == 10:
        return f"{message} (the daemon's certificate must be renewed)"
    return message


def open_socket(uri: ParsedURI, readonly: bool, timeout: float = 10.0) -> socket.socket:
    if uri.transport == "unix":
        path = uri.socket_path(readonly)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            sock.close()
            raise ConnectFailed(f"cannot connect to {uri.uri}: socket {path} does not exist "
                                "(is qemud running?)") from None
        except PermissionError:
            sock.close()
            raise ConnectFailed(f"cannot connect to {uri.uri}: permission denied on {path}"
                                + ("" if readonly else " (try -r for read-only)")) from None
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"cannot connect to {uri.uri}: {path}: "
                                f"{exc.strerror or exc}") from None
        sock.settimeout(None)
        return sock
    assert uri.host is not None
    from certs.paths import PKIPaths
    paths = PKIPaths.from_dir(uri.pkipath) if uri.pkipath else PKIPaths.default("client")
    ctx = _tls_context(uri, paths)
    try:
        raw = socket.create_connection((uri.host, uri.port), timeout=timeout)
    except OSError as exc:
        hint = ""
        if isinstance(exc, ConnectionRefusedError | TimeoutError):
            hint = (" (is qemud running with its TLS listener -- listen.tls = true or "
                    "--listen-tls -- on that address and port, and does the firewall let "
                    "the port through?)")
        raise ConnectFailed(f"cannot connect to {uri.host}:{uri.port}: "
                            f"{exc.strerror or exc}{hint}") from None
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls
    try:
        tls = ctx.wrap_socket(raw, server_hostname=uri.host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise ConnectFailed(_server_rejected(uri, paths.ca_cert, exc)) from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        refusal = _refusal(uri, paths.client_cert, exc)
        if refusal is not None:
            raise refusal from None
        raise ConnectFailed(f"TLS handshake with {uri.host}:{uri.port} failed: {exc} (the "
                            "server may refuse this client's certificate)") from None
    assert isinstance(tls, _TLSSocket)
    tls._qemud_explain = lambda exc: _refusal(uri, paths.client_cert, exc)
    tls.settimeout(None)
    return tls
