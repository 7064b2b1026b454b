"""The daemon: wires config, lock, loop, server, events and the QEMU driver together.

Start-up order matters: the lock first (so a second daemon fails before touching
anything), then the driver (persistent guests loaded, running guests reconnected), then
the sockets (so no client sees a half-loaded daemon), then autostart.

Memory: an idle daemon should cost little, so what start-up freed is handed back to the
OS (:func:`trim_heap`) and libvirt's domain schema, a few MiB used only to validate a
define or attach, is dropped once unused for a while (:class:`SchemaRelease`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from protocol import Procedure

from . import __version__
from .conf import schema as domain_schema
from .config import Config
from .dispatch import Dispatcher, Handler, HelloPolicy
from .errors import ConfigError
from .events import EventBus
from .handlers import core_handlers
from .host import HostInfo, read_host_info
from .lockfile import DaemonLocks
from .loop import EventLoop, Timer
from .server import Server

__all__ = ["Daemon", "Driver", "SchemaRelease", "trim_heap"]

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_SECONDS = 5.0
#: libvirt's domain schema is dropped after this long without a validation: loading it
#: again takes ~15 ms, holding it ~5 MiB; defines come in bursts (a script, a deploy)
SCHEMA_IDLE_SECONDS = 10.0


class Driver(Protocol):
    """What the daemon needs from a hypervisor driver."""

    hypervisor_version: str

    def handlers(self) -> dict[Procedure, Handler]: ...
    def start(self) -> None: ...
    def autostart(self) -> None: ...
    def shutdown(self) -> None: ...
    def capabilities_xml(self) -> str: ...


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.uri = f"qemud:///{config.mode}"
        self.version = __version__
        self.lock = DaemonLocks(config.paths.pidfile, config.paths.config_dir,
                                config.paths.state_dir)
        self.loop = EventLoop()
        self.host: HostInfo = read_host_info()
        self.hypervisor_version = "0.0.0"
        self.dispatcher = Dispatcher(HelloPolicy(
            server_name=f"qemud {self.version}",
            keepalive_interval=config.limits.keepalive_interval))
        self.server = Server(self.loop, config, self.dispatcher,
                             tls_identify=self._tls_identify)
        self.events = EventBus(self.server)
        self.driver: Driver | None = None
        self.tls_port: int | None = None
        self.schema_release = SchemaRelease(self.loop, SCHEMA_IDLE_SECONDS)
        #: called on SIGHUP after the limits, whether or not the config file reloaded:
        #: each reloads its own files and logs (and keeps its old state) if they are bad
        self.reload_hooks: list[Callable[[], None]] = []
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        paths = self.config.paths
        if self.config.mode == "session":
            _check_private_parent(paths.run_dir)
        _make_dir(paths.run_dir, "run_dir")
        try:
            os.chmod(paths.run_dir, 0o755)  # the read-only socket must be reachable
        except OSError as exc:
            raise ConfigError(f"paths.run_dir (--run-dir) {paths.run_dir}: cannot set its "
                              f"mode to 0755: {exc.strerror}") from None
        # the directories the locks are in (an error names the key; mkdir touches nothing)
        _make_dir(paths.config_dir, "config_dir")
        _make_dir(paths.state_dir, "state_dir")
        self.lock.acquire()
        for d, key in ((paths.config_dir, "config_dir"), (paths.domains_dir, "config_dir"),
                       (paths.autostart_dir, "config_dir"), (paths.state_dir, "state_dir"),
                       (paths.log_dir, "log_dir"), (paths.guest_run_dir, "run_dir"),
                       (paths.guest_log_dir, "log_dir")):
            _make_dir(d, key)
        _warn_missing_dirs(self.config)
        self.driver = self._make_driver()
        if self.driver is not None:
            self.hypervisor_version = self.driver.hypervisor_version
            self.driver.start()
            self.dispatcher.register_all(self.driver.handlers())
            from .appliance import install as install_appliance
            self.dispatcher.register_all(install_appliance(self, self.driver))  # type: ignore[arg-type]
        self.dispatcher.register_all(core_handlers(self))
        # before the sockets: a client that sees them may signal at once (systemctl
        # reload right after start), and SIGHUP's default action would end the daemon;
        # signals that come before the loop runs are handled when it does
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal)
        self.loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        listen = self.config.listen
        if listen.unix_rw:
            self.server.listen_unix(paths.rw_socket, listen.rw_socket_mode, readonly=False)
        if listen.unix_ro:
            self.server.listen_unix(paths.ro_socket, listen.ro_socket_mode, readonly=True)
        if listen.tls:
            from .tls import server_tls_context
            self.tls_port = self.server.listen_tls(listen.tls_address, listen.tls_port,
                                                   server_tls_context(self.config))
        if self.driver is not None:
            self.driver.autostart()
        trim_heap()  # what start-up parsed and probed and then let go
        log.info("qemud %s ready (%s mode, run dir %s)", self.version, self.config.mode,
                 paths.run_dir)
        _sd_notify("READY=1")

    def _make_driver(self) -> Driver | None:
        try:
            from .driver import QemuDriver
        except ImportError as exc:  # pragma: no cover - partial checkouts
            log.warning("QEMU driver unavailable: %s", exc)
            return None
        return QemuDriver(self)

    def run(self) -> None:
        try:
            self.start()
        except BaseException:
            self._abort_start()
            raise
        try:
            self.loop.run()
        finally:
            self._finish()

    def _on_stop_signal(self, signum: int) -> None:
        if self._stopping:
            return
        log.info("%s received: stopping (guests keep running)", signal.Signals(signum).name)
        self._stopping = True
        self.server.stop_listening()
        deadline = time.monotonic() + SHUTDOWN_DRAIN_SECONDS

        def check() -> None:
            if self.server.drained() or time.monotonic() > deadline:
                self.loop.stop()
            else:
                self.loop.call_later(0.05, check)
        check()

    def _on_reload_signal(self, signum: int) -> None:
        self._reload_limits()
        for hook in list(self.reload_hooks):
            try:
                hook()
            except Exception:  # one broken reload must not stop the others or the loop
                log.exception("SIGHUP: %s failed", getattr(hook, "__qualname__", hook))

    def _reload_limits(self) -> None:
        from .config import load_config
        try:
            # the same file (or, if none was given, the default one, which may have been
            # created since) and the same command-line overrides as at start
            fresh = load_config(self.config.mode, self.config.source, self.config.overrides)
        except Exception as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        self.config.limits = fresh.limits
        self.server.config.limits = fresh.limits
        # new clients must be told the interval the server now pings at
        self.dispatcher.hello.keepalive_interval = fresh.limits.keepalive_interval
        log.info("SIGHUP: limits reloaded from %s", fresh.source or "defaults")
        changed = _changed_keys(self.config, fresh, skip={"limits"})
        if changed:
            log.warning("SIGHUP: changed keys not applied until qemud restarts: %s",
                        ", ".join(changed))

    def _abort_start(self) -> None:
        """Undo what a failed :meth:`start` set up: no socket or pidfile is left behind
        (clients then hear "is qemud running?", not "connection refused")."""
        self.server.stop_listening()
        if self.driver is not None:
            try:
                self.driver.shutdown()
            except Exception:
                log.exception("driver shutdown after a failed start")
        self.schema_release.close()
        self.loop.close()
        self.lock.release()

    def _finish(self) -> None:
        self.server.close_all("daemon shutting down")
        self.server.stop_listening()
        if self.driver is not None:
            self.driver.shutdown()
        self.schema_release.close()
        self.loop.close()
        self.lock.release()
        log.info("qemud stopped")

    # -- services for handlers -----------------------------------------------------------

    def capabilities_xml(self) -> str:
        if self.driver is None:
            return "<capabilities/>"
        return self.driver.capabilities_xml()

    def _tls_identify(self, transport: object) -> tuple[str, bool]:
        from .tls import identify_tls_client
        return identify_tls_client(self.config, transport)


class SchemaRelease:
    """Drops libvirt's domain schema once it has gone ``idle`` seconds unused.

    The compiled schema (:mod:`qemud.conf.schema`) holds a few MiB for validations that
    come seldom (define, attach); loading it again costs ~10 ms. A timer is armed only
    when the schema gets loaded, so an idle daemon without it has nothing scheduled.
    After the release the heap is trimmed, or the memory would stay with the process.
    """

    def __init__(self, loop: EventLoop, idle: float,
                 on_release: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.idle = idle
        self.on_release = on_release
        self.timer: Timer | None = None
        domain_schema.set_load_hook(self._loaded)
        if domain_schema.idle_seconds() is not None:  # loaded before we were here
            self._loaded()

    def _loaded(self) -> None:
        if self.timer is None:
            self.timer = self.loop.call_later(self.idle, self._check)

    def _check(self) -> None:
        self.timer = None
        idle = domain_schema.idle_seconds()
        if idle is None:
            return
        if idle < self.idle:  # used since: look again when it may have become idle
            self.timer = self.loop.call_later(self.idle - idle, self._check)
            return
        domain_schema.release_schema()
        trim_heap()
        if self.on_release is not None:
            self.on_release()

    def close(self) -> None:
        domain_schema.set_load_hook(None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_malloc_trim: Callable[[int], int] | None = None
_malloc_trim_missing = False


def trim_heap() -> bool:
    """Hand the heap's free memory back to the OS (glibc's ``malloc_trim(0)``).

    glibc keeps memory freed by Python and by C libraries (libxml2, OpenSSL) for reuse,
    so an idle process stays at its peak; ``malloc_trim`` releases the free pages.
    Returns False where there is no such call (another libc) or nothing was released.
    """
    global _malloc_trim, _malloc_trim_missing
    if _malloc_trim is None:
        if _malloc_trim_missing:
            return False
        try:
            trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols, i.e. its libc
        except (OSError, AttributeError):
            _malloc_trim_missing = True
            return False
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        _malloc_trim = trim
    return bool(_malloc_trim(0))


def _changed_keys(old: Config, new: Config, skip: set[str]) -> list[str]:
    """``section.key`` of every setting that differs between ``old`` and ``new``."""
    from .config import _SECTIONS
    changed = []
    for section_name in _SECTIONS:
        if section_name in skip:
            continue
        before, after = getattr(old, section_name), getattr(new, section_name)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                changed.append(f"{section_name}.{f.name}")
    return changed


def _make_dir(path: Path, key: str) -> None:
    """mkdir -p, or a ConfigError naming the key (and flag) the directory comes from."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        flag = "--" + key.replace("_", "-")
        raise ConfigError(f"paths.{key} ({flag}): cannot create the directory {path}: "
                          f"{exc.strerror}") from None


