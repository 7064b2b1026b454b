"""certs.tls: real TLS handshakes on loopback between server_context and client_context.

The server runs in a thread with blocking sockets; the test thread is the client.
With TLS 1.3 a client learns that the server refused its certificate only on its
first read after the handshake, so refusals are asserted on the server's side (which
is the side whose policy is under test) and the client merely must not get data.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.allowlist import AllowList, Role
from certs.errors import CertError, CertFileError, CertMismatchError, CertValidityError
from certs.issue import make_ca, make_client_cert, make_server_cert, write_cert, write_key
from certs.paths import PKIPaths
from certs.pem import cert_to_pem
from certs.tls import check_server_files, client_context, peer_dn, server_context

CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
TIMEOUT = 10.0


@dataclass
class Outcome:
    server_dn: str | None = None
    server_dict_dn: str | None = None
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    client_got: bytes = b""
    tls_version: str | None = None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str | None = "localhost") -> Outcome:
    """One connection: server thread greets the client with its DN; returns both views."""
    out = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                out.server_dn = peer_dn(tls.getpeercert(binary_form=True))
                out.server_dict_dn = peer_dn(tls.getpeercert())
                out.tls_version = tls.version()
                tls.sendall(b"hello " + out.server_dn.encode())
                tls.recv(16)  # wait for the client's goodbye before closing
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            out.server_error = e

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                out.client_got = tls.recv(1024)
                tls.sendall(b"bye")
    except (ssl.SSLError, OSError) as e:
        out.client_error = e
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "server thread hung"
    return out


def assert_refused_by_server(out: Outcome, reason: str) -> None:
    assert out.server_dn is None
    assert isinstance(out.server_error, ssl.SSLError), out.server_error
    assert reason.lower() in str(out.server_error).lower(), out.server_error
    assert out.client_got == b""


def with_client(paths: PKIPaths, tmp_path: Path, key: ec.EllipticCurvePrivateKey,
                cert: x509.Certificate) -> PKIPaths:
    """``paths`` but presenting ``key``/``cert`` as the client identity."""
    write_key(tmp_path / "k.pem", key)
    write_cert(tmp_path / "c.pem", cert)
    return dataclasses.replace(paths, client_cert=tmp_path / "c.pem",
                               client_key=tmp_path / "k.pem")


def with_server(paths: PKIPaths, tmp_path: Path, key: ec.EllipticCurvePrivateKey,
                cert: x509.Certificate) -> PKIPaths:
    """``paths`` but presenting ``key``/``cert`` as the server identity.

    A rogue server (certificate from another CA) needs ``server_context(check=False)``:
    :func:`check_server_files` refuses to build it.
    """
    write_key(tmp_path / "sk.pem", key)
    write_cert(tmp_path / "sc.pem", cert)
    return dataclasses.replace(paths, server_cert=tmp_path / "sc.pem",
                               server_key=tmp_path / "sk.pem")


# ------------------------------------------------------------------ good paths


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_good_client_is_accepted_and_server_sees_dn(pki: PKIPaths,
                                                    version: ssl.TLSVersion) -> None:
    cctx = client_context(pki)
    cctx.maximum_version = version
    out = handshake(server_context(pki), cctx)
    assert out.server_error is None and out.client_error is None
    assert out.server_dn == "O=Example,CN=admin1"
    assert out.server_dict_dn == out.server_dn  # getpeercert() dict gives the same string
    assert out.client_got == b"hello O=Example,CN=admin1"
    assert out.tls_version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                               ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert AllowList([("O=Example,CN=admin*", "full")]).role_for(out.server_dn) is Role.FULL


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_server_name_and_ip_sans_verify(pki: PKIPaths, name: str) -> None:
    out = handshake(server_context(pki), client_context(pki), server_hostname=name)
    assert out.client_error is None and out.server_dn == "O=Example,CN=admin1"


def test_contexts_policy(pki: PKIPaths) -> None:
    s, c = server_context(pki), client_context(pki)
    assert s.minimum_version == c.minimum_version == ssl.TLSVersion.TLSv1_2
    assert s.verify_mode == ssl.CERT_REQUIRED
    assert c.verify_mode == ssl.CERT_REQUIRED and c.check_hostname
    nv = client_context(pki, verify=False)
    assert nv.verify_mode == ssl.CERT_NONE and not nv.check_hostname


# ------------------------------------------------------------ server refusals


def test_client_without_certificate_is_refused(pki: PKIPaths) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(cafile=str(pki.ca_cert))
    out = handshake(server_context(pki), bare)
    assert_refused_by_server(out, "peer did not return a certificate")


def test_client_cert_from_another_ca_is_refused(pki: PKIPaths, other_ca: CA,
                                                tmp_path: Path) -> None:
    key, cert = make_client_cert(*other_ca, "admin1", org="Example")  # same DN, wrong CA
    out = handshake(server_context(pki), client_context(with_client(pki, tmp_path, key, cert)))
    assert_refused_by_server(out, "unable to get local issuer certificate")


def test_expired_client_cert_is_refused(pki: PKIPaths, ca: CA, tmp_path: Path,
                                        days_ago: Callable[[int], datetime]) -> None:
    key, cert = make_client_cert(*ca, "admin1", not_before=days_ago(30),
                                 not_after=days_ago(1))
    out = handshake(server_context(pki), client_context(with_client(pki, tmp_path, key, cert)))
    assert_refused_by_server(out, "certificate has expired")


def test_not_yet_valid_client_cert_is_refused(pki: PKIPaths, ca: CA, tmp_path: Path,
                                              days_ago: Callable[[int], datetime]) -> None:
    key, cert = make_client_cert(*ca, "admin1", not_before=days_ago(-1),
                                 not_after=days_ago(-30))
    out = handshake(server_context(pki), client_context(with_client(pki, tmp_path, key, cert)))
    assert_refused_by_server(out, "certificate is not yet valid")


def test_server_certificate_cannot_be_used_as_client_certificate(
        pki: PKIPaths, ca: CA, tmp_path: Path) -> None:
    key, cert = make_server_cert(*ca, ["admin1.example"])
    # client_context itself refuses such a pair; bypass it to test the server's check.
    paths = with_client(pki, tmp_path, key, cert)
    with pytest.raises(CertMismatchError, match="clientAuth"):
        client_context(paths)
    raw = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    raw.load_verify_locations(cafile=str(paths.ca_cert))
    raw.load_cert_chain(paths.client_cert, paths.client_key)
    out = handshake(server_context(pki), raw)
    assert_refused_by_server(out, "unsuitable certificate purpose")


# ------------------------------------------------------------ client refusals


def test_wrong_hostname_is_refused_by_client(pki: PKIPaths) -> None:
    out = handshake(server_context(pki), client_context(pki), server_hostname="wrong.example")
    assert isinstance(out.client_error, ssl.SSLCertVerificationError), out.client_error
    assert "hostname mismatch" in out.client_error.verify_message.lower()
    assert out.server_dn is None and out.client_got == b""


def test_hostname_check_can_be_disabled_but_chain_is_still_verified(
        pki: PKIPaths, other_ca: CA, tmp_path: Path) -> None:
    out = handshake(server_context(pki), client_context(pki, server_hostname_check=False),
                    server_hostname="wrong.example")
    assert out.client_error is None and out.server_dn == "O=Example,CN=admin1"

    key, cert = make_server_cert(*other_ca, ["localhost"])
    rogue = server_context(dataclasses.replace(
        with_server(pki, tmp_path, key, cert), ca_cert=pki.ca_cert), check=False)
    out = handshake(rogue, client_context(pki, server_hostname_check=False))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert out.server_dn is None


def test_server_cert_from_another_ca_is_refused_by_client(
        pki: PKIPaths, other_ca: CA, tmp_path: Path) -> None:
    key, cert = make_server_cert(*other_ca, ["localhost"])
    rogue = server_context(dataclasses.replace(
        with_server(pki, tmp_path, key, cert), ca_cert=pki.ca_cert), check=False)
    out = handshake(rogue, client_context(pki))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in out.client_error.verify_message
    assert out.server_dn is None


def test_no_verify_accepts_any_server_and_still_presents_client_cert(
        pki: PKIPaths, other_ca: CA, tmp_path: Path) -> None:
    key, cert = make_server_cert(*other_ca, ["elsewhere.example"])
    rogue = server_context(dataclasses.replace(
        with_server(pki, tmp_path, key, cert), ca_cert=pki.ca_cert), check=False)
    no_ca = dataclasses.replace(pki, ca_cert=tmp_path / "missing-cacert.pem")
    out = handshake(rogue, client_context(no_ca, verify=False), server_hostname="localhost")
    assert out.client_error is None
    assert out.server_dn == "O=Example,CN=admin1"


# --------------------------------------------------------- context building


def test_missing_files_are_named(pki: PKIPaths, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    for field, build in [("ca_cert", server_context), ("server_cert", server_context),
                         ("server_key", server_context), ("ca_cert", client_context),
                         ("client_cert", client_context), ("client_key", client_context)]:
        with pytest.raises(CertFileError, match=str(missing)) as info:
            build(dataclasses.replace(pki, **{field: missing}))
        assert info.value.path == missing


def test_key_not_matching_cert_is_named(pki: PKIPaths) -> None:
    swapped = dataclasses.replace(pki, server_key=pki.client_key)
    with pytest.raises(CertMismatchError) as info:
        server_context(swapped)
    assert str(pki.client_key) in str(info.value) and str(pki.server_cert) in str(info.value)


def test_leaf_given_as_ca_is_refused(pki: PKIPaths) -> None:
    with pytest.raises(CertMismatchError, match="not a CA certificate"):
        server_context(dataclasses.replace(pki, ca_cert=pki.server_cert))


def test_client_cert_refused_as_server_identity(pki: PKIPaths) -> None:
    both_client = dataclasses.replace(pki, server_cert=pki.client_cert,
                                      server_key=pki.client_key)
    with pytest.raises(CertMismatchError, match="serverAuth"):
        server_context(both_client)


def test_garbage_ca_file(pki: PKIPaths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(CertFileError, match="bad.pem"):
        client_context(dataclasses.replace(pki, ca_cert=bad))



# ------------------------------------------- start-up checks of the server's files
# QA ops finding 3: each of these started a daemon that every client then refused (or
# that held the CA's signing key); libvirtd refuses to start with them.


def test_expired_server_cert_is_refused(pki: PKIPaths, ca: CA, tmp_path: Path,
                                        days_ago: Callable[[int], datetime]) -> None:
    key, cert = make_server_cert(*ca, ["localhost"], not_before=days_ago(30),
                                 not_after=days_ago(1))
    paths = with_server(pki, tmp_path, key, cert)
    with pytest.raises(CertValidityError) as info:
        check_server_files(paths)
    assert str(info.value).startswith(f"server certificate {paths.server_cert} has expired "
                                      f"(not after {days_ago(1):%Y-%m-%d}")
    with pytest.raises(CertValidityError, match="has expired"):
        server_context(paths)


def test_not_yet_valid_server_cert_is_refused(pki: PKIPaths, ca: CA, tmp_path: Path,
                                              days_ago: Callable[[int], datetime]) -> None:
    key, cert = make_server_cert(*ca, ["localhost"], not_before=days_ago(-5),
                                 not_after=days_ago(-30))
    paths = with_server(pki, tmp_path, key, cert)
    with pytest.raises(CertValidityError) as info:
        check_server_files(paths)
    assert str(info.value).startswith(
        f"server certificate {paths.server_cert} is not yet valid (not before "
        f"{days_ago(-5):%Y-%m-%d}")
    assert "check the clocks" in str(info.value)


def test_expired_ca_in_the_ca_file_is_named_on_both_sides(
        pki: PKIPaths, ca: CA, tmp_path: Path, days_ago: Callable[[int], datetime]) -> None:
    """An out-of-date CA next to a good one: libvirt checks every CA's dates at start-up,
    and naming the entry beats OpenSSL's later "certificate has expired"."""
    _, stale = make_ca("Stale CA", not_before=days_ago(60), not_after=days_ago(1))
    bundle = tmp_path / "cacert.pem"
    bundle.write_bytes(cert_to_pem(ca[1]) + cert_to_pem(stale))
    paths = dataclasses.replace(pki, ca_cert=bundle)
    expected = f"CA certificate {bundle} (entry 2) has expired (not after {days_ago(1):%Y-%m-%d}"
    for check in (check_server_files, server_context, client_context):
        with pytest.raises(CertValidityError) as info:
            check(paths)
        assert str(info.value).startswith(expected), (check.__name__, str(info.value))


