"""docs/TLS.md: its commands work as written, and it explains every refusal the daemon
logs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.cli import build_parser
from tests.helpers.daemon import env_without_daemon_vars
from tests.tls.conftest import TLSDaemon, start_tls_daemon

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "TLS.md"


def _shell_lines(text: str) -> list[str]:
    """Command lines of the doc's fenced blocks, continuations joined, comments cut."""
    lines: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def test_documented_qemud_certs_commands_parse() -> None:
    commands = []
    for line in _shell_lines(DOC.read_text()):
        for part in re.split(r"&&|;", line):
            words = shlex.split(part)
            if "qemud-certs" in words:
                commands.append(words[words.index("qemud-certs") + 1:])
    assert {c[0] for c in commands} >= {"ca", "server", "client", "install", "show"}
    parser = build_parser()
    for args in commands:
        parser.parse_args(args)  # exits (SystemExit) on an option that does not exist


def test_troubleshooting_covers_every_refusal() -> None:
    text = DOC.read_text()
    for phrase in [
        "client certificate has expired",
        "client certificate is not yet valid",
        "client certificate is not signed by the CA in tls.ca_file",
        "client presented no certificate",
        "is not in the daemon's tls.allowed_dn list",
        "not a TLS client",
        "the client aborted the handshake",
        "not finished within",
        "the client closed the connection during the TLS handshake",
        "no TLS version or cipher in common",
        "too many clients",
        "Hostname mismatch",
        "Connection refused",
        "O=Example,CN=admin1",
        "certificate order",
        "qemud --system --listen-tls",
        "qemush -c qemud+tls://host.example.com/system list",
    ]:
        assert phrase in text, phrase


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TLSDaemon, Path]]:
    """Steps 1-7 of docs/TLS.md with the real qemud-certs CLI (relocated with --prefix)."""
    work = tmp_path_factory.mktemp("walkthrough")
    ca = work / "qemud-ca"

    def certs(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "certs", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr

    certs("ca", "--dir", str(ca), "--cn", "Example qemud CA")
    certs("server", "--dir", str(ca), "--hostname", "localhost", "--ip", "127.0.0.1")
    certs("client", "--dir", str(ca), "--cn", "admin1", "--org", "Example")
    certs("install", "--system", "--prefix", str(work / "server-root"), "--dir", str(ca))
    certs("install", "--session", "--prefix", str(work / "home"), "--dir", str(ca))
    pki = work / "server-root" / "etc" / "pki"
    daemon = start_tls_daemon(tmp_path_factory.mktemp("qemud-walkthrough"), {
        "ca_file": pki / "CA" / "cacert.pem", "cert_file": pki / "qemud" / "servercert.pem",
        "key_file": pki / "qemud" / "private" / "serverkey.pem"})
    yield daemon, work / "home" / ".pki" / "qemud"
    try:
        daemon.stop()
    except Exception:
        daemon.kill()


def test_walkthrough_ends_in_qemush_list(walkthrough: tuple[TLSDaemon, Path]) -> None:
    daemon, pkipath = walkthrough
    uri = f"qemud+tls://localhost:{daemon.tls_port}/system?pkipath={pkipath}"

    def qemush(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "client.shell", "-c", uri, *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env=env_without_daemon_vars(), stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "Name" in qemush("list")
    listed = qemush("client-list")
    assert "tls" in listed and "O=Example,CN=admin1" in listed
