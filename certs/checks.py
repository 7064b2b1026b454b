"""Consistency checks between keys, certificates and their CA.

Why check before use: a TLS stack reports a mismatched key as ``KEY_VALUES_MISMATCH``
and a wrong CA as a handshake failure *on the other machine*.  Checking at issue,
install and context-building time lets us name the two files that disagree.
Failures raise :class:`CertMismatchError`, or :class:`CertValidityError` for a
certificate used outside its validity period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeGuard, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.errors import CertMismatchError, CertValidityError
from certs.paths import Endpoint
from certs.validity import Validity, not_after, not_before, validity_status

__all__ = [
    "can_sign",
    "check_ca_entries",
    "check_endpoint_usage",
    "check_is_ca",
    "check_issued_by",
    "check_key_matches",
    "check_not_ca",
    "check_trusted_by",
    "check_valid_now",
    "is_ca",
]


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key_matches(key: PrivateKeyTypes, cert: x509.Certificate, key_desc: str,
                      cert_desc: str) -> None:
    """Raise unless ``key`` is the private half of ``cert``'s public key.

    ``key_desc``/``cert_desc`` are phrases such as "private key /x/key.pem".
    """
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertMismatchError(f"{key_desc} does not match {cert_desc}")


def can_sign(key: PrivateKeyTypes) -> TypeGuard[CertificateIssuerPrivateKeyTypes]:
    """True if ``key`` can sign certificates (not X25519/X448/DH)."""
    return isinstance(key, get_args(CertificateIssuerPrivateKeyTypes))


def is_ca(cert: x509.Certificate) -> bool:
    """True if ``cert`` carries basicConstraints CA:TRUE."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def check_is_ca(cert: x509.Certificate, cert_name: str) -> None:
    """Raise unless ``cert`` may sign certificates (CA:TRUE)."""
    if not is_ca(cert):
        raise CertMismatchError(
            f"{cert_name} is not a CA certificate (no basicConstraints CA:TRUE)"
        )


def check_ca_entries(cas: Sequence[x509.Certificate], ca_file: Path, *,
                     not_yet_valid_ok: bool = False) -> None:
    """Every certificate of the CA file ``ca_file`` (its entries ``cas``, in order) is
    a CA certificate within its validity period (``not_yet_valid_ok``: or before it);
    an error names the file and, past the first, the entry."""
    for i, cert in enumerate(cas):
        name = f"CA certificate {ca_file}" + (f" (entry {i + 1})" if i else "")
        check_is_ca(cert, name)
        if not not_yet_valid_ok or validity_status(cert) is Validity.EXPIRED:
            check_valid_now(cert, name)


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, cert_name: str,
                    ca_name: str) -> None:
    """Raise unless ``cert`` was signed directly by ``ca`` (name and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as e:
        raise CertMismatchError(f"{cert_name} was not issued by CA {ca_name}: {e}") from None
    except Exception as e:  # InvalidSignature has no message of its own
        raise CertMismatchError(
            f"{cert_name} was not issued by CA {ca_name}: signature does not verify"
        ) from e


def check_not_ca(cert: x509.Certificate, endpoint: Endpoint, cert_name: str) -> None:
    """Raise if ``cert`` (to be used as ``endpoint``'s certificate) is a CA certificate.

    A CA certificate as a server or client certificate means its key -- the key that
    signs every certificate the daemons trust -- sits next to it on that machine.
    libvirt refuses the same ("basic constraints show a CA").
    """
    if is_ca(cert):
        raise CertMismatchError(
            f"{cert_name} is a CA certificate (basicConstraints CA:TRUE), not a {endpoint} "
            f"certificate; the CA's key must never be used as a {endpoint} key: issue one "
            f"with 'qemud-certs {endpoint}'"
        )


def check_valid_now(cert: x509.Certificate, cert_name: str,
                    now: datetime | None = None) -> None:
    """Raise :class:`CertValidityError` unless ``now`` (default: the current time) is
    within ``cert``'s validity period; the message gives the date that was missed."""
    status = validity_status(cert, now)
    if status is Validity.EXPIRED:
        raise CertValidityError(
            f"{cert_name} has expired (not after {not_after(cert):%Y-%m-%d %H:%M:%S} UTC)"
        )
    if status is Validity.NOT_YET_VALID:
        raise CertValidityError(
            f"{cert_name} is not yet valid (not before "
            f"{not_before(cert):%Y-%m-%d %H:%M:%S} UTC; check the clocks of this machine "
            "and of the CA's)"
        )


def check_trusted_by(cert: x509.Certificate, cas: Sequence[x509.Certificate],
                     cert_name: str, ca_name: str,
                     intermediates: Sequence[x509.Certificate] = ()) -> None:
    """Raise unless ``cert`` chains up to one of ``cas`` by signatures, directly or
    through ``intermediates`` (the rest of a chain file).

    Names and signatures only: what a peer checking the certificate against ``cas``
    checks first.  Raises :class:`CertMismatchError` naming both files.
    """
    current = cert
    reason = f"its issuer {cert.issuer.rfc4514_string()} is not in that file"
    pool = list(intermediates)
    path: list[x509.Certificate] = []  # the intermediates used, from the leaf's side
    for _ in range(len(pool) + 1):
        for ca in cas:
            if ca.subject != current.issuer:
                continue
            try:
                current.verify_directly_issued_by(ca)
                _check_path(path, ca, cert_name)
                return
            except (ValueError, TypeError) as e:
                reason = str(e)
            except InvalidSignature:  # it has no message of its own
                reason = ("its signature does not verify with the key of "
                          f"{ca.subject.rfc4514_string()}")
        parent = next((c for c in pool if c.subject == current.issuer and c is not current),
                      None)
        if parent is None:
            break
        try:
            current.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError):  # a broken chain: not trusted
            break
        pool.remove(parent)
        path.append(parent)
        current = parent
        reason = (f"its chain ends at issuer {current.issuer.rfc4514_string()}, which is "
                  "not in that file")
    raise CertMismatchError(
        f"{cert_name} is not signed by the CA in {ca_name} ({reason}); every peer that "
        "trusts that CA would refuse it"
    )


