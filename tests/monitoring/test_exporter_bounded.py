"""qemud-exporter never hangs and never crashes: a stopped (SIGSTOP) or hung daemon costs a
scrape at most --scrape-timeout and gives ``libvirt_up 0``, concurrent scrapes do not queue
behind a stuck one, a malformed --uri is refused at start, --version.

The collector tests use a fake connector (no daemon); the others run the exporter as a
subprocess against real daemons (no guests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import client
from client.exporter import QemudCollector
from qemud import __version__
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.sockets import wait_listening
from tests.monitoring.conftest import REPO_ROOT, Exporter, names, value

# -- the collector, with a connector that hangs -------------------------------------------


class StuckConn:
    """A connection whose calls block until ``release`` is set (a stopped daemon)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.is_alive = True
        self.calls = 0

    def domain_stats(self) -> list[Any]:
        self.calls += 1
        self.release.wait(30)
        return []

    def node_stats(self) -> dict[str, int]:
        return {"memory.total": 1}

    def close(self) -> None:  # pragma: no cover - not reached while stuck
        pass


def test_a_stuck_query_costs_each_scrape_at_most_the_scrape_timeout() -> None:
    release = threading.Event()
    made: list[StuckConn] = []

    def connector(uri: Any, readonly: bool, **kwargs: Any) -> StuckConn:
        made.append(StuckConn(release))
        return made[-1]

    collector = QemudCollector("qemud:///session", connector=connector,  # type: ignore[arg-type]
                               scrape_timeout=0.3)
    try:
        started = time.monotonic()
        snap = collector.snapshot()
        assert 0.25 < time.monotonic() - started < 2
        assert not snap.up and "did not answer within 0.3 s" in snap.error
        # concurrent scrapes: each waits for the same query, none queues behind another
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            snaps = list(pool.map(lambda _: collector.snapshot(), range(8)))
        assert time.monotonic() - started < 2
        assert not any(s.up for s in snaps)
        assert len(made) == 1 and made[0].calls == 1  # one query, shared
        started = time.monotonic()
        collector.close()  # does not wait for the stuck query
        assert time.monotonic() - started < 1
    finally:
        release.set()
    # the daemon answers again: so does the collector
    assert wait_for(lambda: collector.snapshot().up, timeout=5, message="up again")


