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

Peer certificates are passed either as the ``getpeercert()`` dict or as DER
(``getpeercert(binary_form=True)``).  The dict needs nothing beyond the standard
library (the daemon uses it, so it never loads ``cryptography``); DER is parsed with
``cryptography``, imported only then.  Both give the same string: the dict carries
OpenSSL's long name for each type, mapped back to its OID through OpenSSL's own table
(a name OpenSSL does not know is used verbatim).  Where the dict cannot say the same
thing, it fails (:class:`PeerCertError`) rather than differ, and callers fall back to
DER: binary values (OpenSSL drops the BIT STRING's unused-bits octet) and values
OpenSSL cannot convert to text.  One difference remains: non-ASCII bytes in a
one-byte string type (T61String, PrintableString, IA5String, ...), which RFC 5280
forbids in new certificates, are Latin-1 for OpenSSL and UTF-8 for ``cryptography``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from certs.errors import PeerCertError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["escape_value", "format_name", "peer_dn"]

# Dotted OIDs with a short type name; every other type is written as its dotted OID.
_SHORT: dict[str, str] = {
    "2.5.4.3": "CN",  # commonName
    "2.5.4.6": "C",  # countryName
    "2.5.4.7": "L",  # localityName
    "2.5.4.8": "ST",  # stateOrProvinceName
    "2.5.4.10": "O",  # organizationName
    "2.5.4.11": "OU",  # organizationalUnitName
    "2.5.4.9": "STREET",  # streetAddress
    "0.9.2342.19200300.100.1.25": "DC",  # domainComponent
    "0.9.2342.19200300.100.1.1": "UID",  # userId
    "1.2.840.113549.1.9.1": "EMAIL",  # emailAddress
}

# OpenSSL long names, as found in ssl.SSLSocket.getpeercert() dicts, of the types in
# _SHORT; any other name is looked up in OpenSSL's table (:func:`_dotted`).
_LONG: dict[str, str] = {
    "commonName": "2.5.4.3",
    "countryName": "2.5.4.6",
    "localityName": "2.5.4.7",
    "stateOrProvinceName": "2.5.4.8",
    "organizationName": "2.5.4.10",
    "organizationalUnitName": "2.5.4.11",
    "streetAddress": "2.5.4.9",
    "domainComponent": "0.9.2342.19200300.100.1.25",
    "userId": "0.9.2342.19200300.100.1.1",
    "emailAddress": "1.2.840.113549.1.9.1",
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


def _type_name(dotted: str) -> str:
    return _SHORT.get(dotted) or dotted


def _dotted(name: str) -> str | None:
    """The dotted OID of an attribute type as ``getpeercert()`` names it (OpenSSL's long
    name, its short name when it has no long one, or the dotted OID itself); None for a
    name OpenSSL does not know."""
    known = _LONG.get(name)
    if known is not None:
        return known
    try:
        obj = ssl._ASN1Object.fromname(name)
    except ValueError:
        return None
    # fromname() also accepts a short name: only take the object that has this name
    return obj.oid if name in (obj.longname, obj.shortname, obj.oid) else None


def format_name(name: x509.Name) -> str:
    """The DN string of ``name`` (certificate order, libvirt style)."""
    return ",".join(
        "+".join(f"{_type_name(a.oid.dotted_string)}={escape_value(a.value)}" for a in rdn)
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
            dotted = _dotted(long_name)
            parts.append(f"{_type_name(dotted) if dotted else long_name}={escape_value(value)}")
        if not parts:
            raise PeerCertError(f"malformed subject RDN in peer certificate: {rdn!r}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def peer_dn(cert: bytes | bytearray | memoryview | Mapping[str, Any] | None) -> str:
    """The subject DN string of a TLS peer certificate.

    ``cert`` is ``sslsock.getpeercert()`` (dict; no ``cryptography`` needed) or
    ``sslsock.getpeercert(binary_form=True)`` (DER; handles every certificate).  ``None``
    or an empty dict -- what ``ssl`` returns when no certificate was presented or
    verified -- raise :class:`PeerCertError`, so a missing certificate can never match
    ``*``; so does a dict that cannot give the DER string exactly (module docstring).
    """
    if cert is None or (isinstance(cert, Mapping) and not cert):
        raise PeerCertError("the peer presented no (verified) certificate")
    if isinstance(cert, Mapping):
        return _from_dict(cert)
    from cryptography import x509  # only the DER path needs it

    try:
        parsed = x509.load_der_x509_certificate(bytes(cert))
    except ValueError as e:
        raise PeerCertError(f"cannot parse the peer certificate: {e}") from None
    return format_name(parsed.subject)
