"""Opening the socket for a parsed URI: unix, or TLS with the client's certificate."""

from __future__ import annotations

import socket
import ssl
import sys
from pathlib import Path

from .errors import ConnectFailed
from .uri import ParsedURI

__all__ = ["open_socket"]


def _pki_files(uri: ParsedURI) -> tuple[Path, Path, Path]:
    """(cacert, clientcert, clientkey) for a TLS URI, libvirt's layout."""
    if uri.pkipath is not None:
        base = uri.pkipath
        return base / "cacert.pem", base / "clientcert.pem", base / "clientkey.pem"
    home = Path.home() / ".pki" / "qemud"
    if (home / "clientcert.pem").exists():
        return home / "cacert.pem", home / "clientcert.pem", home / "clientkey.pem"
    return (Path("/etc/pki/CA/cacert.pem"), Path("/etc/pki/qemud/clientcert.pem"),
            Path("/etc/pki/qemud/private/clientkey.pem"))


def _tls_context(uri: ParsedURI) -> ssl.SSLContext:
    ca, cert, key = _pki_files(uri)
    for what, path in (("CA certificate", ca), ("client certificate", cert),
                       ("client key", key)):
        if not path.exists():
            raise ConnectFailed(f"cannot connect to {uri.uri}: {what} {path} not found "
                                "(create one with qemud-certs, or pass ?pkipath=DIR)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConnectFailed(f"cannot load TLS files for {uri.uri}: {exc}") from None
    if uri.no_verify:
        print(f"warning: {uri.uri}: server certificate NOT verified (no_verify=1)",
              file=sys.stderr)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
            raise ConnectFailed(f"cannot connect to {uri.uri}: {path}: {exc.strerror}") from None
        sock.settimeout(None)
        return sock
    assert uri.host is not None
    ctx = _tls_context(uri)
    try:
        raw = socket.create_connection((uri.host, uri.port), timeout=timeout)
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {uri.host}:{uri.port}: "
                            f"{exc.strerror or exc}") from None
    try:
        tls = ctx.wrap_socket(raw, server_hostname=uri.host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise ConnectFailed(f"TLS: server certificate of {uri.host} rejected: "
                            f"{exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise ConnectFailed(f"TLS handshake with {uri.host}:{uri.port} failed: {exc} (the "
                            "server may refuse this client's certificate)") from None
    tls.settimeout(None)
    return tls
