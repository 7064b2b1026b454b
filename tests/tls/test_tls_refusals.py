"""Clients the TLS listener must refuse, each logged with the peer and a reason an admin
can act on, none of them holding up the next good client."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import client
import protocol as P
from certs.issue import make_client_cert
from protocol import payloads as pl
from protocol.constants import SUPPORTED_VERSIONS
from tests.qemud.wire import RawClient
from tests.tls.conftest import (
    HANDSHAKE_DEADLINE,
    KEEPALIVE_INTERVAL,
    PKI,
    LogWatch,
    TLSDaemon,
    assert_served,
)

ADDR = r"addr=127\.0\.0\.1:\d+"


def _connect_with(daemon: TLSDaemon, pkipath: Path) -> None:
    with client.connect(daemon.tls_uri(pkipath), timeout=5) as conn:
        conn.node_info()


@pytest.mark.parametrize("name, error, client_says, log_says", [
    ("foreign", client.ConnectFailed,
     r"refused the client certificate .*clientcert\.pem: the certificate is not signed by "
     r"the daemon's CA",
     rf"TLS handshake with {ADDR} refused: client certificate is not signed by the CA in "
     r"tls\.ca_file"),
    ("expired", client.ConnectFailed,
     r"refused the client certificate .*clientcert\.pem: the certificate has expired; it "
     r"expired on",
     rf"TLS handshake with {ADDR} refused: client certificate has expired \(issue a new one"),
    ("future", client.ConnectFailed,
     r"refused the client certificate .*clientcert\.pem: .*it is not valid before",
     rf"TLS handshake with {ADDR} refused: client certificate is not yet valid \(check the "
     r"clocks"),
    ("stranger", client.AuthError,
     r"access denied: certificate DN 'O=Other,CN=mallory' is not in the daemon's "
     r"tls\.allowed_dn list",
     rf"TLS client {ADDR} refused: access denied: certificate DN 'O=Other,CN=mallory' is "
     r"not in the daemon's tls\.allowed_dn list"),
])
def test_refused_certificate(tls_daemon: TLSDaemon, pki: PKI, name: str,
                             error: type[Exception], client_says: str, log_says: str) -> None:
    log = LogWatch(tls_daemon)
    with pytest.raises(error, match=client_says):
        _connect_with(tls_daemon, pki.clients[name])
    log.wait(log_says)
    assert "Traceback" not in log.text()
    assert_served(tls_daemon, pki)


def test_a_certificate_whose_subject_cannot_be_read_is_refused(
        tls_daemon: TLSDaemon, pki: PKI) -> None:
    """Signed by the CA, verified by OpenSSL, but its subject cannot be read as text:
    refused. It was let in with the listener's full role: the exception left the
    handshake, and the next keepalive ping armed the client's I/O."""
    log = LogWatch(tls_daemon)
    with pytest.raises(client.AuthError,
                       match=r"access denied: the client certificate's subject cannot be "
                             r"read"):
        with client.connect(tls_daemon.tls_uri(pki.clients["unreadable"]),
                            timeout=5) as conn:
            conn.node_info()
            time.sleep(2 * KEEPALIVE_INTERVAL)  # (past a ping: still not served)
            conn.list_domains()
    log.wait(rf"TLS client {ADDR} refused: access denied: the client certificate's "
             r"subject cannot be read")
    assert "unhandled error" not in log.text()
    assert_served(tls_daemon, pki)


def _no_certificate(daemon: TLSDaemon, pki: PKI) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.server["ca_file"]))  # no load_cert_chain
    with socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5) as raw:
        port = int(raw.getsockname()[1])
        with pytest.raises(OSError):  # ssl.SSLError "certificate required", or a reset
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\0" * 16)
                if not tls.recv(100):
                    raise ConnectionResetError("closed")
    return port


def _plaintext_hello(daemon: TLSDaemon, pki: PKI) -> int:
    frame = P.Connection(P.Role.CLIENT).send(P.Call(
        P.Procedure.HELLO, 1, pl.HelloArgs(list(SUPPORTED_VERSIONS), "plaintext")))
    with socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5) as raw:
        port = int(raw.getsockname()[1])
        raw.sendall(frame)
        try:
            assert raw.recv(100) == b"", "the daemon answered plaintext on its TLS port"
        except ConnectionResetError:
            pass
    return port


@pytest.mark.parametrize("attempt, log_says", [
    (_no_certificate, r"refused: client presented no certificate \(a client needs "
                      r"clientcert\.pem and clientkey\.pem"),
    (_plaintext_hello, r"refused: not a TLS client \(\w+\): plaintext or another protocol "
                       r"was sent to the TLS port"),
], ids=["no-certificate", "plaintext"])
def test_refused_connection(tls_daemon: TLSDaemon, pki: PKI,
                            attempt: Callable[[TLSDaemon, PKI], int], log_says: str) -> None:
    log = LogWatch(tls_daemon)
    port = attempt(tls_daemon, pki)
    log.wait(rf"TLS handshake with addr=127\.0\.0\.1:{port} {log_says}")
    assert "Traceback" not in log.text()
    assert_served(tls_daemon, pki)


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00"],
                         ids=["silent", "partial-client-hello"])
