"""Unix listeners: where they are, their permissions, and every path being overridable."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

from protocol import Procedure, Reply
from protocol.payloads import ClientIdArgs
from tests.helpers.daemon import wait_for
from tests.qemud.wire import RawClient


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sockets_and_dirs_with_their_modes(shared_daemon) -> None:
    d = shared_daemon
    assert stat.S_ISSOCK(os.stat(d.rw_socket).st_mode)
    assert stat.S_ISSOCK(os.stat(d.ro_socket).st_mode)
    assert _mode(d.rw_socket) == 0o600
    assert _mode(d.ro_socket) == 0o666
    assert _mode(d.run_dir) == 0o755
    assert (d.run_dir / "qemud.pid").read_text().strip() == str(d.pid())
    for sub in (d.config_dir / "domains", d.config_dir / "autostart", d.state_dir,
                d.log_dir / "qemu", d.run_dir / "qemu"):
        assert sub.is_dir(), sub
    assert d.audit_file.parent == d.log_dir
    with RawClient(d.rw_socket) as rw, RawClient(d.ro_socket) as ro:
        assert rw.hello_reply.readonly is False and ro.hello_reply.readonly is True
        assert rw.call(Procedure.GET_URI).result.value == "qemud:///session"


def test_paths_from_flags_modes_from_config_and_sd_notify(daemon_factory, tmp_path,
                                                          monkeypatch) -> None:
    """Every path can be moved with a flag (beating the file's [paths]); socket modes,
    the ro socket and the audit file come from the config; READY=1 goes to systemd."""
    alt = tmp_path / "alt"
    audit = tmp_path / "audit" / "audit.log"
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))  # inherited by the daemon
    d = daemon_factory(start=False, config={
        "listen": {"rw_socket_mode": 0o660, "unix_ro": False},
        "log": {"audit_file": str(audit)},
    }, extra_args=["--run-dir", str(alt / "run"), "--config-dir", str(alt / "etc"),
                   "--state-dir", str(alt / "lib"), "--log-dir", str(alt / "log")])
    try:
        d.start(wait=False)
        assert listener.recv(256) == b"READY=1"
    finally:
        listener.close()
    rw = alt / "run" / "qemud-sock"
    assert rw.exists() and not d.rw_socket.exists()  # (READY=1 comes after listening)
    assert _mode(rw) == 0o660
    assert not (alt / "run" / "qemud-sock-ro").exists()
    assert (alt / "run" / "qemud.pid").read_text().strip() == str(d.pid())
    for sub in (alt / "etc" / "domains", alt / "etc" / "autostart", alt / "lib",
                alt / "log" / "qemu", alt / "run" / "qemu"):
        assert sub.is_dir(), sub
    with RawClient(rw) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
        c.call(Procedure.ADMIN_CLIENT_DISCONNECT, ClientIdArgs(0))  # a mutation: audited
    wait_for(lambda: audit.exists() and "ADMIN_CLIENT_DISCONNECT" in audit.read_text(),
             timeout=5, message="audit line in log.audit_file")
    assert not (alt / "log" / "audit.log").exists()
    assert d.stop() == 0
    assert not rw.exists()


def test_stale_socket_replaced_but_other_files_are_not(daemon_factory) -> None:
    d = daemon_factory(start=False)
    d.run_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.rw_socket))  # a socket file nobody listens on
    stale.close()
    d.start()
    with RawClient(d.rw_socket) as c:
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    assert d.stop() == 0

    d.ro_socket.write_text("precious")  # not a socket: refuse rather than delete it
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    assert "is not a socket" in d.stderr_text()
    assert d.ro_socket.read_text() == "precious"


def test_help_lists_the_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "qemud", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for flag in ("--session", "--system", "--config", "--run-dir", "--config-dir",
                 "--state-dir", "--log-dir", "--listen-tls", "--tls-port", "--tls-address",
                 "--verbose", "--log-file", "--log-level"):
        assert flag in out.stdout, flag
