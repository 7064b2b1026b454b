"""qemud.config: path defaults per mode, the TOML file, flags, and errors that name the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemud.cli import build_parser, config_from_args
from qemud.config import (
    DEFAULT_SYSTEM_CONFIG,
    Limits,
    load_config,
    session_paths,
    system_paths,
)
from qemud.errors import ConfigError

# -- paths --------------------------------------------------------------------------------

def test_session_paths_follow_xdg() -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000",
           "XDG_CONFIG_HOME": "/cfg", "XDG_STATE_HOME": "/st"}
    p = session_paths(env)
    assert p.run_dir == Path("/run/user/1000/qemud")
    assert p.config_dir == Path("/cfg/qemud")
    assert p.state_dir == Path("/st/qemud")
    assert p.log_dir == Path("/st/qemud/log")
    assert p.rw_socket == Path("/run/user/1000/qemud/qemud-sock")
    assert p.ro_socket == Path("/run/user/1000/qemud/qemud-sock-ro")
    assert p.pidfile == Path("/run/user/1000/qemud/qemud.pid")
    assert p.domains_dir == Path("/cfg/qemud/domains")
    assert p.autostart_dir == Path("/cfg/qemud/autostart")
    assert p.guest_run_dir == Path("/run/user/1000/qemud/qemu")
    assert p.guest_log_dir == Path("/st/qemud/log/qemu")


def test_session_paths_fallbacks() -> None:
    p = session_paths({"HOME": "/home/u"})
    assert p.run_dir == Path(f"/tmp/qemud-{os.getuid()}/qemud")
    assert p.config_dir == Path("/home/u/.config/qemud")
    assert p.state_dir == Path("/home/u/.local/state/qemud")
    # empty variables count as unset
    p = session_paths({"HOME": "/h", "XDG_RUNTIME_DIR": "", "XDG_CONFIG_HOME": ""})
    assert p.run_dir == Path(f"/tmp/qemud-{os.getuid()}/qemud")
    assert p.config_dir == Path("/h/.config/qemud")


def test_session_paths_read_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/somewhere")
    assert session_paths().run_dir == Path("/somewhere/qemud")


def test_system_paths() -> None:
    p = system_paths()
    assert (p.run_dir, p.config_dir, p.state_dir, p.log_dir) == (
        Path("/run/qemud"), Path("/etc/qemud"), Path("/var/lib/qemud"), Path("/var/log/qemud"))
    assert p.rw_socket == Path("/run/qemud/qemud-sock")
    assert DEFAULT_SYSTEM_CONFIG == Path("/etc/qemud/qemud.toml")


def test_load_config_modes(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    c = load_config("session")
    assert c.mode == "session" and c.source is None
    assert c.paths.config_dir == tmp_path / ".config" / "qemud"
    assert c.limits == Limits()
    # the session default file is picked up when present
    (tmp_path / ".config" / "qemud").mkdir(parents=True)
    (tmp_path / ".config" / "qemud" / "qemud.toml").write_text("[limits]\nmax_clients = 9\n")
    c = load_config("session")
    assert c.limits.max_clients == 9 and c.source == tmp_path / ".config/qemud/qemud.toml"
    with pytest.raises(ConfigError, match="mode must be session or system"):
        load_config("user")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qemud.toml"
    path.write_text(text)
    return path


def test_every_path_overridable_in_file_and_flags_beat_file(tmp_path) -> None:
    f = _write(tmp_path, "[paths]\nrun_dir = '/r'\nconfig_dir = '/c'\nstate_dir = '/s'\n"
                         "log_dir = '~/l'\n")
    c = load_config("system", f)
    assert (c.paths.run_dir, c.paths.config_dir, c.paths.state_dir) == (
        Path("/r"), Path("/c"), Path("/s"))
    assert c.paths.log_dir == Path(os.path.expanduser("~/l"))
    args = build_parser().parse_args(["--system", "--config", str(f), "--run-dir", "/R",
                                      "--log-dir", "/L", "--log-level", "warning",
                                      "--listen-tls", "--tls-port", "1234"])
    c = config_from_args(args)
    assert c.paths.run_dir == Path("/R") and c.paths.log_dir == Path("/L")
    assert c.paths.config_dir == Path("/c")  # not overridden: the file's value
    assert c.log.level == "warning" and c.listen.tls and c.listen.tls_port == 1234
    assert config_from_args(build_parser().parse_args(
        ["--config", str(f), "-v", "--log-level", "error"])).log.level == "debug"


def test_default_mode_depends_on_uid(tmp_path) -> None:
    f = _write(tmp_path, "")
    c = config_from_args(build_parser().parse_args(["--config", str(f)]))
    assert c.mode == ("system" if os.geteuid() == 0 else "session")


def test_values_of_the_right_type_are_taken(tmp_path) -> None:
    f = _write(tmp_path, """
