"""Human-readable summary of a certificate (``qemud-certs show``).

Why not ``openssl x509 -text``: admins need the *exact* DN string qemud matches
allow-list patterns against (:mod:`certs.dn`), which OpenSSL prints in a different
order and syntax, and a plain EXPIRED / NOT YET VALID verdict.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.dn import format_name
from certs.validity import Validity, not_after, not_before, validity_status

__all__ = ["describe_cert"]

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[
        x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def _critical(ext: x509.Extension[x509.ExtensionType]) -> str:
    return " (critical)" if ext.critical else ""


def _key_usage(cert: x509.Certificate) -> str:
    ext = _ext(cert, x509.KeyUsage)
    if ext is None:
        return "(none)"
    ku = ext.value
    assert isinstance(ku, x509.KeyUsage)
    flags = [
        ("digitalSignature", ku.digital_signature),
        ("nonRepudiation", ku.content_commitment),
        ("keyEncipherment", ku.key_encipherment),
        ("dataEncipherment", ku.data_encipherment),
        ("keyAgreement", ku.key_agreement),
        ("keyCertSign", ku.key_cert_sign),
        ("cRLSign", ku.crl_sign),
    ]
    if ku.key_agreement:  # the last two are only defined together with keyAgreement
        flags += [("encipherOnly", ku.encipher_only), ("decipherOnly", ku.decipher_only)]
    return ", ".join(name for name, on in flags if on) + _critical(ext)


def _eku(cert: x509.Certificate) -> str:
    ext = _ext(cert, x509.ExtendedKeyUsage)
    if ext is None:
        return "(none)"
    assert isinstance(ext.value, x509.ExtendedKeyUsage)
    names = [_EKU_NAMES.get(oid, oid.dotted_string) for oid in ext.value]
    return ", ".join(names) + _critical(ext)


def _sans(cert: x509.Certificate) -> str:
    ext = _ext(cert, x509.SubjectAlternativeName)
    if ext is None:
        return "(none)"
    assert isinstance(ext.value, x509.SubjectAlternativeName)
    out: list[str] = []
    for gn in ext.value:
        if isinstance(gn, x509.DNSName):
            out.append(f"DNS:{gn.value}")
        elif isinstance(gn, x509.IPAddress):
            out.append(f"IP:{gn.value}")
        elif isinstance(gn, x509.RFC822Name):
            out.append(f"email:{gn.value}")
        elif isinstance(gn, x509.UniformResourceIdentifier):
            out.append(f"URI:{gn.value}")
        else:
            out.append(type(gn).__name__)
    return ", ".join(out)


def _basic_constraints(cert: x509.Certificate) -> str:
    ext = _ext(cert, x509.BasicConstraints)
    if ext is None:
        return "(none)"
    bc = ext.value
    assert isinstance(bc, x509.BasicConstraints)
    text = "CA:TRUE" if bc.ca else "CA:FALSE"
    if bc.ca and bc.path_length is not None:
        text += f", pathlen:{bc.path_length}"
    return text + _critical(ext)


def _public_key(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} ({key.key_size} bit)"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bit"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size} bit"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_cert(cert: x509.Certificate, now: datetime | None = None) -> str:
    """Multi-line ``Label: value`` summary; ``now`` decides EXPIRED / NOT YET VALID."""
    status = validity_status(cert, now)
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8 or 1, "big")
    rows = [
        ("Subject", format_name(cert.subject) or "(empty)"),
        ("Issuer", format_name(cert.issuer) or "(empty)"),
        ("Serial", _colon_hex(serial)),
        ("Public key", _public_key(cert)),
        ("Basic constraints", _basic_constraints(cert)),
        ("Subject alt names", _sans(cert)),
        ("Key usage", _key_usage(cert)),
        ("Extended key usage", _eku(cert)),
        ("Not before", _when(not_before(cert))
         + ("  NOT YET VALID" if status is Validity.NOT_YET_VALID else "")),
        ("Not after", _when(not_after(cert))
         + ("  EXPIRED" if status is Validity.EXPIRED else "")),
        ("Status", status.value),
        ("SHA-256 fingerprint", _colon_hex(cert.fingerprint(hashes.SHA256()))),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)
