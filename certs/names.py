"""Validation of the names that go into certificates.

Why validate at all: a certificate with a typo'd SAN is only discovered when a client
fails to connect, possibly months later and on another machine.  Refusing
``--hostname 10.0.0.1`` (a DNS SAN never matches an IP connection), ``host_1`` or
``256.1.1.1`` when the certificate is issued is far cheaper.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from certs.errors import CertParamError

__all__ = ["IPAddress", "check_dn_text", "normalize_hostname", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.ASCII)
_MAX_HOSTNAME = 253
#: X.520 upper bound for CN/O/OU values (ub-common-name, ub-organization-name).
MAX_DN_TEXT = 64


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def normalize_hostname(name: str) -> str:
    """Return ``name`` as the lower-case A-label form used in a DNS SAN.

    Accepts RFC 1123 host names, internationalised names (converted to ``xn--``
    form) and a single ``*`` as the whole left-most label of a name with at least
    two more labels.  One trailing dot is dropped.  Raises :class:`CertParamError`.
    """
    if not name or not name.strip():
        raise CertParamError("hostname must not be empty")
    if _is_ip(name):
        raise CertParamError(
            f"hostname {name!r} is an IP address; give it as an IP address (--ip), "
            "a DNS name never matches a connection made to an IP"
        )
    host = name[:-1] if name.endswith(".") else name
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise CertParamError(f"invalid hostname {name!r}: {e}") from None
    if len(host) > _MAX_HOSTNAME:
        raise CertParamError(f"invalid hostname {name!r}: longer than {_MAX_HOSTNAME} chars")
    labels = host.split(".")
    if labels[0] == "*":
        if len(labels) < 3:
            raise CertParamError(
                f"invalid hostname {name!r}: a wildcard needs at least two labels after '*.'"
            )
        labels = labels[1:]
    for label in labels:
        if not _LABEL.match(label):
            raise CertParamError(
                f"invalid hostname {name!r}: label {label!r} must be 1-63 letters, digits "
                "or '-', not starting or ending with '-'"
            )
    if labels[-1].isdigit():
        raise CertParamError(
            f"invalid hostname {name!r}: the last label is numeric (a mistyped IP address?)"
        )
    return host


def parse_ip(text: str) -> IPAddress:
    """Parse an IPv4/IPv6 address for an IP SAN; raises :class:`CertParamError`."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise CertParamError(f"invalid IP address {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise CertParamError(f"invalid IP address {text!r}: an IP SAN cannot carry a zone")
    return addr


def check_dn_text(value: str, what: str) -> str:
    """Check a subject attribute value (CN, O) and return it unchanged.

    Control characters are refused because the DN ends up in logs and allow-list
    matching, where an embedded newline or NUL would be misleading.
    """
    if not value or not value.strip():
        raise CertParamError(f"{what} must not be empty")
    if len(value) > MAX_DN_TEXT:
        raise CertParamError(f"{what} {value!r} is longer than {MAX_DN_TEXT} characters")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise CertParamError(f"{what} {value!r} contains a control character")
    return value
