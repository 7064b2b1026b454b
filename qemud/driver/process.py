"""A QEMU process as the loop sees it: its log, its exit, its termination.

Exit is watched with a pidfd (``os.pidfd_open``), one more fd in the loop; it works the
same for a QEMU this daemon forked and for one it re-attached to after a restart (which
is no longer its child). Children are reaped with ``waitpid(WNOHANG)`` once the pidfd
says they are gone, so nothing ever waits.

QEMU's stdout and stderr are the guest's log file itself (opened ``O_APPEND`` by the
daemon, which appends its own notes to it): QEMU's output reaches the log whether or not
a daemon is running, also after a daemon restart (libvirt gets the same from virtlogd).
A failed start's error text is QEMU's output since the launch, read back from the file
once QEMU has exited.

The log is kept near ``qemu.log_max_bytes`` in two ways. Before a launch, when no QEMU
has it open, a file past the limit is moved to ``<name>.log.1``. While QEMU runs it
holds the file open, so renaming it would only hide it: every :data:`LOG_CHECK_INTERVAL`
seconds the file is ``fstat``-ed and, past the limit, copy-truncated (its content copied
to a temp file renamed over ``.1``, then ``ftruncate(fd, 0)``; QEMU and the daemon both
write ``O_APPEND``, so they carry on at the new end). The copy runs in the kernel
(``os.sendfile``), a :data:`ROTATE_CHUNK` per loop turn, so a big log never holds the
loop; bytes written while it runs are copied too, right before the truncation. The
offsets a :class:`QemuProcess` keeps into the log are moved to the new file's start,
so a failed start's error is still read back after a rotation.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from qemud import testhooks
from qemud.loop import EventLoop, Timer

__all__ = ["QemuProcess", "proc_start_ticks", "proc_cmdline", "guest_name", "guest_qemus",
           "GuestLog"]

log = logging.getLogger(__name__)

TAIL_BYTES = 8192

#: Test hook for a daemon run as a subprocess: ``QEMUD_LOG_CHECK_INTERVAL=<seconds>`` in
#: its environment (read once, at import) replaces the interval below. For tests only.
LOG_CHECK_ENV = "QEMUD_LOG_CHECK_INTERVAL"


#: Seconds between two looks at a running guest's log size. One ``fstat`` per guest;
#: at 30 s a guest printing flat out adds a few MiB past the limit at most.
LOG_CHECK_INTERVAL = testhooks.seconds(LOG_CHECK_ENV, 30.0)
#: Bytes copied per loop turn while a running guest's log is rotated: ~1 ms of kernel
#: copying from the page cache, then the loop serves everyone else again.
ROTATE_CHUNK = 1024 * 1024
#: Rounds spent catching up with a QEMU that writes while its log is being copied,
#: before the rest is copied in one go (see :class:`_Rotation`).
CATCH_UP_ROUNDS = 8


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


def guest_name(argv: list[str]) -> str | None:
    """The guest name of a QEMU command line as ``qemud.qemu.command`` writes it
    (``-name guest=NAME,debug-threads=on``, commas in NAME doubled), or None when it
    has no such argument or more than one."""
    named = [a for a in argv if a.startswith("guest=") and a.endswith(_NAME_END)]
    if len(named) != 1:
        return None
    return named[0][len("guest="):-len(_NAME_END)].replace(",,", ",")


_NAME_END = ",debug-threads=on"


def guest_qemus(run_root: Path) -> list[tuple[int, str]]:
    """(pid, guest name) of every QEMU of this daemon's user whose QMP socket is under
    ``run_root`` (a daemon's guest run directory), found by its command line
    (``-chardev socket,...,path=RUN/NAME/monitor.sock`` and :func:`guest_name`), whether
    or not any status file names it. Any user can start a process with such a command
    line (``/proc/PID/cmdline`` is world-readable, a session's run directory
    predictable): only the daemon's own user's processes are QEMUs it started."""
    from qemud.qemu.command import qemu_opt_escape
    under = f"path={qemu_opt_escape(str(run_root).rstrip('/'))}/"
    uid = os.geteuid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue  # (gone)
        argv = proc_cmdline(int(entry.name))
        if not any(a.startswith("socket,") and under in a and "/monitor.sock," in a
                   for a in argv):
            continue
        name = guest_name(argv)
        if name is not None:
            found.append((int(entry.name), name))
    return found


class GuestLog:
    """Append-only log file of one guest, shared with its QEMU (see the module doc)."""

    def __init__(self, path: Path, *, rotate_past: int | None = None) -> None:
        """``rotate_past``: first move a file larger than that to ``.1`` (only when no
        QEMU writes it, i.e. before a launch)."""
        self.path = path
        #: where the previous content goes, at either kind of rotation
        self.rotated_path = path.with_name(path.name + ".1")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rotate_past is not None:
            try:
                if path.stat().st_size > rotate_past:
                    os.replace(path, self.rotated_path)
            except FileNotFoundError:
                pass
            # a copy a killed daemon never renamed (no rotation runs: no QEMU has it)
            _temp_path(path).unlink(missing_ok=True)
        # read-write: a failed start's error is read back through it (pread)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._rotation: _Rotation | None = None
        #: the size right after our last copy-truncate: only our note is in the file then,
        #: which is never rotated again on its own (with a limit smaller than the note)
        self._rotated_size = 0

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

    @property
    def rotating(self) -> bool:
        """A copy-truncate is under way (its copy goes on from the loop)."""
        return self._rotation is not None

    def rotate_if_past(self, loop: EventLoop, max_bytes: int,
                       on_truncated: Callable[[int], None]) -> bool:
        """Copy-truncate the file if it is past ``max_bytes`` while QEMU has it open.

        The copy goes on from the loop (:class:`_Rotation`); once the file is truncated,
        ``on_truncated(offset)`` is called with where the content after our rotation note
        starts (0 if something else was written before the note). True if a rotation was
        started; False if not needed, already running, or ``max_bytes <= 0`` (a limit of
        0 only means a fresh log at each launch: a copy-truncate would only rotate its own
        note, again and again). OSError if the copy cannot be started (nothing changed).
        """
        if max_bytes <= 0 or self._rotation is not None or self._fd < 0:
            return False
        size = os.fstat(self._fd).st_size
        if size <= max_bytes or size <= self._rotated_size:
            return False
        self._rotation = _Rotation(self, loop, size, max_bytes, on_truncated)
        self._rotation.step()
        return True

    def cancel_rotation(self) -> None:
        """Stop a copy-truncate under way: the file stays as it is, the copy is removed."""
        if self._rotation is not None:
            self._rotation.abort()

    def _rotated(self, note: bytes) -> int:
        """Called by :class:`_Rotation` right after the truncation: write the note at the
        top; return where what follows it starts."""
        self._rotation = None
        try:
            os.write(self._fd, note)
        except OSError:
            note = b""
        self._rotated_size = size = os.fstat(self._fd).st_size
        # QEMU (O_APPEND too) may have written between the truncation and the note
        return len(note) if size == len(note) else 0

    def close(self) -> None:
        self.cancel_rotation()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _temp_path(path: Path) -> Path:
    """The copy being made of ``path`` while it is rotated. One daemon (the pidfile lock)
    and at most one rotation per log, so a fixed name cannot clash with a live writer;
    a killed daemon's leftover is replaced by the next rotation (or removed at a launch)."""
    return path.with_name(f".{path.name}.1.tmp")


class _Rotation:
    """One copy-truncate of a log QEMU holds open (see the module doc).

    A file up to twice the limit is copied whole; a bigger one (a limit just lowered, a
    log from before this check, a QEMU that printed a lot within one interval) only its
    last ``max_bytes``, with a line saying so at the top of the copy: the copy stays
    bounded. Whatever QEMU writes meanwhile lands past the copied range and is caught up
    with; only what it writes between the last ``fstat`` and ``ftruncate`` (a few
    microseconds) is lost, as with any copy-truncate (logrotate's ``copytruncate``).
    """

    def __init__(self, guest_log: GuestLog, loop: EventLoop, size: int, max_bytes: int,
                 on_truncated: Callable[[int], None]) -> None:
        self.log = guest_log
        self.loop = loop
        self.max_bytes = max_bytes
        self.on_truncated = on_truncated
        self.pos = 0 if size <= 2 * max_bytes else size - max_bytes
        self.end = size
        self.rounds = 0
        self.timer: Timer | None = None
        self.tmp = _temp_path(guest_log.path)
        self.tmp_fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o600)
        if self.pos:
            try:
                os.write(self.tmp_fd, f"{_timestamp()} qemud: {guest_log.path.name} had grown to "
                         f"{size} bytes; its first {self.pos} bytes were dropped at this "
                         f"rotation\n".encode())
            except OSError:
                self.abort()
                raise

    def step(self) -> None:
        """Copy the next chunk; truncate once all is copied."""
        self.timer = None
        try:
            self._copy(min(ROTATE_CHUNK, self.end - self.pos))
            if self.pos >= self.end:
                # what came while we copied: chased a chunk per turn for a while, then
                # taken in one go (only a QEMU writing MiBs per loop turn gets here)
                self.end = os.fstat(self.log.fd).st_size
                if self.end - self.pos > ROTATE_CHUNK and self.rounds < CATCH_UP_ROUNDS:
                    self.rounds += 1
                else:
                    self._finish()
                    return
        except OSError:
            self.abort()
            raise
        self.timer = self.loop.call_soon(self._step_logged)

    def _step_logged(self) -> None:
        try:
            self.step()
        except OSError as exc:
            log.warning("cannot rotate %s: %s (kept as it is; tried again later)",
                        self.log.path, exc)

    def _copy(self, count: int) -> None:
        while count > 0:
            sent = os.sendfile(self.tmp_fd, self.log.fd, self.pos, count)
            if sent == 0:  # shorter than it was (truncated by someone else)
                self.end = self.pos
                return
            self.pos += sent
            count -= sent

    def _finish(self) -> None:
        fd = self.log.fd
        # a last catch-up right before the truncation keeps the window for losses tiny
        for _ in range(3):
            size = os.fstat(fd).st_size
            if size <= self.pos:
                break
            self._copy(size - self.pos)
        os.ftruncate(fd, 0)
        # from here on the old content is only in the copy: no abort removes it
        tmp_fd, self.tmp_fd = self.tmp_fd, -1
        try:
            os.close(tmp_fd)
            os.rename(self.tmp, self.log.rotated_path)
        except OSError as exc:
            log.error("cannot rename %s to %s: %s (the rotated content stays there)",
                      self.tmp, self.log.rotated_path, exc)
        try:
            start = self.log._rotated(
                f"{_timestamp()} log rotated past {self.max_bytes} bytes, previous content "
                f"in {self.log.rotated_path.name}\n".encode())
        except OSError:
            start = 0
        self.on_truncated(start)

    def abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.tmp_fd >= 0:
            os.close(self.tmp_fd)
            self.tmp_fd = -1
            self.tmp.unlink(missing_ok=True)
        if self.log._rotation is self:
            self.log._rotation = None


