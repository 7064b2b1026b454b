"""certs.install: validated installation into a PKIPaths layout."""

from __future__ import annotations

import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import (
    CertFileExistsError,
    CertMismatchError,
    CertParamError,
    CertValidityError,
)
from certs.install import install_files
from certs.issue import make_ca, make_client_cert, write_cert, write_key
from certs.paths import Endpoint, PKIPaths
from certs.pem import cert_to_pem

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_system_server_install(pki: PKIPaths, tmp_path: Path) -> None:
    target = PKIPaths.system(prefix=tmp_path / "root")
    done = install_files(target, "server", ca=pki.ca_cert, cert=pki.server_cert,
                         key=pki.server_key)
    assert [(i.target, i.mode) for i in done] == [
        (target.ca_cert, 0o644), (target.server_cert, 0o644), (target.server_key, 0o600)]
    assert target.server_key.read_bytes() == pki.server_key.read_bytes()
    assert mode(target.server_key) == 0o600 and mode(target.server_key.parent) == 0o700
    assert mode(target.server_cert) == 0o644 and mode(target.ca_cert) == 0o644


def test_session_dir_holding_a_key_is_private(pki: PKIPaths, tmp_path: Path) -> None:
    target = PKIPaths.session(home=tmp_path)
    install_files(target, "client", ca=pki.ca_cert, cert=pki.client_cert, key=pki.client_key)
    assert mode(target.client_key.parent) == 0o700
    assert target.client_cert.read_bytes() == pki.client_cert.read_bytes()


def test_refuses_overwrite_and_writes_nothing(pki: PKIPaths, tmp_path: Path) -> None:
    target = PKIPaths.session(home=tmp_path)
    target.client_key.parent.mkdir(parents=True)
    target.client_key.write_text("precious")
    with pytest.raises(CertFileExistsError, match="clientkey.pem"):
        install_files(target, "client", ca=pki.ca_cert, cert=pki.client_cert,
                      key=pki.client_key)
    assert not target.ca_cert.exists() and target.client_key.read_text() == "precious"
    install_files(target, "client", ca=pki.ca_cert, cert=pki.client_cert,
                  key=pki.client_key, force=True)
    assert target.client_key.read_bytes() == pki.client_key.read_bytes()


def test_pair_checked_against_installed_ca(pki: PKIPaths, tmp_path: Path,
                                           other_ca: CA) -> None:
    target = PKIPaths.session(home=tmp_path)
    install_files(target, "client", ca=pki.ca_cert)
    key, cert = make_client_cert(*other_ca, "x")
    write_key(tmp_path / "k.pem", key)
    write_cert(tmp_path / "c.pem", cert)
    with pytest.raises(CertMismatchError, match=f"not signed by the CA in {target.ca_cert}"):
        install_files(target, "client", cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    assert not target.client_cert.exists()


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"cert": "client_cert"}, CertParamError, "installed together"),
    ({}, CertParamError, "nothing to install"),
    ({"ca": "server_cert"}, CertMismatchError, "not a CA"),
    ({"cert": "client_cert", "key": "server_key"}, CertMismatchError, "does not match"),
    ({"cert": "server_cert", "key": "server_key"}, CertMismatchError, "lacks clientAuth"),
    ({"cert": "ca_cert", "key": "ca_key"}, CertMismatchError, "is a CA certificate"),
])
def test_invalid_installs(pki: PKIPaths, tmp_path: Path, kwargs: dict[str, str],
                          exc: type[Exception], match: str) -> None:
    target = PKIPaths.session(home=tmp_path / "home")
    args = {k: pki.ca_cert.parent / "cakey.pem" if v == "ca_key" else getattr(pki, v)
            for k, v in kwargs.items()}
    with pytest.raises(exc, match=match):
        install_files(target, "client", **args)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_the_ca_pair_is_never_installed_as_an_identity(pki: PKIPaths, tmp_path: Path,
                                                        endpoint: Endpoint) -> None:
    """QA ops finding 3: the CA's signing key ended up as serverkey.pem."""
    target = PKIPaths.system(prefix=tmp_path / "root")
    with pytest.raises(CertMismatchError) as info:
        install_files(target, endpoint, ca=pki.ca_cert, cert=pki.ca_cert,
                      key=pki.ca_cert.parent / "cakey.pem", force=True)
    assert str(info.value).startswith(f"certificate {pki.ca_cert} is a CA certificate")
    assert not (tmp_path / "root").exists()


def test_expired_pair_is_refused_not_yet_valid_installed(
        pki: PKIPaths, ca: CA, tmp_path: Path, days_ago: Callable[[int], datetime]) -> None:
    target = PKIPaths.session(home=tmp_path / "home")
    for name, start, end in [("old", 30, 1), ("early", -1, -30)]:
        key, cert = make_client_cert(*ca, name, not_before=days_ago(start),
                                     not_after=days_ago(end))
        write_key(tmp_path / f"{name}-k.pem", key)
        write_cert(tmp_path / f"{name}-c.pem", cert)
    with pytest.raises(CertValidityError, match="old-c.pem has expired"):
        install_files(target, "client", ca=pki.ca_cert, cert=tmp_path / "old-c.pem",
                      key=tmp_path / "old-k.pem")
    assert not (tmp_path / "home").exists()
    install_files(target, "client", ca=pki.ca_cert, cert=tmp_path / "early-c.pem",
                  key=tmp_path / "early-k.pem")
    assert target.client_cert.read_bytes() == (tmp_path / "early-c.pem").read_bytes()


def test_a_ca_bundle_and_a_chain_file_install_as_the_daemon_takes_them(
        tmp_path: Path, other_ca: CA) -> None:
    """During a CA rollover cacert.pem holds the old and the new CA, the certificate
    signed by the new one (entry 2): install checks it against every entry (it only
    looked at the first, and refused what the daemon's start-up check accepts); an
    expired entry is refused whichever it is."""
    old, new = make_ca("Old CA"), other_ca
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert_to_pem(old[1]) + cert_to_pem(new[1]))
    key, cert = make_client_cert(*new, "admin1", "Example")
    write_key(tmp_path / "k.pem", key)
    write_cert(tmp_path / "c.pem", cert)
    target = PKIPaths.session(home=tmp_path / "home")
    install_files(target, "client", ca=bundle, cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    assert target.client_cert.read_bytes() == (tmp_path / "c.pem").read_bytes()
    now = datetime.now(UTC)
    stale = make_ca("Stale CA", not_before=now - timedelta(days=30),
                    not_after=now - timedelta(days=1))
    bundle.write_bytes(cert_to_pem(new[1]) + cert_to_pem(stale[1]))
    with pytest.raises(CertValidityError, match=rf"CA certificate {bundle} \(entry 2\) has "
                                                r"expired"):
        install_files(PKIPaths.session(home=tmp_path / "again"), "client", ca=bundle)