def test_server_cert_not_signed_by_ca_file_is_refused(pki: PKIPaths, other_ca: CA,
                                                      tmp_path: Path) -> None:
    """``other_ca`` has the same name as ``ca``: only the signature tells them apart."""
    key, cert = make_server_cert(*other_ca, ["localhost"])
    paths = with_server(pki, tmp_path, key, cert)
    with pytest.raises(CertMismatchError) as info:
        server_context(paths)
    assert str(info.value) == (
        f"server certificate {paths.server_cert} is not signed by the CA in {pki.ca_cert} "
        "(its signature does not verify with the key of CN=Test CA); every peer that "
        "trusts that CA would refuse it")


def test_server_cert_from_a_differently_named_ca_is_refused(pki: PKIPaths,
                                                            tmp_path: Path) -> None:
    key, cert = make_server_cert(*make_ca("Elsewhere CA"), ["localhost"])
    with pytest.raises(CertMismatchError,
                       match="its issuer CN=Elsewhere CA is not in that file"):
        check_server_files(with_server(pki, tmp_path, key, cert))


def test_ca_file_with_several_cas_accepts_a_server_cert_from_any(
        pki: PKIPaths, ca: CA, other_ca: CA, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert_to_pem(make_ca("Old CA")[1]) + cert_to_pem(ca[1]))
    check_server_files(dataclasses.replace(pki, ca_cert=bundle))
    key, cert = make_server_cert(*other_ca, ["localhost"])
    with pytest.raises(CertMismatchError, match=f"not signed by the CA in {bundle}"):
        check_server_files(dataclasses.replace(with_server(pki, tmp_path, key, cert),
                                               ca_cert=bundle))


