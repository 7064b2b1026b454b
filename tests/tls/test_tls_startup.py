"""The daemon refuses to start its TLS listener with server files no client could accept,
or that put the CA's signing key on the server (QA ops finding 3; libvirtd refuses the
same at start). Each case is a real daemon that must exit with one ``qemud: error:`` line
naming the file and the reason, and never listen."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from certs.issue import make_ca, make_server_cert, write_cert, write_key
from tests.tls.conftest import PKI, PORT_ATTEMPTS, TLSDaemon, free_port, port_taken

EXIT_TIMEOUT = 60.0


def _server_dir(pki: PKI, root: Path, key: PrivateKeyTypes,
                cert: x509.Certificate) -> dict[str, Path]:
    root.mkdir(parents=True)
    write_cert(root / "cacert.pem", pki.ca_cert)
    write_key(root / "serverkey.pem", key)
    write_cert(root / "servercert.pem", cert)
    return {"ca_file": root / "cacert.pem", "cert_file": root / "servercert.pem",
            "key_file": root / "serverkey.pem"}


def _expired(pki: PKI, root: Path) -> tuple[dict[str, Path], str]:
    now = datetime.now(UTC)
    key, cert = make_server_cert(pki.ca_key, pki.ca_cert, ["localhost"], ["127.0.0.1"],
                                 not_before=now - timedelta(days=30),
                                 not_after=now - timedelta(days=1))
    files = _server_dir(pki, root, key, cert)
    return files, f"server certificate {files['cert_file']} has expired (not after "


def _not_yet_valid(pki: PKI, root: Path) -> tuple[dict[str, Path], str]:
    now = datetime.now(UTC)
    key, cert = make_server_cert(pki.ca_key, pki.ca_cert, ["localhost"], ["127.0.0.1"],
                                 not_before=now + timedelta(days=5),
                                 not_after=now + timedelta(days=30))
    files = _server_dir(pki, root, key, cert)
    return files, f"server certificate {files['cert_file']} is not yet valid (not before "


def _other_ca(pki: PKI, root: Path) -> tuple[dict[str, Path], str]:
    other = make_ca("another qemud CA")
    key, cert = make_server_cert(*other, ["localhost"], ["127.0.0.1"])
    files = _server_dir(pki, root, key, cert)
    return files, (f"server certificate {files['cert_file']} is not signed by the CA in "
                   f"{files['ca_file']} (its issuer CN=another qemud CA is not in that file)")


def _ca_pair(pki: PKI, root: Path) -> tuple[dict[str, Path], str]:
    files = _server_dir(pki, root, pki.ca_key, pki.ca_cert)
    return files, (f"server certificate {files['cert_file']} is a CA certificate "
                   "(basicConstraints CA:TRUE), not a server certificate")


def _ca_out_of_dates(pki: PKI, root: Path, *, expired: bool) -> tuple[dict[str, Path], str]:
    """A server certificate valid now, from a CA whose own certificate is not."""
    now = datetime.now(UTC)
    window = ((now - timedelta(days=60), now - timedelta(days=1)) if expired
              else (now + timedelta(days=1), now + timedelta(days=60)))
    ca_key, ca_cert = make_ca("dated qemud CA", not_before=window[0], not_after=window[1])
    key, cert = make_server_cert(ca_key, ca_cert, ["localhost"], ["127.0.0.1"],
                                 not_before=now - timedelta(days=1),
                                 not_after=now + timedelta(days=30))
    root.mkdir(parents=True)
    write_cert(root / "cacert.pem", ca_cert)
    write_key(root / "serverkey.pem", key)
    write_cert(root / "servercert.pem", cert)
    files = {"ca_file": root / "cacert.pem", "cert_file": root / "servercert.pem",
             "key_file": root / "serverkey.pem"}
    reason = "has expired (not after " if expired else "is not yet valid (not before "
    return files, f"CA certificate {files['ca_file']} {reason}"


CASES: dict[str, Callable[[PKI, Path], tuple[dict[str, Path], str]]] = {
    "expired": _expired, "not yet valid": _not_yet_valid,
    "signed by another CA": _other_ca, "CA certificate and key": _ca_pair,
    "expired CA": lambda pki, root: _ca_out_of_dates(pki, root, expired=True),
    "CA not yet valid": lambda pki, root: _ca_out_of_dates(pki, root, expired=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_daemon_refuses_to_start(case: str, pki: PKI, tmp_path: Path) -> None:
    files, reason = CASES[case](pki, tmp_path / "pki")
    d = TLSDaemon(tmp_path / "qemud", {
        "qemu": {"cache_dir": str(tmp_path.parent / "qemu-caps-cache")},
        "listen": {"tls": True, "tls_address": "127.0.0.1"},
        "tls": {**{k: str(v) for k, v in files.items()},
                "allowed_dn": [{"pattern": "*", "role": "full"}]},
    })
    for _ in range(PORT_ATTEMPTS):  # (the checks come before the bind today; if not ...)
        d.config["listen"]["tls_port"] = free_port()
        stderr_offset = len(d.stderr_text())
        d.start(wait=False)
        assert d.proc is not None
        try:
            code = d.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            d.kill()
            raise AssertionError(f"qemud started with a {case} server certificate:\n"
                                 f"{d.log_text()[-2000:]}") from None
        if not port_taken(d, stderr_offset):
            break
    errors = [ln for ln in d.stderr_text()[stderr_offset:].splitlines()
              if ln.startswith("qemud: error:")]
    assert code != 0 and len(errors) == 1, d.stderr_text()
    assert errors[0].startswith(f"qemud: error: TLS listener: {reason}"), errors[0]
    assert "listening for TLS" not in d.log_text()
