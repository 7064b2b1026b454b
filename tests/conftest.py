"""Fixtures shared by every test folder: real daemons in temp dirs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import DaemonProcess
from tests.helpers.loop import loop  # noqa: F401 (the fixture: a fresh qemud EventLoop)
from tests.helpers.procs import kill_left_qemus
from tests.helpers.slowfs import SlowFS, available

DaemonFactory = Callable[..., DaemonProcess]


def qemud_children() -> dict[int, str]:
    """The qemud daemons this test process started that still run: pid -> command line."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and argv[1:3] == [b"-m", b"qemud"]:
            found[int(entry.name)] = b" ".join(argv).decode(errors="replace")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_daemon_left_running() -> Iterator[None]:
    """Every daemon a test or fixture starts is stopped by it: a leak (a fixture that
    started one twice, a stop that was never reached) fails the run, naming the daemon's
    config, and is killed so it cannot hold loop devices or ports for the next run.
    Set up before, so torn down after, every other session fixture."""
    yield
    left = qemud_children()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "daemons left running (killed now): " + "; ".join(left.values())


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons: ``daemon_factory(config={...}, start=True)``; all stopped at the end."""
    started: list[DaemonProcess] = []

    def make(config: dict[str, dict[str, Any]] | None = None, start: bool = True,
             name: str | None = None, **kwargs: Any) -> DaemonProcess:
        root = tmp_path / (name or f"qemud{len(started)}")
        d = DaemonProcess(root, config, **kwargs)
        started.append(d)
        if start:
            d.start()  # (waits for both unix sockets)
        return d

    yield make
    for d in started:
        try:
            d.stop()
        except Exception:
            d.kill()
        # guests outlive their daemon by design: a test that failed half-way must not
        # leave its QEMUs running for the rest of the suite
        kill_left_qemus(d.run_dir)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """One running daemon with default limits."""
    return daemon_factory()


@pytest.fixture
def slowfs(tmp_path: Path) -> Iterator[SlowFS]:
    """A FUSE file system at ``slowfs.mount`` whose fsyncs the test holds, lets go or
    fails (tests/helpers/slowfs.py). Ask for it before ``daemon_factory``: it is then
    unmounted after the daemons stop."""
    why = available()
    if why:
        pytest.skip(why)
    with SlowFS(tmp_path / "slowfs") as fs:
        yield fs
