"""Talk to the test guest's serial port (a QEMU unix-socket or pty chardev) from a test."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import tty
from pathlib import Path


class _PtyFile:
    """The slave side of a QEMU pty, in raw mode (no echo back into the guest)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)

    def recv(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def sendall(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SerialPort:
    """Connects to a guest's serial unix socket and collects its lines in a thread."""

    def __init__(self, path: Path, timeout: float = 10.0, *, pty: bool = False) -> None:
        """``pty=True``: ``path`` is the pty QEMU allocated (``/dev/pts/N``)."""
        self.sock: socket.socket | _PtyFile
        deadline = time.monotonic() + timeout
        while not pty:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if pty:
            self.sock = _PtyFile(str(path))
        self.text = ""
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                if not data:
                    self._closed = True
                    self._lock.notify_all()
                    return
                self.text += data.decode(errors="replace").replace("\r", "")
                self._lock.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """First match of ``pattern`` in the output after offset ``start``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                match = regex.search(self.text, start)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError(f"{pattern!r} not seen on the serial port within "
                                       f"{timeout} s; output so far:\n{self.text[-2000:]}")
                self._lock.wait(remaining)

    def mark(self) -> int:
        with self._lock:
            return len(self.text)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