def _warn_missing_dirs(config: Config) -> None:
    """Directories that are only read are not created. Like libvirtd with a missing
    emulator, the daemon starts anyway (they may appear later), but says so now rather
    than at the first call that needs them."""
    for d in config.qemu.emulator_dirs:
        if not os.path.isdir(d):
            log.warning("qemu.emulator_dirs: %s is not a directory (skipped when searching "
                        "for emulators)", d)
    root = config.appliance.inspect_root
    if not os.path.isdir(os.path.join(root, "proc")):
        log.warning("appliance.inspect_root: %s has no proc directory; host inspection "
                    "(and appliance templates) will fail until it has", root)


def _check_private_parent(run_dir: Path) -> None:
    """A session daemon's runtime dir must be ours: without $XDG_RUNTIME_DIR it falls back
    to /tmp/qemud-$UID, which another user could have created first to take our sockets."""
    parent = run_dir.parent
    if parent != Path(f"/tmp/qemud-{os.getuid()}"):
        return
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        st = parent.stat()
    except OSError as exc:
        raise ConfigError(f"paths.run_dir (--run-dir): cannot create {parent}: "
                          f"{exc.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(f"{parent} is not private to this user (owner uid {st.st_uid}, "
                          f"mode {st.st_mode & 0o777:o}); remove it or set XDG_RUNTIME_DIR")


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) we are ready; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
