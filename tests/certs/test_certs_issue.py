"""certs.issue: certificate profiles, validity windows, parameter checks, key files."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertFileExistsError, CertMismatchError, CertParamError
from certs.issue import (
    CLOCK_SKEW,
    DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS,
    make_ca,
    make_client_cert,
    make_server_cert,
    write_cert,
    write_key,
)
from certs.pem import load_cert, load_key
from certs.validity import Validity, not_after, not_before, validity_status

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[
        x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_ca_profile(ca: CA) -> None:
    key, cert = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.version is x509.Version.v3


def test_server_profile(ca: CA) -> None:
    ca_key, ca_cert = ca
    key, cert = make_server_cert(ca_key, ca_cert, ["Host.Example.", "b.example"],
                                 ["192.0.2.1", ipaddress.ip_address("2001:db8::1")])
    cert.verify_directly_issued_by(ca_cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=host.example"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["host.example", "b.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")]
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    ca_ski = ext(ca_cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    ext(cert, x509.SubjectKeyIdentifier)


def test_ip_only_server_cert_uses_ip_as_cn(ca: CA) -> None:
    _, cert = make_server_cert(*ca, [], ["10.0.0.5"])
    assert cert.subject.rfc4514_string() == "CN=10.0.0.5"


def test_client_profile(ca: CA) -> None:
    ca_key, ca_cert = ca
    _, cert = make_client_cert(ca_key, ca_cert, "admin1", org="Example")
    cert.verify_directly_issued_by(ca_cert)
    assert [a.oid for a in cert.subject] == [NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]
    assert [a.value for a in cert.subject] == ["Example", "admin1"]
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    # what libvirt's client library demands of its certificate (libvirt 9.0 refuses one
    # without keyEncipherment), so the same client certificate works with libvirtd too
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca  # type: ignore[attr-defined]
    ku = ext(cert, x509.KeyUsage).value
    assert isinstance(ku, x509.KeyUsage) and ku.digital_signature and not ku.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)
    _, no_org = make_client_cert(ca_key, ca_cert, "monitor")
    assert [a.value for a in no_org.subject] == ["monitor"]


def test_serials_are_random_and_positive(ca: CA) -> None:
    serials = {make_client_cert(*ca, "x")[1].serial_number for _ in range(5)}
    assert len(serials) == 5 and all(0 < s < 2**159 for s in serials)


def test_default_lifetimes(ca: CA) -> None:
    _, ca_cert = ca
    start = datetime.now(UTC)
    assert not_after(ca_cert) - not_before(ca_cert) == timedelta(days=DEFAULT_CA_DAYS) + CLOCK_SKEW
    _, leaf = make_server_cert(*ca, ["a.example"])
    assert not_before(leaf) <= start - CLOCK_SKEW + timedelta(seconds=1)
    assert abs(not_after(leaf) - (start + timedelta(days=DEFAULT_LEAF_DAYS))) < timedelta(
        seconds=5)
    assert validity_status(leaf) is Validity.VALID


def test_days_and_explicit_window(ca: CA, days_ago: Callable[[int], datetime]) -> None:
    _, c = make_client_cert(*ca, "x", days=7, not_before=days_ago(2))
    assert not_before(c) == days_ago(2).replace(microsecond=0)
    assert not_after(c) - not_before(c) == timedelta(days=7)
    _, expired = make_client_cert(*ca, "x", not_before=days_ago(10), not_after=days_ago(1))
    assert validity_status(expired) is Validity.EXPIRED
    _, future = make_server_cert(*ca, ["a.example"], not_before=days_ago(-1),
                                 not_after=days_ago(-2))
    assert validity_status(future) is Validity.NOT_YET_VALID
    _, old_ca = make_ca("old", not_before=days_ago(100), not_after=days_ago(50))
    assert validity_status(old_ca) is Validity.EXPIRED


def test_naive_datetimes_are_utc(ca: CA) -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    _, c = make_client_cert(*ca, "x", not_before=naive, days=1)
    assert not_before(c) == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize("days", [0, -1, 10**6])
def test_bad_days_refused(ca: CA, days: int) -> None:
    with pytest.raises(CertParamError, match="days"):
        make_client_cert(*ca, "x", days=days)
    with pytest.raises(CertParamError, match="days"):
        make_ca("x", days=days)


def test_window_must_not_be_empty(ca: CA, now: datetime) -> None:
    with pytest.raises(CertParamError, match="not_after"):
        make_client_cert(*ca, "x", not_before=now, not_after=now)


@pytest.mark.parametrize("hostnames,ips,match", [
    ([], [], "at least one hostname or IP"),
    (["bad_name"], [], "bad_name"),
    (["127.0.0.1"], [], "is an IP address"),
    (["a.example"], ["not-an-ip"], "not-an-ip"),
])
def test_server_cert_parameters(ca: CA, hostnames: list[str], ips: list[str],
                                match: str) -> None:
    with pytest.raises(CertParamError, match=match):
        make_server_cert(*ca, hostnames, ips)


def test_single_string_hostname_is_one_name(ca: CA) -> None:
    _, cert = make_server_cert(*ca, "a.example")
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]


@pytest.mark.parametrize("cn", ["", "   ", "x" * 65, "a\nb"])
def test_bad_common_names(ca: CA, cn: str) -> None:
    with pytest.raises(CertParamError):
        make_client_cert(*ca, cn)
    with pytest.raises(CertParamError):
        make_client_cert(*ca, "ok", org=cn)


def test_issuing_needs_matching_ca_key_and_a_ca(ca: CA, other_ca: CA) -> None:
    with pytest.raises(CertMismatchError, match="does not match"):
        make_client_cert(other_ca[0], ca[1], "x")
    leaf_key, leaf = make_client_cert(*ca, "x")
    with pytest.raises(CertMismatchError, match="not a CA"):
        make_client_cert(leaf_key, leaf, "y")


def test_foreign_rsa_ca_can_issue() -> None:
    # e.g. an existing libvirt CA made with certtool; slow keygen, so 2048 bits here.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy")])
    now = datetime.now(UTC)
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(rsa_key.public_key()).serial_number(1)
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(rsa_key, hashes.SHA256()))
    _, leaf = make_client_cert(rsa_key, ca_cert, "x")
    leaf.verify_directly_issued_by(ca_cert)
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier


def test_write_key_and_cert(tmp_path: Path, ca: CA) -> None:
    key, cert = ca
    old = os.umask(0)
    try:
        write_key(tmp_path / "sub" / "key.pem", key)
        write_cert(tmp_path / "cert.pem", cert)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cert.pem").stat().st_mode) == 0o644
    loaded = load_key(tmp_path / "sub" / "key.pem")
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    assert load_cert(tmp_path / "cert.pem") == cert
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "sub" / "key.pem").read_bytes()


def test_write_refuses_overwrite_unless_forced(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    write_key(tmp_path / "k.pem", ca[0])
    write_cert(tmp_path / "c.pem", ca[1])
    before = (tmp_path / "k.pem").read_bytes()
    with pytest.raises(CertFileExistsError, match="k.pem"):
        write_key(tmp_path / "k.pem", other_ca[0])
    with pytest.raises(CertFileExistsError, match="c.pem"):
        write_cert(tmp_path / "c.pem", other_ca[1])
    assert (tmp_path / "k.pem").read_bytes() == before
    write_key(tmp_path / "k.pem", other_ca[0], force=True)
    write_cert(tmp_path / "c.pem", other_ca[1], force=True)
    assert load_cert(tmp_path / "c.pem") == other_ca[1]
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]  # no temp left
