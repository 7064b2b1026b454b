"""Issuing a CA and server/client certificates (the library behind ``qemud-certs``).

Also the fixture factory for other packages' tests, which is why every function takes
explicit ``not_before``/``not_after``: tests need EXPIRED and NOT-YET-VALID
certificates without waiting or faking the clock.

Key type: every key generated here is **EC P-256** (ECDSA with SHA-256), not RSA 3072.
Why: both give ~128-bit security and are supported by every TLS 1.2+ stack qemud
meets (OpenSSL, GnuTLS/libvirt, Go, Java), but P-256 keys are generated in
microseconds instead of the 0.1-2 s RSA 3072 needs -- which matters because test
suites mint dozens of certificates at run time -- and handshakes and keys are smaller.
CAs loaded from elsewhere (e.g. an existing RSA libvirt CA) can still sign here.

Profile (all certificates): random 159-bit serial, SHA-256 signature, subjectKeyIdentifier
and authorityKeyIdentifier (keyid), X.509 v3.

* CA: basicConstraints CA:TRUE, pathlen:0 (critical; it only signs leaves),
  keyUsage keyCertSign+cRLSign (critical).
* server: CA:FALSE (critical), keyUsage digitalSignature+keyEncipherment (critical;
  keyEncipherment only matters for RSA key exchange and is kept for parity with
  libvirt's certtool templates -- TLS stacks ignore it for EC keys), EKU serverAuth,
  SAN with every hostname (DNS) and IP; subject CN = first hostname (or IP).
* client: CA:FALSE (critical), keyUsage digitalSignature (critical), EKU clientAuth,
  subject ``O=<org>`` (if given) then ``CN=<cn>``, so its DN string (see
  :mod:`certs.dn`) reads ``O=Example,CN=admin1``.

Validity: unless ``not_before`` is given, certificates start 5 minutes in the past so
a peer whose clock is slightly behind does not reject a freshly issued certificate;
they end ``days`` after *now* (or after an explicit ``not_before``) unless
``not_after`` is given.  Naive datetimes are taken as UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.checks import check_is_ca, check_key_matches
from certs.errors import CertParamError
from certs.fsutil import atomic_write
from certs.names import IPAddress, check_dn_text, normalize_hostname, parse_ip
from certs.pem import cert_to_pem, key_to_pem
from certs.validity import utc

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_LEAF_DAYS",
    "MAX_DAYS",
    "generate_key",
    "make_ca",
    "make_client_cert",
    "make_server_cert",
    "write_cert",
    "write_key",
]

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 365
#: Upper bound on ``days``: far beyond any sane lifetime, well inside datetime's range.
MAX_DAYS = 36525
CLOCK_SKEW = timedelta(minutes=5)

KeyAndCert = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key (see the module docstring for why P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int):
        raise CertParamError(f"days must be an integer, got {days!r}")
    if days <= 0:
        raise CertParamError(f"days must be a positive number of days, got {days}")
    if days > MAX_DAYS:
        raise CertParamError(f"days must be at most {MAX_DAYS} (100 years), got {days}")


def _window(days: int, not_before: datetime | None,
            not_after: datetime | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    start = utc(not_before) if not_before is not None else now - CLOCK_SKEW
    if not_after is not None:
        end = utc(not_after)
    else:
        _check_days(days)
        end = (start if not_before is not None else now) + timedelta(days=days)
    if end <= start:
        raise CertParamError(f"not_after ({end}) must be later than not_before ({start})")
    return start, end


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign the message itself; cryptography wants no hash for them.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _base_builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
                  start: datetime, end: datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(cn: str, days: int = DEFAULT_CA_DAYS, not_before: datetime | None = None,
            not_after: datetime | None = None) -> KeyAndCert:
    """Create a CA key and its self-signed certificate with subject ``CN=<cn>``."""
    check_dn_text(cn, "CA common name")
    start, end = _window(days, not_before, not_after)
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _base_builder(name, name, key, start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _authority_key_id(ca_key: CertificateIssuerPrivateKeyTypes,
                      ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _sign_leaf(ca_key: CertificateIssuerPrivateKeyTypes, ca_cert: x509.Certificate,
               subject: x509.Name, start: datetime, end: datetime,
               extensions: list[tuple[x509.ExtensionType, bool]]) -> KeyAndCert:
    check_key_matches(ca_key, ca_cert, "the CA private key", "the CA certificate")
    check_is_ca(ca_cert, "the issuing certificate")
    key = generate_key()
    builder = (
        _base_builder(subject, ca_cert.subject, key, start, end)
        .add_extension(_authority_key_id(ca_key, ca_cert), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return key, builder.sign(ca_key, _hash_for(ca_key))


def make_server_cert(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    hostnames: Iterable[str],
    ips: Iterable[str | IPAddress] = (),
    days: int = DEFAULT_LEAF_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> KeyAndCert:
    """Issue a TLS server certificate for ``hostnames`` and ``ips``, signed by the CA.

    Hostnames are validated and normalised (:func:`certs.names.normalize_hostname`);
    at least one hostname or IP is required.  Duplicates are dropped, order kept.
    """
    if isinstance(hostnames, str):
        hostnames = [hostnames]  # a lone string is one hostname, not its characters
    dns = list(dict.fromkeys(normalize_hostname(h) for h in hostnames))
    addrs = list(dict.fromkeys(parse_ip(a) if isinstance(a, str) else a for a in ips))
    if not dns and not addrs:
        raise CertParamError("a server certificate needs at least one hostname or IP address")
    start, end = _window(days, not_before, not_after)
    cn = dns[0] if dns else str(addrs[0])
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in dns]
    sans += [x509.IPAddress(a) for a in addrs]
    return _sign_leaf(
        ca_key, ca_cert, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), start, end,
        [
            (_key_usage(digital_signature=True, key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(sans), False),
        ],
    )


def make_client_cert(
    ca_key: CertificateIssuerPrivateKeyTypes,
    ca_cert: x509.Certificate,
    cn: str,
    org: str | None = None,
    days: int = DEFAULT_LEAF_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> KeyAndCert:
    """Issue a TLS client certificate with subject ``O=<org>,CN=<cn>`` (O optional)."""
    attrs = []
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, check_dn_text(org, "org")))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, check_dn_text(cn, "common name")))
    start, end = _window(days, not_before, not_after)
    return _sign_leaf(
        ca_key, ca_cert, x509.Name(attrs), start, end,
        [
            # keyEncipherment as well, as libvirt's certtool template has it: libvirt's
            # client refuses a certificate without it ("usage does not permit key
            # encipherment"), so one client certificate now serves both daemons
            (_key_usage(digital_signature=True, key_encipherment=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )


def write_key(path: str | Path, key: PrivateKeyTypes, *, force: bool = False) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600, atomically.

    Refuses (:class:`~certs.errors.CertFileExistsError`) to replace an existing file
    unless ``force``.  A missing parent directory is created mode 0700.
    """
    atomic_write(Path(path), key_to_pem(key), mode=0o600, force=force, dir_mode=0o700)


def write_cert(path: str | Path, cert: x509.Certificate, *, force: bool = False) -> None:
    """Write ``cert`` as PEM, mode 0644, atomically; same overwrite rule as write_key."""
    atomic_write(Path(path), cert_to_pem(cert), mode=0o644, force=force)
