"""A QEMU process as the loop sees it: its log, its exit, its termination.

Exit is watched with a pidfd (``os.pidfd_open``), one more fd in the loop; it works the
same for a QEMU this daemon forked and for one it re-attached to after a restart (which
is no longer its child). Children are reaped with ``waitpid(WNOHANG)`` once the pidfd
says they are gone, so nothing ever waits.

QEMU's stdout and stderr are the guest's log file itself (opened ``O_APPEND`` by the
daemon, which appends its own notes to it): QEMU's output reaches the log whether or not
a daemon is running, also after a daemon restart (libvirt gets the same from virtlogd).
A failed start's error text is QEMU's output since the launch, read back from the file
once QEMU has exited. As QEMU holds the file open, it is rotated (past ``max_bytes``)
only when a new QEMU is launched.
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
    """Append-only log file of one guest, shared with its QEMU (see the module doc)."""

    def __init__(self, path: Path, *, rotate_past: int | None = None) -> None:
        """``rotate_past``: first move a file larger than that to ``.1`` (only when no
        QEMU writes it, i.e. before a launch)."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if rotate_past is not None:
            try:
                if path.stat().st_size > rotate_past:
                    os.replace(path, path.with_name(path.name + ".1"))
            except FileNotFoundError:
                pass
        # read-write: a failed start's error is read back through it (pread)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def fd(self) -> int:
        """The open file (QEMU's stdout and stderr are copies of it)."""
        return self._fd

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the file QEMU writes (even if renamed meanwhile)."""
        return os.pread(self._fd, max(0, end - start), start)

    def write(self, data: bytes) -> None:
        os.write(self._fd, data)

    def note(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class QemuProcess:
    """One running QEMU: launched here (child) or re-attached (not a child)."""

    def __init__(self, loop: EventLoop, pid: int, name: str, log: GuestLog,
                 child: subprocess.Popen[bytes] | None = None,
                 output_start: int | None = None) -> None:
        self.loop = loop
        self.pid = pid
        self.name = name
        self.log = log
        self.child = child
        #: where QEMU's output starts in the log (launched here), and where it ended
        self._output_start = output_start
        self._output_end: int | None = None
        self.exited = False
        self.exit_status: int | None = None  # os.waitpid status for children
        self._on_exit: list[Callable[[QemuProcess], None]] = []
        self._kill_timer: Timer | None = None
        self.logger = logging.getLogger(f"qemud.qemu.process.{name}")
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
        if self._pidfd is None:
            self.loop.call_soon(self._on_pidfd)
        else:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    @classmethod
    def launch(cls, loop: EventLoop, argv: list[str], name: str, log: GuestLog,
               env: dict[str, str] | None = None) -> QemuProcess:
        """fork+exec QEMU, its output into ``log`` (OSError if it cannot be executed)."""
        log.note(f"{_timestamp()} starting: {' '.join(argv)}")
        start = log.size()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.fd,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, env=env)
        return cls(loop, child.pid, name, log, child, output_start=start)

    def add_exit_callback(self, cb: Callable[[QemuProcess], None]) -> None:
        if self.exited:
            cb(self)
        else:
            self._on_exit.append(cb)

    @property
    def alive(self) -> bool:
        return not self.exited

    def output_text(self) -> str:
        """The last few KiB QEMU printed up to its exit (its error, after a failed start);
        "" for a QEMU this daemon did not launch."""
        start = self._output_start
        if start is None:
            return ""
        try:
            end = self._output_end if self._output_end is not None else self.log.size()
            data = self.log.read(max(start, end - TAIL_BYTES), end)
        except OSError:
            return ""
        return data.decode(errors="replace").strip()

    def _on_pidfd(self) -> None:
        if self.exited:
            return
        if self.child is not None:
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
        if self._output_start is not None:
            self._output_end = self.log.size()  # before the note below
        self.log.note(f"{_timestamp()} QEMU exited ({self.describe_exit()})")
        callbacks, self._on_exit = self._on_exit, []
        for cb in callbacks:
            cb(self)

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
        """Stop watching (daemon shutdown): the process keeps running (and logging)."""
        if self._pidfd is not None:
            self.loop.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.log.close()


def _timestamp() -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S")
