"""Reading certificates and private keys from files, with errors that name the file.

Why a module for this: ``ssl`` and ``cryptography`` report a bad file as
``[SSL] PEM lib (_ssl.c:3900)`` or a bare ``ValueError``; an admin needs to know
*which* file is wrong and how (missing, unreadable, a key where a certificate was
expected, an encrypted key).  Everything here raises :class:`CertFileError`.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs.errors import CertFileError

__all__ = [
    "cert_to_pem",
    "key_to_pem",
    "load_cert",
    "load_certs",
    "load_key",
    "parse_certs",
    "parse_key",
    "read_file",
]


def read_file(path: Path, what: str) -> bytes:
    """Read ``path``; ``what`` ("CA certificate", ...) is used in the error message."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertFileError(f"{what} {path} does not exist", path) from None
    except OSError as e:
        raise CertFileError(f"cannot read {what} {path}: {e.strerror or e}", path) from None


def parse_certs(data: bytes, path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """Parse every certificate in PEM ``data`` (or one DER certificate); at least one."""
    if b"-----BEGIN" in data:
        if b"CERTIFICATE-----" not in data:
            kind = "a private key" if b"PRIVATE KEY-----" in data else "no certificate"
            raise CertFileError(f"{what} {path} contains {kind}, not a certificate", path)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise CertFileError(
                f"{what} {path} is not a valid PEM certificate: {e}", path
            ) from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertFileError(
            f"{what} {path} is neither a PEM nor a DER certificate", path
        ) from None


def load_certs(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """Read and parse all certificates in ``path`` (leaf first for a chain file)."""
    return parse_certs(read_file(path, what), path, what)


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    """Read the first certificate in ``path``."""
    return load_certs(path, what)[0]


def parse_key(data: bytes, path: Path, what: str = "private key") -> PrivateKeyTypes:
    """Parse an unencrypted PEM (or DER) private key."""
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" not in data:
                raise CertFileError(f"{what} {path} does not contain a private key", path)
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise CertFileError(
            f"{what} {path} is encrypted; qemud needs an unencrypted key file (mode 0600)",
            path,
        ) from None
    except UnsupportedAlgorithm as e:
        raise CertFileError(f"{what} {path} uses an unsupported key type: {e}", path) from None
    except ValueError as e:
        raise CertFileError(f"{what} {path} is not a valid private key: {e}", path) from None


def load_key(path: Path, what: str = "private key") -> PrivateKeyTypes:
    """Read and parse the private key in ``path``."""
    return parse_key(read_file(path, what), path, what)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: PrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM, the format OpenSSL, GnuTLS and libvirt all read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
