"""qemud.loop.EventLoop in-process: timers, fds, signals, children, failing handlers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator

import pytest

from qemud.loop import COMPACT_CANCELLED, READ, EventLoop, connect_unix


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


def run_until(loop: EventLoop, predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        loop.run_once(max_wait=0.05)


def test_timers_run_in_time_order_and_fifo_for_ties(loop) -> None:
    order: list[str] = []
    loop.call_later(0.06, lambda: order.append("c"))
    loop.call_later(0.02, lambda: order.append("a"))
    loop.call_soon(lambda: order.append("soon1"))
    loop.call_soon(lambda: order.append("soon2"))
    loop.call_later(0.04, lambda: order.append("b"))
    run_until(loop, lambda: len(order) == 5)
    assert order == ["soon1", "soon2", "a", "b", "c"]


def test_cancelled_timer_never_runs(loop) -> None:
    ran: list[str] = []
    t = loop.call_later(0.01, lambda: ran.append("cancelled"))
    loop.call_later(0.03, lambda: ran.append("kept"))
    t.cancel()
    run_until(loop, lambda: ran)
    loop.run_once(max_wait=0.03)
    assert ran == ["kept"]


def test_a_cancelled_timer_lets_go_of_its_callback_and_leaves_the_heap(loop) -> None:
    """A call's 300 s deadline is cancelled when the call completes: neither the timer
    nor what its callback holds (the call) may stay in memory until then."""

    class Held:
        pass

    count = COMPACT_CANCELLED * 4
    held = [Held() for _ in range(count)]
    timers = [loop.call_later(300.0, lambda h=h: h) for h in held]
    held_refs = [weakref.ref(h) for h in held]
    timer_refs = [weakref.ref(t) for t in timers]
    del held
    kept = loop.call_later(0.01, lambda: ran.append("kept"))
    ran: list[str] = []
    for t in timers:
        t.cancel()
    del timers, t
    assert [r for r in held_refs if r() is not None] == []  # freed at the cancel
    alive = [r for r in timer_refs if r() is not None]
    assert len(alive) <= COMPACT_CANCELLED  # the heap was compacted along the way
    run_until(loop, lambda: ran)
    assert ran == ["kept"] and kept.cancelled is False
    kept.cancel()  # after it ran: nothing to do, nothing breaks


def test_loop_sleeps_until_the_next_timer_not_longer(loop) -> None:
    fired: list[float] = []
    started = time.monotonic()
    loop.call_later(0.1, lambda: fired.append(time.monotonic()))
    loop.run_once()  # no fds ready: must return when the timer is due
    if not fired:  # (epoll rounds its timeout to milliseconds: allow one short extra turn)
        loop.run_once(max_wait=0.05)
    assert fired and 0.09 <= fired[0] - started < 0.5


def test_stop_ends_run(loop) -> None:
    loop.call_later(0.01, loop.stop)
    started = time.monotonic()
    loop.run()
    assert time.monotonic() - started < 2


def test_fd_handler_gets_the_mask_and_remove_stops_it(loop) -> None:
    a, b = socket.socketpair()
    with a, b:
        masks: list[int] = []
        loop.add(a.fileno(), READ, masks.append)
        b.send(b"x")
        run_until(loop, lambda: masks)
        assert masks[0] & READ
        assert loop.watching(a.fileno())
        loop.remove(a.fileno())
        loop.remove(a.fileno())  # twice is fine
        assert not loop.watching(a.fileno())
        count = len(masks)
        loop.run_once(max_wait=0.02)
        assert len(masks) == count


def test_raising_handlers_do_not_stop_the_loop(loop, caplog) -> None:
    a, b = socket.socketpair()
    with a, b:
        ran: list[str] = []

        def bad_fd(mask: int) -> None:
            a.recv(10)
            raise RuntimeError("fd handler bug")

        def bad_timer() -> None:
            raise ValueError("timer bug")

        loop.add(a.fileno(), READ, bad_fd)
        loop.call_soon(bad_timer)
        loop.call_later(0.02, lambda: ran.append("after"))
        b.send(b"x")
        with caplog.at_level(logging.ERROR, logger="qemud.loop"):
            run_until(loop, lambda: ran)
        assert ran == ["after"]
        text = caplog.text
        assert "fd handler bug" in text and "timer bug" in text


def test_signal_handler_runs_from_the_loop(loop) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    seen: list[int] = []
    loop.add_signal_handler(signal.SIGUSR1, seen.append)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert seen == []  # not run in signal context, only when the loop dispatches
    run_until(loop, lambda: seen)
    assert seen == [signal.SIGUSR1]
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == before  # close() restores the old handler


def test_close_restores_python_sigint_handler() -> None:
    # Python's own handler, as in a run started from a terminal: a run started in the
    # background by a shell inherits SIGINT ignored, and Python then installs none
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        lp = EventLoop()
        lp.add_signal_handler(signal.SIGINT, lambda s: None)
        lp.close()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_raising_signal_handler_does_not_stop_the_loop(loop) -> None:
    seen: list[int] = []

    def bad(signum: int) -> None:
        seen.append(signum)
        raise RuntimeError("signal handler bug")

    loop.add_signal_handler(signal.SIGUSR2, bad)
    os.kill(os.getpid(), signal.SIGUSR2)
    run_until(loop, lambda: seen)
    os.kill(os.getpid(), signal.SIGUSR2)
    run_until(loop, lambda: len(seen) == 2)


def test_watch_child_reaps_without_blocking(loop) -> None:
    pid = os.posix_spawnp("sleep", ["sleep", "0.1"], os.environ)
    statuses: list[int] = []
    ticks: list[float] = []
    started = time.monotonic()
    loop.watch_child(pid, statuses.append)

    def tick() -> None:
        ticks.append(time.monotonic())
        if not statuses:
            loop.call_later(0.01, tick)
    loop.call_soon(tick)
    run_until(loop, lambda: statuses, timeout=5)
    took = time.monotonic() - started
    assert os.waitstatus_to_exitcode(statuses[0]) == 0
    assert 0.08 <= took < 2.0
    assert len(ticks) >= 4, "the loop was blocked while the child ran"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped


def test_watch_child_that_already_exited(loop) -> None:
    pid = os.posix_spawnp("sh", ["sh", "-c", "exit 3"], os.environ)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    statuses: list[int] = []
    loop.watch_child(pid, statuses.append)
    run_until(loop, lambda: statuses)
    assert os.waitstatus_to_exitcode(statuses[0]) == 3


def test_two_children_each_reported_once(loop) -> None:
    pids = [os.posix_spawnp("sh", ["sh", "-c", f"exit {n}"], os.environ) for n in (4, 5)]
    seen: dict[int, list[int]] = {pid: [] for pid in pids}
    for pid in pids:
        loop.watch_child(pid, seen[pid].append)
    run_until(loop, lambda: all(seen.values()))
    loop.run_once(max_wait=0.05)
    assert [os.waitstatus_to_exitcode(s[0]) for s in seen.values()] == [4, 5]
    assert all(len(s) == 1 for s in seen.values())


def test_watch_popen_reports_the_exit_code_and_sets_returncode(loop) -> None:
    codes: list[int] = []
    child = subprocess.Popen(["sh", "-c", "exit 7"])
    loop.watch_popen(child, codes.append)
    killed = subprocess.Popen(["sleep", "30"])
    loop.watch_popen(killed, codes.append)
    killed.kill()
    run_until(loop, lambda: len(codes) == 2, timeout=5)
    assert sorted(codes) == [-signal.SIGKILL, 7]
    assert (child.returncode, killed.returncode) == (7, -signal.SIGKILL)


def test_connect_unix_says_not_yet_then_connects(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    assert connect_unix(path) is None  # nobody there yet: retry later
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        assert connect_unix(path) is None  # bound but not listening: refused
        server.listen()
        sock = connect_unix(path)
        assert sock is not None and not sock.getblocking()
        sock.close()
    with pytest.raises(OSError):
        connect_unix(str(tmp_path / ("x" * 200)))  # too long for sun_path: a real error
