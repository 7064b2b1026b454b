"""Distinguished-name strings, the form allow-lists are written against.

Admins write glob patterns against these strings (``tls_allowed_dn_list`` style),
so the format is a contract and must not change silently.  It is libvirt's x509 DN
style (GnuTLS ``gnutls_x509_crt_get_dn``), i.e. RFC 4514 syntax **in certificate
order**:

* RDNs appear in the order they are encoded in the certificate (most significant
  first, e.g. ``C``, ``O``, ``OU``, ``CN``) -- the *reverse* of RFC 4514 section 2.1.
  Example: ``C=GB,O=Example,CN=admin1``.  Certificates issued by
  :mod:`certs.issue` give ``O=<org>,CN=<cn>`` (or just ``CN=<cn>``).
* RDNs are joined by ``,`` and the attributes of a multi-valued RDN by ``+``,
  with no spaces anywhere.
* Attribute types: ``CN`` commonName, ``C`` countryName, ``L`` localityName, ``ST``
  stateOrProvinceName, ``O`` organizationName, ``OU`` organizationalUnitName,
  ``STREET`` streetAddress, ``DC`` domainComponent, ``UID`` userId, ``EMAIL``
  emailAddress (GnuTLS's name); any other type as its dotted OID (``2.5.4.5=...``).
  Types are upper-case and matching is case-sensitive.
* Values are the decoded text, escaped per RFC 4514 section 2.4: a backslash before
  ``\\ " + , ; < >``, before a leading ``#`` or space and before a trailing space;
  NUL as ``\\00``.  Other characters (including non-ASCII) appear literally.
  Binary values (e.g. x500UniqueIdentifier) are ``#`` followed by lower-case hex.

Peer certificates should be passed as DER (``getpeercert(binary_form=True)``): it
is always available and exact.  The ``getpeercert()`` dict is accepted too and gives
the same string for the attribute types listed above; for types OpenSSL knows but
this module does not, the dict only carries OpenSSL's long name, which is used
verbatim (the DER path would give the dotted OID).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from certs.errors import PeerCertError

__all__ = ["escape_value", "format_name", "peer_dn"]

_SHORT: dict[ObjectIdentifier, str] = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.EMAIL_ADDRESS: "EMAIL",
}

# OpenSSL long names, as found in ssl.SSLSocket.getpeercert() dicts.
_LONG: dict[str, ObjectIdentifier] = {
    "commonName": NameOID.COMMON_NAME,
    "countryName": NameOID.COUNTRY_NAME,
    "localityName": NameOID.LOCALITY_NAME,
    "stateOrProvinceName": NameOID.STATE_OR_PROVINCE_NAME,
    "organizationName": NameOID.ORGANIZATION_NAME,
    "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "streetAddress": NameOID.STREET_ADDRESS,
    "domainComponent": NameOID.DOMAIN_COMPONENT,
    "userId": NameOID.USER_ID,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "surname": NameOID.SURNAME,
    "givenName": NameOID.GIVEN_NAME,
    "title": NameOID.TITLE,
    "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
    "pseudonym": NameOID.PSEUDONYM,
    "businessCategory": NameOID.BUSINESS_CATEGORY,
    "postalAddress": NameOID.POSTAL_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
}

_SPECIAL = {"\\": "\\\\", '"': '\\"', "+": "\\+", ",": "\\,", ";": "\\;",
            "<": "\\<", ">": "\\>", "\0": "\\00"}


def escape_value(value: str | bytes) -> str:
    """Escape an attribute value per RFC 4514 section 2.4 (see module docstring)."""
    if isinstance(value, bytes):
        return "#" + value.hex()
    if not value:
        return ""
    out = [_SPECIAL.get(ch, ch) for ch in value]
    if value[0] in "# ":
        out[0] = "\\" + out[0]
    if value[-1] == " " and len(value) > 1:
        out[-1] = "\\ "
    return "".join(out)


def _type_name(oid: ObjectIdentifier) -> str:
    return _SHORT.get(oid) or oid.dotted_string


def format_name(name: x509.Name) -> str:
    """The DN string of ``name`` (certificate order, libvirt style)."""
    return ",".join(
        "+".join(f"{_type_name(a.oid)}={escape_value(a.value)}" for a in rdn)
        for rdn in name.rdns
    )


def _from_dict(cert: Mapping[str, Any]) -> str:
    subject = cert.get("subject")
    if not isinstance(subject, tuple | list):
        raise PeerCertError("peer certificate dict has no 'subject' tuple")
    rdns: list[str] = []
    for rdn in subject:
        parts: list[str] = []
        for pair in rdn if isinstance(rdn, tuple | list) else ():
            if not (isinstance(pair, tuple | list) and len(pair) == 2
                    and all(isinstance(p, str) for p in pair)):
                raise PeerCertError(f"malformed subject attribute in peer certificate: {pair!r}")
            long_name, value = pair
            oid = _LONG.get(long_name)
            parts.append(f"{_type_name(oid) if oid else long_name}={escape_value(value)}")
        if not parts:
            raise PeerCertError(f"malformed subject RDN in peer certificate: {rdn!r}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def peer_dn(cert: bytes | bytearray | memoryview | Mapping[str, Any] | None) -> str:
    """The subject DN string of a TLS peer certificate.

    ``cert`` is ``sslsock.getpeercert(binary_form=True)`` (DER; preferred) or
    ``sslsock.getpeercert()`` (dict).  ``None`` or an empty dict -- what ``ssl``
    returns when no certificate was presented or verified -- raise
    :class:`PeerCertError`, so a missing certificate can never match ``*``.
    """
    if cert is None or (isinstance(cert, Mapping) and not cert):
        raise PeerCertError("the peer presented no (verified) certificate")
    if isinstance(cert, Mapping):
        return _from_dict(cert)
    try:
        parsed = x509.load_der_x509_certificate(bytes(cert))
    except ValueError as e:
        raise PeerCertError(f"cannot parse the peer certificate: {e}") from None
    return format_name(parsed.subject)
