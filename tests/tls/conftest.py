"""A throw-away PKI and a TLS-listening qemud, shared by the tests in this folder.

Certificates are minted at test time with :mod:`certs.issue` (EC keys: milliseconds).
Every client gets its own ``pkipath`` directory (cacert.pem, clientcert.pem,
clientkey.pem), exactly what ``qemud+tls://...?pkipath=DIR`` expects.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import client
from certs.issue import make_ca, make_client_cert, make_server_cert, write_cert, write_key
from tests.helpers.daemon import STARTUP_TIMEOUT, DaemonProcess, wait_for

ALLOWED_DN = [
    {"pattern": "O=Example,CN=admin*", "role": "full"},
    {"pattern": "O=Example,CN=viewer*", "role": "readonly"},
]
#: long next to a TLS connect even on a loaded machine: the stalled-handshake tests prove
#: other clients are served while a handshake stalls by serving them before it is dropped
HANDSHAKE_DEADLINE = 3.0
KEEPALIVE_INTERVAL = 1


@dataclass
class PKI:
    root: Path
    ca_key: Any
    ca_cert: x509.Certificate
    server: dict[str, Path] = field(default_factory=dict)  # ca_file/cert_file/key_file
    clients: dict[str, Path] = field(default_factory=dict)  # name -> pkipath

    def client_dir(self, name: str, key: Any, cert: x509.Certificate,
                   ca_cert: x509.Certificate | None = None) -> Path:
        d = self.root / name
        write_cert(d / "cacert.pem", ca_cert or self.ca_cert)
        write_key(d / "clientkey.pem", key)
        write_cert(d / "clientcert.pem", cert)
        self.clients[name] = d
        return d

    def server_files(self, name: str, hostnames: list[str], ips: list[str]) -> dict[str, Path]:
        d = self.root / name
        key, cert = make_server_cert(self.ca_key, self.ca_cert, hostnames, ips)
        write_cert(d / "cacert.pem", self.ca_cert)
        write_key(d / "serverkey.pem", key)
        write_cert(d / "servercert.pem", cert)
        return {"ca_file": d / "cacert.pem", "cert_file": d / "servercert.pem",
                "key_file": d / "serverkey.pem"}


def _der_tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else \
        bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes((size.bit_length() + 7) // 8,
                                                                      "big")
    return bytes([tag]) + length + body


def _der_span(data: bytes, at: int) -> tuple[int, int]:
    """(start of the body, end) of the DER element at ``at``."""
    size, body = data[at + 1], at + 2
    if size & 0x80:
        count = size & 0x7F
        size, body = int.from_bytes(data[body:body + count], "big"), body + count
    return body, body + size


def unreadable_name_cert(ca_key: Any, ca_cert: x509.Certificate, cn: str
                         ) -> tuple[Any, x509.Certificate]:
    """A client certificate the CA signed whose CN is an ASN.1 ObjectDescriptor (tag 7)
    instead of a UTF8String: OpenSSL verifies it, but neither Python's
    ``getpeercert()`` nor ``cryptography`` can turn the subject into text."""
    key, cert = make_client_cert(ca_key, ca_cert, cn, "Other")
    der = cert.public_bytes(serialization.Encoding.DER)
    body, _ = _der_span(der, 0)
    tbs_body, tbs_end = _der_span(der, body)
    tbs = der[body:tbs_end]
    utf8 = b"\x0c" + bytes([len(cn)]) + cn.encode()
    assert tbs.count(utf8) == 1
    tbs = tbs.replace(utf8, b"\x07" + utf8[1:])
    algorithm_end = _der_span(der, tbs_end)[1]
    signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return key, x509.load_der_x509_certificate(_der_tlv(0x30, tbs + der[tbs_end:algorithm_end]
                                                        + _der_tlv(0x03, b"\0" + signature)))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca("qemud test CA")
    p = PKI(root, ca_key, ca_cert)
    p.server = p.server_files("server", ["localhost"], ["127.0.0.1"])
    now = datetime.now(UTC)
    p.client_dir("admin", *make_client_cert(ca_key, ca_cert, "admin1", "Example"))
    p.client_dir("viewer", *make_client_cert(ca_key, ca_cert, "viewer1", "Example"))
    p.client_dir("stranger", *make_client_cert(ca_key, ca_cert, "mallory", "Other"))
    p.client_dir("expired", *make_client_cert(
        ca_key, ca_cert, "admin2", "Example", not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1)))
    p.client_dir("future", *make_client_cert(
        ca_key, ca_cert, "admin3", "Example", not_before=now + timedelta(days=1),
        not_after=now + timedelta(days=30)))
    p.client_dir("unreadable", *unreadable_name_cert(ca_key, ca_cert, "zzweird"))
    other_key, other_ca = make_ca("some other CA")
    # signed by another CA, but trusts the daemon's CA (so only the daemon objects)
    p.client_dir("foreign", *make_client_cert(other_key, other_ca, "admin4", "Example"))
    # a good client certificate, but the wrong CA file to check the daemon with
    p.client_dir("wrong-cacert", *make_client_cert(ca_key, ca_cert, "admin5", "Example"),
                 ca_cert=other_ca)
    return p


def free_port() -> int:
    """A TCP port free just now. It is released before the daemon binds it, so something
    else may take it meanwhile: callers retry on :func:`port_taken` (``PORT_ATTEMPTS``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: daemon starts tried, each on a new free_port(), before a taken port fails the test
PORT_ATTEMPTS = 5


def port_taken(daemon: DaemonProcess, stderr_offset: int) -> bool:
    """Whether the daemon exited because its TLS port was taken (its one error line, in
    stderr after ``stderr_offset``): the free_port() race, not what a test is about."""
    assert daemon.proc is not None
    return daemon.proc.poll() is not None and \
        "(listen.tls_address, listen.tls_port): Address already in use" in \
        daemon.stderr_text()[stderr_offset:]


class TLSDaemon(DaemonProcess):
    """A qemud with its TLS listener on 127.0.0.1:``tls_port``."""

    tls_port: int

    def tls_uri(self, pkipath: Path, host: str = "localhost", extra: str = "") -> str:
        return f"qemud+tls://{host}:{self.tls_port}/session?pkipath={pkipath}{extra}"


def start_tls_daemon(root: Path, server: dict[str, Path],
                     limits: dict[str, Any] | None = None) -> TLSDaemon:
    """Start a daemon listening for TLS on 127.0.0.1 and wait for the listener.

    All of them share one QEMU capabilities cache (next to ``root``), so only the first
    pays for probing the emulators.
    """
    d = TLSDaemon(root, {
        "qemu": {"cache_dir": str(root.parent / "qemu-caps-cache")},
        "listen": {"tls": True, "tls_address": "127.0.0.1"},
        "limits": {"tls_handshake_deadline": HANDSHAKE_DEADLINE, **(limits or {})},
        "tls": {**{k: str(v) for k, v in server.items()}, "allowed_dn": ALLOWED_DN},
    })
    for _ in range(PORT_ATTEMPTS):
        d.tls_port = free_port()
        d.config["listen"]["tls_port"] = d.tls_port
        stderr_offset = len(d.stderr_text())
        d.start(wait=False)
        listening = f"listening for TLS on 127.0.0.1:{d.tls_port}"
        # the unix sockets come first, the TLS listener after them: an exit over a
        # taken port may come after the daemon looked ready
        wait_for(lambda line=listening: line in d.log_text() or d.proc.poll() is not None,
                 timeout=STARTUP_TIMEOUT, message="TLS listener up or qemud exited")
        if not port_taken(d, stderr_offset):
            break
    d.wait_ready()  # (raises, with its stderr, if it exited for another reason)
    assert listening in d.log_text(), d.log_text()[-4000:]
    return d


@pytest.fixture(scope="session")
def tls_daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSDaemon]:
    d = start_tls_daemon(tmp_path_factory.mktemp("qemud-tls"), pki.server,
                         {"keepalive_interval": KEEPALIVE_INTERVAL})
    yield d
    try:
        d.stop()
    except Exception:
        d.kill()


