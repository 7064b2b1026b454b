"""The daemon: wires config, lock, loop, server, events and the QEMU driver together.

Start-up order matters: the lock first (so a second daemon fails before touching
anything), then the driver (persistent guests loaded, running guests reconnected), then
the sockets (so no client sees a half-loaded daemon), then autostart.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Protocol

from protocol import Procedure

from .config import Config
from .dispatch import Dispatcher, Handler, HelloPolicy
from .errors import ConfigError
from .events import EventBus
from .handlers import core_handlers
from .host import HostInfo, read_host_info
from .lockfile import PidfileLock
from .loop import EventLoop
from .server import Server

__all__ = ["Daemon", "Driver"]

log = logging.getLogger(__name__)

SHUTDOWN_DRAIN_SECONDS = 5.0


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
        try:
            self.version = metadata.version("qemud")
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a tree
            self.version = "0.0.0"
        self.lock = PidfileLock(config.paths.pidfile)
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
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        paths = self.config.paths
        if self.config.mode == "session":
            _check_private_parent(paths.run_dir)
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.run_dir, 0o755)  # the read-only socket must be reachable
        self.lock.acquire()
        for d in (paths.config_dir, paths.domains_dir, paths.autostart_dir, paths.state_dir,
                  paths.log_dir, paths.guest_run_dir, paths.guest_log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.driver = self._make_driver()
        if self.driver is not None:
            self.hypervisor_version = self.driver.hypervisor_version
            self.driver.start()
            self.dispatcher.register_all(self.driver.handlers())
            from .appliance import install as install_appliance
            self.dispatcher.register_all(install_appliance(self, self.driver))  # type: ignore[arg-type]
        self.dispatcher.register_all(core_handlers(self))
        listen = self.config.listen
        if listen.unix_rw:
            self.server.listen_unix(paths.rw_socket, listen.rw_socket_mode, readonly=False)
        if listen.unix_ro:
            self.server.listen_unix(paths.ro_socket, listen.ro_socket_mode, readonly=True)
        if listen.tls:
            from .tls import server_tls_context
            self.tls_port = self.server.listen_tls(listen.tls_address, listen.tls_port,
                                                   server_tls_context(self.config))
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_stop_signal)
        self.loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        if self.driver is not None:
            self.driver.autostart()
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
        self.start()
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
        from .config import load_config
        try:
            fresh = load_config(self.config.mode, self.config.source)
        except Exception as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        self.config.limits = fresh.limits
        self.server.config.limits = fresh.limits
        # new clients must be told the interval the server now pings at
        self.dispatcher.hello.keepalive_interval = fresh.limits.keepalive_interval
        log.info("SIGHUP: limits reloaded from %s", self.config.source or "defaults")

    def _finish(self) -> None:
        self.server.close_all("daemon shutting down")
        self.server.stop_listening()
        if self.driver is not None:
            self.driver.shutdown()
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


def _check_private_parent(run_dir: Path) -> None:
    """A session daemon's runtime dir must be ours: without $XDG_RUNTIME_DIR it falls back
    to /tmp/qemud-$UID, which another user could have created first to take our sockets."""
    parent = run_dir.parent
    if parent != Path(f"/tmp/qemud-{os.getuid()}"):
        return
    parent.mkdir(mode=0o700, exist_ok=True)
    st = parent.stat()
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
