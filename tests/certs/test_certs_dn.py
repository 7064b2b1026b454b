"""certs.dn: the DN string contract (libvirt / GnuTLS certificate-order style)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given
from hypothesis import strategies as st

from certs.dn import escape_value, format_name, peer_dn
from certs.errors import PeerCertError
from certs.issue import make_client_cert

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def name(*pairs: tuple[ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def test_certificate_order_no_spaces() -> None:
    n = name((NameOID.COUNTRY_NAME, "GB"), (NameOID.ORGANIZATION_NAME, "Example"),
             (NameOID.COMMON_NAME, "admin1"))
    assert format_name(n) == "C=GB,O=Example,CN=admin1"
    # the RFC 4514 string cryptography produces is the reverse
    assert n.rfc4514_string() == "CN=admin1,O=Example,C=GB"


def test_attribute_type_names() -> None:
    n = name((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.STATE_OR_PROVINCE_NAME, "London"),
             (NameOID.LOCALITY_NAME, "London"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
             (NameOID.STREET_ADDRESS, "1 Road"), (NameOID.USER_ID, "u1"),
             (NameOID.EMAIL_ADDRESS, "a@b.example"), (NameOID.SERIAL_NUMBER, "42"))
    assert format_name(n) == ("DC=org,ST=London,L=London,OU=Ops,STREET=1 Road,UID=u1,"
                              "EMAIL=a@b.example,2.5.4.5=42")


def test_multi_valued_rdn() -> None:
    rdn = x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "A"),
        x509.NameAttribute(NameOID.COMMON_NAME, "b")])
    n = x509.Name([x509.RelativeDistinguishedName(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "X")]), rdn])
    assert format_name(n) in ("O=X,OU=A+CN=b", "O=X,CN=b+OU=A")


@pytest.mark.parametrize("value,escaped", [
    ("plain", "plain"),
    ("a,b", "a\\,b"),
    ('q"+;<>\\', 'q\\"\\+\\;\\<\\>\\\\'),
    ("#lead", "\\#lead"),
    (" both ", "\\ both\\ "),
    (" ", "\\ "),
    ("mid#dle = ok", "mid#dle = ok"),
    ("nul\0", "nul\\00"),
    ("ünï", "ünï"),
    ("", ""),
    (b"\x01\xff", "#01ff"),
])
def test_escaping(value: str | bytes, escaped: str) -> None:
    assert escape_value(value) == escaped


def test_peer_dn_rejects_missing_or_garbage() -> None:
    missing: dict[str, object] | None
    for missing in (None, {}):
        with pytest.raises(PeerCertError, match="no"):
            peer_dn(missing)
    with pytest.raises(PeerCertError, match="cannot parse"):
        peer_dn(b"\x30\x03junk")
    with pytest.raises(PeerCertError, match="subject"):
        peer_dn({"issuer": ()})
    with pytest.raises(PeerCertError, match="malformed"):
        peer_dn({"subject": ((("commonName",),),)})


def test_peer_dn_der_and_dict_agree(ca: CA) -> None:
    _, cert = make_client_cert(*ca, "adm,in", org="Ex+ample")
    as_dict = {"subject": ((("organizationName", "Ex+ample"),), (("commonName", "adm,in"),))}
    assert peer_dn(cert.public_bytes(Encoding.DER)) == "O=Ex\\+ample,CN=adm\\,in"
    assert peer_dn(as_dict) == "O=Ex\\+ample,CN=adm\\,in"
    multi = {"subject": ((("serialNumber", "7"), ("title", "x")),)}
    assert peer_dn(multi) == "2.5.4.5=7+2.5.4.12=x"
    assert peer_dn({"subject": ((("someNewName", "v"),),)}) == "someNewName=v"


_OIDS = [NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
         NameOID.COMMON_NAME, NameOID.LOCALITY_NAME, NameOID.DOMAIN_COMPONENT]
_value = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)


@st.composite
def names(draw: st.DrawFn) -> x509.Name:
    attrs = []
    for _ in range(draw(st.integers(1, 5))):
        oid = draw(st.sampled_from(_OIDS))
        value = draw(st.text("GBUSDE", min_size=2, max_size=2)) if oid == NameOID.COUNTRY_NAME \
            else draw(_value)
        attrs.append(x509.NameAttribute(oid, value))
    return x509.Name(attrs)


@given(names())
def test_dn_string_is_unambiguous(n: x509.Name) -> None:
    """Our string is a valid RFC 4514 string of the reversed name: escaping loses nothing."""
    parsed = x509.Name.from_rfc4514_string(format_name(n))
    assert [a.value for a in parsed] == [a.value for a in reversed(list(n))]
    assert [a.oid for a in parsed] == [a.oid for a in reversed(list(n))]


@given(_value)
def test_escaped_values_round_trip(value: str) -> None:
    parsed = x509.Name.from_rfc4514_string("CN=" + escape_value(value))
    assert parsed.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == value


# -- the getpeercert() dict (what the daemon uses) against DER -------------------------

def _self_signed(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))


def _peercert_dict(cert: x509.Certificate, tmp_path: Path) -> dict[str, Any]:
    """The dict ``SSLSocket.getpeercert()`` returns for ``cert``: ``_test_decode_cert`` is
    CPython's test hook around the very function getpeercert() calls."""
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return decoded


