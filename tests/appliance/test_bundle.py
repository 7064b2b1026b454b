"""SUPPORT_BUNDLE: the archive's members, redaction, no private keys, the shell command.

The daemon's TLS key file exists (a PEM private key) and its audit log is configured
inside the key's directory: neither may end up in the bundle.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as P
from client import appliance_images as images
from client.errors import ReadOnlyError
from qemud.appliance.bundle import LOG_CAP, _redact, is_private_key_path, redact_xml
from tests.conftest import DaemonFactory
from tests.helpers.daemon import (
    DaemonProcess,
    after_discards,
    env_without_daemon_vars,
    serving,
)
from tests.integration.domains import bare_xml

PEM = b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("qemud-bundle")
    private = root / "pki" / "private"
    private.mkdir(parents=True)
    (private / "serverkey.pem").write_bytes(PEM)
    daemon = DaemonProcess(root / "d", {
        "tls": {"key_file": str(private / "serverkey.pem"),
                "cert_file": str(root / "pki" / "servercert.pem")},
        "log": {"audit_file": str(private / "audit.log")}})
    with serving(daemon):
        yield daemon


def members(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name.split("/", 1)[1]] = f.read()
    return out


def test_bundle_members_and_no_private_key(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        running = conn.create_xml(bare_xml("bundle-run"))
        defined = conn.define_xml(bare_xml("bundle-def"))
        try:
            out = io.BytesIO()
            size = images.support_bundle(conn, out)
            # the connection is still usable afterwards
            assert conn.lookup_by_name("bundle-def").name == "bundle-def"
        finally:
            running.destroy()
            defined.undefine()
    data = out.getvalue()
    assert size == len(data) > 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
    assert len(tops) == 1 and tops.pop().startswith("qemud-support-")
    files = members(data)
    for name in ("MANIFEST.txt", "versions.txt", "config.toml", "capabilities.xml",
                 "domains.txt", "appliances.json", "logs/qemud.log",
                 "domains/bundle-def.xml", "domains/bundle-run.live.xml",
                 "logs/qemu/bundle-run.log"):
        assert name in files, (name, sorted(files))
    assert "domains/bundle-run.xml" not in files  # transient: no persistent XML
    versions = files["versions.txt"].decode()
    for word in ("qemud:", "python:", "kernel:", "qemu x86_64:", "kvm:"):
        assert word in versions
    assert b"<capabilities>" in files["capabilities.xml"]
    assert b"bundle-run\tstate=running" in files["domains.txt"]
    assert b"starting: " in files["logs/qemu/bundle-run.log"]
    config = files["config.toml"].decode()
    assert "[tls]" in config and "serverkey.pem" in config  # the path, not the key
    # no private key anywhere; the audit log under the key's directory is left out
    for name, content in files.items():
        assert b"PRIVATE KEY" not in content, name
        assert not name.endswith("key.pem"), name
    assert "logs/audit.log" not in files
    manifest = files["MANIFEST.txt"].decode()
    assert "audit.log: private key material" in manifest
    # the daemon left no staging directory behind (renamed away at the end of the
    # stream, removed by a child right after)
    assert not [n for n in after_discards(qemud.state_dir) if n.startswith(".bundle-")]


def test_a_symlink_among_the_guest_logs_is_left_out(qemud: DaemonProcess,
                                                    tmp_path: Path) -> None:
    """A link in the guest log directory (the daemon writes only files there) is not
    followed: the file it points at could be anything the daemon's user can read, and
    the bundle goes to a remote admin."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bundle\n")
    link = qemud.log_dir / "qemu" / "linked.log"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    try:
        with qemud.connect() as conn:
            out = io.BytesIO()
            images.support_bundle(conn, out)
        files = members(out.getvalue())
        assert "logs/qemu/linked.log" not in files
        assert all(b"not for the bundle" not in content for content in files.values())
        assert f"{link}: a symbolic link, not a guest log" in files["MANIFEST.txt"].decode()
    finally:
        link.unlink()


