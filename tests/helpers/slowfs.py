"""A real file system whose fsyncs a test holds, releases or fails: FUSE, over a directory.

A slow disk cannot be made here otherwise (no device-mapper ``delay`` target in this
kernel), and an fsync that ext4 makes slow (a journal commit behind gigabytes of other
data) is not repeatable. A FUSE file system is real: the daemon's ``open``, ``write``,
``fsync``, ``rename`` and Linux AIO's ``IOCB_CMD_FSYNC`` reach the kernel's FUSE driver,
which asks this process, a passthrough to a backing directory (``mfusepy`` over
``libfuse3``). What it adds: while the test says "hold", every fsync (of a file or a
directory) waits until the test says "pass" (it then fsyncs the backing file), "let"
(the ones waiting go on, later ones wait again; "let PATH": those of one path) or
"fail" (it returns EIO), and the test can ask which paths are waiting. Writes have a
gate of their own ("writes hold", "writes pass", "writes fail", "writes held"), which
applies to writes at or past an offset ("writes from N"): a QEMU writing a save image
through a descriptor of the daemon's is held, or fails, after the daemon's header.

Run as ``python -m tests.helpers.slowfs BACKING MOUNTPOINT CONTROL_SOCKET``;
:class:`SlowFS` does that, and unmounts at exit. Root only (mount(2) without
fusermount).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["SlowFS", "available"]

_STAT_KEYS = ("st_atime_ns", "st_ctime_ns", "st_mtime_ns", "st_gid", "st_mode", "st_nlink",
              "st_size", "st_uid", "st_ino")
_STATVFS_KEYS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                 "f_files", "f_flag", "f_frsize", "f_namemax")


def available() -> str:
    """Why a SlowFS cannot run here, or "" when it can."""
    if os.geteuid() != 0:
        return "mounting FUSE without fusermount needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse3 not usable: {exc}"
    return ""


class _Gate:
    """What fsyncs do now: "pass", "hold" or "fail"; and the paths held."""

    def __init__(self) -> None:
        self.mode = "pass"
        #: (serial, path) of each fsync waiting now
        self.held: list[tuple[int, str]] = []
        self.serial = 0
        self.cond = threading.Condition()

    def wait(self, path: str) -> int:
        """0 to go on with the fsync, or the errno to fail it with."""
        with self.cond:
            if self.mode == "hold":
                self.serial += 1
                me = (self.serial, path)
                self.held.append(me)
                self.cond.wait_for(lambda: me not in self.held or self.mode != "hold")
                if me in self.held:
                    self.held.remove(me)
            return errno.EIO if self.mode == "fail" else 0

    def command(self, line: str) -> str:
        with self.cond:
            if line in ("hold", "pass", "fail"):
                self.mode = line
                self.cond.notify_all()
                return "ok"
            if line == "let":  # the fsyncs waiting now go on; later ones still wait
                self.held.clear()
                self.cond.notify_all()
                return "ok"
            if line.startswith("let "):  # only those of one path
                path = line[len("let "):]
                left = [h for h in self.held if h[1] != path]
                if len(left) == len(self.held):
                    return f"no fsync of {path!r} is held"
                self.held = left
                self.cond.notify_all()
                return "ok"
            if line == "held":
                return "\t".join(path for _, path in self.held)
        return f"unknown command {line!r}"


def _serve(backing: str, mountpoint: str, control: str) -> None:
    import mfusepy as fuse

    gate = _Gate()
    #: the same for writes at or past an offset (``writes from N``: 0 by default), so
    #: that a file's first bytes (a save image's header) go through
    writes = _Gate()
    writes_from = [0]

    class Passthrough(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def _p(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.lstat(self._p(path))
            return {k: getattr(st, k) for k in _STAT_KEYS}

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._p(path))]

        def open(self, path: str, flags: int) -> int:
            return os.open(self._p(path), flags & ~os.O_CREAT)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(self._p(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if offset >= writes_from[0]:
                failure = writes.wait(path)
                if failure:
                    raise fuse.FuseOSError(failure)
            return os.pwrite(fh, data, offset)

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            failure = gate.wait(path)
            if failure:
                raise fuse.FuseOSError(failure)
            os.fsync(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            failure = gate.wait(path)
            if failure:
                raise fuse.FuseOSError(failure)
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._p(old), self._p(new))
            return 0

        def link(self, target: str, source: str) -> int:  # (ln SOURCE TARGET)
            os.link(self._p(source), self._p(target))
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._p(path))
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._p(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._p(path))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._p(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._p(path), uid, gid)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            os.truncate(self._p(path), length)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(self._p(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._p(path))
            return {k: getattr(st, k) for k in _STATVFS_KEYS}

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(control)
    listener.listen(4)

    def controller() -> None:
        while True:
            conn, _ = listener.accept()
            with conn, conn.makefile("rw") as stream:
                for line in stream:
                    stream.write(command(line.strip()) + "\n")
                    stream.flush()

    def command(line: str) -> str:
        if line.startswith("writes from "):
            writes_from[0] = int(line[len("writes from "):])
            return "ok"
        if line.startswith("writes "):
            return writes.command(line[len("writes "):])
        return gate.command(line)

    threading.Thread(target=controller, daemon=True).start()
    fuse.FUSE(Passthrough(), mountpoint, foreground=True, nothreads=False,
              default_permissions=True, allow_other=True)


class SlowFS:
    """A SlowFS mounted at ``root/mnt`` over ``root/backing`` for the ``with`` block."""

    def __init__(self, root: Path) -> None:
        self.backing = root / "backing"
        self.mount = root / "mnt"
        self._control_path = root / "control.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: Any = None

    def __enter__(self) -> SlowFS:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.slowfs", str(self.backing), str(self.mount),
             str(self._control_path)], cwd=Path(__file__).resolve().parents[2],
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not (os.path.ismount(self.mount) and self._control_path.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the FUSE file system did not mount")
            time.sleep(0.02)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self._control_path))
        self._control = sock.makefile("rw")
        sock.close()  # the file object keeps the connection
        return self

    def _command(self, line: str) -> str:
        self._control.write(line + "\n")
        self._control.flush()
        return str(self._control.readline().rstrip("\n"))

    def hold(self) -> None:
        """From now on every fsync waits (until :meth:`release` or :meth:`fail`)."""
        assert self._command("hold") == "ok"

    def release(self) -> None:
        """Let the held fsyncs (and all later ones) complete."""
        assert self._command("pass") == "ok"

    def let(self, path: str = "") -> None:
        """Let the fsyncs held now (only those of ``path``, if given) complete; later ones
        are held again."""
        reply = self._command(f"let {path}" if path else "let")
        assert reply == "ok", reply

    def fail(self) -> None:
        """Fail the held fsyncs (and all later ones) with EIO."""
        assert self._command("fail") == "ok"

    def held(self) -> list[str]:
        """The paths (inside the file system) of the fsyncs waiting now."""
        reply = self._command("held")
        return reply.split("\t") if reply else []

    def hold_writes(self, from_offset: int = 1) -> None:
        """From now on every write at or past ``from_offset`` waits, as fsyncs do with
        :meth:`hold` (the first bytes of a file, a save image's header, go through)."""
        assert self._command(f"writes from {from_offset}") == "ok"
        assert self._command("writes hold") == "ok"

    def release_writes(self) -> None:
        """Let the held writes (and all later ones) complete."""
        assert self._command("writes pass") == "ok"

    def fail_writes(self, from_offset: int = 1) -> None:
        """Fail every write at or past ``from_offset`` with EIO (the held ones too)."""
        assert self._command(f"writes from {from_offset}") == "ok"
        assert self._command("writes fail") == "ok"

    def wait_held_write(self, timeout: float = 60.0) -> list[str]:
        """The paths of the held writes, once one waits."""
        deadline = time.monotonic() + timeout
        while not (held := self._command("writes held")):
            if time.monotonic() > deadline:
                raise AssertionError("no write was held")
            time.sleep(0.01)
        return held.split("\t")

    def wait_held(self, count: int = 1, timeout: float = 20.0) -> list[str]:
        """The held paths once at least ``count`` fsyncs wait."""
        deadline = time.monotonic() + timeout
        while len(held := self.held()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} fsync(s) never arrived (held: {held})")
            time.sleep(0.01)
        return held

    def __exit__(self, *exc: object) -> None:
        if self._control is not None:
            try:
                self._command("pass")
                self._command("writes pass")
            except OSError:
                pass
            self._control.close()
        if os.path.ismount(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], check=False)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr is not None:
                self._proc.stderr.close()


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
