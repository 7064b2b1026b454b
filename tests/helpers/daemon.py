"""Run a real qemud as a subprocess in a temporary directory tree.

Every test daemon gets its own run/config/state/log dirs and config file, so many can
run side by side; nothing touches the user's or the system's qemud.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import client
from protocol.constants import UndefineFlags
from qemud.config import Paths

STARTUP_TIMEOUT = 30.0
SHARED_CACHE = Path(tempfile.gettempdir()) / f"qemud-test-cache-{os.getuid()}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


class DaemonProcess:
    """A qemud subprocess; ``config`` is a dict of TOML sections to write."""

    def __init__(self, root: Path, config: dict[str, dict[str, Any]] | None = None,
                 mode: str = "session", extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.config_dir = root / "config"
        self.state_dir = root / "state"
        self.log_dir = root / "log"
        #: the daemon's own idea of where things are (socket names, pidfile ...)
        self.paths = Paths(self.run_dir, self.config_dir, self.state_dir, self.log_dir)
        self.mode = mode
        self.extra_args = extra_args or []
        #: set in the daemon's environment at every start (on top of the test's own)
        self.env = dict(env or {})
        self.config: dict[str, dict[str, Any]] = {
            "paths": {"run_dir": str(self.run_dir), "config_dir": str(self.config_dir),
                      "state_dir": str(self.state_dir), "log_dir": str(self.log_dir)},
            "log": {"level": "debug", "file": str(root / "qemud.log")},
            # one capabilities/KVM cache for every test daemon: the KVM run probe costs
            # up to seconds and its verdict holds for the whole boot
            "qemu": {"cache_dir": str(SHARED_CACHE)},
        }
        for section, values in (config or {}).items():
            self.config.setdefault(section, {}).update(values)
        self.config_file = root / "qemud.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rw_socket(self) -> Path:
        return self.paths.rw_socket

    @property
    def ro_socket(self) -> Path:
        return self.paths.ro_socket

    @property
    def uri(self) -> str:
        return f"qemud+unix:///{self.mode}?socket={self.rw_socket}"

    @property
    def log_file(self) -> Path:
        return self.root / "qemud.log"

    @property
    def audit_file(self) -> Path:
        return self.log_dir / "audit.log"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = []
        for section, values in self.config.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        self.config_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "qemud", f"--{self.mode}", "--config",
                str(self.config_file), *self.extra_args]

    def start(self, wait: bool = True, nofile: int | None = None) -> DaemonProcess:
        """Start the daemon; ``nofile`` sets its RLIMIT_NOFILE (the test's is untouched)."""
        self.write_config()
        stderr = open(self.root / "qemud.stderr", "ab")  # noqa: SIM115 - owned by the proc

        def limit() -> None:
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        self.proc = subprocess.Popen(self.command(), stdout=stderr, stderr=stderr,
                                     start_new_session=True, preexec_fn=limit,
                                     env={**os.environ, **self.env} if self.env else None)
        stderr.close()
        if wait:
            self.wait_ready()
        return self

    def _ro_listening(self) -> bool:
        """The read-only socket listens too (unless disabled): the daemon binds it just
        after the read-write one, and a read-only connection made in between fails."""
        from tests.helpers.sockets import listening  # (it imports this module)
        if not self.config.get("listen", {}).get("unix_ro", True):
            return True
        return listening(self.ro_socket)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemud exited with {self.proc.returncode} during start-up:"
                                   f"\n{self.stderr_text()}\n{self.log_text()[-4000:]}")
            if self.rw_socket.exists() and self._ro_listening():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.rw_socket))
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"qemud not ready within {timeout} s:\n{self.log_text()[-4000:]}")

    @property
    def ro_uri(self) -> str:
        return f"qemud+unix:///{self.mode}?socket={self.ro_socket}"

    def connect(self, readonly: bool = False, **kwargs: Any) -> client.Connection:
        """A connection on the read-write socket, or (``readonly``) on the read-only one,
        as ``qemush -r`` makes it (an explicit ``socket=`` is used as given)."""
        return client.connect(self.ro_uri if readonly else self.uri, readonly=readonly,
                              **kwargs)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr_text(self) -> str:
        path = self.root / "qemud.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def guest_run_dir(self, name: str) -> Path:
        """Where the daemon keeps guest ``name``'s sockets and pidfile: ``run/qemu/NAME``,
        shortened when a socket path there would be too long (a deep tmp_path)."""
        from qemud.qemu.naming import guest_dir_name
        root = self.run_dir / "qemu"
        return root / guest_dir_name(root, name)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def imported_modules(self, since: int = 0) -> set[str]:
        """The modules the daemon imported, from its stderr after offset ``since``.

        Only a daemon started with ``PYTHONPROFILEIMPORTTIME=1`` in its environment (it
        inherits the test's) reports them: Python then writes one ``import time:`` line
        to stderr per module, when it imports it.
        """
        return {line.rsplit("|", 1)[1].strip()
                for line in self.stderr_text()[since:].splitlines()
                if line.startswith("import time:")}

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def serving(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """Start ``daemon`` for a block; at the end destroy every guest it still runs, then
    stop it (a module-scoped fixture's usual shape)."""
    daemon.start()
    try:
        yield daemon
    finally:
        stop_destroying_guests(daemon)


def stop_destroying_guests(daemon: DaemonProcess) -> None:
    """Destroy every guest ``daemon`` still runs, then stop it (also if that fails)."""
    try:
        with daemon.connect() as conn:
            for dom in conn.list_domains(client.ListFlags.ACTIVE):
                dom.destroy()
    finally:
        daemon.stop()


def remove_domain(dom: client.Domain,
                  flags: int = UndefineFlags.SNAPSHOTS_METADATA) -> None:
    """A test's cleanup of ``dom``: destroy it if it runs, then undefine it with ``flags``.

    Passes over only what a cleanup may find: the domain already gone (undefined by the
    test, or transient and stopped: NoDomainError) or stopped on its own between the
    check and the destroy (OperationInvalid). Anything else is raised (the daemon gone,
    an undefine refused): hiding it would leave the domain to the next test, unexplained.
    """
    try:
        if dom.is_active():
            try:
                dom.destroy()
            except client.OperationInvalid:
                pass  # it stopped meanwhile
        dom.undefine(flags)
    except client.NoDomainError:
        pass


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not met within {timeout} s")
        time.sleep(interval)


#: in the name the daemon gives a file it is removing (``.<name>.qemud-discard-<token>``)
DISCARD_MARK = ".qemud-discard-"


def after_discards(directory: Path, timeout: float = 30.0) -> list[str]:
    """The names in ``directory``, as they were at the call, apart from files the daemon
    is removing; returns once those are gone too. (A file the daemon removes may be
    large: it is renamed to ``.<name>.qemud-discard-*`` before the call that removes it
    returns, and a child of the daemon removes it, off the loop, soon after.)"""
    now = sorted(p.name for p in directory.iterdir() if DISCARD_MARK not in p.name)
    wait_for(lambda: not [p for p in directory.iterdir() if DISCARD_MARK in p.name],
             timeout, message=f"the files discarded in {directory} removed")
    return now


def env_without_daemon_vars() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("QEMUD_DEFAULT_URI", None)
    return env


#: the checkout these helpers belong to (qemush runs from it, whatever the caller's cwd)
REPO_ROOT = Path(__file__).resolve().parents[2]


def qemush(daemon: DaemonProcess, *args: str, timeout: float = 120,
           cwd: Path | None = None, max_file_size: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``qemush -c <daemon's URI> ARGS`` from this checkout (``python -m client.shell``),
    without the caller's QEMUD_DEFAULT_URI, stdin closed, output captured as text; run in
    ``cwd`` (default: the checkout); ``max_file_size``: a file size limit in bytes (its
    writes past it fail with EFBIG, as on a full disk)."""
    env = env_without_daemon_vars()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                      env.get("PYTHONPATH")]))

    def limit() -> None:
        if max_file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))
    return subprocess.run([sys.executable, "-m", "client.shell", "-c", daemon.uri, *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or REPO_ROOT, stdin=subprocess.DEVNULL, preexec_fn=limit)
