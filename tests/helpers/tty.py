"""Reading what a program wrote to a pseudo-terminal, for tests of terminal output."""

from __future__ import annotations

import os
import select

__all__ = ["read_to_eof"]


def read_to_eof(master: int, timeout: float = 60) -> bytes:
    """Everything written to the pty whose master side is ``master``, until the program
    closes its side (EIO or EOF) or nothing comes for ``timeout`` seconds."""
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return out
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            return out
        if not chunk:
            return out
        out += chunk
