"""certs.dn: the DN string contract (libvirt / GnuTLS certificate-order style)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
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
