"""Consistency checks between keys, certificates and their CA.

Why check before use: a TLS stack reports a mismatched key as ``KEY_VALUES_MISMATCH``
and a wrong CA as a handshake failure *on the other machine*.  Checking at issue,
install and context-building time lets us name the two files that disagree.
All failures raise :class:`CertMismatchError`.
"""

from __future__ import annotations

from typing import TypeGuard, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.errors import CertMismatchError
from certs.paths import Endpoint

__all__ = [
    "can_sign",
    "check_endpoint_usage",
    "check_is_ca",
    "check_issued_by",
    "check_key_matches",
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


def check_endpoint_usage(cert: x509.Certificate, endpoint: Endpoint, cert_name: str) -> None:
    """Raise if ``cert``'s extendedKeyUsage forbids use as ``endpoint``.

    A certificate without the extension is accepted (any purpose), as TLS stacks do.
    """
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

