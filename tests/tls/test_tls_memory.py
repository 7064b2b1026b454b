"""The TLS listener costs no ``cryptography`` in the daemon (docs/TLS.md, qemud/tls.py).

``cryptography`` is ~9 MiB of resident memory a process never gives back; the daemon
checks its certificates in a child process and reads client DNs from ``ssl``'s own
``getpeercert()`` dict. What a user can see: no cryptography library mapped into the
daemon, after start-up and after clients were identified.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

import client
from certs.dn import peer_dn
from certs.issue import make_client_cert
from tests.tls.conftest import PKI, TLSDaemon


def mapped_files(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}


def test_identified_clients_leave_no_cryptography_in_the_daemon(tls_daemon: TLSDaemon,
                                                                 pki: PKI) -> None:
    key, cert = make_client_cert(pki.ca_key, pki.ca_cert, 'admin,"x"+1 <y>', "Example")
    pkipath = pki.client_dir("admin-specials", key, cert)
    expected = peer_dn(cert.public_bytes(Encoding.DER))  # the DER reading, as before
    assert expected == 'O=Example,CN=admin\\,\\"x\\"\\+1 \\<y\\>'
    with client.connect(tls_daemon.tls_uri(pkipath)) as conn, \
            client.connect(tls_daemon.tls_uri(pki.clients["viewer"])) as viewer:
        assert viewer.readonly
        identities = {c.identity for c in conn.client_list()}
        assert {expected, "O=Example,CN=viewer1"} <= identities, identities
    mapped = mapped_files(tls_daemon.pid())
    assert any("/_ssl" in path or "libssl" in path for path in mapped), "not a TLS daemon?"
    assert not [path for path in mapped if "cryptography" in path]