[listen]
rw_socket_mode = 0o640
unix_ro = false
[limits]
max_clients = 7
frame_deadline = 2      # an integer is fine for a float
keepalive_interval = 0
[qemu]
emulator_dirs = ["/opt/qemu/bin"]
[tls]
allowed_dn = [{pattern = "CN=admin*", role = "full"}]
""")
    c = load_config("session", f)
    assert c.listen.rw_socket_mode == 0o640 and c.listen.unix_ro is False
    assert c.limits.max_clients == 7 and c.limits.frame_deadline == 2.0
    assert isinstance(c.limits.frame_deadline, float)
    assert c.qemu.emulator_dirs == ["/opt/qemu/bin"]
    assert c.source == f


@pytest.mark.parametrize("text, message", [
    ("[limits]\nmax_clientz = 5\n", "unknown key limits.max_clientz"),
    ("[limit]\nmax_clients = 5\n", "unknown section [limit]"),
    ("limits = 5\n", "[limits] must be a table"),
    ("[limits]\nmax_clients = '5'\n", "limits.max_clients must be an integer, got '5'"),
    ("[limits]\nmax_clients = 5.5\n", "limits.max_clients must be an integer"),
    ("[limits]\nmax_clients = true\n", "limits.max_clients must be an integer"),
    ("[limits]\nframe_deadline = 'soon'\n", "limits.frame_deadline must be a number"),
    ("[limits]\nframe_deadline = true\n", "limits.frame_deadline must be a number"),
    ("[listen]\nunix_ro = 1\n", "listen.unix_ro must be true or false"),
    ("[paths]\nrun_dir = 5\n", "paths.run_dir must be a path"),
    ("[log]\nfile = 3\n", "log.file must be a string"),
    ("[qemu]\nemulator_dirs = '/opt'\n", "qemu.emulator_dirs must be a list"),
    ("[qemu]\nemulator_dirs = [1]\n", "qemu.emulator_dirs: every item must be a string"),
    ("[tls]\nallowed_dn = ['CN=x']\n", "tls.allowed_dn: every item must be a table"),
    ("[tls]\nallowed_dn = [{pattern = 'x', role = 'god'}]\n", "tls.allowed_dn[0]"),
    ("[limits]\nmax_frame = 100\n", "limits.max_frame must be between 1024"),
    ("[limits]\nmax_frame = 1000000000\n", "limits.max_frame must be between"),
    ("[limits]\nmax_clients = 0\n", "limits.max_clients must be at least 1"),
    ("[limits]\nkeepalive_count = 0\n", "limits.keepalive_count must be at least 1"),
    ("[limits]\nmax_queued_bytes = 0\n", "limits.max_queued_bytes must be at least 1"),
    ("[limits]\nframe_deadline = 0\n", "limits.frame_deadline must be positive"),
    ("[limits]\ncall_deadline = -1\n", "limits.call_deadline must be positive"),
    ("[limits]\ntls_handshake_deadline = 0\n", "limits.tls_handshake_deadline must be positive"),
    ("[limits]\nkeepalive_interval = -1\n", "limits.keepalive_interval must be >= 0"),
    ("[listen]\ntls_port = 70000\n", "listen.tls_port out of range"),
    ("[listen]\nro_socket_mode = 0o7777\n", "listen.ro_socket_mode must be a permission mode"),
    ("[qemu]\nvnc_port_min = 100\n", "qemu.vnc_port_min/max"),
    ("[qemu]\nlog_max_bytes = -1\n", "qemu.log_max_bytes must be >= 0"),
    ("[qemu]\ndestroy_grace = -0.5\n", "qemu.destroy_grace must be >= 0 (seconds"),
    # NaN passes every comparison and inf is no deadline: both refused, naming the key
    ("[limits]\ncall_deadline = nan\n", "limits.call_deadline must be a finite number, got nan"),
    ("[limits]\nframe_deadline = nan\n", "limits.frame_deadline must be a finite number"),
    ("[limits]\ntls_handshake_deadline = inf\n",
     "limits.tls_handshake_deadline must be a finite number, got inf"),
    ("[qemu]\ndestroy_grace = nan\n", "qemu.destroy_grace must be a finite number"),
    ("[qemu]\ndestroy_grace = -inf\n", "qemu.destroy_grace must be a finite number"),
    ("[appliance]\nrestart_window = nan\n", "appliance.restart_window must be a finite"),
    ("[appliance]\nupdate_deadline = inf\n", "appliance.update_deadline must be a finite"),
    ("[limits]\ncall_deadline = 1e9\n", "limits.call_deadline must be positive (seconds, "
                                        "at most 604800), got 1000000000.0"),
    ("[limits]\nkeepalive_interval = 700000\n", "limits.keepalive_interval must be >= 0"),
    # values that used to be taken unchecked
    ("[appliance]\nrestart_budget = -5\n", "appliance.restart_budget must be >= 0"),
    ("[appliance]\nrestart_window = -5.0\n", "appliance.restart_window must be positive"),
    ("[appliance]\nrestart_window = 0\n", "appliance.restart_window must be positive"),
    ("[appliance]\nhost_reserve_mib = -5\n", "appliance.host_reserve_mib must be >= 0, got -5"),
    ("[appliance]\nupdate_deadline = -1.0\n", "appliance.update_deadline must be positive"),
    ("[appliance]\nimport_max_bytes = 0\n", "appliance.import_max_bytes must be at least 1 "
                                            "(bytes an appliance tarball may unpack to), got 0"),
    ("[appliance]\nimport_max_bytes = '64G'\n",
     "appliance.import_max_bytes must be an integer, got '64G'"),
    ("[appliance]\nshutdown_host_command = []\n",
     "appliance.shutdown_host_command must name a command to run, got []"),
    ("[appliance]\nreboot_host_command = ['']\n", "appliance.reboot_host_command must name"),
    ("[listen]\nrw_socket_mode = 0o4777\n", "listen.rw_socket_mode must be a permission mode "
                                            "such as 0o600, got 0o4777"),
    ("[listen]\ntls_address = ''\n", "listen.tls_address must not be empty"),
    # paths: absolute, "" only where documented
    ("[paths]\nrun_dir = ''\n", "paths.run_dir must be an absolute path, got ''"),
    ("[paths]\nstate_dir = 'state'\n", "paths.state_dir must be an absolute path, got 'state'"),
    ("[log]\nfile = 'qemud.log'\n", "log.file must be an absolute path (or \"\" for stderr), "
                                    "got 'qemud.log'"),
    ("[log]\naudit_file = 'a/audit.log'\n", "log.audit_file must be an absolute path"),
    ("[qemu]\ncache_dir = 'c'\n", "qemu.cache_dir must be an absolute path"),
    ("[qemu]\nemulator_dirs = ['/ok', 'bin']\n",
     "qemu.emulator_dirs: every item must be an absolute path, got 'bin'"),
    ("[qemu]\nemulator_dirs = ['']\n", "qemu.emulator_dirs: every item must be an absolute"),
    ("[appliance]\ninspect_root = ''\n", "appliance.inspect_root must be an absolute path, "
                                         "got ''"),
    ("[appliance]\nimage_store = 'img'\n", "appliance.image_store must be an absolute path"),
    ("[appliance]\nhotplug_rules = 'h.toml'\n", "appliance.hotplug_rules must be an absolute"),
    ("[tls]\nca_file = ''\n", "tls.ca_file must be an absolute path, got ''"),
    ("[tls]\nkey_file = 'key.pem'\n", "tls.key_file must be an absolute path"),
    ("[paths]\nrun_dir = '/tmp/" + "d" * 100 + "'\n", "paths.run_dir is too long"),
    ("[log]\nlevel = 'loud'\n", "log.level must be debug/info/warning/error"),
    ("[limits\n", "qemud.toml"),  # TOML syntax error names the file
])
def test_bad_config_is_an_error_naming_the_key(tmp_path, text, message) -> None:
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config("session", f)
    assert message in info.value.message
    assert str(f) in info.value.message  # every message says which file


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config("session", tmp_path / "nope.toml")


def _run_qemud(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qemud", "--session", "--run-dir", str(tmp_path / "run"),
         "--config-dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "lib"),
         "--log-dir", str(tmp_path / "log"), *args],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("text, message", [
    ("[limits]\nmax_clientz = 5\n", "unknown key limits.max_clientz"),
    ("[limits]\nmax_clients = 'many'\n", "limits.max_clients must be an integer"),
])
def test_daemon_refuses_to_start_with_bad_config(tmp_path, text, message) -> None:
    f = _write(tmp_path, text)
    proc = _run_qemud(tmp_path, "--config", str(f))
    assert proc.returncode == 1
    assert proc.stderr.startswith("qemud: error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "qemud-sock").exists()


def test_daemon_refuses_bad_flags(tmp_path) -> None:
    proc = _run_qemud(tmp_path, "--log-level", "loud")
    assert proc.returncode == 2 and "invalid choice: 'loud'" in proc.stderr
    proc = _run_qemud(tmp_path, "--session", "--system")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_tilde_is_expanded_in_every_path_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    f = _write(tmp_path, """
