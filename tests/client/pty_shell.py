"""qemush run on a pseudo-terminal, as a user at a terminal runs it: start it, read its
output until some text shows, type to it. For test_shell_tty and test_shell_edit.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.client.conftest import REPO_ROOT


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
