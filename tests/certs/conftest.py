"""Shared fixtures for the certs tests: one CA per session, a fresh PKI dir per test.

Test modules are named ``test_certs_<module>.py`` rather than ``test_<module>.py``:
tests/ has no ``__init__.py`` files, so pytest imports test modules by basename and a
``test_cli.py`` here would collide with another package's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certs.issue import make_ca, make_client_cert, make_server_cert, write_cert, write_key
from certs.paths import CA_CERT_FILE, CA_KEY_FILE, PKIPaths

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


@pytest.fixture(scope="session")
def ca() -> CA:
    """The CA every 'good' certificate in these tests is issued by."""
    return make_ca("Test CA")


@pytest.fixture(scope="session")
def other_ca() -> CA:
    """An unrelated CA with the same name, for 'wrong CA' tests."""
    return make_ca("Test CA")


def write_pki(directory: Path, ca: CA, *, client_cn: str = "admin1",
              client_org: str | None = "Example") -> PKIPaths:
    """Write a complete pkipath-style directory (CA, server, client) and return it."""
    ca_key, ca_cert = ca
    paths = PKIPaths.from_dir(directory)
    write_cert(paths.ca_cert, ca_cert)
    write_key(directory / CA_KEY_FILE, ca_key)
    skey, scert = make_server_cert(ca_key, ca_cert, ["localhost"], ["127.0.0.1", "::1"])
    write_key(paths.server_key, skey)
    write_cert(paths.server_cert, scert)
    ckey, ccert = make_client_cert(ca_key, ca_cert, client_cn, org=client_org)
    write_key(paths.client_key, ckey)
    write_cert(paths.client_cert, ccert)
    assert (directory / CA_CERT_FILE) == paths.ca_cert
    return paths


@pytest.fixture
def make_pki() -> Callable[..., PKIPaths]:
    """The :func:`write_pki` helper, as a fixture so test modules need not import conftest."""
    return write_pki


@pytest.fixture
def pki(tmp_path: Path, ca: CA) -> PKIPaths:
    """A fresh pkipath directory issued by ``ca``: server for localhost/127.0.0.1/::1,
    client ``O=Example,CN=admin1``."""
    return write_pki(tmp_path / "pki", ca)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def days_ago(now: datetime) -> Callable[[int], datetime]:
    """``days_ago(n)`` -> aware datetime n days in the past (negative: future)."""
    return lambda n: now - timedelta(days=n)