def test_bundle_needs_a_privileged_connection(qemud: DaemonProcess) -> None:
    with qemud.connect(readonly=True) as ro, pytest.raises(ReadOnlyError):
        images.support_bundle(ro, io.BytesIO())


def test_shell_support_bundle(qemud: DaemonProcess, tmp_path: Path) -> None:
    target = tmp_path / "bundle.tar.gz"
    r = subprocess.run([sys.executable, "-m", "client.shell", "-c", qemud.uri,
                        "support-bundle", "-o", str(target)], capture_output=True, text=True,
                       timeout=120, env=env_without_daemon_vars(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Support bundle written to {target} (")
    assert "versions.txt" in members(target.read_bytes())
    assert not Path(f"{target}.part").exists()


def test_shell_support_bundle_local_file_errors_are_error_lines(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    """A target that is a directory, and a write past the file size limit (as a full
    disk would fail it): virsh's error lines and exit 1, no traceback, no partial file
    left. Before, both were Python tracebacks."""
    def bundle(target: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.shell", "-c", qemud.uri,
                               "support-bundle", "-o", str(target)], capture_output=True,
                              text=True, timeout=120, env=env_without_daemon_vars(),
                              stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    directory = tmp_path / "adir"
    directory.mkdir()
    r = bundle(directory)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == [
        "error: Failed to write the support bundle",
        f"error: cannot rename '{directory}.part' to '{directory}': Is a directory"]
    small = tmp_path / "small.tar.gz"
    r = bundle(small, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                            (1024, 1024)))
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr.splitlines() == [
        "error: Failed to write the support bundle",
        f"error: cannot write '{small}.part': File too large"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_redaction_rules() -> None:
    assert _redact({"password": "x", "nested": {"db_secret": "y", "user": "u"},
                    "list": [{"passwd": "z"}], "key_file": "/k.pem"}) == {
        "password": "<redacted>", "nested": {"db_secret": "<redacted>", "user": "u"},
        "list": [{"passwd": "<redacted>"}], "key_file": "/k.pem"}
    xml = redact_xml("<domain><devices><graphics type='vnc' passwd='hunter2'/>"
                     "<secret>s3cr3t</secret></devices></domain>")
    assert "hunter2" not in xml and "s3cr3t" not in xml and xml.count("&lt;redacted&gt;") == 2
    keys = ["/etc/pki/qemud/private/serverkey.pem"]
    assert is_private_key_path(Path("/etc/pki/qemud/private/serverkey.pem"), keys)
    assert is_private_key_path(Path("/etc/pki/qemud/private/other.log"), keys)
    assert is_private_key_path(Path("/var/log/qemud/clientkey.pem"), keys)
    assert is_private_key_path(Path("/var/log/qemud/KEY.PEM"), keys)
    assert not is_private_key_path(Path("/var/log/qemud/audit.log"), keys)


def test_big_bundle_small_queue_limit(daemon_factory: DaemonFactory) -> None:
    """Logs are capped at their last 1 MiB each; relaying follows the client's pace, so a
    128 KiB output queue limit does not get the client dropped."""
    daemon = daemon_factory(config={"limits": {"max_queued_bytes": 128 * 1024}},
                            start=False)
    guest_logs = daemon.log_dir / "qemu"
    guest_logs.mkdir(parents=True)
    for i in range(4):
        (guest_logs / f"ghost{i}.log").write_bytes(b"head" + os.urandom(2 * LOG_CAP))
    daemon.start()
    with daemon.connect() as conn:
        stream = conn.open_stream(P.Procedure.SUPPORT_BUNDLE, P.Empty())
        time.sleep(1.0)  # the daemon may queue only so much meanwhile
        data = bytearray()
        while True:
            chunk = stream.recv(timeout=30)
            assert chunk != b"", "bundle stalled"
            if chunk is None:
                break
            data += chunk
        files = members(bytes(data))
        for i in range(4):
            log = files[f"logs/qemu/ghost{i}.log"]
            assert len(log) == LOG_CAP and not log.startswith(b"head")  # the end is kept
        assert conn.list_domains(0) == []  # still connected


def index(files: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """domains.txt: domain name -> its fields (``state``, ``uuid``, ``xml``...)."""
    out = {}
    for line in files["domains.txt"].decode().splitlines():
        name, *fields = line.split("\t")
        out[name] = dict(f.split("=", 1) for f in fields)
    return out


def test_names_that_sanitise_alike_keep_their_own_members(qemud: DaemonProcess) -> None:
    """"web 1", "web?1" and "web_1" all sanitise to web_1, "дом" and "кот" to ___, and
    the live XML of "domain" is named as the persistent XML of "domain.live": each guest
    has its own members, named in domains.txt, and a plain name keeps its plain ones.
    Before, the guest written last replaced the others, MANIFEST still listing them."""
    names = ["web 1", "web_1", "web?1", "дом", "кот", "domain.live"]
    gone = ["gh 1", "gh?1", "gh_1"]  # logs of guests no longer defined
    guest_logs = qemud.log_dir / "qemu"
    guest_logs.mkdir(parents=True, exist_ok=True)
    for name in names + gone:
        (guest_logs / f"{name}.log").write_text(f"log of {name}\n")
    (guest_logs / "web 1.log.1").write_text("rotated log of web 1\n")
    with qemud.connect() as conn:
        defined = [conn.define_xml(bare_xml(name)) for name in names]
        uuids = {d.name: d.uuid for d in defined}
        running = conn.create_xml(bare_xml("domain"))
        try:
            out = io.BytesIO()
            images.support_bundle(conn, out)
        finally:
            running.destroy()
            for dom in defined:
                dom.undefine()
            for name in names + gone:
                (guest_logs / f"{name}.log").unlink()
            (guest_logs / "web 1.log.1").unlink()
    files = members(out.getvalue())
    # as many members as the guests have files: none written over another
    assert len([m for m in files if m.startswith("domains/")]) == len(names) + 1
    assert len([m for m in files if m.startswith("logs/qemu/")]) >= len(names) + len(gone) + 2
    rows = index(files)
    assert set(names) | {"domain"} <= set(rows)
    # plain names keep the members they always had
    assert rows["web_1"]["xml"] == "domains/web_1.xml"
    assert rows["web_1"]["logs"] == "logs/qemu/web_1.log"
    assert rows["domain"]["live_xml"] == "domains/domain.live.xml"
    assert rows["domain"]["xml"] == "-"
    assert rows["domain"]["logs"] == "logs/qemu/domain.log"
    # the others: their sanitised name and the start of their uuid
    for name, base in (("web 1", "web_1"), ("web?1", "web_1"), ("дом", "___"),
                       ("кот", "___"), ("domain.live", "domain.live")):
        stem = f"{base}-{uuids[name][:8]}"
        assert rows[name]["xml"] == f"domains/{stem}.xml", (name, rows[name])
        assert rows[name]["live_xml"] == "-"
    assert rows["web 1"]["logs"] == (f"logs/qemu/web_1-{uuids['web 1'][:8]}.log,"
                                     f"logs/qemu/web_1-{uuids['web 1'][:8]}.log.1")
    # every guest's definition and log is there, each in its own member
    for name, row in rows.items():
        if name not in names:
            continue
        assert f"<name>{name}</name>".encode() in files[row["xml"]], name
        assert files[row["logs"].split(",")[0]] == f"log of {name}\n".encode()
    assert files[rows["web 1"]["logs"].split(",")[1]] == b"rotated log of web 1\n"
    assert b"<name>domain</name>" in files["domains/domain.live.xml"]
    assert b"starting: " in files["logs/qemu/domain.log"]
    # the logs of gone guests: a plain name as it is, the others with a counter
    assert {files[f"logs/qemu/{m}"] for m in ("gh_1.log", "gh_1-1.log", "gh_1-2.log")} == {
        f"log of {name}\n".encode() for name in gone}
    manifest = files["MANIFEST.txt"].decode()
    assert f"domains/___-{uuids['дом'][:8]}.xml (domain 'дом')" in manifest
    assert f"logs/qemu/___-{uuids['кот'][:8]}.log (last {LOG_CAP} bytes of " \
           f"{guest_logs / 'кот.log'})" in manifest
