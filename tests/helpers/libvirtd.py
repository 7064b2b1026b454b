"""Run a private libvirtd (+ virtlogd) as root without touching the host's libvirt.

    lv = PrivateLibvirtd(tmp_dir)
    lv.start()                    # LibvirtdUnavailable: cannot run here (not root, ...)
    conn = libvirt.open(lv.uri)   # RuntimeError from start(): installed but did not start
    ...
    lv.stop()                     # destroys its guests, stops libvirtd and virtlogd

The QEMU driver of a root libvirtd always uses /etc/libvirt, /var/lib/libvirt,
/run/libvirt, /var/log/libvirt and /var/cache/libvirt, and resolves the libvirt-qemu user
before it reads qemu.conf. ``unshare -m`` gives libvirtd a private mount namespace in
which those directories, /etc/passwd and /etc/group are bind mounts of files in ``root``:
nothing outside ``root`` is written (apart from creating those mount points if missing,
as empty directories). qemu.conf runs guests as root with no security driver and no
per-guest mount namespace (containers may lack what those need).

libvirtd is started below a small subreaper (this file run as a script with
``--_reaper``): libvirtd daemonizes its QEMUs, and libvirt's destroy polls until the QEMU
is gone -- a zombie still counts -- so whoever inherits the orphans must reap them at once
(systemd does on a normal host; the PID 1 of some sandboxes only every few seconds).

TLS is optional: pass ``tls_dir`` (cacert.pem, servercert.pem, serverkey.pem) to also
listen on 127.0.0.1:``tls_port``. This module needs only the standard library (and
libvirt-python for start()'s readiness check and stop()'s guest clean-up).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["PrivateLibvirtd", "LibvirtdUnavailable", "missing_reason", "ensure_event_loop"]

START_TIMEOUT = 60.0


class LibvirtdUnavailable(Exception):
    """libvirtd cannot run here at all (the message says why): a reason to skip."""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_if(pid: int, must_contain: str, sig: int = signal.SIGKILL) -> bool:
    """Signal ``pid`` only if its command line still contains ``must_contain``."""
    if pid > 1 and must_contain in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
    return False


def _mnt_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_reason() -> str:
    """Why a private libvirtd cannot run on this machine ("" when it can)."""
    if not shutil.which("libvirtd") or not shutil.which("virtlogd"):
        return "libvirtd/virtlogd not installed (contrib/setup.sh installs them)"
    if os.geteuid() != 0:
        return "needs root (a private qemu:///system libvirtd)"
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "needs unshare(1) and mount(8) for a private configuration"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed"
    return ""


_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """libvirt's default event loop on a daemon thread, once per process.

    Must run before opening a connection that registers for domain events.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        import libvirt
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()
        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


