"""Driving a real qemud EventLoop from a test: the fixture's loop, turned until a
condition holds (or for a while), so timers and fd callbacks fire as in the daemon."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from qemud.loop import EventLoop

__all__ = ["loop", "run_until", "run_for"]


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """A fresh loop, closed after the test (import this fixture into a test module)."""
    lp = EventLoop()
    yield lp
    lp.close()


def run_until(loop: EventLoop, predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Turn ``loop`` until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        loop.run_once(max_wait=0.02)


def run_for(loop: EventLoop, seconds: float) -> None:
    """Turn ``loop`` for ``seconds`` (so that a timer due meanwhile would have fired)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        loop.run_once(max_wait=0.02)
