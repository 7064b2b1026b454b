"""Allowed TLS clients: the allow-list's roles, over a real mutual-TLS connection."""

from __future__ import annotations

import pytest

import client
from tests.tls.conftest import PKI, LogWatch, TLSDaemon


def test_full_role_client_works_and_is_listed_by_dn(tls_daemon: TLSDaemon, pki: PKI) -> None:
    log = LogWatch(tls_daemon)
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as conn:
        assert not conn.readonly
        assert conn.node_info().cpus >= 1
        assert isinstance(conn.list_domains(), list)
        mine = [c for c in conn.client_list() if c.identity == "O=Example,CN=admin1"]
        assert len(mine) == 1, conn.client_list()
        assert mine[0].transport == "tls"
        assert not mine[0].readonly
    log.wait(r"connected via tls \(addr=127\.0\.0\.1:\d+\)")
    log.wait(r"TLS client identified as O=Example,CN=admin1 \(full\)")


def test_readonly_role_reads_but_cannot_change(tls_daemon: TLSDaemon, pki: PKI) -> None:
    log = LogWatch(tls_daemon)
    # the client asks for a read-write connection; its certificate's role decides
    with client.connect(tls_daemon.tls_uri(pki.clients["viewer"])) as conn:
        assert conn.readonly, "the daemon's HELLO reply must report the read-only role"
        assert conn.node_info().cpus >= 1
        assert isinstance(conn.list_domains(), list)
        assert conn.hostname()
        with pytest.raises(client.ReadOnlyError,
                           match="operation forbidden: read-only connection"):
            conn.define_xml("<domain type='qemu'><name>nope</name></domain>")
        with pytest.raises(client.ReadOnlyError,
                           match="operation forbidden: read-only connection"):
            conn.client_list()  # admin procedures need the full role
        with pytest.raises(client.ReadOnlyError,
                           match="operation forbidden: read-only connection"):
            conn.client_disconnect(1)
        assert conn.node_info().cpus >= 1  # refused calls leave the connection usable
    log.wait(r"TLS client identified as O=Example,CN=viewer1 \(read-only\)")
    # the audit trail names the certificate, not an address
    log.wait(r"identity='O=Example,CN=viewer1' proc=DOMAIN_DEFINE_XML result=error")


def test_full_client_sees_readonly_client_with_its_dn(tls_daemon: TLSDaemon, pki: PKI) -> None:
    with client.connect(tls_daemon.tls_uri(pki.clients["viewer"])) as viewer, \
            client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as admin:
        assert viewer.node_info()
        listed = {c.identity: c for c in admin.client_list()}
        assert listed["O=Example,CN=viewer1"].readonly
        assert listed["O=Example,CN=viewer1"].transport == "tls"
        # and a full client may disconnect it
        admin.client_disconnect(listed["O=Example,CN=viewer1"].id)
        with pytest.raises(client.ConnectionLost):
            for _ in range(50):
                viewer.node_info()


def test_readonly_request_downgrades_a_full_certificate(tls_daemon: TLSDaemon,
                                                        pki: PKI) -> None:
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"]), readonly=True) as conn:
        assert conn.readonly
        with pytest.raises(client.ReadOnlyError):
            conn.client_list()
        assert conn.node_info().cpus >= 1  # read calls still work
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as conn:
        assert not conn.readonly  # without the request the full role stands
        conn.client_list()


def test_a_renewed_client_certificate_is_used_by_the_next_connection(
        tls_daemon: TLSDaemon, pki: PKI) -> None:
    """The client keeps its TLS context between connections, but not past a change of
    its certificate files: replacing them (as a renewal does) takes effect at once."""
    from certs.issue import make_client_cert, write_cert, write_key
    stranger_key, stranger_cert = make_client_cert(pki.ca_key, pki.ca_cert, "mallory2",
                                                   "Other")
    directory = pki.client_dir("renewed", stranger_key, stranger_cert)
    uri = tls_daemon.tls_uri(directory)
    for _ in range(2):  # refused twice: the second connect may use the kept context
        with pytest.raises(client.AuthError, match="O=Other,CN=mallory2"):
            client.connect(uri)
    key, cert = make_client_cert(pki.ca_key, pki.ca_cert, "admin9", "Example")
    write_key(directory / "clientkey.pem", key, force=True)  # atomic: a new file each
    write_cert(directory / "clientcert.pem", cert, force=True)
    with client.connect(uri) as conn:
        assert not conn.readonly and conn.node_info().cpus >= 1
