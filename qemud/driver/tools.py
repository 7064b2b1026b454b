"""Host tools (``qemu-img``, ``tar``) run as children the loop reaps: nothing here waits.

The duties that need a tool's outcome (snapshots, images) start it with
:meth:`ToolRunner.run` and get a :class:`~qemud.dispatch.Deferred`. The child's stdout
(when the caller wants it) and stderr go to anonymous temporary files, not pipes, so the
loop has nothing to drain while it runs; ``EventLoop.watch_popen`` reaps it and the files
are read once, when it has exited.

Removing large files with such a child is :mod:`qemud.driver.discard`'s.

Each duty words a failure its own way (what its users and tests read), so a runner is
made with a :data:`Wording` for "exited with status N"; "could not start" reads
``cannot run TOOL: REASON`` everywhere. Either way the Deferred fails with
:class:`ToolFailed`, an ``OperationFailed`` that also carries the argv, exit status and
stderr.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from qemud.dispatch import Deferred
from qemud.errors import OperationFailed

if TYPE_CHECKING:
    from qemud.loop import EventLoop

__all__ = ["ToolFailed", "ToolRunner", "ChildGroup", "Wording", "find_tool"]

log = logging.getLogger(__name__)

#: what is read of a tool's output at most (``qemu-img info`` answers a few KiB)
MAX_STDOUT = 4 * 1024 * 1024
MAX_STDERR = 64 * 1024

#: words a non-zero exit: (argv, exit status, stderr stripped) -> message
Wording = Callable[[list[str], int, str], str]


def find_tool(name: str, needed: str) -> str:
    """The path of tool ``name``; ``needed`` says what for, should it be missing."""
    path = shutil.which(name)
    if path is None:
        raise OperationFailed(f"{name} not found in PATH: it is needed {needed}")
    return path


class ToolFailed(OperationFailed):
    """``argv`` could not be started (``exit_code`` None; ``stderr`` holds the OS's
    reason) or exited with ``exit_code`` (negative: killed by that signal)."""

    def __init__(self, message: str, *, argv: list[str], exit_code: int | None,
                 stderr: str) -> None:
        super().__init__(message)
        self.argv = argv
        self.exit_code = exit_code
        self.stderr = stderr


class ChildGroup:
    """The tools one operation runs (``ToolRunner.run(..., group=)``), so that it can be
    cancelled: :meth:`kill` ends those still running; the loop reaps them, as always,
    and their Deferreds fail (killed by a signal).

    ``os.kill``, not ``Popen.kill``: that polls the child, behind the loop's back. A pid
    here is one the loop has not reaped yet, so it cannot have been reused.
    """

    def __init__(self) -> None:
        self.running: set[int] = set()

    def kill(self) -> bool:
        """SIGKILL every child still running; whether there was one."""
        for pid in list(self.running):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return bool(self.running)


class ToolRunner:
    """Starts tools as children of the daemon; the loop tells when they are done."""

    def __init__(self, loop: EventLoop, wording: Wording) -> None:
        self.loop = loop
        self.wording = wording

    def run(self, argv: list[str], what: str = "", *, stdout: bool = False,
            group: ChildGroup | None = None, stdin: int | None = None,
            into: int | None = None) -> Deferred:
        """Run ``argv``: resolves once it exits with status 0, with its stdout (decoded)
        if ``stdout`` else None; otherwise fails with :class:`ToolFailed`, its message
        prefixed with ``what: `` when ``what`` is given. ``group`` holds the child while
        it runs (to be killed by the operation's cancel). ``stdin`` and ``into``: file
        descriptors of the caller's that the child reads as its stdin and writes as its
        stdout (a file the caller opened and checked: the child never opens a path
        that could have changed since); they stay open, the caller's to close."""
        if stdout and into is not None:
            raise ValueError("stdout is either kept or written into a descriptor")
        result = Deferred()
        prefix = f"{what}: " if what else ""
        out: IO[bytes] | None = tempfile.TemporaryFile() if stdout else None  # noqa: SIM115
        err = tempfile.TemporaryFile()  # noqa: SIM115 - both closed in exited()
        log.debug("running %s", " ".join(argv))
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=out or (subprocess.DEVNULL if into is None else into), stderr=err,
                close_fds=True)
        except OSError as exc:
            _close(out, err)
            reason = str(exc.strerror or exc)
            result.fail(ToolFailed(f"{prefix}cannot run {argv[0]}: {reason}", argv=argv,
                                   exit_code=None, stderr=reason))
            return result

        if group is not None:
            group.running.add(child.pid)

        def exited(code: int) -> None:
            if group is not None:
                group.running.discard(child.pid)
            text = _read(out, MAX_STDOUT) if out is not None else None
            stderr = _read(err, MAX_STDERR).strip()
            _close(out, err)
            if code == 0:
                result.resolve(text)
                return
            log.debug("%s exited with %d: %s", argv[0], code, stderr)
            result.fail(ToolFailed(prefix + self.wording(argv, code, stderr), argv=argv,
                                   exit_code=code, stderr=stderr))
        self.loop.watch_popen(child, exited)
        return result


def _read(file: IO[bytes], limit: int) -> str:
    file.seek(0)
    return file.read(limit).decode(errors="replace")


def _close(*files: IO[bytes] | None) -> None:
    for file in files:
        if file is not None:
            file.close()
