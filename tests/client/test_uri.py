"""client.uri: every accepted URI form, and every bad part named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.errors import InvalidURI
from client.uri import DEFAULT_TLS_PORT, default_uri, parse_uri

# -- accepted forms ----------------------------------------------------------------------


def test_session_uses_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    p = parse_uri("qemud:///session")
    assert (p.transport, p.mode, p.host) == ("unix", "session", None)
    assert p.socket == Path("/run/user/1234/qemud/qemud-sock")
    assert p.uri == "qemud:///session"


def test_session_without_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    p = parse_uri("qemud:///session")
    assert p.socket == Path(f"/tmp/qemud-{os.getuid()}/qemud/qemud-sock")


def test_system() -> None:
    p = parse_uri("qemud:///system")
    assert (p.transport, p.mode) == ("unix", "system")
    assert p.socket == Path("/run/qemud/qemud-sock")


@pytest.mark.parametrize("uri", ["qemud+unix:///system", "qemud+unix:///system/",
                                 "qemud:////system"])
def test_unix_scheme_and_slashes(uri: str) -> None:
    p = parse_uri(uri)
    assert (p.transport, p.mode, p.socket) == ("unix", "system", Path("/run/qemud/qemud-sock"))


def test_explicit_socket() -> None:
    p = parse_uri("qemud+unix:///session?socket=/tmp/x/qemud-sock")
    assert p.socket == Path("/tmp/x/qemud-sock")
    assert p.mode == "session"


def test_readonly_socket_is_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    p = parse_uri("qemud:///system")
    assert not p.explicit_socket
    assert p.socket_path(readonly=False) == Path("/run/qemud/qemud-sock")
    assert p.socket_path(readonly=True) == Path("/run/qemud/qemud-sock-ro")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert parse_uri("qemud+unix:///session").socket_path(readonly=True) == \
        Path("/run/user/1234/qemud/qemud-sock-ro")


@pytest.mark.parametrize("path", ["/tmp/x/qemud-sock", "/tmp/x/qemud-sock-ro", "/tmp/x/custom"])
def test_explicit_socket_is_used_as_given_for_readonly_too(path: str) -> None:
    # as libvirt does: read-only is then asked for in the HELLO, not by switching sockets
    p = parse_uri(f"qemud+unix:///system?socket={path}")
    assert p.explicit_socket
    assert p.socket_path(readonly=False) == p.socket_path(readonly=True) == Path(path)


def test_repeated_parameter_last_wins() -> None:
    p = parse_uri("qemud+unix:///system?socket=/a&socket=/b")
    assert p.socket == Path("/b")


def test_tls_defaults() -> None:
    p = parse_uri("qemud+tls://host.example/system")
    assert (p.transport, p.mode, p.host, p.port) == ("tls", "system", "host.example",
                                                      DEFAULT_TLS_PORT)
    assert p.pkipath is None and p.no_verify is False and p.socket is None


def test_tls_port_pkipath_no_verify() -> None:
    p = parse_uri("qemud+tls://h.example:17000/session?pkipath=/etc/pki/q&no_verify=1")
    assert (p.host, p.port, p.mode) == ("h.example", 17000, "session")
    assert p.pkipath == Path("/etc/pki/q")
    assert p.no_verify is True
    assert parse_uri("qemud+tls://h/system?no_verify=0").no_verify is False


def test_tls_ipv6_host() -> None:
    p = parse_uri("qemud+tls://[::1]:16515/system")
    assert (p.host, p.port) == ("::1", 16515)
    assert parse_uri("qemud+tls://[::1]/system").port == DEFAULT_TLS_PORT
    assert parse_uri("qemud+tls://h:/system").port == DEFAULT_TLS_PORT  # empty port


def test_tls_empty_pkipath_means_default() -> None:
    assert parse_uri("qemud+tls://h/system?pkipath=").pkipath is None


# -- errors name the bad part ------------------------------------------------------------


@pytest.mark.parametrize("uri, words", [
    ("qemu:///system", ["unknown scheme", "'qemu'"]),
    ("qemud+ssh://h/system", ["unknown scheme", "'qemud+ssh'"]),
    ("/run/qemud/qemud-sock", ["unknown scheme", "''"]),
    ("qemud:///foo", ["path must be /session or /system", "'/foo'"]),
    ("qemud://", ["path must be /session or /system"]),
    ("qemud:///system?sock=/x", ["unknown parameter", "sock"]),
    ("qemud:///system?socket=/x&mode=rw", ["unknown parameter", "mode"]),
    ("qemud://host/system", ["local URI has no host", "'host'"]),
    ("qemud+unix:///system?socket=", ["socket= needs a path"]),
    ("qemud+tls:///system", ["qemud+tls needs a host"]),
    ("qemud+tls://h:notaport/system", ["bad port", "'h:notaport'"]),
    ("qemud+tls://h:99999/system", ["bad port"]),
    ("qemud+tls://h/system?no_verify=yes", ["no_verify must be 0 or 1"]),
    # malformed: InvalidURI, never urlsplit's ValueError or a later crash on connect
    ("qemud+tls://[::1/system", ["malformed host part", "Invalid IPv6 URL"]),
    ("qemud+tls://::1]/system", ["malformed host part"]),
    ("qemud+tls://[abc]/system", ["malformed host part", "'abc'"]),
    ("qemud://[/system", ["malformed host part"]),
    ("qemud+tls://[::1]x/system", ["malformed host[:port]", "'[::1]x'"]),
    ("qemud+tls://a..b/system", ["bad host name", "'a..b'", "label empty"]),
    ("qemud+tls://" + "a" * 64 + ".example/system", ["bad host name", "too long"]),
    ("qemud+tls://h:0/system", ["bad port", "'h:0'"]),
    ("qemud+tls://root@h/system", ["user name", "'root@h'"]),
    ("qemud+tls://h/system#x", ["unexpected fragment", "'#x'"]),
    ("qemud+unix:///system?socket=/tmp/a#b", ["unexpected fragment", "%23"]),
    ("qemud+unix:///system?socket=/tmp/a%00b", ["socket= contains a NUL byte"]),
    ("qemud+tls://h/system?pkipath=/a%00b", ["pkipath= contains a NUL byte"]),
])
def test_invalid_uri_names_the_part(uri: str, words: list[str]) -> None:
    with pytest.raises(InvalidURI) as info:
        parse_uri(uri)
    message = str(info.value)
    assert info.value.message == message
    assert repr(uri) in message  # the whole URI is quoted ...
    for word in words:  # ... and the bad part named
        assert word in message, (word, message)


# -- default_uri -------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("QEMUD_DEFAULT_URI", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_default_uri_env_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "qemud").mkdir()
    (clean_env / "qemud" / "client.toml").write_text('uri_default = "qemud:///system"\n')
    monkeypatch.setenv("QEMUD_DEFAULT_URI", "qemud+tls://h/system")
    assert default_uri() == "qemud+tls://h/system"


def test_default_uri_from_client_toml(clean_env: Path) -> None:
    (clean_env / "qemud").mkdir()
    (clean_env / "qemud" / "client.toml").write_text(
        'uri_default = "qemud+unix:///system?socket=/x"\n')
    assert default_uri() == "qemud+unix:///system?socket=/x"


def test_default_uri_bad_client_toml_names_the_file(clean_env: Path) -> None:
    conf = clean_env / "qemud" / "client.toml"
    conf.parent.mkdir()
    conf.write_text("uri_default = \n")
    with pytest.raises(InvalidURI, match=str(conf)):
        default_uri()
    conf.write_bytes(b"\xff\xfe")  # not UTF-8: it was a UnicodeDecodeError traceback
    with pytest.raises(InvalidURI, match=f"^{conf}: not UTF-8 text$"):
        default_uri()


def test_default_uri_fallback(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_uri() == "qemud:///session"
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_uri() == "qemud:///system"


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from(["qemud://", "qemud+tls://", "qemud+unix://", "qemud:", ""]),
       tail=st.text(max_size=40))
def test_any_text_is_a_uri_or_invalid_uri(prefix: str, tail: str) -> None:
    """Whatever a user types, parse_uri answers with a ParsedURI or InvalidURI."""
    try:
        p = parse_uri(prefix + tail)
    except InvalidURI as exc:
        assert exc.message.startswith("invalid URI ")
        return
    if p.host is not None and ":" not in p.host:
        p.host.encode("idna")  # what connecting would do with it: must not raise either
