"""certs.pem: loading with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import CertFileError
from certs.pem import cert_to_pem, key_to_pem, load_cert, load_certs, load_key

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def test_pem_der_and_bundles(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    (tmp_path / "a.pem").write_bytes(cert_to_pem(ca[1]) + cert_to_pem(other_ca[1]))
    (tmp_path / "a.der").write_bytes(ca[1].public_bytes(serialization.Encoding.DER))
    assert load_certs(tmp_path / "a.pem") == [ca[1], other_ca[1]]
    assert load_cert(tmp_path / "a.der") == ca[1]


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "neither a PEM nor a DER"),
    (b"hello", "neither a PEM nor a DER"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
    ("KEY", "contains a private key, not a certificate"),
])
def test_bad_certificate_files(tmp_path: Path, ca: CA, content: bytes | str | None,
                               match: str) -> None:
    f = tmp_path / "c.pem"
    if content == "KEY":
        f.write_bytes(key_to_pem(ca[0]))
    elif isinstance(content, bytes):
        f.write_bytes(content)
    with pytest.raises(CertFileError, match=match) as info:
        load_cert(f, "CA certificate")
    assert str(f) in str(info.value) and "CA certificate" in str(info.value)
    assert info.value.path == f


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(CertFileError, match=f"cannot read certificate {tmp_path}"):
        load_cert(tmp_path)


def test_bad_key_files(tmp_path: Path, ca: CA) -> None:
    f = tmp_path / "k.pem"
    f.write_bytes(cert_to_pem(ca[1]))
    with pytest.raises(CertFileError, match="does not contain a private key"):
        load_key(f)
    f.write_bytes(ca[0].private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(CertFileError, match="is encrypted"):
        load_key(f)
    f.write_bytes(b"junk")
    with pytest.raises(CertFileError, match="not a valid private key"):
        load_key(f)
    f.write_bytes(key_to_pem(ca[0]))
    assert isinstance(load_key(f), ec.EllipticCurvePrivateKey)
