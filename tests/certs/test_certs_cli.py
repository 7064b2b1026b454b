"""qemud-certs end to end, run as ``python -m certs`` in a subprocess."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

import qemud
from certs.cli import build_parser, main
from certs.issue import make_ca, make_client_cert, make_server_cert, write_cert, write_key
from certs.paths import PKIPaths
from certs.pem import cert_to_pem, load_cert, load_key
from certs.tls import client_context, server_context

REPO = Path(__file__).resolve().parents[2]
CA = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def run(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "certs", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, umask=umask)


def ok(*args: str, cwd: Path) -> str:
    r = run(*args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(*args: str, cwd: Path, match: str) -> str:
    """Run, expect exit 1 and a one-line ``error: ...`` containing ``match``."""
    r = run(*args, cwd=cwd)
    assert r.returncode == 1, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    assert match in last, r.stderr
    assert "Traceback" not in r.stderr
    return last


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_full_workflow(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ok("ca", "--dir", "pki", "--cn", "Example CA", cwd=tmp_path)
    ok("server", "--dir", "pki", "--hostname", "qemu1.example", "--hostname", "localhost",
       "--ip", "127.0.0.1", "--ip", "::1", "--days", "30", cwd=tmp_path)
    out = ok("client", "--dir", "pki", "--cn", "admin1", "--org", "Example", cwd=tmp_path)
    assert "clientkey.pem (private key, mode 0600)" in out

    for name in ("cakey.pem", "serverkey.pem", "clientkey.pem"):
        assert mode(pki / name) == 0o600
    for name in ("cacert.pem", "servercert.pem", "clientcert.pem"):
        assert mode(pki / name) == 0o644
    assert mode(pki) == 0o700

    ca = load_cert(pki / "cacert.pem")
    server = load_cert(pki / "servercert.pem")
    client = load_cert(pki / "clientcert.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["qemu1.example", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert (server.not_valid_after_utc - datetime.now(server.not_valid_after_utc.tzinfo)).days \
        in (29, 30)
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == "CN=admin1,O=Example"
    assert isinstance(load_key(pki / "serverkey.pem"), ec.EllipticCurvePrivateKey)

    # The working directory is directly usable as a ?pkipath= directory.
    server_context(PKIPaths.from_dir(pki))
    client_context(PKIPaths.from_dir(pki))

    shown = ok("show", "pki/servercert.pem", "pki/clientcert.pem", cwd=tmp_path)
    assert "Subject:             CN=qemu1.example" in shown
    assert "Issuer:              CN=Example CA" in shown
    assert "DNS:qemu1.example, DNS:localhost, IP:127.0.0.1, IP:::1" in shown
    assert "Subject:             O=Example,CN=admin1" in shown
    assert "Extended key usage:  clientAuth" in shown
    serial_line = next(ln for ln in shown.splitlines() if ln.startswith("Serial:"))
    assert int(serial_line.split()[1].replace(":", ""), 16) == server.serial_number
    assert shown.count("Status:              valid") == 2

    system = tmp_path / "root"
    out = ok("install", "--system", "--prefix", str(system), "--dir", "pki", cwd=tmp_path)
    sp = PKIPaths.system(prefix=system)
    assert sp.ca_cert.read_bytes() == (pki / "cacert.pem").read_bytes()
    assert sp.server_cert.read_bytes() == (pki / "servercert.pem").read_bytes()
    assert sp.server_key.read_bytes() == (pki / "serverkey.pem").read_bytes()
    assert mode(sp.server_key) == 0o600 and mode(sp.server_key.parent) == 0o700
    assert f"-> {sp.server_key} (mode 0600)" in out
    assert not sp.client_cert.exists()

    home = tmp_path / "home"
    ok("install", "--session", "--prefix", str(home), "--dir", "pki", cwd=tmp_path)
    hp = PKIPaths.session(home=home)
    assert hp.client_key.read_bytes() == (pki / "clientkey.pem").read_bytes()
    assert mode(hp.client_key) == 0o600 and mode(hp.client_key.parent) == 0o700
    assert not hp.server_cert.exists()

    # explicit files and role
    ok("install", "--session", "--prefix", str(home), "--role", "server",
       "--cert", "pki/servercert.pem", "--key", "pki/serverkey.pem", cwd=tmp_path)
    assert hp.server_key.read_bytes() == (pki / "serverkey.pem").read_bytes()
    fails("install", "--session", "--prefix", str(home), "--dir", "pki", cwd=tmp_path,
          match=f"refusing to overwrite existing file {hp.ca_cert} (use --force")
    ok("install", "--session", "--prefix", str(home), "--dir", "pki", "--force", cwd=tmp_path)


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    ok("ca", cwd=tmp_path)
    key_before = (tmp_path / "cakey.pem").read_bytes()
    fails("ca", cwd=tmp_path, match="refusing to overwrite existing file")
    assert (tmp_path / "cakey.pem").read_bytes() == key_before
    ok("client", "--cn", "a", cwd=tmp_path)
    fails("client", "--cn", "b", cwd=tmp_path, match="clientcert.pem (use --force to replace it)")
    ok("client", "--cn", "b", "--force", cwd=tmp_path)
    assert load_cert(tmp_path / "clientcert.pem").subject.rfc4514_string() == "CN=b"
    ok("ca", "--force", cwd=tmp_path)
    assert (tmp_path / "cakey.pem").read_bytes() != key_before
    assert mode(tmp_path / "cakey.pem") == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_do_not_depend_on_umask(tmp_path: Path, umask: int) -> None:
    assert run("ca", "--dir", "d", cwd=tmp_path, umask=umask).returncode == 0
    assert mode(tmp_path / "d" / "cakey.pem") == 0o600
    assert mode(tmp_path / "d" / "cacert.pem") == 0o644


@pytest.mark.parametrize("args,match", [
    (["server", "--hostname", "a.example"], "CA file cacert.pem does not exist"),
    (["server", "--dir", "nowhere", "--hostname", "a.example"],
     "CA file nowhere/cacert.pem does not exist (create a CA with 'qemud-certs ca --dir "
     "nowhere'"),
    (["client", "--cn", "x"], "cacert.pem does not exist"),
])
def test_missing_ca(tmp_path: Path, args: list[str], match: str) -> None:
    fails(*args, cwd=tmp_path, match=match)


@pytest.mark.parametrize("args,match", [
    (["server", "--hostname", "bad_name"], "argument --hostname: invalid hostname 'bad_name'"),
    (["server", "--hostname", "10.1.1.1"], "argument --hostname: hostname '10.1.1.1' is an IP"),
    (["server", "--ip", "300.1.1.1"], "argument --ip: invalid IP address '300.1.1.1'"),
    (["server", "--ip", "host.example"], "argument --ip: invalid IP address"),
    (["server"], "needs at least one --hostname or --ip"),
    (["server", "--hostname", "a", "--days", "0"], "argument --days: must be a positive"),
    (["client", "--cn", "a", "--days", "-3"], "argument --days: must be a positive"),
    (["ca", "--days", "ten"], "argument --days: 'ten' is not a whole number of days"),
    (["ca", "--days", "99999999"], "argument --days: must be at most"),
    (["client"], "the following arguments are required: --cn"),
    (["client", "--cn", ""], "argument --cn: --cn must not be empty"),
    (["client", "--cn", "a", "--org", "x" * 70], "argument --org: --org"),
    (["install", "--cert", "c.pem"], "--cert and --key must be given together"),
    (["install", "--system", "--session"], "not allowed with argument"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_usage_errors(tmp_path: Path, args: list[str], match: str) -> None:
    ok("ca", cwd=tmp_path)
    fails(*args, cwd=tmp_path, match=match)


def test_file_errors(tmp_path: Path, ca: CA, other_ca: CA,
                     days_ago: Callable[[int], datetime]) -> None:
    fails("show", "missing.pem", cwd=tmp_path, match="certificate missing.pem does not exist")
    (tmp_path / "dir.pem").mkdir()
    fails("show", "dir.pem", cwd=tmp_path, match="cannot read certificate dir.pem")
    write_key(tmp_path / "key.pem", ca[0])
    fails("show", "key.pem", cwd=tmp_path, match="contains a private key, not a certificate")
    (tmp_path / "junk.pem").write_text("junk")
    fails("show", "junk.pem", cwd=tmp_path, match="junk.pem is neither a PEM nor a DER")

    # CA key does not match CA cert
    (tmp_path / "mismatch").mkdir()
    write_cert(tmp_path / "mismatch" / "cacert.pem", ca[1])
    write_key(tmp_path / "mismatch" / "cakey.pem", other_ca[0])
    fails("client", "--dir", "mismatch", "--cn", "x", cwd=tmp_path,
          match="CA private key mismatch/cakey.pem does not match CA certificate "
                "mismatch/cacert.pem")

    # expired CA
    key, cert = make_ca("old", not_before=days_ago(20), not_after=days_ago(10))
    write_cert(tmp_path / "old" / "cacert.pem", cert)
    write_key(tmp_path / "old" / "cakey.pem", key)
    fails("server", "--dir", "old", "--hostname", "a", cwd=tmp_path,
          match="CA certificate old/cacert.pem is EXPIRED")

    # installing a certificate from another CA / with the wrong key / for the wrong role
    ok("ca", "--dir", "good", cwd=tmp_path)
    ok("client", "--dir", "good", "--cn", "x", cwd=tmp_path)
    k, c = make_client_cert(*other_ca, "x")
    write_key(tmp_path / "fk.pem", k)
    write_cert(tmp_path / "fc.pem", c)
    home = str(tmp_path / "home")
    fails("install", "--session", "--prefix", home, "--ca", "good/cacert.pem",
          "--cert", "fc.pem", "--key", "fk.pem", cwd=tmp_path,
          match="certificate fc.pem is not signed by the CA in good/cacert.pem")
    fails("install", "--session", "--prefix", home, "--cert", "good/clientcert.pem",
          "--key", "fk.pem", cwd=tmp_path,
          match="private key fk.pem does not match certificate good/clientcert.pem")
    fails("install", "--session", "--prefix", home, "--role", "server", "--dir", "good",
          cwd=tmp_path, match="good/servercert.pem does not exist")
    fails("install", "--session", "--prefix", home, "--role", "server",
          "--cert", "good/clientcert.pem", "--key", "good/clientkey.pem", cwd=tmp_path,
          match="cannot be used as a server certificate (its extendedKeyUsage lacks serverAuth)")
    fails("install", "--session", "--prefix", home, "--ca", "good/clientcert.pem",
          cwd=tmp_path, match="good/clientcert.pem is not a CA certificate")
    assert not (tmp_path / "home").exists()


def test_show_flags_expired_and_not_yet_valid(tmp_path: Path, ca: CA,
                                              days_ago: Callable[[int], datetime]) -> None:
    _, expired = make_client_cert(*ca, "old", not_before=days_ago(30), not_after=days_ago(1))
    _, future = make_client_cert(*ca, "new", not_before=days_ago(-2), not_after=days_ago(-30))
    write_cert(tmp_path / "expired.pem", expired)
    write_cert(tmp_path / "future.pem", future)
    out = ok("show", "expired.pem", cwd=tmp_path)
    assert "Status:              EXPIRED" in out and "EXPIRED" in out.split("Not after:")[1]
    out = ok("show", "future.pem", cwd=tmp_path)
    assert "Status:              NOT YET VALID" in out


def test_show_bundle(tmp_path: Path, ca: CA, other_ca: CA) -> None:
    (tmp_path / "bundle.pem").write_bytes(cert_to_pem(ca[1]) + cert_to_pem(other_ca[1]))
    out = ok("show", "bundle.pem", cwd=tmp_path)
    assert "bundle.pem (certificate 1 of 2)" in out and "bundle.pem (certificate 2 of 2)" in out


def test_install_warns_about_not_yet_valid_certificate(
        tmp_path: Path, ca: CA, days_ago: Callable[[int], datetime]) -> None:
    k, c = make_client_cert(*ca, "early", not_before=days_ago(-1), not_after=days_ago(-30))
    write_key(tmp_path / "k.pem", k)
    write_cert(tmp_path / "c.pem", c)
    r = run("install", "--session", "--prefix", "home", "--cert", "c.pem", "--key", "k.pem",
            cwd=tmp_path)
    assert r.returncode == 0 and "warning:" in r.stderr and "NOT YET VALID" in r.stderr


@pytest.mark.parametrize("role", ["server", "client"])
def test_install_refuses_expired_certificate(tmp_path: Path, ca: CA, role: str,
                                             days_ago: Callable[[int], datetime]) -> None:
    make = make_client_cert if role == "client" else make_server_cert
    k, c = make(*ca, "old", not_before=days_ago(30), not_after=days_ago(1))
    write_key(tmp_path / "k.pem", k)
    write_cert(tmp_path / "c.pem", c)
    fails("install", "--session", "--role", role, "--prefix", "home", "--cert", "c.pem",
          "--key", "k.pem", cwd=tmp_path, match="certificate c.pem has expired (not after ")
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("role", ["server", "client"])
def test_install_refuses_the_ca_as_server_or_client(tmp_path: Path, role: str) -> None:
    """QA ops finding 3: ``--cert ca/cacert.pem --key ca/cakey.pem`` copied the CA's
    signing key onto the server."""
    ok("ca", "--dir", "ca", cwd=tmp_path)
    last = fails("install", "--system", "--role", role, "--prefix", "root", "--force",
                 "--dir", "ca", "--cert", "ca/cacert.pem", "--key", "ca/cakey.pem",
                 cwd=tmp_path, match="certificate ca/cacert.pem is a CA certificate")
    assert "CA's key must never be used" in last and f"qemud-certs {role}" in last
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("key_mode", [0o644, 0o640, 0o604])
def test_signing_with_an_exposed_ca_key_warns(tmp_path: Path, key_mode: int) -> None:
    ok("ca", cwd=tmp_path)
    (tmp_path / "cakey.pem").chmod(key_mode)
    r = run("client", "--cn", "admin1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: CA private key cakey.pem is open to " in r.stderr
    assert f"(mode {key_mode:04o})" in r.stderr and "chmod 600 cakey.pem" in r.stderr
    r = run("server", "--hostname", "h", cwd=tmp_path)
    assert r.returncode == 0 and "chmod 600 cakey.pem" in r.stderr


def test_signing_with_a_private_ca_key_is_quiet(tmp_path: Path) -> None:
    ok("ca", cwd=tmp_path)
    assert mode(tmp_path / "cakey.pem") == 0o600
    r = run("client", "--cn", "admin1", cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr


def test_version(tmp_path: Path) -> None:
    r = run("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"qemud-certs {qemud.__version__}"


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "qemud-certs"
    if not script.exists():
        pytest.skip("qemud-certs console script not installed (python -m certs is tested)")
    r = subprocess.run([str(script), "ca", "--dir", "d"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "cakey.pem").exists()


def test_output_to_closed_pipe_is_quiet(tmp_path: Path) -> None:
    ok("ca", cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "certs", "show", "cacert.pem"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # reader went away before anything was written
    err = proc.stderr.read()
    proc.wait(timeout=120)
    proc.stderr.close()
    assert b"error" not in err and b"Traceback" not in err and b"Exception" not in err


def test_help_for_every_subcommand(tmp_path: Path) -> None:
    for sub in ("ca", "server", "client", "install", "show"):
        out = ok(sub, "--help", cwd=tmp_path)
        assert out.startswith(f"usage: qemud-certs {sub}")
    assert "install" in ok("--help", cwd=tmp_path)


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"ca", "server", "client", "install", "show"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} lacks help"


def test_in_process_main_returns_status(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "--dir", str(tmp_path)]) == 0
    assert main(["ca", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: refusing to overwrite")
