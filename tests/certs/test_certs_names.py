"""certs.names: hostname / IP / DN text validation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certs.errors import CertParamError
from certs.names import check_dn_text, normalize_hostname, parse_ip


@pytest.mark.parametrize("name,expected", [
    ("localhost", "localhost"),
    ("Host.Example.COM", "host.example.com"),
    ("host.example.", "host.example"),
    ("a-b.c0", "a-b.c0"),
    ("*.qemu.example", "*.qemu.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("x" * 63 + ".example", "x" * 63 + ".example"),
])
def test_good_hostnames(name: str, expected: str) -> None:
    assert normalize_hostname(name) == expected


@pytest.mark.parametrize("name,match", [
    ("", "empty"),
    ("10.0.0.1", "is an IP address"),
    ("::1", "is an IP address"),
    ("host_1.example", "label 'host_1'"),
    ("-a.example", "label '-a'"),
    ("a..b", "invalid hostname"),
    ("x" * 64 + ".example", "invalid hostname"),
    ("256.1.1.1", "numeric"),
    ("*.example", "wildcard"),
    ("a.*.example", "label"),
    ("foo*.example.com", "label"),
    ("has space.example", "label"),
])
def test_bad_hostnames(name: str, match: str) -> None:
    with pytest.raises(CertParamError, match=match):
        normalize_hostname(name)


def test_ips() -> None:
    assert parse_ip("192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")
    assert parse_ip("2001:DB8::1") == ipaddress.IPv6Address("2001:db8::1")
    for bad in ("1.2.3", "localhost", "", "fe80::1%eth0", "10.0.0.0/8"):
        with pytest.raises(CertParamError, match="invalid IP address"):
            parse_ip(bad)


def test_dn_text() -> None:
    assert check_dn_text("Example, Inc.", "org") == "Example, Inc."
    with pytest.raises(CertParamError, match="org"):
        check_dn_text("a\x00b", "org")
    with pytest.raises(CertParamError, match="longer than 64"):
        check_dn_text("x" * 65, "cn")


@given(st.text(max_size=80))
def test_hostname_validation_is_total_and_idempotent(text: str) -> None:
    """Any input either raises CertParamError or yields a name that is a fixed point."""
    try:
        host = normalize_hostname(text)
    except CertParamError:
        return
    assert host.isascii() and host == host.lower()
    assert normalize_hostname(host) == host
