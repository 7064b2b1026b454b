"""qemush on a pseudo-terminal: the prompt, readline completion and history."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.client.conftest import REPO_ROOT
from tests.helpers.daemon import DaemonProcess


class PtyShell:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "client.shell", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=REPO_ROOT, start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{needle!r} not seen; output so far: {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"qemush ended; output: {self.output!r}")
                self.output += chunk
        return self.output

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            code = self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)
        return code


def test_prompt_completion_and_history(daemon: DaemonProcess, shell_env: dict[str, str]
                                       ) -> None:
    with daemon.connect() as conn:
        hostname = conn.hostname()
    sh = PtyShell(["-c", daemon.uri], shell_env)
    try:
        sh.read_until(b"Welcome to qemush")
        sh.read_until(b"qemush # ")
        # readline completes "hostn" to "hostname" with Tab
        sh.send("hostn\t\n")
        sh.read_until(hostname.encode() + b"\r\n")
        sh.send("frobnicate\n")
        sh.read_until(b"error: unknown command: 'frobnicate'")
        sh.send("quit\n")
        assert sh.close() == 0
    except BaseException:
        sh.proc.kill()
        raise
    history = Path(shell_env["HOME"]) / ".qemush_history"
    assert history.read_text().splitlines()[-3:] == ["hostname", "frobnicate", "quit"]


def test_read_only_prompt_and_eof(daemon: DaemonProcess, shell_env: dict[str, str]) -> None:
    sh = PtyShell(["-r", "-c", daemon.uri], shell_env)
    try:
        sh.read_until(b"qemush > ")
        sh.send("\x04")  # Ctrl+D
        assert sh.close() == 0
    except BaseException:
        sh.proc.kill()
        raise