def test_a_bug_in_the_query_is_a_down_scrape_not_a_hang() -> None:
    def connector(uri: Any, readonly: bool, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    collector = QemudCollector("qemud:///session", connector=connector, scrape_timeout=5)
    started = time.monotonic()
    snap = collector.snapshot()
    assert time.monotonic() - started < 2
    assert not snap.up and "internal error" in snap.error and "boom" in snap.error


def test_a_dead_connection_is_replaced_by_one_connect_per_scrape() -> None:
    """The kept connection died (keepalive marked it lost); the daemon is gone too, so
    the new connect fails: that is not retried (it was, and a scrape took two
    connect timeouts, longer than the scrape's own, and said "did not answer" instead
    of the connect's error)."""
    attempts: list[float] = []
    first = StuckConn(threading.Event())
    first.release.set()

    def connector(uri: Any, readonly: bool, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return first
        raise client.ConnectFailed("cannot connect to qemud:///session: refused")

    collector = QemudCollector("qemud:///session", connector=connector, scrape_timeout=5)
    assert collector.snapshot().up
    first.is_alive = False  # (the daemon went away since)
    snap = collector.snapshot()
    assert not snap.up and "refused" in snap.error, snap.error
    assert len(attempts) == 2  # the first scrape's connect, then one


# -- the exporter against a stopped daemon -------------------------------------------------


@contextmanager
def stopped(daemon: DaemonProcess) -> Iterator[None]:
    """``daemon`` stopped (SIGSTOP) for the block, and continued after it whatever happens.

    Not before both its sockets listen: the read-only one comes just after the read-write
    one that ``start`` waits for, and a daemon stopped in between would never make it."""
    wait_listening(daemon.rw_socket, daemon.ro_socket)
    daemon.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.signal(signal.SIGCONT)


def _timed_scrapes(exporter: Exporter, count: int) -> list[tuple[float, float]]:
    """``count`` concurrent scrapes: (seconds taken, libvirt_up) of each."""
    def one(_: int) -> tuple[float, float]:
        started = time.monotonic()
        samples = exporter.scrape()
        assert not {n for n in names(samples) if n.startswith(("libvirt_domain",
                                                               "qemud_node"))}
        return time.monotonic() - started, value(samples, "libvirt_up")
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_stopped_daemon_scrapes_answer_up_0_in_time(
        daemon_factory: DaemonFactory, exporter_factory: type[Exporter]) -> None:
    daemon = daemon_factory()
    exporter = exporter_factory(daemon.uri, "--connect-timeout", "1", "--scrape-timeout", "2")
    assert value(exporter.scrape(), "libvirt_up") == 1  # connected
    with stopped(daemon):
        # the kept connection: its call is never answered
        for took, up in _timed_scrapes(exporter, 3):
            assert up == 0 and took < 6, took
        for took, up in _timed_scrapes(exporter, 2):  # and again: nothing queued up
            assert up == 0 and took < 6, took
        assert exporter.proc.poll() is None
        wait_for(lambda: any("qemud unreachable: qemud did not answer within 2 s" in line
                             for line in exporter.log), timeout=5, message="logged")
    assert wait_for(lambda: value(exporter.scrape(), "libvirt_up") == 1, timeout=15,
                    interval=0.2, message="libvirt_up back to 1")


def test_exporter_started_against_a_stopped_daemon(
        daemon_factory: DaemonFactory, exporter_factory: type[Exporter]) -> None:
    """A new connection to a stopped daemon: connect() succeeds (the kernel accepts), the
    HELLO gets no answer: --connect-timeout ends it."""
    daemon = daemon_factory()
    with stopped(daemon):
        exporter = exporter_factory(daemon.uri, "--connect-timeout", "1",
                                    "--scrape-timeout", "5")
        started = time.monotonic()
        assert value(exporter.scrape(), "libvirt_up") == 0
        assert time.monotonic() - started < 4  # the connect timeout, not the scrape's
        wait_for(lambda: any("did not answer within 1 s" in line for line in exporter.log),
                 timeout=5, message="the HELLO timeout logged")
    assert wait_for(lambda: value(exporter.scrape(), "libvirt_up") == 1, timeout=15,
                    interval=0.2, message="libvirt_up 1 once continued")


# -- read-only: which socket ---------------------------------------------------------------


def _exporter_client(daemon: DaemonProcess, exporter: Exporter) -> client.ClientInfo:
    # (the read-only socket comes up just after the one the daemon helper waits for)
    wait_for(lambda: value(exporter.scrape(), "libvirt_up") == 1, timeout=10, interval=0.1,
             message="the exporter connected")
    with daemon.connect() as admin:
        mine = [c for c in admin.client_list()
                if f"pid={exporter.proc.pid} " in c.identity + " "]
    assert len(mine) == 1, mine
    return mine[0]


def _session_is(daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> None:
    """Make ``qemud:///session`` (for exporters started from now on) derive ``daemon``'s
    sockets."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "qemud").symlink_to(daemon.run_dir)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


def test_readonly_socket_derived_or_given(daemon_factory: DaemonFactory,
                                          exporter_factory: type[Exporter], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = daemon_factory()
    _session_is(daemon, tmp_path, monkeypatch)
    derived = _exporter_client(daemon, exporter_factory("qemud:///session"))
    assert (derived.transport, derived.readonly) == ("unix-ro", True)
    # socket= is used as given: on the rw socket, read-only comes from the HELLO
    rw = _exporter_client(daemon, exporter_factory(daemon.uri))
    assert (rw.transport, rw.readonly) == ("unix", True)
    ro_uri = f"qemud+unix:///session?socket={daemon.ro_socket}"
    ro = _exporter_client(daemon, exporter_factory(ro_uri))
    assert (ro.transport, ro.readonly) == ("unix-ro", True)


def test_daemon_without_readonly_socket(daemon_factory: DaemonFactory,
                                        exporter_factory: type[Exporter], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = daemon_factory(config={"listen": {"unix_ro": False}})
    _session_is(daemon, tmp_path, monkeypatch)
    exporter = exporter_factory("qemud:///session")
    assert value(exporter.scrape(), "libvirt_up") == 0
    wait_for(lambda: any("the daemon has no read-only socket" in line and
                         "listen.unix_ro is off" in line for line in exporter.log),
             timeout=5, message="the cause logged")
    assert not any("is qemud running" in line for line in exporter.log)
    # the way out: the rw socket, explicitly
    explicit = exporter_factory(f"qemud+unix:///session?socket={daemon.rw_socket}")
    assert value(explicit.scrape(), "libvirt_up") == 1


# -- start-up --------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "client.exporter", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO_ROOT, env=env)


@pytest.mark.parametrize("uri, words", [
    ("qemud+tls://[::1/system", ["malformed host part", "Invalid IPv6 URL"]),
    ("bogus:///", ["unknown scheme 'bogus'"]),
    ("qemud:///nowhere", ["path must be /session or /system"]),
])
def test_malformed_uri_is_refused_at_start(uri: str, words: list[str]) -> None:
    proc = _run("--uri", uri, "--listen", "127.0.0.1:0")
    assert proc.returncode == 2, proc
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"qemud-exporter: error: invalid URI {uri!r}: "), proc.stderr
    for word in words:
        assert word in last
    assert "Traceback" not in proc.stderr and "serving" not in proc.stderr


def test_unreachable_daemon_is_fine_at_start(tmp_path: Path,
                                             exporter_factory: type[Exporter]) -> None:
    exporter = exporter_factory(f"qemud+unix:///session?socket={tmp_path}/qemud-sock")
    samples = exporter.scrape()
    assert value(samples, "libvirt_up") == 0
    assert exporter.proc.poll() is None


def test_version_and_timeouts_checked() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"qemud-exporter (qemud) {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    for option in ("--scrape-timeout", "--connect-timeout", "--interval"):
        for bad in ("nan", "inf", "-1"):
            proc = _run(option, bad)
            assert proc.returncode == 2 and option in proc.stderr, (option, bad, proc.stderr)
    assert "--scrape-timeout" in _run("--help").stdout