_A = x509.NameAttribute
_SUBJECTS = {
    "issued": None,  # make_client_cert's O=...,CN=... with RFC 4514 specials in both
    "specials": x509.Name([_A(NameOID.COMMON_NAME, 'a,b+c;d<e>f\\g"h=i')]),
    "spaces and hash": x509.Name([_A(NameOID.ORGANIZATION_NAME, "#org"),
                                  _A(NameOID.COMMON_NAME, " lead and trail ")]),
    "non-ASCII and NUL": x509.Name([_A(NameOID.COMMON_NAME, "ünï€😀"),
                                    _A(NameOID.ORGANIZATIONAL_UNIT_NAME, "x\0y")]),
    "BMPString": x509.Name([_A(NameOID.COMMON_NAME, "bmp ü€", _type=_ASN1Type.BMPString)]),
    "UniversalString": x509.Name([_A(NameOID.COMMON_NAME, "univ 😀",
                                     _type=_ASN1Type.UniversalString)]),
    "every short type": x509.Name([
        _A(NameOID.DOMAIN_COMPONENT, "org"), _A(NameOID.COUNTRY_NAME, "GB"),
        _A(NameOID.STATE_OR_PROVINCE_NAME, "S"), _A(NameOID.LOCALITY_NAME, "L"),
        _A(NameOID.STREET_ADDRESS, "1 Road"), _A(NameOID.ORGANIZATION_NAME, "O"),
        _A(NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"), _A(NameOID.USER_ID, "u1"),
        _A(NameOID.EMAIL_ADDRESS, "a@b.example"), _A(NameOID.COMMON_NAME, "cn")]),
    # dotted OIDs: types outside the short list, known to OpenSSL or not
    "other types": x509.Name([
        _A(NameOID.SERIAL_NUMBER, "42"), _A(NameOID.PSEUDONYM, "p"),
        _A(NameOID.JURISDICTION_COUNTRY_NAME, "GB"), _A(NameOID.INN, "1"),
        _A(NameOID.X500_UNIQUE_IDENTIFIER, "text"),
        _A(ObjectIdentifier("1.3.6.1.4.1.99999.1"), "private")]),
    "multi-valued RDN": x509.Name([
        x509.RelativeDistinguishedName([_A(NameOID.ORGANIZATION_NAME, "X")]),
        x509.RelativeDistinguishedName([_A(NameOID.ORGANIZATIONAL_UNIT_NAME, "A+B"),
                                        _A(NameOID.COMMON_NAME, "b,c")])]),
}


@pytest.mark.parametrize("case", list(_SUBJECTS))
def test_peercert_dict_gives_the_der_string(case: str, ca: CA, tmp_path: Path) -> None:
    subject = _SUBJECTS[case]
    cert = make_client_cert(*ca, "adm,in #1", org="Ex+ample;<co>")[1] if subject is None \
        else _self_signed(subject)
    from_der = peer_dn(cert.public_bytes(Encoding.DER))
    assert peer_dn(_peercert_dict(cert, tmp_path)) == from_der
    if subject is None:
        assert from_der == "O=Ex\\+ample\\;\\<co\\>,CN=adm\\,in #1"


def test_binary_value_is_refused_from_the_dict_so_callers_use_der(tmp_path: Path) -> None:
    """OpenSSL drops a BIT STRING's unused-bits octet: the dict cannot give the DER string,
    so it must fail instead of giving another one."""
    cert = _self_signed(x509.Name([_A(NameOID.X500_UNIQUE_IDENTIFIER, b"\x01\xff",
                                      _type=_ASN1Type.BitString)]))
    assert peer_dn(cert.public_bytes(Encoding.DER)) == "2.5.4.45=#01ff"
    with pytest.raises(PeerCertError, match="malformed subject attribute"):
        peer_dn(_peercert_dict(cert, tmp_path))


def test_dict_path_and_contexts_do_not_import_cryptography() -> None:
    code = ("import sys; from certs.dn import peer_dn; import certs.tls\n"
            "assert peer_dn({'subject': ((('commonName', 'x'),),)}) == 'CN=x'\n"
            "print(sorted(m for m in sys.modules if m.startswith('cryptography')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