class LogWatch:
    """The daemon log written since this object was made."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.offset = len(daemon.log_text())

    def text(self) -> str:
        return self.daemon.log_text()[self.offset:]

    def wait(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """The first match of ``pattern`` in the new log text, waiting for it to appear."""
        found: list[re.Match[str]] = []

        def look() -> bool:
            m = re.search(pattern, self.text())
            if m:
                found.append(m)
            return m is not None
        try:
            wait_for(look, timeout=timeout, message=f"log line /{pattern}/")
        except TimeoutError:
            raise AssertionError(f"no log line matching /{pattern}/ in:\n{self.text()}") \
                from None
        return found[0]


def assert_served(daemon: TLSDaemon, pki: PKI, within: float = 10.0) -> None:
    """A good client connects and gets an answer (the daemon was not wedged).

    ``within`` only keeps a wedged daemon from hanging the test: a tight bound would
    measure the machine's load. Tests that prove a client is served *while* another
    holds something (a stalled handshake) do it by order, not by this clock.
    """
    start = time.monotonic()
    with client.connect(daemon.tls_uri(pki.clients["admin"]), timeout=within) as conn:
        assert conn.node_info().cpus >= 1
        elapsed = time.monotonic() - start
    assert elapsed < within, f"good client took {elapsed:.2f} s"
