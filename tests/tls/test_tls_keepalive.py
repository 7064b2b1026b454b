"""Keepalive and back-to-back traffic over TLS (buffered TLS records must not stall)."""

from __future__ import annotations

import time

import client
from tests.tls.conftest import KEEPALIVE_INTERVAL, PKI, TLSDaemon


def test_idle_connection_survives_keepalive_pings(tls_daemon: TLSDaemon, pki: PKI) -> None:
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as conn:
        assert conn.keepalive_interval == KEEPALIVE_INTERVAL
        time.sleep(KEEPALIVE_INTERVAL * 3.5)  # several pings and pongs, no calls
        assert conn.is_alive
        assert conn.node_info().cpus >= 1


def test_many_calls_and_large_replies(tls_daemon: TLSDaemon, pki: PKI) -> None:
    with client.connect(tls_daemon.tls_uri(pki.clients["admin"])) as conn:
        caps = conn.capabilities()  # the largest reply a fresh daemon has
        assert "<capabilities>" in caps
        for _ in range(200):
            assert conn.capabilities() == caps
