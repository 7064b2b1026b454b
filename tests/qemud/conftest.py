"""Fixtures for the daemon-core tests.

Starting a daemon costs a second or two (the QEMU driver probes the emulators), so tests
that neither change limits nor hurt the daemon share one: ``shared_daemon``; tests that
need pings off and a short frame deadline share ``quiet_daemon``. Tests that kill, stop,
signal or reconfigure a daemon start their own with ``daemon_factory``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qemud.asyncfsync import AsyncFsync
from qemud.loop import EventLoop
from tests.helpers.daemon import DaemonProcess

QUIET = {"limits": {"keepalive_interval": 0, "frame_deadline": 1.0}}


def _session_daemon(factory: pytest.TempPathFactory, name: str,
                    config: dict | None = None) -> Iterator[DaemonProcess]:
    d = DaemonProcess(factory.mktemp(name), config).start()
    yield d
    try:
        d.stop()
    except Exception:
        d.kill()


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """Default limits; tests must leave it as they found it (close their clients)."""
    yield from _session_daemon(tmp_path_factory, "shared-qemud")


@pytest.fixture(scope="session")
def quiet_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """keepalive_interval = 0 (idle raw clients are never pinged), frame_deadline = 1 s."""
    yield from _session_daemon(tmp_path_factory, "quiet-qemud", QUIET)


@pytest.fixture
def fsyncs(loop: EventLoop) -> Iterator[AsyncFsync]:
    """Linux AIO fsyncs on the test's loop (this machine has them: a fallback to fsyncs
    in place would hide what the tests look at), closed after the test."""
    fsync = AsyncFsync(loop)
    assert fsync.unavailable == "", fsync.unavailable
    yield fsync
    fsync.close()
