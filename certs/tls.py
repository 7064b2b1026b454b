"""``ssl.SSLContext`` factories for qemud's mutual-TLS transport.

The daemon and the client both build their contexts here so the security policy --
TLS 1.2 minimum, client certificates required, everything verified against the qemud
CA -- lives in one place.  The transport layer wraps its (non-blocking) sockets with
the returned contexts; nothing here does I/O beyond reading the PKI files.

Files are loaded with :mod:`certs.pem` and cross-checked (key matches certificate,
certificate fits its role) *before* ``ssl`` sees them, so a misconfiguration is
reported as a :class:`~certs.errors.CertError` naming the file instead of
``[SSL] PEM lib``.  Those checks need ``cryptography``, which is imported only when
they run: the daemon runs them once in a short-lived child process
(:func:`check_server_files`) and builds its context with ``check=False``, so it never
holds ``cryptography``'s ~9 MiB.

After a handshake the server obtains the client's identity with
``peer_dn(sslsock.getpeercert())`` (re-exported from :mod:`certs.dn`, which documents
the exact DN format and when to pass DER instead) and looks it up in a
:class:`certs.allowlist.AllowList`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from certs.dn import format_name, peer_dn
from certs.errors import CertFileError
from certs.paths import Endpoint, PKIPaths

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["check_server_files", "client_context", "format_name", "peer_dn",
           "server_context"]


def _check_ca(ca: Path) -> list[x509.Certificate]:
    """Every certificate in the CA file is a CA certificate within its validity period.

    libvirt checks the CA's dates as it checks the server's: an expired CA fails every
    handshake later with OpenSSL's bare "certificate has expired", which names neither
    the file nor which of the certificates it was.
    """
    from certs.checks import check_ca_entries
    from certs.pem import load_certs

    certs = load_certs(ca, "CA certificate")
    check_ca_entries(certs, ca)
    return certs


def _check_identity(paths: PKIPaths, endpoint: Endpoint) -> list[x509.Certificate]:
    from certs.checks import check_endpoint_usage, check_key_matches, check_not_ca
    from certs.pem import load_certs, load_key

    cert_path, key_path = paths.cert(endpoint), paths.key(endpoint)
    chain = load_certs(cert_path, f"{endpoint} certificate")
    key = load_key(key_path, f"{endpoint} private key")
    check_key_matches(key, chain[0], f"{endpoint} private key {key_path}",
                      f"{endpoint} certificate {cert_path}")
    check_not_ca(chain[0], endpoint, f"{endpoint} certificate {cert_path}")
    check_endpoint_usage(chain[0], endpoint, f"{endpoint} certificate {cert_path}")
    return chain


def check_server_files(paths: PKIPaths) -> None:
    """The checks :func:`server_context` runs before ``ssl`` sees the daemon's files.

    The CA file holds CA certificates within their validity period; the server key is
    the certificate's key; the certificate is not a CA certificate (whose key must stay
    off servers), may be used by a server, is within its validity period and is signed
    by the CA file's CA (or chains up to it through the rest of the certificate file).
    ``ssl`` checks none of the last three for the daemon's own certificate: a daemon
    started without them would refuse nothing and be refused by every client, as
    libvirtd's start-up checks prevent too.  Imports ``cryptography``.  Raises
    :class:`~certs.errors.CertError` naming the offending file.
    """
    from certs.checks import check_trusted_by, check_valid_now

    cas = _check_ca(paths.ca_cert)
    chain = _check_identity(paths, "server")
    name = f"server certificate {paths.server_cert}"
    check_valid_now(chain[0], name)
    check_trusted_by(chain[0], cas, name, str(paths.ca_cert), intermediates=chain[1:])


def _load_ca(ctx: ssl.SSLContext, ca: Path, check: bool) -> None:
    if check:
        _check_ca(ca)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise CertFileError(f"cannot load CA certificate {ca}: {e}", ca) from None


def _load_identity(ctx: ssl.SSLContext, paths: PKIPaths, endpoint: Endpoint,
                   check: bool) -> None:
    cert_path, key_path = paths.cert(endpoint), paths.key(endpoint)
    if check:
        _check_identity(paths, endpoint)
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


def server_context(paths: PKIPaths, *, check: bool = True) -> ssl.SSLContext:
    """Context for the daemon's TLS listener.

    Presents ``paths.server_cert``/``server_key``; requires every client to present
    a certificate that verifies against ``paths.ca_cert``, is within its validity
    period and (if it has an extendedKeyUsage) allows clientAuth.  TLS >= 1.2.
    Raises :class:`~certs.errors.CertError` naming the offending file.

    ``check=False`` skips :func:`check_server_files` (and with it ``cryptography``):
    for a caller that ran it elsewhere.  What ``ssl`` itself refuses is still reported.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # No session resumption: a resumed session skips the certificate checks of a full
    # handshake (its validity period above all), and each resumption handed out a new
    # ticket, so a client could go on past its certificate's expiry for ever.
    # (libvirt's GnuTLS setup has no server tickets either.)
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    if check:
        check_server_files(paths)
    _load_ca(ctx, paths.ca_cert, False)
    _load_identity(ctx, paths, "server", False)
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
        _load_ca(ctx, paths.ca_cert, True)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _load_identity(ctx, paths, "client", True)
    return ctx
