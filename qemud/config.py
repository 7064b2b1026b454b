"""Daemon configuration: defaults, the TOML file, and command-line overrides.

Every key is documented in docs/CONFIG.md and in contrib/qemud.toml.example; a test
checks that each dataclass field below appears in both, so neither can go stale.
Unknown keys are an error naming the key (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.constants import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME

from .errors import ConfigError

__all__ = ["Config", "Paths", "Limits", "Listen", "TLSConfig", "QemuConfig", "LogConfig",
           "ApplianceConfig",
           "load_config", "session_paths", "system_paths", "DEFAULT_SYSTEM_CONFIG"]

DEFAULT_SYSTEM_CONFIG = Path("/etc/qemud/qemud.toml")

#: The smallest limits.max_frame accepted: below this even an error reply may not fit.
MIN_MAX_FRAME = 1024

#: The longest duration any key accepts, in seconds (a week): the loop's selector cannot
#: wait much longer (epoll's timeout is an int of milliseconds, ~24 days), and longer
#: deadlines or windows are typos rather than intentions.
MAX_SECONDS = 7 * 24 * 3600

#: appliance.import_max_bytes by default: 64 GiB. An import unpacks into the image store
#: (by default on state_dir, with the guests' disks, saved states and snapshots), and a
#: tarball of a few KiB can declare terabytes (compressed zeros, sparse members). An
#: appliance is a few disk images and a kernel: 64 GiB holds a raw (fully allocated)
#: 32 GiB system disk and as large a data disk, past what appliances ship, while a
#: compression bomb of a 100 MiB download (gzip reaches 1000:1) is refused.
DEFAULT_IMPORT_MAX_BYTES = 64 << 30

#: Longest unix socket path (sun_path is 108 bytes on Linux, with the trailing NUL).
MAX_UNIX_PATH = 107

#: String keys that hold paths: ``~`` is expanded and the path must be absolute. The
#: value says what ``""`` means, or is None where an empty value is refused.
PATH_KEYS: dict[tuple[str, str], str | None] = {
    ("tls", "ca_file"): None,
    ("tls", "cert_file"): None,
    ("tls", "key_file"): None,
    ("qemu", "emulator_dirs"): None,  # a list: each item
    ("qemu", "cache_dir"): "<state_dir>/cache",
    ("appliance", "inspect_root"): None,
    ("appliance", "hotplug_rules"): "<config_dir>/hotplug.toml",
    ("appliance", "image_store"): "<state_dir>/images",
    ("log", "file"): "stderr",
    ("log", "audit_file"): "<log_dir>/audit.log",
}

#: Duration keys (seconds): finite, at most MAX_SECONDS; the value says whether 0 is allowed.
_SECONDS_KEYS: dict[tuple[str, str], bool] = {
    ("limits", "frame_deadline"): False,
    ("limits", "tls_handshake_deadline"): False,
    ("limits", "call_deadline"): False,
    ("limits", "keepalive_interval"): True,  # 0: no pings
    ("qemu", "destroy_grace"): True,  # 0: SIGKILL at once
    ("appliance", "restart_window"): False,
    ("appliance", "update_deadline"): False,
}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list",
               Path: "a path (string)"}


@dataclass
class Paths:
    """Where the daemon keeps things. Session and system modes differ only here."""

    run_dir: Path  # sockets, pidfile, per-guest runtime state (survives daemon restarts)
    config_dir: Path  # qemud.toml, domains/*.xml (persistent guests), autostart/
    state_dir: Path  # saved memory images, snapshots metadata, appliance images
    log_dir: Path  # daemon log, audit log, qemu/<guest>.log

    @property
    def rw_socket(self) -> Path:
        return self.run_dir / "qemud-sock"

    @property
    def ro_socket(self) -> Path:
        return self.run_dir / "qemud-sock-ro"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemud.pid"

    @property
    def domains_dir(self) -> Path:
        return self.config_dir / "domains"

    @property
    def autostart_dir(self) -> Path:
        return self.config_dir / "autostart"

    @property
    def guest_run_dir(self) -> Path:
        return self.run_dir / "qemu"

    @property
    def guest_log_dir(self) -> Path:
        return self.log_dir / "qemu"


def session_paths(env: dict[str, str] | None = None) -> Paths:
    """Per-user paths, XDG style: runtime under $XDG_RUNTIME_DIR, config under ~/.config."""
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME", str(Path.home())))
    runtime = _xdg_dir(env, "XDG_RUNTIME_DIR") or f"/tmp/qemud-{os.getuid()}"
    config = Path(_xdg_dir(env, "XDG_CONFIG_HOME") or home / ".config") / "qemud"
    state = Path(_xdg_dir(env, "XDG_STATE_HOME") or home / ".local" / "state") / "qemud"
    return Paths(run_dir=Path(runtime) / "qemud", config_dir=config, state_dir=state,
                 log_dir=state / "log")


def _xdg_dir(env: dict[str, str], name: str) -> str | None:
    """``$name`` if set to an absolute path: the XDG spec says to ignore relative ones."""
    value = env.get(name)
    return value if value and os.path.isabs(value) else None


def system_paths() -> Paths:
    return Paths(run_dir=Path("/run/qemud"), config_dir=Path("/etc/qemud"),
                 state_dir=Path("/var/lib/qemud"), log_dir=Path("/var/log/qemud"))


@dataclass
class Listen:
    unix_rw: bool = True
    unix_ro: bool = True
    rw_socket_mode: int = 0o600
    ro_socket_mode: int = 0o666
    tls: bool = False
    tls_address: str = "0.0.0.0"
    tls_port: int = 16514


@dataclass
class Limits:
    """Bounds on what clients can make the daemon hold; hitting one is logged."""

    max_clients: int = 5000
    max_frame: int = DEFAULT_MAX_FRAME
    frame_deadline: float = 10.0  # seconds a partially received frame may take
    keepalive_interval: int = 5  # seconds of client silence before a ping; 0 = never
    keepalive_count: int = 5  # unanswered pings before the client is dropped
    max_queued_bytes: int = 8 * 1024 * 1024  # unsent replies+events per client
    max_event_callbacks: int = 256  # event registrations one connection may hold
    tls_handshake_deadline: float = 10.0
    call_deadline: float = 300.0  # a deferred call (QEMU work, a define's fsyncs) fails after


@dataclass
class TLSConfig:
    ca_file: str = "/etc/pki/CA/cacert.pem"
    cert_file: str = "/etc/pki/qemud/servercert.pem"
    key_file: str = "/etc/pki/qemud/private/serverkey.pem"
    #: list of {pattern = "CN=admin*,O=Example", role = "full" | "readonly"}
    allowed_dn: list[dict[str, str]] = field(default_factory=list)


@dataclass
class QemuConfig:
    vnc_port_min: int = 5900
    vnc_port_max: int = 6899
    destroy_grace: float = 3.0  # seconds between SIGTERM and SIGKILL
    log_max_bytes: int = 1024 * 1024  # guest log rotated to .1 past this (see driver/process)
    emulator_dirs: list[str] = field(default_factory=list)  # extra dirs searched first
    cache_dir: str = ""  # capabilities cache; "" = <state_dir>/cache


@dataclass
class ApplianceConfig:
    """The appliance layer's host-wide settings (per-guest ones live in domain metadata)."""

    inspect_root: str = "/"  # where /proc and /sys are read from (tests use a fake tree)
    host_reserve_mib: int = 512  # host.reserve in templates: memory kept for the host
    shutdown_host_command: list[str] = field(
        default_factory=lambda: ["systemctl", "poweroff"])
    reboot_host_command: list[str] = field(default_factory=lambda: ["systemctl", "reboot"])
    restart_budget: int = 3  # automatic restarts allowed per restart_window
    restart_window: float = 60.0
    hotplug_rules: str = ""  # TOML file of udev hotplug rules; "" = <config_dir>/hotplug.toml
    image_store: str = ""  # appliance images; "" = <state_dir>/images
    update_deadline: float = 120.0  # heartbeats must resume this soon after an A/B update
    #: the most an appliance tarball may unpack to (the sum of its files' sizes)
    import_max_bytes: int = DEFAULT_IMPORT_MAX_BYTES


