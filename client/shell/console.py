"""``console``: the guest's serial console over a stream.

On a terminal the terminal goes raw and Ctrl+] (``^]``, 0x1d) leaves, like virsh. When
stdin is not a terminal bytes are piped both ways: stdin to the guest until EOF, the
guest's output to stdout until the stream ends, or — once stdin is exhausted — until the
guest has been quiet for ``quiet_after`` seconds.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Protocol

from ..errors import QemudClientError

__all__ = ["ESCAPE", "ConsoleStream", "pipe_console"]

ESCAPE = b"\x1d"  # Ctrl+]


class ConsoleStream(Protocol):
    def recv(self, timeout: float | None = None) -> bytes | None: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class _Pump(threading.Thread):
    """Guest → stdout."""

    def __init__(self, stream: ConsoleStream, out_fd: int) -> None:
        super().__init__(name="qemush-console", daemon=True)
        self.stream = stream
        self.out_fd = out_fd
        self.ended = threading.Event()
        self.stop = threading.Event()
        self.error: QemudClientError | None = None
        self.last_data = time.monotonic()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                data = self.stream.recv(0.1)
                if data is None:
                    break
                if data:
                    self.last_data = time.monotonic()
                    _write_all(self.out_fd, data)
        except QemudClientError as exc:
            self.error = exc
        except OSError:
            pass
        finally:
            self.ended.set()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pipe_console(stream: ConsoleStream, in_fd: int, out_fd: int, *, raw: bool,
                 quiet_after: float = 1.0) -> str:
    """Shuttle bytes until the end; returns why: ``"escape"``, ``"closed"`` (the guest
    side ended) or ``"eof"`` (stdin ended and the guest went quiet). Raises the stream's
    error if it broke."""
    pump = _Pump(stream, out_fd)
    pump.start()
    reason = "closed"
    stdin_open = True
    try:
        while not pump.ended.is_set():
            if not stdin_open:
                if time.monotonic() - pump.last_data >= quiet_after:
                    reason = "eof"
                    break
                pump.ended.wait(0.05)
                continue
            ready, _, _ = select.select([in_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(in_fd, 4096)
            if not data:
                stdin_open = False
                pump.last_data = max(pump.last_data, time.monotonic())
                continue
            if raw and ESCAPE in data:
                before = data.split(ESCAPE, 1)[0]
                if before:
                    stream.send(before)
                reason = "escape"
                break
            stream.send(data)
    finally:
        pump.stop.set()
        stream.close()
        pump.join(1.0)
    if pump.error is not None:
        raise pump.error
    return reason