def test_stalled_handshake_is_dropped_and_blocks_nobody(tls_daemon: TLSDaemon, pki: PKI,
                                                        sent: bytes) -> None:
    log = LogWatch(tls_daemon)
    with socket.create_connection(("127.0.0.1", tls_daemon.tls_port)) as stalled:
        opened = time.monotonic()
        port = int(stalled.getsockname()[1])
        stalled.sendall(sent)
        # while it stalls, other TLS clients are served: before the daemon drops it (a
        # daemon waiting on the stalled handshake would serve them only after that)
        assert_served(tls_daemon, pki)
        assert_served(tls_daemon, pki)
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):  # neither data nor EOF: not dropped yet
            stalled.recv(100)
        assert "not finished within" not in log.text(), \
            "the good clients were served only after the stalled handshake was dropped"
        # the 10 s past the deadline only keep a daemon that never drops it from hanging
        stalled.settimeout(HANDSHAKE_DEADLINE + 10)
        try:
            assert stalled.recv(100) == b""
        except ConnectionResetError:
            pass
        waited = time.monotonic() - opened
    # (the daemon's clock starts when it accepts, about when `opened` was read)
    assert waited >= HANDSHAKE_DEADLINE * 0.9, f"dropped after {waited:.2f} s"
    log.wait(rf"TLS handshake from addr=127\.0\.0\.1:{port} not finished within "
             rf"{HANDSHAKE_DEADLINE:g} s")
    assert_served(tls_daemon, pki)


def test_tls12_client_gets_the_same_answers(tls_daemon: TLSDaemon, pki: PKI,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With TLS 1.2 the daemon's verdict on the certificate comes inside the handshake."""
    import certs.tls

    original = certs.tls.client_context

    def tls12(*args: object, **kwargs: object) -> ssl.SSLContext:
        ctx = original(*args, **kwargs)  # type: ignore[arg-type]
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    monkeypatch.setattr(certs.tls, "client_context", tls12)
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as conn:
        assert conn.node_info().cpus >= 1
    with pytest.raises(client.ConnectFailed, match="the certificate has expired; it expired"):
        _connect_with(tls_daemon, pki.clients["expired"])
    with pytest.raises(client.ConnectFailed, match="not signed by the daemon's CA"):
        _connect_with(tls_daemon, pki.clients["foreign"])
    with pytest.raises(client.AuthError, match="O=Other,CN=mallory"):
        _connect_with(tls_daemon, pki.clients["stranger"])


def _raw_tls(daemon: TLSDaemon, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
             ) -> tuple[RawClient, ssl.SSLSocket]:
    """A raw protocol client over TLS with ``ctx``, offering ``session`` for resumption
    (the client library never does)."""
    raw = socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    return RawClient(None, sock=tls, hello=False), tls


def test_a_certificate_expired_since_is_refused_on_a_resumed_session(
        tls_daemon: TLSDaemon, pki: PKI) -> None:
    """A client keeps its TLS session and comes back after its certificate expired: the
    daemon resumes no sessions (a resumed one skips the handshake's certificate checks),
    and checks the validity period of every connection's certificate itself."""
    now = datetime.now(UTC)
    soon = pki.client_dir("expiring", *make_client_cert(
        pki.ca_key, pki.ca_cert, "admin1", "Example", not_before=now - timedelta(days=1),
        not_after=now + timedelta(seconds=3)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(soon / "cacert.pem")
    ctx.load_cert_chain(soon / "clientcert.pem", soon / "clientkey.pem")
    first, tls = _raw_tls(tls_daemon, ctx)
    reply = first.call(P.Procedure.HELLO, pl.HelloArgs(list(SUPPORTED_VERSIONS), "raw"))
    assert isinstance(reply, P.Reply), reply
    assert isinstance(first.call(P.Procedure.NODE_INFO), P.Reply)
    session = tls.session
    first.sock.close()
    time.sleep(max(0.0, (now + timedelta(seconds=3.5) - datetime.now(UTC)).total_seconds()))
    log = LogWatch(tls_daemon)
    try:
        again, tls = _raw_tls(tls_daemon, ctx, session)
    except (ssl.SSLError, OSError):
        pass  # a full handshake: refused there (the expired case above)
    else:
        assert not tls.session_reused
        try:
            reply = again.call(P.Procedure.HELLO,
                               pl.HelloArgs(list(SUPPORTED_VERSIONS), "raw"))
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        else:
            assert isinstance(reply, P.ErrorReply), reply
        again.sock.close()
    log.wait(r"client certificate has expired")
    assert_served(tls_daemon, pki)