@dataclass
class LogConfig:
    level: str = "info"
    file: str = ""  # "" = stderr
    audit_file: str = ""  # "" = <log_dir>/audit.log


@dataclass
class Config:
    mode: str  # "session" | "system"
    paths: Paths
    listen: Listen = field(default_factory=Listen)
    limits: Limits = field(default_factory=Limits)
    tls: TLSConfig = field(default_factory=TLSConfig)
    qemu: QemuConfig = field(default_factory=QemuConfig)
    log: LogConfig = field(default_factory=LogConfig)
    appliance: ApplianceConfig = field(default_factory=ApplianceConfig)
    source: Path | None = None  # the file it was read from
    #: the command-line overrides, applied again when the file is re-read on SIGHUP
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        self._validate_numbers()
        self._validate_paths()
        lim = self.limits
        if not MIN_MAX_FRAME <= lim.max_frame <= ABSOLUTE_MAX_FRAME:
            raise ConfigError(f"limits.max_frame must be between {MIN_MAX_FRAME} and "
                              f"{ABSOLUTE_MAX_FRAME}, got {lim.max_frame}")
        for name in ("max_clients", "keepalive_count", "max_queued_bytes",
                     "max_event_callbacks"):
            if getattr(lim, name) < 1:
                raise ConfigError(f"limits.{name} must be at least 1, got {getattr(lim, name)}")
        for name in ("rw_socket_mode", "ro_socket_mode"):
            mode = getattr(self.listen, name)
            if not 0 <= mode <= 0o777:
                shown = f"{mode:#o}" if mode >= 0 else f"-{-mode:#o}"
                raise ConfigError(f"listen.{name} must be a permission mode such as 0o600, "
                                  f"got {shown}")
        if not 0 < self.listen.tls_port < 65536:
            raise ConfigError(f"listen.tls_port out of range: {self.listen.tls_port}")
        if not self.listen.tls_address.strip():
            raise ConfigError("listen.tls_address must not be empty (\"0.0.0.0\" is every "
                              "IPv4 address, \"::\" every IPv6 one)")
        q = self.qemu
        if not 5900 <= q.vnc_port_min <= q.vnc_port_max <= 65535:
            raise ConfigError("qemu.vnc_port_min/max must satisfy 5900 <= min <= max <= 65535")
        if q.log_max_bytes < 0:
            raise ConfigError("qemu.log_max_bytes must be >= 0 (0 starts a fresh log at every "
                              f"guest start), got {q.log_max_bytes}")
        a = self.appliance
        if a.host_reserve_mib < 0:
            raise ConfigError(f"appliance.host_reserve_mib must be >= 0, got {a.host_reserve_mib}")
        if a.import_max_bytes < 1:
            raise ConfigError("appliance.import_max_bytes must be at least 1 (bytes an "
                              f"appliance tarball may unpack to), got {a.import_max_bytes}")
        if a.restart_budget < 0:
            raise ConfigError("appliance.restart_budget must be >= 0 (0 never restarts a guest "
                              f"automatically), got {a.restart_budget}")
        for name in ("shutdown_host_command", "reboot_host_command"):
            command = getattr(a, name)
            if not command or not command[0].strip():
                raise ConfigError(f"appliance.{name} must name a command to run, "
                                  f"got {command!r}")
        if self.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log.level must be debug/info/warning/error, not {self.log.level!r}")
        for i, entry in enumerate(self.tls.allowed_dn):
            if set(entry) != {"pattern", "role"} or entry["role"] not in ("full", "readonly"):
                raise ConfigError(f"tls.allowed_dn[{i}] must be {{pattern = \"...\", role = "
                                  f"\"full\"|\"readonly\"}}, got {entry!r}")

    def _validate_numbers(self) -> None:
        """Every float is finite (NaN passes every comparison, so it must be caught first);
        every duration is within 0 (or just above) and MAX_SECONDS."""
        for section_name in _SECTIONS:
            section = getattr(self, section_name)
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{section_name}.{f.name} must be a finite number, "
                                      f"got {value!r}")
        for (section_name, key), zero_ok in _SECONDS_KEYS.items():
            value = getattr(getattr(self, section_name), key)
            if value < 0 or (value == 0 and not zero_ok) or value > MAX_SECONDS:
                bound = ">= 0" if zero_ok else "positive"
                raise ConfigError(f"{section_name}.{key} must be {bound} (seconds, at most "
                                  f"{MAX_SECONDS}), got {value!r}")

    def _validate_paths(self) -> None:
        """Paths are absolute (a relative one would depend on the daemon's cwd, which is
        ``/`` under systemd); ``""`` only where it has a documented meaning."""
        for f in dataclasses.fields(self.paths):
            value = getattr(self.paths, f.name)
            if not value.is_absolute():
                raise ConfigError(f"paths.{f.name} must be an absolute path, got "
                                  f"{str(value)!r}")
        for (section_name, key), empty in PATH_KEYS.items():
            value = getattr(getattr(self, section_name), key)
            for item in value if isinstance(value, list) else [value]:
                if item == "" and empty is not None:
                    continue
                if not os.path.isabs(item):
                    what = ": every item" if isinstance(value, list) else ""
                    also = f" (or \"\" for {empty})" if empty is not None else ""
                    raise ConfigError(f"{section_name}.{key}{what} must be an absolute "
                                      f"path{also}, got {item!r}")
        listen = self.listen
        for enabled, sock in ((listen.unix_rw, self.paths.rw_socket),
                              (listen.unix_ro, self.paths.ro_socket)):
            if enabled and len(os.fsencode(sock)) > MAX_UNIX_PATH:
                raise ConfigError(f"paths.run_dir is too long: the socket path {sock} has "
                                  f"{len(os.fsencode(sock))} bytes, a unix socket path at "
                                  f"most {MAX_UNIX_PATH}")


