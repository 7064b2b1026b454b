"""Copying a CA certificate and a certificate/key pair into a :class:`PKIPaths` layout.

Why not ``cp``: the files are checked first (the CA really is a CA, the key belongs
to the certificate, the certificate is not a CA certificate -- whose key must never
leave the CA machine --, has not expired, was issued by the CA and is usable for its
role: what the daemon checks at start for its own files),
keys land mode 0600 in a 0700 directory, nothing half-written is ever visible, and
existing files are only replaced when asked.  Everything is validated before the
first file is written, so a failed install changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certs.checks import (
    check_ca_entries,
    check_endpoint_usage,
    check_key_matches,
    check_not_ca,
    check_trusted_by,
    check_valid_now,
)
from certs.errors import CertFileExistsError, CertParamError
from certs.fsutil import atomic_write, ensure_dir
from certs.paths import Endpoint, PKIPaths
from certs.pem import load_certs, parse_certs, parse_key, read_file
from certs.validity import Validity, validity_status

__all__ = ["InstalledFile", "install_files"]


@dataclass(frozen=True)
class InstalledFile:
    """One file written by :func:`install_files`."""

    source: Path
    target: Path
    mode: int


@dataclass(frozen=True)
class _Copy:
    source: Path
    target: Path
    data: bytes
    mode: int
    dir_mode: int


def install_files(paths: PKIPaths, endpoint: Endpoint, *, ca: Path | None = None,
                  cert: Path | None = None, key: Path | None = None,
                  force: bool = False) -> list[InstalledFile]:
    """Install ``ca`` to ``paths.ca_cert`` and ``cert``/``key`` as ``endpoint``'s pair.

    Any of them may be omitted, but ``cert`` and ``key`` go together.  The
    certificate is checked against ``ca`` or, if only the pair is installed, against
    the already installed CA when there is one.  An expired certificate is refused; one
    that is not yet valid is installed (it will be).  Raises
    :class:`~certs.errors.CertError`; writes nothing unless every check passes.
    """
    if (cert is None) != (key is None):
        given = "certificate" if cert is not None else "private key"
        raise CertParamError(
            f"a certificate and its private key must be installed together (only a {given} "
            "was given)"
        )
    if ca is None and cert is None:
        raise CertParamError("nothing to install: give a CA certificate and/or a cert/key pair")
    plan: list[_Copy] = []
    ca_certs: list[x509.Certificate] = []
    ca_name = ""
    if ca is not None:
        data = read_file(ca, "CA certificate")
        ca_certs = parse_certs(data, ca, "CA certificate")
        ca_name = str(ca)
        # every entry, as the daemon and clients load them (a bundle during a rollover);
        # one not valid yet is installed (it will be)
        check_ca_entries(ca_certs, ca, not_yet_valid_ok=True)
        plan.append(_Copy(ca, paths.ca_cert, data, 0o644, 0o755))
    if cert is not None and key is not None:
        cert_data = read_file(cert, f"{endpoint} certificate")
        chain = parse_certs(cert_data, cert, f"{endpoint} certificate")
        leaf = chain[0]
        key_data = read_file(key, f"{endpoint} private key")
        check_key_matches(parse_key(key_data, key, f"{endpoint} private key"), leaf,
                          f"private key {key}", f"certificate {cert}")
        check_not_ca(leaf, endpoint, f"certificate {cert}")
        check_endpoint_usage(leaf, endpoint, f"certificate {cert}")
        # expired can never work again; not yet valid will (the CLI warns about it)
        if validity_status(leaf) is Validity.EXPIRED:
            check_valid_now(leaf, f"certificate {cert}")
        if not ca_certs and paths.ca_cert.exists():
            ca_certs = load_certs(paths.ca_cert, "installed CA certificate")
            ca_name = str(paths.ca_cert)
        if ca_certs:  # any CA of the file, through the chain file's intermediates
            check_trusted_by(leaf, ca_certs, f"certificate {cert}", ca_name,
                             intermediates=chain[1:])
        plan.append(_Copy(cert, paths.cert(endpoint), cert_data, 0o644, 0o755))
        plan.append(_Copy(key, paths.key(endpoint), key_data, 0o600, 0o700))
    if not force:
        for item in plan:
            if os.path.lexists(item.target):
                raise CertFileExistsError(
                    f"refusing to overwrite existing file {item.target}", item.target
                )
    # Key directories first, so a directory shared by a certificate and a key (the
    # session layout) is created 0700 rather than 0755 by the certificate's write.
    for item in sorted(plan, key=lambda c: c.dir_mode):
        ensure_dir(item.target.parent, item.dir_mode)
    for item in plan:
        atomic_write(item.target, item.data, mode=item.mode, force=force, dir_mode=item.dir_mode)
    return [InstalledFile(i.source, i.target, i.mode) for i in plan]
