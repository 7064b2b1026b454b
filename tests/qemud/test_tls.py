"""qemud.tls: certificate checks in a child process, the client's DN without cryptography.

The daemon must never import ``cryptography`` (see the module docstring): the checks run
in ``python -m qemud.tls`` and must report exactly what :func:`certs.tls.server_context`
reports in-process; the DN comes from the ``getpeercert()`` dict, DER only as a fallback.
"""

from __future__ import annotations

import re
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
from cryptography.x509.oid import NameOID

from certs.errors import CertError, PeerCertError
from certs.issue import make_ca, make_client_cert, make_server_cert, write_cert, write_key
from certs.paths import PKIPaths
from certs.tls import server_context
from qemud import tls
from qemud.config import Config, session_paths
from qemud.errors import AuthFailed, ConfigError

ROOT = Path(__file__).resolve().parents[2]
CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca("qemud.tls test CA")


@pytest.fixture
def server_files(tmp_path: Path, ca: CA) -> PKIPaths:
    key, cert = make_server_cert(*ca, ["localhost"], ["127.0.0.1"])
    paths = PKIPaths.from_dir(tmp_path)
    write_cert(paths.ca_cert, ca[1])
    write_key(paths.server_key, key)
    write_cert(paths.server_cert, cert)
    return paths


def config_for(paths: PKIPaths, allowed: list[dict[str, str]] | None = None) -> Config:
    config = Config(mode="session", paths=session_paths())
    config.tls.ca_file = str(paths.ca_cert)
    config.tls.cert_file = str(paths.server_cert)
    config.tls.key_file = str(paths.server_key)
    config.tls.allowed_dn = allowed if allowed is not None else [
        {"pattern": "O=Example,CN=admin*", "role": "full"},
        {"pattern": "*", "role": "readonly"}]
    return config


# -- start-up checks in a child ---------------------------------------------------------

def test_good_files_give_a_server_context(server_files: PKIPaths) -> None:
    context = tls.server_tls_context(config_for(server_files))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def _break(kind: str, paths: PKIPaths, ca: CA) -> None:
    if kind == "missing CA":
        paths.ca_cert.unlink()
    elif kind == "key of another certificate":
        write_key(paths.server_key, make_server_cert(*ca, ["other"])[0], force=True)
    elif kind == "leaf as CA":
        paths.ca_cert.write_bytes(paths.server_cert.read_bytes())
    elif kind == "client certificate as server's":
        key, cert = make_client_cert(*ca, "admin1", "Example")
        write_key(paths.server_key, key, force=True)
        write_cert(paths.server_cert, cert, force=True)
    elif kind == "key where the certificate belongs":
        paths.server_cert.write_bytes(paths.server_key.read_bytes())
    elif kind == "garbage key":
        paths.server_key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n")


@pytest.mark.parametrize("kind", ["missing CA", "key of another certificate", "leaf as CA",
                                  "client certificate as server's",
                                  "key where the certificate belongs", "garbage key"])
def test_child_reports_what_the_in_process_checks_report(
        kind: str, server_files: PKIPaths, ca: CA) -> None:
    _break(kind, server_files, ca)
    with pytest.raises(CertError) as in_process:
        server_context(server_files)
    with pytest.raises(ConfigError) as daemon:
        tls.server_tls_context(config_for(server_files))
    assert daemon.value.message == f"TLS listener: {in_process.value}"
    assert str(server_files.ca_cert.parent) in daemon.value.message  # names the file


def test_bad_allow_list_is_a_start_up_error(server_files: PKIPaths) -> None:
    with pytest.raises(ConfigError, match="tls.allowed_dn: allow-list entry 1"):
        tls.server_tls_context(config_for(server_files, [{"pattern": "", "role": "full"}]))


def test_a_child_that_cannot_run_is_reported(server_files: PKIPaths,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(server_files.ca_cert.parent / "no-python"))
    with pytest.raises(ConfigError, match="TLS listener: cannot run the certificate checks"):
        tls.server_tls_context(config_for(server_files))