class PrivateLibvirtd:
    """libvirtd + virtlogd as root on a private configuration under ``root``."""

    BIND_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "run": "/run/libvirt",
                 "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}

    def __init__(self, root: Path, tls_dir: Path | None = None,
                 max_clients: int = 5000) -> None:
        self.root = Path(root)
        self.sock_dir = self.root / "sock"
        self.tls_dir = tls_dir
        self.tls_port = _free_port() if tls_dir is not None else 0
        self.max_clients = max_clients
        self.reaper: subprocess.Popen[bytes] | None = None
        self.libvirtd_pid: int | None = None
        self._ns = ""  # libvirtd's mount namespace: its QEMUs share it (namespaces = [])

    # -- addresses -----------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.sock_dir / 'libvirt-sock'}"

    @property
    def ro_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.sock_dir / 'libvirt-sock-ro'}"

    def tls_uri(self, pkipath: Path) -> str:
        """qemu+tls URI; ``pkipath`` holds the client's cacert/clientcert/clientkey.pem."""
        assert self.tls_dir is not None, "started without tls_dir"
        return f"qemu+tls://localhost:{self.tls_port}/system?pkipath={pkipath}"

    @property
    def log_file(self) -> Path:
        return self.root / "libvirtd.log"

    @property
    def virtlogd_pid(self) -> int | None:
        try:
            return int((self.root / "virtlogd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- configuration -------------------------------------------------------------------

    def _write_config(self) -> Path:
        r = self.root
        for d in [*self.BIND_DIRS, "sock"]:
            (r / d).mkdir(parents=True, exist_ok=True)
        conf = [f'unix_sock_dir = "{self.sock_dir}"', 'unix_sock_group = "root"',
                'unix_sock_ro_perms = "0777"', 'unix_sock_rw_perms = "0700"',
                'auth_unix_ro = "none"', 'auth_unix_rw = "none"', "listen_tcp = 0",
                f"max_clients = {self.max_clients}",
                f"max_anonymous_clients = {self.max_clients}",
                "max_queued_clients = 1000",
                f'log_outputs = "3:file:{self.log_file}"']
        if self.tls_dir is not None:
            t = self.tls_dir
            conf += ["listen_tls = 1", 'listen_addr = "127.0.0.1"',
                     f'tls_port = "{self.tls_port}"', 'auth_tls = "none"',
                     f'ca_file = "{t / "cacert.pem"}"', f'cert_file = "{t / "servercert.pem"}"',
                     f'key_file = "{t / "serverkey.pem"}"']
        else:
            conf += ["listen_tls = 0"]
        (r / "etc" / "libvirtd.conf").write_text("\n".join(conf) + "\n")
        # user/group root: no libvirt-qemu user is needed outside the namespace's passwd;
        # no security driver and no per-guest mount namespace.
        (r / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\ndynamic_ownership = 0\n'
            'security_driver = "none"\nnamespaces = [ ]\nremember_owner = 0\n')
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if "\nlibvirt-qemu:" not in "\n" + passwd:
            passwd += "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/bin/false\n"
        for name, gid in (("libvirt-qemu", 64055), ("kvm", 64056), ("libvirt", 64057)):
            if f"\n{name}:" not in "\n" + group:
                group += f"{name}:x:{gid}:\n"
        (r / "passwd").write_text(passwd)
        (r / "group").write_text(group)
        lines = ["set -e"]
        for src, dst in self.BIND_DIRS.items():
            lines += [f"mkdir -p {dst}", f"mount --bind {r / src} {dst}"]
        listen = " --listen" if self.tls_dir is not None else ""
        lines += [f"mount --bind {r / 'passwd'} /etc/passwd",
                  f"mount --bind {r / 'group'} /etc/group",
                  f"virtlogd -p {r / 'virtlogd.pid'} &",
                  f"exec libvirtd{listen} -f {r / 'etc' / 'libvirtd.conf'} "
                  f"-p {r / 'libvirtd.pid'}"]
        script = r / "start.sh"
        script.write_text("\n".join(lines) + "\n")
        return script

    # -- start / stop --------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> PrivateLibvirtd:
        """Start and wait until a connection answers.

        Raises LibvirtdUnavailable when this machine cannot run it (see missing_reason),
        RuntimeError when it should but did not start (the log tail says why).
        """
        why = missing_reason()
        if why:
            raise LibvirtdUnavailable(why)
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)  # errors are raised anyway
        script = self._write_config()
        with open(self.root / "libvirtd.stderr", "ab") as out:
            self.reaper = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--_reaper", "unshare", "-m",
                 "--propagation", "private", "sh", str(script)],
                stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        try:
            while True:
                if self.reaper.poll() is not None:
                    raise RuntimeError(f"libvirtd exited with {self.reaper.returncode}: "
                                       f"{self.log_tail()}")
                pid = self._pidfile_pid()
                if pid and (self.sock_dir / "libvirt-sock").exists():
                    try:
                        conn = libvirt.open(self.uri)
                        conn.getInfo()
                        conn.close()
                        self.libvirtd_pid = pid
                        self._ns = _mnt_ns(pid)
                        break
                    except libvirt.libvirtError as exc:
                        last = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd not ready within {timeout} s ({last}): "
                                       f"{self.log_tail()}")
                time.sleep(0.1)
            if self.tls_dir is not None:
                self._wait_port(self.tls_port, 10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd's TLS port {port} not listening") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Destroy and undefine its guests, stop libvirtd and virtlogd, kill any QEMU left."""
        if self.reaper is None:
            return
        if self.reaper.poll() is None:
            if self.libvirtd_pid is not None:
                with contextlib.suppress(Exception):
                    self.cleanup_domains()
            self.reaper.send_signal(signal.SIGTERM)  # the reaper passes it on to libvirtd
            pid = self.libvirtd_pid or self._pidfile_pid()
            deadline = time.monotonic() + 20
            while pid and "libvirtd" in _cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid:
                _kill_if(pid, "libvirtd")
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.root / "virtlogd.pid").read_text().split()[0])
            if _kill_if(pid, "virtlogd", signal.SIGTERM):
                for _ in range(50):
                    if "virtlogd" not in _cmdline(pid):
                        break
                    time.sleep(0.1)
                _kill_if(pid, "virtlogd")
        self.kill_leftover_qemu()
        try:
            self.reaper.wait(10)  # the reaper ends when nothing is left below it
        except subprocess.TimeoutExpired:
            self.reaper.kill()
            self.reaper.wait()
        self.reaper = None
        self.libvirtd_pid = None

    def cleanup_domains(self) -> None:
        """Destroy and undefine every guest of this (private) libvirtd; best effort."""
        import libvirt
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isPersistent():
                        dom.undefine()
        finally:
            conn.close()

    def qemu_pids(self) -> list[int]:
        """QEMUs this libvirtd started and that are still running (from its pid files)."""
        pids = []
        for pidfile in (self.root / "run" / "qemu").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if "qemu-system" not in _cmdline(pid):
                continue
            # ours: below our reaper, or in libvirtd's private mount namespace
            if self._ppid(pid) == (self.reaper.pid if self.reaper else -1) or \
                    (self._ns and _mnt_ns(pid) == self._ns):
                pids.append(pid)
        return pids

    def kill_leftover_qemu(self) -> int:
        n = 0
        for pid in self.qemu_pids():
            if _kill_if(pid, "qemu-system"):
                n += 1
        return n

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _ppid(pid: int) -> int:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
            return int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            return -1

    def _pidfile_pid(self) -> int | None:
        try:
            pid = int((self.root / "libvirtd.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if "libvirtd" in _cmdline(pid) else None

    def log_tail(self, lines: int = 3) -> str:
        """The last error lines of libvirtd's stderr and log (for failure messages)."""
        texts: list[str] = []
        for path in (self.root / "libvirtd.stderr", self.log_file):
            if path.exists():
                texts += [ln for ln in path.read_text(errors="replace").splitlines()
                          if " error : " in ln or not ln.startswith("20")]
        return " / ".join(texts[-lines:])[:600] or "no log"

    def __enter__(self) -> PrivateLibvirtd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the subreaper (this file run as a script) -------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


def reaper_main(cmd: list[str]) -> int:
    """Run ``cmd`` as a child subreaper and reap every orphan below it at once."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: PR_SET_CHILD_SUBREAPER failed", file=sys.stderr)
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 0
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            rc = os.waitstatus_to_exitcode(status)
    return rc


if __name__ == "__main__":
    if sys.argv[1:2] == ["--_reaper"] and len(sys.argv) > 2:
        sys.exit(reaper_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} --_reaper COMMAND...")
