"""Start-up failures: a clear ``qemud: error:`` naming the key or flag, never a traceback,
and nothing left behind in the run directory; log files are private."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from certs.issue import make_ca, make_server_cert, write_cert, write_key
from certs.paths import PKIPaths
from qemud.config import Config, session_paths
from qemud.dispatch import Dispatcher, HelloPolicy
from qemud.errors import QemudError
from qemud.loop import EventLoop
from qemud.server import Server
from tests.helpers.daemon import SHARED_CACHE, DaemonProcess, wait_for


def _run_qemud(tmp_path: Path, *args: str, config: str = "",
               dirs: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """qemud with its own directories under ``tmp_path``; ``dirs`` replaces some."""
    flags = {"--run-dir": str(tmp_path / "run"), "--config-dir": str(tmp_path / "etc"),
             "--state-dir": str(tmp_path / "lib"), "--log-dir": str(tmp_path / "log"),
             **(dirs or {})}
    path = tmp_path / "qemud.toml"
    path.write_text(config)
    argv = [sys.executable, "-m", "qemud", "--session", "--config", str(path)]
    for flag, value in flags.items():
        argv += [flag, value]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def _refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("qemud: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_log_file_that_cannot_be_created(tmp_path) -> None:
    _refused(_run_qemud(tmp_path, config='[log]\nfile = "/proc/nope/x.log"\n'),
             "log.file (--log-file): cannot create the directory /proc/nope of "
             "/proc/nope/x.log: ")
    _refused(_run_qemud(tmp_path, "--log-file", "/proc/nope/x.log"), "--log-file")


def test_audit_file_that_is_a_directory(tmp_path) -> None:
    _refused(_run_qemud(tmp_path, config=f'[log]\naudit_file = "{tmp_path}"\n'),
             f"log.audit_file: cannot open {tmp_path}: Is a directory")


@pytest.mark.parametrize("flag, key", [
    ("--run-dir", "paths.run_dir"), ("--config-dir", "paths.config_dir"),
    ("--state-dir", "paths.state_dir"), ("--log-dir", "paths.log_dir")])
def test_directory_that_cannot_be_created(tmp_path, flag, key) -> None:
    proc = _run_qemud(tmp_path, "--log-file", str(tmp_path / "q.log"),
                      dirs={flag: "/proc/qa"})
    _refused(proc, f"{key} ({flag}): cannot create the directory /proc/qa")


def test_run_dir_that_is_a_file(tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    _refused(_run_qemud(tmp_path, dirs={"--run-dir": str(tmp_path / "afile")}),
             f"paths.run_dir (--run-dir): cannot create the directory {tmp_path / 'afile'}: "
             "File exists")


def test_run_dir_too_long_for_a_socket(tmp_path) -> None:
    long = tmp_path / ("d" * 110)
    _refused(_run_qemud(tmp_path, dirs={"--run-dir": str(long)}), "paths.run_dir is too long")
    assert not long.exists()


def test_unix_path_too_long_is_refused_by_the_server(tmp_path) -> None:
    loop = EventLoop()
    try:
        server = Server(loop, Config("session", session_paths()),
                        Dispatcher(HelloPolicy(server_name="t", keepalive_interval=0)))
        with pytest.raises(QemudError, match=r"\(listen.unix_ro\): the path has 1\d\d bytes"):
            server.listen_unix(tmp_path / ("s" * 110), 0o666, readonly=True)
    finally:
        loop.close()


@pytest.mark.parametrize("address, reason", [
    ("not-an-addr", "Name or service not known"),
    ("192.0.2.1", "Cannot assign requested address"),  # not an address of this host
])
def test_tls_address_that_cannot_be_bound(address, reason) -> None:
    loop = EventLoop()
    try:
        server = Server(loop, Config("session", session_paths()),
                        Dispatcher(HelloPolicy(server_name="t", keepalive_interval=0)))
        with pytest.raises(QemudError) as info:
            server.listen_tls(address, 0, None)  # type: ignore[arg-type]
        assert info.value.message.startswith(
            f"cannot listen for TLS on {address}:0 (listen.tls_address, listen.tls_port): ")
        assert info.value.message.endswith(reason)
        assert server.listeners == []
    finally:
        loop.close()


def _tls_files(root: Path) -> PKIPaths:
    ca = make_ca("startup test CA")
    key, cert = make_server_cert(*ca, ["localhost"], ["127.0.0.1"])
    paths = PKIPaths.from_dir(root)
    write_cert(paths.ca_cert, ca[1])
    write_key(paths.server_key, key)
    write_cert(paths.server_cert, cert)
    return paths


def test_tls_port_in_use_fails_cleanly_and_leaves_nothing_behind(tmp_path) -> None:
    pki = _tls_files(tmp_path / "pki")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = DaemonProcess(tmp_path / "d", {
            "listen": {"tls": True, "tls_address": "127.0.0.1", "tls_port": port},
            "tls": {"ca_file": str(pki.ca_cert), "cert_file": str(pki.server_cert),
                    "key_file": str(pki.server_key)}})
        d.start(wait=False)
        try:
            assert d.proc is not None and d.proc.wait(60) == 1
        finally:
            d.kill()
    err = d.stderr_text()
    assert err.startswith(f"qemud: error: cannot listen for TLS on 127.0.0.1:{port} "
                          "(listen.tls_address, listen.tls_port): Address already in use"), err
    assert "Traceback" not in err
    # the unix sockets were up already: they and the pidfile are gone again
    assert not d.rw_socket.exists() and not d.ro_socket.exists()
    assert not d.paths.pidfile.exists()


def test_logs_are_created_private(daemon_factory) -> None:
    d = daemon_factory()
    assert stat.S_IMODE(d.audit_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.log_file.stat().st_mode) == 0o600
    # an existing log keeps the mode its owner gave it
    d.stop()
    d.audit_file.chmod(0o640)
    d.start()
    assert stat.S_IMODE(d.audit_file.stat().st_mode) == 0o640


def test_missing_read_only_dirs_are_warned_about(daemon_factory, tmp_path) -> None:
    d = daemon_factory(config={"qemu": {"emulator_dirs": [str(tmp_path / "nope")]},
                               "appliance": {"inspect_root": str(tmp_path / "noroot")}})
    log = d.log_text()
    assert f"qemu.emulator_dirs: {tmp_path / 'nope'} is not a directory" in log
    assert f"appliance.inspect_root: {tmp_path / 'noroot'} has no proc directory" in log


class _NoConfigDaemon(DaemonProcess):
    """Started without --config: the session default file ($XDG_CONFIG_HOME) is used."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "qemud", "--session", "-v",
                "--run-dir", str(self.run_dir), "--config-dir", str(self.config_dir),
                "--state-dir", str(self.state_dir), "--log-dir", str(self.log_dir),
                "--log-file", str(self.log_file)]


def test_sighup_reads_a_config_file_created_since_start(tmp_path) -> None:
    xdg = tmp_path / "xdg"
    d = _NoConfigDaemon(tmp_path / "d", env={
        "XDG_CONFIG_HOME": str(xdg), "XDG_STATE_HOME": str(tmp_path / "xdgstate")})
    d.start()
    try:
        default = xdg / "qemud" / "qemud.toml"
        default.parent.mkdir(parents=True)
        # log.level and paths.* are set by flags, so the file's values do not change them
        default.write_text(f'[limits]\nmax_clients = 7\n[listen]\ntls_port = 20001\n'
                           f'[log]\nlevel = "error"\n[paths]\nrun_dir = "/elsewhere"\n'
                           f'[qemu]\ncache_dir = "{SHARED_CACHE}"\n')
        d.signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: limits reloaded" in d.log_text(), timeout=5,
                 message="reload logged")
        log = d.log_text()
        assert f"SIGHUP: limits reloaded from {default}" in log
        assert ("SIGHUP: changed keys not applied until qemud restarts: listen.tls_port, "
                "qemu.cache_dir\n") in log
    finally:
        assert d.stop() == 0