[paths]
run_dir = "~/run"
[log]
file = "~/qemud.log"
audit_file = "~/audit.log"
[qemu]
cache_dir = "~/cache"
emulator_dirs = ["~/bin", "/opt/bin"]
[tls]
ca_file = "~/pki/ca.pem"
cert_file = "~/pki/cert.pem"
key_file = "~/pki/key.pem"
[appliance]
inspect_root = "~/root"
hotplug_rules = "~/hotplug.toml"
image_store = "~/images"
""")
    c = load_config("session", f)
    home = str(tmp_path / "home")
    assert c.paths.run_dir == Path(home, "run")
    assert (c.log.file, c.log.audit_file) == (f"{home}/qemud.log", f"{home}/audit.log")
    assert c.qemu.cache_dir == f"{home}/cache"
    assert c.qemu.emulator_dirs == [f"{home}/bin", "/opt/bin"]
    assert (c.tls.ca_file, c.tls.cert_file, c.tls.key_file) == (
        f"{home}/pki/ca.pem", f"{home}/pki/cert.pem", f"{home}/pki/key.pem")
    assert c.appliance.inspect_root == f"{home}/root"
    assert c.appliance.hotplug_rules == f"{home}/hotplug.toml"
    assert c.appliance.image_store == f"{home}/images"
    # "" keeps its documented meaning
    c = load_config("session", _write(tmp_path, "[log]\nfile = ''\n[qemu]\ncache_dir = ''\n"))
    assert (c.log.file, c.qemu.cache_dir) == ("", "")


def test_relative_xdg_variables_are_ignored() -> None:
    # the XDG spec: a relative path in these variables is invalid and must be ignored
    p = session_paths({"HOME": "/h", "XDG_RUNTIME_DIR": "run", "XDG_STATE_HOME": "st"})
    assert p.run_dir == Path(f"/tmp/qemud-{os.getuid()}/qemud")
    assert p.state_dir == Path("/h/.local/state/qemud")


def test_path_flags_are_absolute_and_not_empty(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    f = _write(tmp_path, "")
    c = config_from_args(build_parser().parse_args(
        ["--config", str(f), "--run-dir", "r", "--log-file", "q.log", "--tls-address", "::1"]))
    assert c.paths.run_dir == tmp_path / "r" and c.log.file == str(tmp_path / "q.log")
    assert c.listen.tls_address == "::1"
    assert c.overrides["paths"] == {"run_dir": str(tmp_path / "r")}  # kept for SIGHUP
    # --log-file "" is stderr, overriding a file set in the config file
    f2 = _write(tmp_path, "[log]\nfile = '/x/q.log'\n")
    assert config_from_args(build_parser().parse_args(
        ["--config", str(f2), "--log-file", ""])).log.file == ""
    for flag in ("--run-dir", "--state-dir", "--tls-address"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([flag, ""])
        assert info.value.code == 2
        assert f"argument {flag}: must not be empty" in capsys.readouterr().err


def test_version_flag(capsys) -> None:
    from qemud import __version__
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"qemud (qemud) {__version__}\n"