class QemuProcess:
    """One running QEMU: launched here (child) or re-attached (not a child)."""

    def __init__(self, loop: EventLoop, pid: int, name: str, log: GuestLog,
                 child: subprocess.Popen[bytes] | None = None,
                 output_start: int | None = None, log_max_bytes: int = 0) -> None:
        """``log_max_bytes``: copy-truncate the log while this QEMU runs once it is past
        that (checked every :data:`LOG_CHECK_INTERVAL` s); 0 never."""
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
        #: the timers of :meth:`terminate_gently` calls (cancelled when QEMU exits)
        self._gentle_timers: list[Timer] = []
        self.log_max_bytes = log_max_bytes
        self._log_timer: Timer | None = None
        self.logger = logging.getLogger(f"qemud.qemu.process.{name}")
        if log_max_bytes > 0:
            self._log_timer = loop.call_later(LOG_CHECK_INTERVAL, self._check_log)
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
               env: dict[str, str] | None = None, log_max_bytes: int = 0) -> QemuProcess:
        """fork+exec QEMU, its output into ``log`` (OSError if it cannot be executed);
        ``log_max_bytes`` as for the constructor."""
        log.note(f"{_timestamp()} starting: {' '.join(argv)}")
        start = log.size()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.fd,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, env=env)
        return cls(loop, child.pid, name, log, child, output_start=start,
                   log_max_bytes=log_max_bytes)

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
            if start > end:  # truncated behind our back (an admin's logrotate copytruncate)
                start = 0
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
        timers, self._gentle_timers = self._gentle_timers, []
        for timer in timers:
            timer.cancel()
        self._stop_log_checks()  # the offsets below must stay valid
        if self._output_start is not None:
            self._output_end = self.log.size()  # before the note below
        self.log.note(f"{_timestamp()} QEMU exited ({self.describe_exit()})")
        callbacks, self._on_exit = self._on_exit, []
        for cb in callbacks:
            cb(self)

    def _check_log(self) -> None:
        self._log_timer = None
        if self.exited:
            return
        try:
            self.log.rotate_if_past(self.loop, self.log_max_bytes, self._log_truncated)
        except OSError as exc:
            self.logger.warning("cannot rotate the log of %s (%s): %s; tried again in %g s",
                                self.name, self.log.path, exc, LOG_CHECK_INTERVAL)
        self._log_timer = self.loop.call_later(LOG_CHECK_INTERVAL, self._check_log)

    def _log_truncated(self, start: int) -> None:
        """The log was copy-truncated: QEMU's output since the launch now starts at
        ``start`` of the new file (what came before is in ``.1``)."""
        if self._output_start is not None:
            self._output_start = start
        self.logger.info("log of %s passed %d bytes: rotated to %s", self.name,
                         self.log_max_bytes, self.log.rotated_path)

    def _stop_log_checks(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        self.log.cancel_rotation()

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

    def terminate_gently(self, grace: float, still_running: Callable[[], None]) -> None:
        """SIGTERM now and never SIGKILL (virsh destroy --graceful): ``still_running()``
        after ``grace`` seconds if QEMU has not exited by then (it ignored SIGTERM, or is
        stopped with the signal pending); nothing if it has."""
        if self.exited:
            return
        self._signal(signal.SIGTERM)
        # (cancelled at the exit, so ``still_running`` is never called for an exited QEMU)
        self._gentle_timers.append(self.loop.call_later(grace, still_running))

    @property
    def killing(self) -> bool:
        """A SIGKILL is on its way (:meth:`terminate` was called): QEMU will exit."""
        return self._kill_timer is not None and not self.exited

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
        self._stop_log_checks()
        if self._pidfd is not None:
            self.loop.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.log.close()


def _timestamp() -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S")