def test_the_daemon_side_never_imports_cryptography(server_files: PKIPaths) -> None:
    """Context, checks (in the child) and a DN from a getpeercert() dict, in a fresh
    interpreter: no cryptography module afterwards."""
    code = f"""
import sys
from pathlib import Path
from certs.paths import PKIPaths
from qemud import tls
from qemud.config import Config, session_paths
p = PKIPaths.from_dir(Path({str(server_files.ca_cert.parent)!r}))
c = Config(mode="session", paths=session_paths())
c.tls.ca_file, c.tls.cert_file, c.tls.key_file = map(str, (p.ca_cert, p.server_cert,
                                                        p.server_key))
c.tls.allowed_dn = [{{"pattern": "*", "role": "full"}}]
tls.server_tls_context(c)
class Sock:
    def getpeercert(self):
        return {{"subject": ((("commonName", "x"),),),
                 "notBefore": "Jan  1 00:00:00 2020 GMT",
                 "notAfter": "Jan  1 00:00:00 2100 GMT"}}
class Transport:
    tls = Sock()
assert tls.identify_tls_client(c, Transport()) == ("CN=x", False)
print(sorted(m for m in sys.modules if m.startswith("cryptography")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- the client's DN --------------------------------------------------------------------

def _peercert_dict(cert: x509.Certificate, tmp_path: Path) -> dict[str, Any]:
    """What ``SSLSocket.getpeercert()`` returns for ``cert`` (CPython's test hook around
    the same C function)."""
    path = tmp_path / "peer.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return decoded


class FakeSock:
    def __init__(self, peercert: dict[str, Any]) -> None:
        self.peercert = peercert

    def getpeercert(self) -> dict[str, Any]:
        return self.peercert


class FakeTransport:
    """The two ways a TLSTransport gives its peer's certificate."""

    def __init__(self, cert: x509.Certificate | None, tmp_path: Path) -> None:
        self.tls = FakeSock(_peercert_dict(cert, tmp_path) if cert else {})
        self.der = cert.public_bytes(Encoding.DER) if cert else None
        self.der_reads = 0

    def peer_certificate(self) -> bytes | None:
        self.der_reads += 1
        return self.der


def test_dn_comes_from_the_dict(ca: CA, tmp_path: Path) -> None:
    transport = FakeTransport(make_client_cert(*ca, "admin,1", "Example")[1], tmp_path)
    config = config_for(PKIPaths.from_dir(tmp_path))
    assert tls.identify_tls_client(config, transport) == ("O=Example,CN=admin\\,1", False)
    assert transport.der_reads == 0


def test_binary_subject_values_fall_back_to_der(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x01\xff",
                                         _type=_ASN1Type.BitString)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    transport = FakeTransport(cert, tmp_path)
    config = config_for(PKIPaths.from_dir(tmp_path))
    assert tls.identify_tls_client(config, transport) == ("2.5.4.45=#01ff", True)
    assert transport.der_reads == 1


def test_no_certificate_is_refused(tmp_path: Path) -> None:
    transport = FakeTransport(None, tmp_path)
    with pytest.raises(PeerCertError, match="no \\(verified\\) certificate"):
        tls.client_dn(transport)
    with pytest.raises(AuthFailed, match="no usable client certificate"):
        tls.identify_tls_client(config_for(PKIPaths.from_dir(tmp_path)), transport)


def test_dn_not_in_the_list_is_refused(ca: CA, tmp_path: Path) -> None:
    transport = FakeTransport(make_client_cert(*ca, "mallory", "Other")[1], tmp_path)
    config = config_for(PKIPaths.from_dir(tmp_path),
                        [{"pattern": "O=Example,CN=*", "role": "full"}])
    with pytest.raises(AuthFailed, match="certificate DN 'O=Other,CN=mallory' is not in"):
        tls.identify_tls_client(config, transport)


@pytest.mark.parametrize(("days", "says"), [
    ((-30, -1), "the client certificate has expired (not after "),
    ((1, 30), "the client certificate is not valid yet (not before "),
])
def test_a_certificate_outside_its_validity_is_refused_whatever_the_handshake(
        ca: CA, tmp_path: Path, days: tuple[int, int], says: str) -> None:
    """The handshake checks the validity period, but a resumed session skips that: the
    daemon checks it on every connection too."""
    now = datetime.now(UTC)
    cert = make_client_cert(*ca, "admin1", "Example", not_before=now + timedelta(days[0]),
                            not_after=now + timedelta(days[1]))[1]
    config = config_for(PKIPaths.from_dir(tmp_path))
    with pytest.raises(AuthFailed, match=re.escape(says)):
        tls.identify_tls_client(config, FakeTransport(cert, tmp_path))
