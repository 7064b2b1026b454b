"""The client checks the daemon: its certificate must come from the client's CA and name
the host the client connects to; ``?no_verify=1`` skips that, loudly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import client
from tests.tls.conftest import PKI, LogWatch, TLSDaemon, start_tls_daemon


@pytest.fixture(scope="module")
def localhost_only(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSDaemon]:
    """A daemon on 127.0.0.1 whose certificate names only "localhost" (no IP SAN)."""
    d = start_tls_daemon(tmp_path_factory.mktemp("qemud-tls-named"),
                         pki.server_files("server-localhost-only", ["localhost"], []))
    yield d
    try:
        d.stop()
    except Exception:
        d.kill()


def test_name_in_certificate_works(localhost_only: TLSDaemon, pki: PKI) -> None:
    with client.connect(localhost_only.tls_uri(pki.clients["admin"], "localhost")) as conn:
        assert conn.node_info().cpus >= 1


def test_name_not_in_certificate_is_refused_by_the_client(localhost_only: TLSDaemon,
                                                          pki: PKI) -> None:
    log = LogWatch(localhost_only)
    uri = localhost_only.tls_uri(pki.clients["admin"], "127.0.0.1")
    with pytest.raises(client.ConnectFailed) as err:
        client.connect(uri)
    message = str(err.value)
    assert "server certificate of 127.0.0.1 rejected" in message
    assert "not valid for '127.0.0.1'" in message
    assert "qemud-certs server --hostname/--ip" in message  # what to do about it
    # the daemon's side of the story
    log.wait(r"TLS handshake with addr=127\.0\.0\.1:\d+ refused: the client aborted the "
             r"handshake \(\w+\); it most likely rejected the daemon's certificate")


def test_server_from_another_ca_is_refused_by_the_client(tls_daemon: TLSDaemon,
                                                         pki: PKI) -> None:
    pkipath = pki.clients["wrong-cacert"]
    with pytest.raises(client.ConnectFailed) as err:
        client.connect(tls_daemon.tls_uri(pkipath))
    message = str(err.value)
    assert "server certificate of localhost rejected" in message
    assert f"not signed by the CA in {pkipath / 'cacert.pem'}" in message


def test_no_verify_connects_with_a_warning(localhost_only: TLSDaemon, pki: PKI,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    uri = localhost_only.tls_uri(pki.clients["admin"], "127.0.0.1", "&no_verify=1")
    with client.connect(uri) as conn:
        assert conn.node_info().cpus >= 1
        mine = [c for c in conn.client_list() if c.identity == "O=Example,CN=admin1"]
        assert mine and mine[0].transport == "tls"  # the daemon still checks the client
    stderr = capsys.readouterr().err
    assert "warning:" in stderr and "server certificate NOT verified (no_verify=1)" in stderr
    # no_verify only relaxes the client's check: the daemon still wants a good certificate
    with pytest.raises(client.ConnectFailed, match="has expired"):
        client.connect(localhost_only.tls_uri(pki.clients["expired"], "127.0.0.1",
                                              "&no_verify=1"))