_SECTIONS = {"paths": Paths, "listen": Listen, "limits": Limits, "tls": TLSConfig,
             "qemu": QemuConfig, "log": LogConfig, "appliance": ApplianceConfig}


def load_config(mode: str, path: Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Defaults for ``mode``, then the TOML file (if any), then ``overrides`` (from flags)."""
    if mode not in ("session", "system"):
        raise ConfigError(f"mode must be session or system, not {mode!r}")
    paths = session_paths() if mode == "session" else system_paths()
    config = Config(mode=mode, paths=paths)
    if path is None:
        default = (paths.config_dir / "qemud.toml") if mode == "session" else DEFAULT_SYSTEM_CONFIG
        path = default if default.exists() else None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        config.source = path
    for section_name, values in list(data.items()) + list((overrides or {}).items()):
        _apply(config, section_name, values, path)
    config.overrides = overrides or {}
    try:
        config.validate()
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc.message}") from None
    return config


def _apply(config: Config, section_name: str, values: Any, path: Path | None) -> None:
    where = f"{path}: " if path else ""
    if section_name not in _SECTIONS:
        raise ConfigError(f"{where}unknown section [{section_name}] "
                          f"(known: {', '.join(sorted(_SECTIONS))})")
    if not isinstance(values, dict):
        raise ConfigError(f"{where}[{section_name}] must be a table")
    section = getattr(config, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}unknown key {section_name}.{key} "
                              f"(known: {', '.join(sorted(fields))})")
        current = getattr(section, key)
        expected = Path if isinstance(current, Path) else type(current)
        if isinstance(current, Path) and isinstance(value, str):
            if not value:  # Path("") would be ".", the daemon's cwd
                raise ConfigError(f"{where}{section_name}.{key} must be an absolute path, "
                                  "got ''")
            value = Path(os.path.expanduser(value))
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}{section_name}.{key} must be true or false, "
                                  f"got {value!r}")
        elif isinstance(current, float) and isinstance(value, int) and \
                not isinstance(value, bool):
            value = float(value)
        elif type(current) is not type(value) and current is not None:
            raise ConfigError(f"{where}{section_name}.{key} must be "
                              f"{_TYPE_NAMES.get(expected, expected.__name__)}, got {value!r}")
        if isinstance(value, list):
            item_type = _list_item_type(type(section), key)
            for item in value:
                if item_type is not None and not isinstance(item, item_type):
                    raise ConfigError(f"{where}{section_name}.{key}: every item must be "
                                      f"{_TYPE_NAMES.get(item_type, 'a table')}, got {item!r}")
        if (section_name, key) in PATH_KEYS:
            value = ([os.path.expanduser(v) for v in value] if isinstance(value, list)
                     else os.path.expanduser(value))
        setattr(section, key, value)


def _list_item_type(cls: type, key: str) -> type | None:
    """``str`` for a ``list[str]`` field, ``dict`` for ``list[dict[...]]``, else None."""
    hint = typing.get_type_hints(cls).get(key)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not list or len(args) != 1:
        return None
    item = typing.get_origin(args[0]) or args[0]
    return item if isinstance(item, type) else None
