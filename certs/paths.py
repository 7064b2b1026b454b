"""Where qemud's TLS certificates and keys live on disk.

The layout deliberately mirrors libvirt's (``/etc/pki/CA/cacert.pem``,
``/etc/pki/libvirt/...``, ``~/.pki/libvirt/...``) with ``qemud`` in place of ``libvirt``,
so admins who already run a libvirt PKI know where to look and can reuse the CA.

This module only computes paths (apart from :meth:`PKIPaths.default` checking which
files exist) and imports nothing beyond the standard library, so the daemon and the
client can import it cheaply.

``system``  (root daemon, and clients run as root)::

    /etc/pki/CA/cacert.pem
    /etc/pki/qemud/servercert.pem        /etc/pki/qemud/private/serverkey.pem
    /etc/pki/qemud/clientcert.pem        /etc/pki/qemud/private/clientkey.pem

``session`` (per user; also used by a per-user session daemon)::

    ~/.pki/qemud/cacert.pem
    ~/.pki/qemud/clientcert.pem          ~/.pki/qemud/clientkey.pem
    ~/.pki/qemud/servercert.pem          ~/.pki/qemud/serverkey.pem

``from_dir(D)`` (the ``?pkipath=D`` URI option): every file directly in ``D`` with the
session file names.  ``qemud-certs ca/server/client --dir D`` writes exactly these
names (plus ``cakey.pem``), so such a directory is usable as a ``pkipath`` as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLIENT_CERT_FILE",
    "CLIENT_KEY_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "Endpoint",
    "PKIPaths",
]

#: Which end of a TLS connection a certificate/key pair is for.
Endpoint = Literal["server", "client"]

CA_CERT_FILE = "cacert.pem"
#: The CA's private key; only ``qemud-certs`` needs it, never the daemon or client,
#: which is why :class:`PKIPaths` has no field for it.
CA_KEY_FILE = "cakey.pem"
SERVER_CERT_FILE = "servercert.pem"
SERVER_KEY_FILE = "serverkey.pem"
CLIENT_CERT_FILE = "clientcert.pem"
CLIENT_KEY_FILE = "clientkey.pem"

PathArg = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class PKIPaths:
    """The five files a qemud TLS endpoint needs.  Pure data; nothing is checked."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def system(cls, prefix: PathArg | None = None) -> PKIPaths:
        """System-wide layout; ``prefix`` acts as the filesystem root (for tests)."""
        root = Path(prefix) if prefix is not None else Path("/")
        pki = root / "etc" / "pki"
        own = pki / "qemud"
        return cls(
            ca_cert=pki / "CA" / CA_CERT_FILE,
            server_cert=own / SERVER_CERT_FILE,
            server_key=own / "private" / SERVER_KEY_FILE,
            client_cert=own / CLIENT_CERT_FILE,
            client_key=own / "private" / CLIENT_KEY_FILE,
        )

    @classmethod
    def session(cls, home: PathArg | None = None) -> PKIPaths:
        """Per-user layout under ``home`` (default: the current user's home directory)."""
        base = Path(home) if home is not None else Path.home()
        return cls.from_dir(base / ".pki" / "qemud")

    @classmethod
    def from_dir(cls, pkipath: PathArg) -> PKIPaths:
        """All files directly inside ``pkipath`` (the ``?pkipath=DIR`` URI option)."""
        d = Path(pkipath)
        return cls(
            ca_cert=d / CA_CERT_FILE,
            server_cert=d / SERVER_CERT_FILE,
            server_key=d / SERVER_KEY_FILE,
            client_cert=d / CLIENT_CERT_FILE,
            client_key=d / CLIENT_KEY_FILE,
        )

    @classmethod
    def default(cls, endpoint: Endpoint = "client") -> PKIPaths:
        """The layout to use when nothing is configured, by libvirt's rule.

        Root uses the system layout.  Anyone else uses the session layout if it holds
        the CA certificate and ``endpoint``'s certificate and key, and otherwise the
        system layout (so a user can use certificates an admin installed system-wide).
        This is the one function here that looks at the filesystem (existence only).
        """
        if os.geteuid() == 0:
            return cls.system()
        session = cls.session()
        wanted = (session.ca_cert, session.cert(endpoint), session.key(endpoint))
        return session if all(p.exists() for p in wanted) else cls.system()

    def cert(self, endpoint: Endpoint) -> Path:
        """The certificate path for ``endpoint``."""
        return self.server_cert if endpoint == "server" else self.client_cert

    def key(self, endpoint: Endpoint) -> Path:
        """The private key path for ``endpoint``."""
        return self.server_key if endpoint == "server" else self.client_key
