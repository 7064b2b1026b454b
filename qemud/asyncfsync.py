"""fsync without blocking the loop: Linux AIO's ``IOCB_CMD_FSYNC``, completed on an eventfd.

A durable write waits for the disk twice (the temp file, then its directory). On this
machine that is ~0.3 ms each, but an fsync on ext4 commits the journal, which waits for
every other file's ordered data: with a guest or a backup writing gigabytes to the same
file system, one fsync takes seconds. Done on the loop, that would stall every client,
every QEMU monitor and the heartbeat watchdog for as long.

The kernel has done fsync asynchronously since Linux 4.18: ``io_submit`` of an
``IOCB_CMD_FSYNC`` queues it on a kernel worker, and ``IOCB_FLAG_RESFD`` makes the
completion write to an eventfd, which the loop watches like any other fd. There is no
Python binding (libaio is a C library, and Python's ``os`` has no AIO), so the three
system calls go through ``ctypes`` and ``syscall(2)``, with the numbers of the
architectures qemud runs on. Where AIO cannot be set up (another architecture, a kernel
without ``CONFIG_AIO``, ``fs.aio-max-nr`` used up) the fsync runs in place, as before, and
the daemon says so once at start.

Callers give a callback, called from a later loop turn with ``None`` or the ``OSError``
the fsync ended with, never from inside :meth:`AsyncFsync.fsync`. The caller keeps the fd
open until then.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
from collections import deque
from collections.abc import Callable

from .loop import EventLoop

__all__ = ["AsyncFsync", "FsyncDone", "MAX_IN_FLIGHT", "SYSCALLS"]

log = logging.getLogger(__name__)

#: called with None (synced) or the OSError the fsync failed with
FsyncDone = Callable[[OSError | None], None]

#: fsyncs submitted to the kernel at once; more wait in a queue (each is one client's call
#: or one appliance job, so the queue is bounded by ``limits.max_clients`` and the jobs)
MAX_IN_FLIGHT = 64

#: io_setup, io_destroy, io_getevents, io_submit by ``platform.machine()``
SYSCALLS: dict[str, tuple[int, int, int, int]] = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
    "ppc64": (227, 228, 229, 230),
    "ppc64le": (227, 228, 229, 230),
}

_IOCB_CMD_FSYNC = 2
_IOCB_FLAG_RESFD = 1


class _Iocb(ctypes.Structure):
    # struct iocb of <linux/aio_abi.h>. aio_key and aio_rw_flags swap places on a
    # big-endian machine; both are 0 here, so one layout serves both.
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Kernel:
    """The AIO context and its eventfd: io_setup at creation, io_destroy at close."""

    def __init__(self, numbers: tuple[int, int, int, int]) -> None:
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self.ctx = ctypes.c_ulong(0)
        self._call(self._setup, ctypes.c_uint(MAX_IN_FLIGHT), ctypes.byref(self.ctx))
        try:
            self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            self._call(self._destroy, self.ctx)
            raise
        self._events = (_IoEvent * MAX_IN_FLIGHT)()
        self._no_wait = _Timespec(0, 0)

    def _call(self, number: int, *args: object) -> int:
        result: int = self._libc.syscall(ctypes.c_long(number), *args)
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def submit(self, iocb: _Iocb) -> None:
        """Queue one fsync; OSError as io_submit reports it (EAGAIN: no room now)."""
        batch = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        self._call(self._submit, self.ctx, ctypes.c_long(1), batch)

    def reap(self) -> list[tuple[int, int]]:
        """(aio_data, result) of every completed fsync, without waiting."""
        try:
            os.eventfd_read(self.eventfd)
        except BlockingIOError:
            pass
        done: list[tuple[int, int]] = []
        while True:
            try:
                n = self._call(self._getevents, self.ctx, ctypes.c_long(0),
                               ctypes.c_long(MAX_IN_FLIGHT), self._events,
                               ctypes.byref(self._no_wait))
            except InterruptedError:  # a signal: the events are still there
                continue
            done.extend((self._events[i].data, self._events[i].res) for i in range(n))
            if n < MAX_IN_FLIGHT:
                return done

    def close(self) -> None:
        # io_destroy waits for what is in flight: at shutdown, a few fsyncs at most
        self._call(self._destroy, self.ctx)
        os.close(self.eventfd)


class AsyncFsync:
    """fsync(fd) that completes on the loop; in place where Linux AIO is unavailable."""

    def __init__(self, loop: EventLoop, *, use_aio: bool = True) -> None:
        self.loop = loop
        self._kernel: _Kernel | None = None
        #: why fsyncs run in place, or "" when the kernel does them
        self.unavailable = ""
        if not use_aio:
            self.unavailable = "turned off"
        else:
            numbers = SYSCALLS.get(platform.machine())
            if numbers is None:
                self.unavailable = f"no AIO system call numbers for {platform.machine()}"
            else:
                try:
                    self._kernel = _Kernel(numbers)
                except OSError as exc:
                    self.unavailable = f"io_setup failed: {exc.strerror or exc}"
        if self._kernel is not None:
            loop.add_reader(self._kernel.eventfd, self._on_completion)
        else:
            log.warning("fsync runs on the loop (Linux AIO: %s): a slow disk stalls the "
                        "daemon while a definition is written", self.unavailable)
        self._serial = 0
        #: aio_data -> (the iocb, which must live until the kernel is done, callback)
        self._in_flight: dict[int, tuple[_Iocb, FsyncDone]] = {}
        self._waiting: deque[tuple[int, FsyncDone]] = deque()

    @property
    def in_flight(self) -> int:
        """fsyncs the kernel is doing now plus those queued behind them."""
        return len(self._in_flight) + len(self._waiting)

    def fsync(self, fd: int, done: FsyncDone) -> None:
        """Flush ``fd`` to the disk, then call ``done`` (from a later loop turn)."""
        if self._kernel is None:
            self._in_place(fd, done)
        elif len(self._in_flight) >= MAX_IN_FLIGHT:
            self._waiting.append((fd, done))
        else:
            self._submit(fd, done)

    def _in_place(self, fd: int, done: FsyncDone) -> None:
        error: OSError | None = None
        try:
            os.fsync(fd)
        except OSError as exc:
            error = exc
        self.loop.call_soon(lambda: done(error))

    def _submit(self, fd: int, done: FsyncDone) -> bool:
        """Hand the fsync to the kernel; False if it went back to the queue's head."""
        assert self._kernel is not None
        self._serial += 1
        iocb = _Iocb(aio_data=self._serial, aio_lio_opcode=_IOCB_CMD_FSYNC, aio_fildes=fd,
                     aio_flags=_IOCB_FLAG_RESFD, aio_resfd=self._kernel.eventfd)
        try:
            self._kernel.submit(iocb)
        except OSError as exc:
            if exc.errno == errno.EAGAIN and self._in_flight:
                self._waiting.appendleft((fd, done))  # again at the next completion
                return False
            if exc.errno == errno.EAGAIN:
                self._in_place(fd, done)  # nothing in flight to wait for
            else:
                # what fsync itself would say (EBADF; EINVAL for a pipe or a socket)
                self.loop.call_soon(functools.partial(done, exc))
            return True
        self._in_flight[self._serial] = (iocb, done)
        return True

    def _on_completion(self) -> None:
        assert self._kernel is not None
        for serial, result in self._kernel.reap():
            _iocb, done = self._in_flight.pop(serial)
            error = OSError(-result, os.strerror(-result)) if result < 0 else None
            try:
                done(error)
            except Exception:
                log.exception("unhandled error after an fsync")
        while self._waiting and len(self._in_flight) < MAX_IN_FLIGHT:
            fd, done = self._waiting.popleft()
            if not self._submit(fd, done):
                break  # the kernel had no room: it stays first in the queue

    def close(self) -> None:
        """Stop watching; wait for the fsyncs in flight (their callbacks are not run)."""
        if self._kernel is not None:
            self.loop.remove(self._kernel.eventfd)
            self._kernel.close()
            self._kernel = None
            self.unavailable = "closed"
        self._in_flight.clear()
        self._waiting.clear()
