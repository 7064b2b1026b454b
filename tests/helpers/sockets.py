"""Whether a daemon listens on its unix sockets, without connecting to them.

The daemon binds its read-only socket just after the read-write one, so for a moment
the read-only socket does not exist yet (or is bound but not listening yet): a
read-only connection made then fails ("does not exist"), and a test that stops the
daemon (SIGSTOP) then holds that moment open for as long as it keeps the daemon stopped.
``DaemonProcess.wait_ready`` therefore waits for both (:func:`listening`).

The check reads /proc/net/unix rather than connecting: a probe connection would be one
more client for the daemon to accept and drop, which tests counting clients would see.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.daemon import wait_for

__all__ = ["listening", "wait_listening"]

#: __SO_ACCEPTCON in /proc/net/unix's Flags column: the socket listens
_ACCEPTCON = 0x10000


def listening(path: Path) -> bool:
    """Whether a socket bound at ``path`` listens (in this network namespace)."""
    want = str(path)
    with open("/proc/net/unix") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == want and int(fields[3], 16) & _ACCEPTCON:
                return True
    return False


def wait_listening(*paths: Path, timeout: float = 30.0) -> None:
    """Wait until each of ``paths`` is a listening socket."""
    for path in paths:
        wait_for(lambda path=path: listening(path), timeout=timeout,
                 message=f"a listener on {path}")