def _ca(cn: str, signer: CA | None = None, *, pathlen: int | None = -1,
        is_ca: bool = True, expired: bool = False, key: Any = None) -> CA:
    """A CA (self-signed, or signed by ``signer``) made with cryptography directly:
    qemud-certs makes only CAs with pathlen 0, which cannot have intermediates.
    ``pathlen`` -1: none for a root, 0 for an intermediate; ``key``: the CA's (a new
    one by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key, issuer = signer if signer else (key, None)
    if pathlen == -1:
        pathlen = None if signer is None else 0
    cert = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=60 if expired else 0, minutes=5))
            .not_valid_after(now + (timedelta(days=-1) if expired else timedelta(days=30)))
            .add_extension(x509.BasicConstraints(ca=is_ca,
                                                 path_length=pathlen if is_ca else None),
                           critical=True)
            .sign(signer_key, hashes.SHA256()))
    return key, cert


@pytest.mark.parametrize("root_pathlen, mid, says", [
    (0, {}, r"CA certificate CN=Root CA in the chain of server certificate .* allows 0 "
            r"intermediate CA\(s\) below it \(pathlen\), the chain has 1: every peer "
            r"would refuse it \(path length constraint exceeded\)"),
    (None, {"is_ca": False}, r"CA certificate CN=Intermediate CA in the chain of server "
                             r"certificate .* is not a CA certificate"),
    (None, {"expired": True}, r"CA certificate CN=Intermediate CA in the chain of server "
                              r"certificate .* has expired"),
], ids=["root-pathlen-0", "intermediate-not-a-ca", "intermediate-expired"])
def test_a_chain_peers_refuse_is_refused_at_start(
        tmp_path: Path, root_pathlen: int | None, mid: dict[str, Any], says: str) -> None:
    """Signatures that verify are not enough: each of these chains fails every TLS
    client's verification (OpenSSL: path length exceeded, invalid CA certificate,
    expired), so the daemon must not start with it (it started, and every client was
    refused)."""
    root = _ca("Root CA", pathlen=root_pathlen)
    intermediate = _ca("Intermediate CA", root, **mid)
    # (qemud-certs issues only from a valid CA: leaves from a twin with the same key)
    issuer = _ca("Intermediate CA", root, key=intermediate[0])
    paths = write_pki_with_root(tmp_path, root, issuer, chain=intermediate[1])
    with pytest.raises(CertError, match=says):
        check_server_files(paths)
    out = handshake(server_context(paths, check=False), client_context(paths))
    assert out.client_error is not None  # (what the check spares a client)


def test_a_leaf_without_digital_signature_usage_is_refused(pki: PKIPaths, ca: CA,
                                                           tmp_path: Path) -> None:
    """keyUsage keyEncipherment only (old templates): TLS 1.3 clients took it, TLS 1.2
    ones found no cipher in common; the daemon now says what is wrong at start."""
    key, cert = make_server_cert(*ca, ["localhost"])
    builder = (x509.CertificateBuilder().subject_name(cert.subject)
               .issuer_name(cert.issuer).public_key(cert.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(cert.not_valid_before_utc)
               .not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        if isinstance(ext.value, x509.KeyUsage):
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(ext.value, ext.critical)
    odd = builder.sign(ca[0], hashes.SHA256())
    with pytest.raises(CertMismatchError, match=r"cannot be used as a server certificate "
                       r"\(its keyUsage lacks digitalSignature"):
        check_server_files(with_server(pki, tmp_path, key, odd))


def test_server_chain_file_through_an_intermediate_is_accepted(tmp_path: Path) -> None:
    """servercert.pem holding leaf + intermediate, cacert.pem the root: a layout ``ssl``
    serves (and libvirt's certificate checks accept); a TLS client verifies it."""
    root = _ca("Root CA")
    mid = _ca("Intermediate CA", root)
    paths = write_pki_with_root(tmp_path, root, mid)
    out = handshake(server_context(paths), client_context(paths))
    assert out.client_error is None and out.server_dn == "O=Example,CN=admin1"

    # without the intermediate in the chain file it is not trusted
    key, cert = make_server_cert(*mid, ["localhost"])
    alone = with_server(paths, tmp_path / "alone", key, cert)
    with pytest.raises(CertMismatchError, match="its issuer CN=Intermediate CA is not in"):
        check_server_files(alone)


def write_pki_with_root(tmp_path: Path, root: CA, mid: CA,
                        chain: x509.Certificate | None = None) -> PKIPaths:
    """Leaves issued by ``mid``, their chain files holding ``chain`` (default: mid's
    certificate) after them, ``root`` the CA file."""
    d = tmp_path / "chain"
    paths = PKIPaths.from_dir(d)
    write_cert(paths.ca_cert, root[1])
    rest = cert_to_pem(chain or mid[1])
    skey, scert = make_server_cert(*mid, ["localhost"])
    write_key(paths.server_key, skey)
    paths.server_cert.write_bytes(cert_to_pem(scert) + rest)
    ckey, ccert = make_client_cert(*mid, "admin1", org="Example")
    write_key(paths.client_key, ckey)
    paths.client_cert.write_bytes(cert_to_pem(ccert) + rest)
    return paths


@pytest.mark.parametrize("endpoint", ["server", "client"])
def test_ca_cert_and_key_refused_as_identity(pki: PKIPaths, endpoint: str) -> None:
    """The CA pair as the daemon's (or a client's) own: its key signs everything."""
    ca_key = pki.ca_cert.parent / "cakey.pem"
    paths = dataclasses.replace(pki, **{f"{endpoint}_cert": pki.ca_cert,
                                        f"{endpoint}_key": ca_key})
    build = server_context if endpoint == "server" else client_context
    with pytest.raises(CertMismatchError) as info:
        build(paths)
    assert str(info.value).startswith(
        f"{endpoint} certificate {pki.ca_cert} is a CA certificate (basicConstraints "
        f"CA:TRUE), not a {endpoint} certificate")


def test_good_server_files_pass(pki: PKIPaths) -> None:
    check_server_files(pki)
