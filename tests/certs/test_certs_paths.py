"""certs.paths: the libvirt-style layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from certs.paths import PKIPaths


def test_system_layout() -> None:
    p = PKIPaths.system()
    assert p == PKIPaths(
        ca_cert=Path("/etc/pki/CA/cacert.pem"),
        server_cert=Path("/etc/pki/qemud/servercert.pem"),
        server_key=Path("/etc/pki/qemud/private/serverkey.pem"),
        client_cert=Path("/etc/pki/qemud/clientcert.pem"),
        client_key=Path("/etc/pki/qemud/private/clientkey.pem"),
    )


def test_system_prefix_relocates_everything(tmp_path: Path) -> None:
    p = PKIPaths.system(prefix=tmp_path)
    for path in (p.ca_cert, p.server_cert, p.server_key, p.client_cert, p.client_key):
        assert path.is_relative_to(tmp_path)
    assert p.server_key == tmp_path / "etc/pki/qemud/private/serverkey.pem"
    assert PKIPaths.system(prefix=str(tmp_path)) == p


def test_session_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / ".pki" / "qemud"
    expected = PKIPaths(d / "cacert.pem", d / "servercert.pem", d / "serverkey.pem",
                        d / "clientcert.pem", d / "clientkey.pem")
    assert PKIPaths.session(home=tmp_path) == expected
    monkeypatch.setenv("HOME", str(tmp_path))
    assert PKIPaths.session() == expected


def test_from_dir_is_pkipath() -> None:
    p = PKIPaths.from_dir("/srv/pki")
    assert (p.ca_cert, p.client_cert, p.client_key) == (
        Path("/srv/pki/cacert.pem"), Path("/srv/pki/clientcert.pem"),
        Path("/srv/pki/clientkey.pem"))
    assert p.cert("server") == p.server_cert == Path("/srv/pki/servercert.pem")
    assert p.key("server") == p.server_key and p.key("client") == p.client_key
    assert p.cert("client") == p.client_cert


def test_default_follows_libvirt_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert PKIPaths.default() == PKIPaths.system()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    session = PKIPaths.session(tmp_path)
    assert PKIPaths.default() == PKIPaths.system()  # nothing in ~/.pki/qemud yet
    session.ca_cert.parent.mkdir(parents=True)
    for p in (session.ca_cert, session.client_cert):
        p.write_text("")
    assert PKIPaths.default() == PKIPaths.system()  # still no client key
    session.client_key.write_text("")
    assert PKIPaths.default() == PKIPaths.default("client") == session
    assert PKIPaths.default("server") == PKIPaths.system()
    session.server_cert.write_text("")
    session.server_key.write_text("")
    assert PKIPaths.default("server") == session


def test_frozen() -> None:
    p = PKIPaths.system()
    with pytest.raises(AttributeError):
        p.ca_cert = Path("/x")  # type: ignore[misc]
