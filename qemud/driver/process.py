"""A QEMU process as the loop sees it: its output pipe, its exit, its termination.

Exit is watched with a pidfd (``os.pidfd_open``), one more fd in the loop; it works the
same for a QEMU this daemon forked and for one it re-attached to after a restart (which
is no longer its child). Children are reaped with ``waitpid(WNOHANG)`` once the pidfd
says they are gone, so nothing ever waits.

QEMU's stdout/stderr go through a pipe the loop reads into the guest's log file, which is
rotated by size; the last few KiB are kept in memory so a failed start can return QEMU's
own error text. (A re-attached QEMU's output pipe died with the old daemon: QEMU ignores
SIGPIPE, so the guest runs on, but its later output is lost — see docs.)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from qemud.loop import EventLoop, Timer

__all__ = ["QemuProcess", "proc_start_ticks", "proc_cmdline", "GuestLog"]

TAIL_BYTES = 8192


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after it
    rest = raw[raw.rfind(")") + 2:].split()
    return int(rest[19])


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class GuestLog:
    """Append-only log file for one guest, rotated to ``.1`` past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._size + len(data) > self.max_bytes and self._size:
            os.close(self._fd)
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
            self._size = 0
        os.write(self._fd, data)
        self._size += len(data)

    def note(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class QemuProcess:
    """One running QEMU: launched here (child) or re-attached (not a child)."""

    def __init__(self, loop: EventLoop, pid: int, name: str, log: GuestLog,
                 child: subprocess.Popen[bytes] | None = None) -> None:
        self.loop = loop
        self.pid = pid
        self.name = name
        self.log = log
        self.child = child
        self.tail = bytearray()
        self.exited = False
        self.exit_status: int | None = None  # os.waitpid status for children
        self._on_exit: list[Callable[[QemuProcess], None]] = []
        self._kill_timer: Timer | None = None
        self.logger = logging.getLogger(f"qemud.qemu.process.{name}")
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
        if child is not None and child.stdout is not None:
            os.set_blocking(child.stdout.fileno(), False)
            self.loop.add_reader(child.stdout.fileno(), self._on_output)
        if self._pidfd is None:
            self.loop.call_soon(self._on_pidfd)
        else:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    @classmethod
    def launch(cls, loop: EventLoop, argv: list[str], name: str, log: GuestLog,
               env: dict[str, str] | None = None) -> QemuProcess:
        """fork+exec QEMU (raises OSError if the binary cannot be executed)."""
        log.note(f"{_timestamp()} starting: {' '.join(argv)}")
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, env=env)
        return cls(loop, child.pid, name, log, child)

    def add_exit_callback(self, cb: Callable[[QemuProcess], None]) -> None:
        if self.exited:
            cb(self)
        else:
            self._on_exit.append(cb)

    @property
    def alive(self) -> bool:
        return not self.exited

    def output_text(self) -> str:
        """The last few KiB QEMU printed (its error, after a failed start)."""
        return self.tail.decode(errors="replace").strip()

    def _on_output(self) -> None:
        assert self.child is not None and self.child.stdout is not None
        fd = self.child.stdout.fileno()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove(fd)
            return
        self.log.write(data)
        self.tail += data
        if len(self.tail) > TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]

    def _on_pidfd(self) -> None:
        if self.exited:
            return
        if self.child is not None:
            self._drain_output()
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid == 0:
                return  # spurious wake-up
            self.exit_status = status
            self.child.returncode = os.waitstatus_to_exitcode(status)
        # not our child: a readable pidfd means it has exited (its zombie is init's to reap)
        self.exited = True
        if self._pidfd is not None:
            self.loop.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self.log.note(f"{_timestamp()} QEMU exited ({self.describe_exit()})")
        callbacks, self._on_exit = self._on_exit, []
        for cb in callbacks:
            cb(self)

    def _drain_output(self) -> None:
        if self.child is None or self.child.stdout is None or self.child.stdout.closed:
            return
        fd = self.child.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self.log.write(data)
            self.tail += data
        del self.tail[:-TAIL_BYTES]
        self.loop.remove(fd)
        self.child.stdout.close()

    def describe_exit(self) -> str:
        if self.exit_status is None:
            return "not our child; status unknown"
        if os.WIFSIGNALED(self.exit_status):
            return f"killed by {signal.Signals(os.WTERMSIG(self.exit_status)).name}"
        return f"exit code {os.WEXITSTATUS(self.exit_status)}"

    def killed_by_signal(self) -> bool:
        return self.exit_status is not None and os.WIFSIGNALED(self.exit_status)

    def terminate(self, grace: float) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds if still there."""
        if self.exited:
            return
        self._signal(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self.loop.call_later(grace, lambda: self._signal(signal.SIGKILL))

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.exited:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def detach(self) -> None:
        """Stop watching (daemon shutdown): the process keeps running."""
        if self._pidfd is not None:
            self.loop.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.child is not None and self.child.stdout is not None:
            self.loop.remove(self.child.stdout.fileno())
        self.log.close()


def _timestamp() -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S")
