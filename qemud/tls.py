"""The daemon's side of TLS: its SSL context and who a TLS client is.

Certificate verification (CA, validity, key usage) happens inside the handshake; this
module then maps the verified certificate's DN to a role through ``tls.allowed_dn``, the
equivalent of libvirt's ``tls_allowed_dn_list``. An empty list refuses every client: a
TLS listener that lets in any certificate from the CA must be asked for explicitly
(``pattern = "*"``).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from certs.allowlist import AllowList, Role
from certs.errors import CertError
from certs.paths import PKIPaths
from certs.tls import peer_dn, server_context

from .config import Config
from .errors import AuthFailed, ConfigError

__all__ = ["server_tls_context", "identify_tls_client"]

log = logging.getLogger(__name__)


def server_tls_context(config: Config) -> ssl.SSLContext:
    tls = config.tls
    paths = PKIPaths(ca_cert=Path(tls.ca_file), server_cert=Path(tls.cert_file),
                     server_key=Path(tls.key_file), client_cert=Path("/nonexistent"),
                     client_key=Path("/nonexistent"))
    try:
        context = server_context(paths)
        allow_list(config)  # bad patterns/roles are start-up errors, not per-client ones
    except CertError as exc:
        raise ConfigError(f"TLS listener: {exc}") from None
    return context


def allow_list(config: Config) -> AllowList:
    try:
        return AllowList([(e["pattern"], e["role"]) for e in config.tls.allowed_dn])
    except CertError as exc:
        raise ConfigError(f"tls.allowed_dn: {exc}") from None


def identify_tls_client(config: Config, transport: Any) -> tuple[str, bool]:
    """(identity, readonly) for a TLS client that completed its handshake."""
    try:
        dn = peer_dn(transport.peer_certificate())
    except CertError as exc:
        raise AuthFailed(f"access denied: no usable client certificate ({exc})") from None
    role = allow_list(config).role_for(dn)
    if role is None:
        raise AuthFailed(f"access denied: certificate DN '{dn}' is not in the daemon's "
                         "tls.allowed_dn list (ask the qemud admin to add a matching "
                         "pattern)")
    return dn, role is Role.READONLY
