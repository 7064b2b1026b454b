"""The daemon's side of TLS: its SSL context and who a TLS client is.

Certificate verification (CA, validity, key usage) happens inside the handshake; this
module then maps the verified certificate's DN to a role through ``tls.allowed_dn``, the
equivalent of libvirt's ``tls_allowed_dn_list``. An empty list refuses every client: a
TLS listener that lets in any certificate from the CA must be asked for explicitly
(``pattern = "*"``).

The daemon never imports ``cryptography`` (~9 MiB it could never give back: an extension
module stays loaded). The start-up checks that need it (:func:`certs.tls.check_server_files`:
CA flag of the CA file, key matches certificate, the certificate is no CA, server usage,
validity period, signed by the CA file's CA) run once in a short-lived child process,
``python -m qemud.tls CA CERT KEY`` (~0.15 s), whose message becomes the start-up error;
a client's DN is read from the ``getpeercert()`` dict, which ``ssl`` builds without it.
Only a certificate whose subject the dict cannot carry exactly (a binary value; see
:mod:`certs.dn`) is read from DER, through ``cryptography``.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import certs
from certs.allowlist import AllowList, Role
from certs.errors import CertError
from certs.paths import PKIPaths
from certs.tls import check_server_files, peer_dn, server_context

from .config import Config
from .errors import AuthFailed, ConfigError

__all__ = ["server_tls_context", "identify_tls_client", "check_in_child", "client_dn"]

log = logging.getLogger(__name__)

#: the child's exit status for a CertError (its message is on stdout)
_CERT_ERROR_EXIT = 3
#: how long the child may take (it imports cryptography and reads three small files)
CHECK_TIMEOUT = 60.0


def server_tls_context(config: Config) -> ssl.SSLContext:
    tls = config.tls
    paths = PKIPaths(ca_cert=Path(tls.ca_file), server_cert=Path(tls.cert_file),
                     server_key=Path(tls.key_file), client_cert=Path("/nonexistent"),
                     client_key=Path("/nonexistent"))
    try:
        check_in_child(paths)
        context = server_context(paths, check=False)
        allow_list(config)  # bad patterns/roles are start-up errors, not per-client ones
    except CertError as exc:
        raise ConfigError(f"TLS listener: {exc}") from None
    return context


def check_in_child(paths: PKIPaths) -> None:
    """:func:`certs.tls.check_server_files` in a child process, so that ``cryptography``
    is loaded there and not here; raises its :class:`CertError` (same message).

    Blocks for the child (~0.15 s): it runs once, at start-up, before the loop does.
    """
    argv = [sys.executable, "-m", __name__, str(paths.ca_cert), str(paths.server_cert),
            str(paths.server_key)]
    # the child imports this very tree, wherever it came from (installed or a checkout)
    here = {str(Path(__file__).resolve().parents[1]),
            str(Path(certs.__file__).resolve().parents[1])}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*sorted(here), *filter(None, [
        env.get("PYTHONPATH")])])
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, timeout=CHECK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertError(f"cannot run the certificate checks ({' '.join(argv)}): {exc}") \
            from None
    if done.returncode == 0:
        return
    if done.returncode == _CERT_ERROR_EXIT and done.stdout.strip():
        raise CertError(done.stdout.strip())
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise CertError(f"the certificate checks failed (exit status {done.returncode}): {last}")


def allow_list(config: Config) -> AllowList:
    try:
        return AllowList([(e["pattern"], e["role"]) for e in config.tls.allowed_dn])
    except CertError as exc:
        raise ConfigError(f"tls.allowed_dn: {exc}") from None


def client_dn(transport: Any) -> str:
    """The verified client certificate's DN string (:mod:`certs.dn`); CertError if none.

    From the ``getpeercert()`` dict; from DER (loading ``cryptography``) only when the dict
    cannot give the same string.
    """
    try:
        return peer_dn(transport.tls.getpeercert())
    except (CertError, ValueError, ssl.SSLError) as exc:
        log.debug("client certificate subject read from DER (%s)", exc)
        return peer_dn(transport.peer_certificate())


def _check_validity(transport: Any) -> None:
    """Refuse a client certificate outside its validity period, now.

    The handshake checks it, but only a full one: a resumed TLS session carries the
    certificate of the handshake it resumes (the server context turns resumption off;
    this holds whatever a client or an OpenSSL version negotiates)."""
    try:
        not_before, not_after = _validity(transport)
    except (KeyError, TypeError, ValueError, ssl.SSLError) as exc:
        raise AuthFailed(f"access denied: the client certificate's validity period "
                         f"cannot be read ({exc!r})") from None
    if not_before is None or not_after is None:
        return  # (no certificate: client_dn says so)
    now = time.time()
    if now > not_after:
        raise AuthFailed(f"access denied: the client certificate has expired (not after "
                         f"{_utc(not_after)})")
    if now < not_before:
        raise AuthFailed(f"access denied: the client certificate is not valid yet (not "
                         f"before {_utc(not_before)})")


def _validity(transport: Any) -> tuple[float | None, float | None]:
    """The client certificate's (notBefore, notAfter) as epoch seconds; (None, None)
    without one. From the ``getpeercert()`` dict, else (a name OpenSSL verifies but
    Python cannot turn into text: ``getpeercert()`` raises) from DER."""
    try:
        cert = transport.tls.getpeercert()
    except (ValueError, ssl.SSLError) as exc:
        log.debug("client certificate validity read from DER (%s)", exc)
        der = transport.peer_certificate()
        if not der:
            return None, None
        from cryptography import x509  # (rare: as for the DN, certs/dn.py)
        parsed = x509.load_der_x509_certificate(der)
        return (parsed.not_valid_before_utc.timestamp(),
                parsed.not_valid_after_utc.timestamp())
    if not cert:
        return None, None
    return (ssl.cert_time_to_seconds(cert["notBefore"]),
            ssl.cert_time_to_seconds(cert["notAfter"]))


def _utc(seconds: float) -> str:
    """A validity bound as ``getpeercert()`` words it (``Jan  5 09:00:00 2027 GMT``)."""
    return time.strftime("%b %e %H:%M:%S %Y GMT", time.gmtime(seconds))


def identify_tls_client(config: Config, transport: Any) -> tuple[str, bool]:
    """(identity, readonly) for a TLS client that completed its handshake. Any failure
    to read its certificate refuses it (AuthFailed): never a client let through
    unidentified."""
    _check_validity(transport)
    try:
        dn = client_dn(transport)
    except CertError as exc:
        raise AuthFailed(f"access denied: no usable client certificate ({exc})") from None
    except Exception as exc:  # (the DER fallback failing too: cryptography's errors)
        log.warning("cannot read a client certificate's subject: %r", exc)
        raise AuthFailed(f"access denied: the client certificate's subject cannot be "
                         f"read ({exc!r})") from None
    role = allow_list(config).role_for(dn)
    if role is None:
        raise AuthFailed(f"access denied: certificate DN '{dn}' is not in the daemon's "
                         "tls.allowed_dn list (ask the qemud admin to add a matching "
                         "pattern)")
    return dn, role is Role.READONLY


def _main(argv: list[str]) -> int:
    """``python -m qemud.tls CA CERT KEY``: :func:`check_server_files` for the daemon."""
    ca, cert, key = (Path(a) for a in argv)
    try:
        check_server_files(PKIPaths(ca_cert=ca, server_cert=cert, server_key=key,
                                    client_cert=Path("/nonexistent"),
                                    client_key=Path("/nonexistent")))
    except CertError as exc:
        print(exc)
        return _CERT_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
