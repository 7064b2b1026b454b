"""certs.describe / certs.validity: the `show` summary."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certs.describe import describe_cert
from certs.issue import make_client_cert, make_server_cert
from certs.validity import Validity, not_after, not_before, validity_status

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def test_server_summary(ca: CA) -> None:
    _, cert = make_server_cert(*ca, ["a.example"], ["127.0.0.1"])
    f = fields(describe_cert(cert))
    assert f["Subject"] == "CN=a.example"
    assert f["Issuer"] == "CN=Test CA"
    assert f["Subject alt names"] == "DNS:a.example, IP:127.0.0.1"
    assert f["Key usage"] == "digitalSignature, keyEncipherment (critical)"
    assert f["Extended key usage"] == "serverAuth"
    assert f["Basic constraints"] == "CA:FALSE (critical)"
    assert f["Public key"].startswith("EC secp256r1")
    assert f["Status"] == "valid"
    assert int(f["Serial"].replace(":", ""), 16) == cert.serial_number


def test_ca_and_client_summary(ca: CA) -> None:
    f = fields(describe_cert(ca[1]))
    assert f["Basic constraints"] == "CA:TRUE, pathlen:0 (critical)"
    assert f["Key usage"] == "keyCertSign, cRLSign (critical)"
    _, client = make_client_cert(*ca, "admin1", org="Example")
    f = fields(describe_cert(client))
    assert f["Subject"] == "O=Example,CN=admin1"
    assert f["Extended key usage"] == "clientAuth"
    assert f["Subject alt names"] == "(none)"


def test_validity_flags(ca: CA, days_ago: Callable[[int], datetime]) -> None:
    _, cert = make_client_cert(*ca, "x", not_before=days_ago(10), not_after=days_ago(5))
    f = fields(describe_cert(cert))
    assert f["Status"] == "EXPIRED" and f["Not after"].endswith("UTC  EXPIRED")
    assert "NOT YET VALID" not in f["Not before"]
    # the same certificate described at a time inside / before its window
    assert fields(describe_cert(cert, now=days_ago(7)))["Status"] == "valid"
    early = fields(describe_cert(cert, now=days_ago(11)))
    assert early["Status"] == "NOT YET VALID" and early["Not before"].endswith("NOT YET VALID")


def test_validity_boundaries(ca: CA) -> None:
    _, cert = make_client_cert(*ca, "x")
    start, end = not_before(cert), not_after(cert)
    assert start.tzinfo is not None and end.tzinfo is not None
    assert validity_status(cert, start) is Validity.VALID
    assert validity_status(cert, end) is Validity.VALID  # notAfter is inclusive
    assert validity_status(cert, end + timedelta(seconds=1)) is Validity.EXPIRED
    assert validity_status(cert, start - timedelta(seconds=1)) is Validity.NOT_YET_VALID
