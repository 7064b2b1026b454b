"""``qemud``: the daemon's command line."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, QemudError

__all__ = ["main", "build_parser"]


def _dir_flag(value: str) -> str:
    """A directory flag: not empty; relative to the current directory (made absolute)."""
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.abspath(os.path.expanduser(value))


def _file_flag(value: str) -> str:
    """``--log-file``: ``""`` means stderr; otherwise made absolute like a directory."""
    return _dir_flag(value) if value else ""


def _address_flag(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty (0.0.0.0 is every IPv4 address)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qemud",
        description="Manage QEMU guests and virtual appliances; clients connect with qemush "
                    "or the client library. Every config key is in docs/CONFIG.md.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--session", dest="mode", action="store_const", const="session",
                      help="per-user daemon: sockets in $XDG_RUNTIME_DIR/qemud, guests in "
                           "~/.config/qemud (default for non-root users)")
    mode.add_argument("--system", dest="mode", action="store_const", const="system",
                      help="system daemon: /run/qemud, /etc/qemud, /var/lib/qemud, "
                           "/var/log/qemud (default for root)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file (default: /etc/qemud/qemud.toml or "
                             "~/.config/qemud/qemud.toml if present)")
    parser.add_argument("--run-dir", type=_dir_flag, help="override paths.run_dir")
    parser.add_argument("--config-dir", type=_dir_flag, help="override paths.config_dir")
    parser.add_argument("--state-dir", type=_dir_flag, help="override paths.state_dir")
    parser.add_argument("--log-dir", type=_dir_flag, help="override paths.log_dir")
    parser.add_argument("--listen-tls", action="store_true",
                        help="enable the TLS TCP listener (listen.tls)")
    parser.add_argument("--tls-port", type=int, help="override listen.tls_port")
    parser.add_argument("--tls-address", type=_address_flag,
                        help="override listen.tls_address")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including every frame in and out")
    parser.add_argument("--log-file", type=_file_flag,
                        help="log to this file instead of stderr (\"\": stderr)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override log.level")
    parser.add_argument("--version", action="version", version=f"%(prog)s (qemud) {__version__}",
                        help="print the version and exit")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    mode = args.mode or ("system" if os.geteuid() == 0 else "session")
    overrides: dict[str, dict[str, Any]] = {}
    paths = {k: v for k, v in (("run_dir", args.run_dir), ("config_dir", args.config_dir),
                               ("state_dir", args.state_dir), ("log_dir", args.log_dir))
             if v is not None}
    if paths:
        overrides["paths"] = dict(paths)
    listen: dict[str, Any] = {}
    if args.listen_tls:
        listen["tls"] = True
    if args.tls_port is not None:
        listen["tls_port"] = args.tls_port
    if args.tls_address is not None:
        listen["tls_address"] = args.tls_address
    if listen:
        overrides["listen"] = listen
    log_over: dict[str, Any] = {}
    if args.log_file is not None:
        log_over["file"] = args.log_file
    if args.verbose:
        log_over["level"] = "debug"
    elif args.log_level:
        log_over["level"] = args.log_level
    if log_over:
        overrides["log"] = log_over
    return load_config(mode, args.config, overrides)


def setup_logging(config: Config) -> None:
    level = getattr(logging, config.log.level.upper())
    # Neither format below shows where a record was made or by which thread or process:
    # skip collecting that for every record (the logging docs' "Optimization" settings).
    # Each define or undefine logs two or three lines; this is ~5 us of each.
    logging._srcfile = None  # no caller lookup
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler: logging.Handler
    if config.log.file:
        handler = _open_log(Path(config.log.file), "log.file (--log-file)")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if config.log.audit_file:
        audit_path, key = Path(config.log.audit_file), "log.audit_file"
    else:
        audit_path, key = config.paths.log_dir / "audit.log", "paths.log_dir (--log-dir)"
    audit_handler = _open_log(audit_path, key)
    audit = logging.getLogger("qemud.audit")
    audit_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    audit.handlers[:] = [audit_handler]
    audit.setLevel(logging.INFO)


class PrivateFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that creates its file with mode 0600: the logs name clients
    (pid, uid, certificate DN) and guests. An existing file keeps its mode."""

    def _open(self) -> Any:
        return open(self.baseFilename, self.mode, encoding=self.encoding,  # noqa: SIM115
                    errors=self.errors, opener=_private_opener)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _open_log(path: Path, key: str) -> PrivateFileHandler:
    """Open a log file (creating its directory), or a ConfigError naming ``key``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create the directory {path.parent} of {path}: "
                          f"{exc.strerror}") from None
    try:
        return PrivateFileHandler(path)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot open {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        setup_logging(config)
        from .daemon import Daemon
        Daemon(config).run()
    except QemudError as exc:
        print(f"qemud: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # a start-up step not wrapped where it happens: still no traceback
        logging.getLogger(__name__).debug("start-up failed", exc_info=True)
        print(f"qemud: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
