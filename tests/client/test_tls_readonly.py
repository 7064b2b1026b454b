"""``qemush -r`` over TLS with a ``full`` certificate: the session is read-only, and the
daemon's log says so (docs/TLS.md, "Connect")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import client
from certs.issue import make_ca, make_client_cert
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.tls.conftest import PKI, LogWatch, TLSDaemon, start_tls_daemon


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca_key, ca_cert = make_ca("qemud test CA")
    p = PKI(tmp_path_factory.mktemp("pki-ro"), ca_key, ca_cert)
    p.server = p.server_files("server", ["localhost"], ["127.0.0.1"])
    p.client_dir("admin", *make_client_cert(ca_key, ca_cert, "admin1", "Example"))
    p.client_dir("viewer", *make_client_cert(ca_key, ca_cert, "viewer1", "Example"))
    return p


@pytest.fixture(scope="module")
def tls_daemon(tls_pki: PKI, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[TLSDaemon]:
    d = start_tls_daemon(tmp_path_factory.mktemp("qemud-tls-ro"), tls_pki.server)
    try:
        yield d
    finally:
        try:
            d.stop()
        except Exception:
            d.kill()


def test_dash_r_makes_a_full_certificate_read_only(tls_daemon: TLSDaemon, tls_pki: PKI,
                                                   qemush: Qemush) -> None:
    uri = tls_daemon.tls_uri(tls_pki.clients["admin"])
    log = LogWatch(tls_daemon)
    proc = qemush("-c", uri, "-r", "client-list")
    assert proc.returncode == 1 and READONLY_REFUSAL in proc.stderr, proc.stderr
    ok(qemush("-c", uri, "-r", "list", "--all"))  # read calls work
    # the log gives the certificate's role, then the read-only session the client asked for
    match = log.wait(r"qemud\.client\.(\d+): TLS client identified as O=Example,CN=admin1 "
                     r"\(full\) by its certificate; its HELLO may still ask for read-only")
    log.wait(rf"client {match.group(1)}: read-only session requested")
    # and a full connection lists it as read-only
    with client.connect(tls_daemon.tls_uri(tls_pki.clients["admin"]), readonly=True) as ro, \
            client.connect(uri) as admin:
        assert ro.readonly and not admin.readonly
        by_readonly = {c.readonly: c for c in admin.client_list()
                       if c.identity == "O=Example,CN=admin1"}
        assert by_readonly[True].transport == by_readonly[False].transport == "tls"


def test_readonly_certificate_is_logged_without_the_hello_note(tls_daemon: TLSDaemon,
                                                               tls_pki: PKI) -> None:
    log = LogWatch(tls_daemon)
    with client.connect(tls_daemon.tls_uri(tls_pki.clients["viewer"])) as conn:
        assert conn.readonly
    line = log.wait(r"TLS client identified as O=Example,CN=viewer1 \(read-only\)[^\n]*")
    assert line.group(0).endswith("(read-only) by its certificate")
