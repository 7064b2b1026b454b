"""Errors raised by the ``certs`` package.

Every failure caused by bad input or a bad environment (a missing file, a hostname
that is not a hostname, a key that does not belong to its certificate) is raised as a
:class:`CertError`, so callers -- the ``qemud-certs`` CLI, the daemon's TLS set-up and
the client's URI handling -- can catch one type and show ``str(err)`` to a human.
Messages therefore always name the offending file, value or allow-list entry.

Programming errors (wrong argument types from code, not from users) are not wrapped.

Hierarchy::

    CertError                    root: anything certs reports to a human
    ├── CertParamError           a supplied value is invalid (hostname, IP, CN, days...)
    │   └── AllowListError       an allow-list entry is malformed (unknown role, bad pattern)
    ├── CertFileError            a file cannot be read, parsed or written (``.path``)
    │   └── CertFileExistsError  refused to replace an existing file (no force)
    ├── CertMismatchError        files are each valid but do not fit together
    │                            (key vs. certificate, certificate vs. CA, wrong role)
    ├── CertValidityError        a certificate has expired or is not yet valid
    └── PeerCertError            a TLS peer certificate is missing or unparseable
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AllowListError",
    "CertError",
    "CertFileError",
    "CertFileExistsError",
    "CertMismatchError",
    "CertParamError",
    "CertValidityError",
    "PeerCertError",
]


class CertError(Exception):
    """Root of the hierarchy; ``str()`` is a complete, human-readable message."""


class CertParamError(CertError):
    """A value supplied by the caller (or a CLI option) is invalid."""


class AllowListError(CertParamError):
    """An allow-list entry is malformed; the message names the entry."""


class CertFileError(CertError):
    """A certificate/key file could not be read, parsed or written.

    ``path`` is kept separately so callers can, for instance, suggest fixing
    permissions on exactly that file.
    """

    def __init__(self, message: str, path: Path | str) -> None:
        super().__init__(message)
        self.path = Path(path)


class CertFileExistsError(CertFileError):
    """Writing would replace an existing file and the caller did not ask to force it.

    Separate from :class:`CertFileError` so the CLI can add a ``--force`` hint.
    """


class CertMismatchError(CertError):
    """Individually valid material that does not belong together.

    Examples: a private key that is not the certificate's key, a leaf certificate not
    issued by the given CA, a "CA" certificate without ``CA:TRUE``, or a client-only
    certificate installed as a server certificate.
    """


class CertValidityError(CertError):
    """A certificate is used outside its validity period: expired or not yet valid.

    Separate from :class:`CertMismatchError` because the fix differs: a new certificate
    (or a correct clock), not another file.
    """


class PeerCertError(CertError):
    """The TLS peer presented no certificate, or one that cannot be parsed."""