def _check_path(path: Sequence[x509.Certificate], anchor: x509.Certificate,
                cert_name: str) -> None:
    """What a peer checks of the CAs between ``cert_name`` and the trusted ``anchor``
    beyond signatures (RFC 5280): each intermediate is a CA certificate valid now, each
    CA may sign certificates (keyUsage keyCertSign, when it has keyUsage), and no CA's
    pathLenConstraint is below the number of intermediates under it."""
    for below, ca in enumerate([*path, anchor]):
        name = f"CA certificate {ca.subject.rfc4514_string()} in the chain of {cert_name}"
        if ca is not anchor:
            check_is_ca(ca, name)
            check_valid_now(ca, name)
        try:
            usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise CertMismatchError(f"{name} may not sign certificates (its keyUsage lacks "
                                    "keyCertSign); every peer would refuse the chain")
        try:
            limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if limit.path_length is not None and limit.path_length < below:
            raise CertMismatchError(
                f"{name} allows {limit.path_length} intermediate CA(s) below it "
                f"(pathlen), the chain has {below}: every peer would refuse it (path "
                "length constraint exceeded)")


def check_endpoint_usage(cert: x509.Certificate, endpoint: Endpoint, cert_name: str) -> None:
    """Raise if ``cert``'s extendedKeyUsage forbids use as ``endpoint``.

    A certificate without the extension is accepted (any purpose), as TLS stacks do.
    """
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        # TLS 1.3 signs every handshake with it, and so do TLS 1.2's ECDHE suites: a
        # peer on either refuses it, or the handshake finds no cipher in common
        raise CertMismatchError(
            f"{cert_name} cannot be used as a {endpoint} certificate (its keyUsage lacks "
            "digitalSignature, which TLS needs to sign the handshake)")
    wanted = (
        ExtendedKeyUsageOID.SERVER_AUTH if endpoint == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if wanted not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        name = "serverAuth" if endpoint == "server" else "clientAuth"
        raise CertMismatchError(
            f"{cert_name} cannot be used as a {endpoint} certificate "
            f"(its extendedKeyUsage lacks {name})"
        )

