"""Only a daemon with a TLS listener loads ``ssl`` (and OpenSSL, ~5 MiB of its memory).

The TLS transport is its own module (qemud/tls_transport.py) for this: a daemon without
the listener, the default, never imports it, and one with the listener imports it when
it opens the listener, not in the loop at the first client. Watched from outside real
daemons with ``PYTHONPROFILEIMPORTTIME=1`` (see ``DaemonProcess.imported_modules``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from tests.conftest import DaemonFactory

from .conftest import PKI, start_tls_daemon

TLS_MODULES = {"ssl", "_ssl", "qemud.tls_transport"}


@pytest.fixture(autouse=True)
def report_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the daemons inherit it


def test_a_daemon_without_a_tls_listener_never_imports_ssl(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    with daemon.connect() as conn, daemon.connect(readonly=True) as ro:
        assert conn.node_info().cpus >= 1
        assert ro.list_all() == []
        with pytest.raises(client.ReadOnlyError):
            ro.define_xml("<domain type='qemu'><name>x</name></domain>")
    modules = daemon.imported_modules()
    assert "qemud.server" in modules  # a daemon that reports its imports
    assert modules & TLS_MODULES == set()


def test_a_tls_listener_loads_ssl_when_it_opens_and_serves_tls_clients(
        pki: PKI, tmp_path: Path) -> None:
    daemon = start_tls_daemon(tmp_path / "qemud", pki.server)
    try:
        assert TLS_MODULES <= daemon.imported_modules()  # before any client
        offset = len(daemon.stderr_text())
        with client.connect(daemon.tls_uri(pki.clients["admin"])) as conn:
            assert conn.node_info().cpus >= 1
        assert daemon.imported_modules(offset) & TLS_MODULES == set()
    finally:
        daemon.stop()
