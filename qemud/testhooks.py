"""Intervals, rates and switches a test may change for a daemon it runs as a subprocess.

Some waits of the daemon are long on purpose (a guest's log is looked at every 30 s, a
guest gets 15 s to release an unplugged disk), and a test cannot set a module global in
another process. Such a constant is read through :func:`seconds` (or :func:`rate`: a
QEMU block job slowed down, so a test can kill the daemon while it runs; or
:func:`flag`: a path the daemon refuses in production, opened for a test) from an
environment variable, once, at import. These are test hooks, not configuration: they
are documented where they are defined, never in the config reference, and must not be
set in production.
"""

from __future__ import annotations

import os

__all__ = ["seconds", "rate", "flag"]


def seconds(variable: str, default: float) -> float:
    """``default``, or the positive number of seconds ``variable`` holds.

    A value that is not a positive number is ignored: a stray test hook must never stop
    the daemon or make a wait zero.
    """
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return value if value > 0 else default


def rate(variable: str) -> int:
    """0 (no limit), or the positive whole number ``variable`` holds (a rate, e.g. the
    bytes per second of a QEMU block job, so a test can catch the job while it runs).

    A value that is not a positive whole number is ignored, as by :func:`seconds`.
    """
    try:
        value = int(os.environ.get(variable, "0"))
    except ValueError:
        return 0
    return max(value, 0)


def flag(variable: str) -> bool:
    """Whether ``variable`` holds exactly ``1`` (a switch, e.g. one that lets a test reach
    a path the daemon refuses otherwise).

    Any other value, ``true`` or ``yes`` too, leaves the switch off: a stray test hook
    must never open such a path.
    """
    return os.environ.get(variable) == "1"
