"""``ssl.SSLContext`` factories for qemud's mutual-TLS transport.

The daemon and the client both build their contexts here so the security policy --
TLS 1.2 minimum, client certificates required, everything verified against the qemud
CA -- lives in one place.  The transport layer wraps its (non-blocking) sockets with
the returned contexts; nothing here does I/O beyond reading the PKI files.

Files are loaded with :mod:`certs.pem` and cross-checked (key matches certificate,
certificate fits its role) *before* ``ssl`` sees them, so a misconfiguration is
reported as a :class:`~certs.errors.CertError` naming the file instead of
``[SSL] PEM lib``.

After a handshake the server obtains the client's identity with
``peer_dn(sslsock.getpeercert(binary_form=True))`` (re-exported from
:mod:`certs.dn`, which documents the exact DN format) and looks it up in a
:class:`certs.allowlist.AllowList`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from certs.checks import check_endpoint_usage, check_is_ca, check_key_matches
from certs.dn import format_name, peer_dn
from certs.errors import CertFileError
from certs.paths import Endpoint, PKIPaths
from certs.pem import load_certs, load_key

__all__ = ["client_context", "format_name", "peer_dn", "server_context"]


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    certs = load_certs(ca, "CA certificate")
    for i, cert in enumerate(certs):
        check_is_ca(cert, f"CA certificate {ca}" + (f" (entry {i + 1})" if i else ""))
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise CertFileError(f"cannot load CA certificate {ca}: {e}", ca) from None


def _load_identity(ctx: ssl.SSLContext, paths: PKIPaths, endpoint: Endpoint) -> None:
    cert_path, key_path = paths.cert(endpoint), paths.key(endpoint)
    cert = load_certs(cert_path, f"{endpoint} certificate")[0]
    key = load_key(key_path, f"{endpoint} private key")
    check_key_matches(key, cert, f"{endpoint} private key {key_path}",
                      f"{endpoint} certificate {cert_path}")
    check_endpoint_usage(cert, endpoint, f"{endpoint} certificate {cert_path}")
    try:
        ctx.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except (OSError, ssl.SSLError) as e:
        raise CertFileError(
            f"cannot load {endpoint} certificate {cert_path} / key {key_path}: {e}", cert_path
        ) from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Client-initiated renegotiation is a CPU DoS vector and nothing of ours needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION


def server_context(paths: PKIPaths) -> ssl.SSLContext:
    """Context for the daemon's TLS listener.

    Presents ``paths.server_cert``/``server_key``; requires every client to present
    a certificate that verifies against ``paths.ca_cert``, is within its validity
    period and (if it has an extendedKeyUsage) allows clientAuth.  TLS >= 1.2.
    Raises :class:`~certs.errors.CertError` naming the offending file.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, paths.ca_cert)
    _load_identity(ctx, paths, "server")
    return ctx


def client_context(paths: PKIPaths, server_hostname_check: bool = True, *,
                   verify: bool = True) -> ssl.SSLContext:
    """Context for connecting to a qemud daemon.

    Always presents ``paths.client_cert``/``client_key`` (the daemon requires it).
    By default verifies the server certificate against ``paths.ca_cert`` and the
    hostname/IP passed as ``server_hostname`` to ``wrap_socket``.

    ``server_hostname_check=False`` keeps chain verification but skips the name
    check.  ``verify=False`` (the ``?no_verify=1`` URI option) skips all server
    verification and does not need ``cacert.pem`` -- the connection is then open to
    a man in the middle, which is the caller's explicit choice.  TLS >= 1.2.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    if verify:
        ctx.check_hostname = server_hostname_check
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_ca(ctx, paths.ca_cert)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _load_identity(ctx, paths, "client")
    return ctx
