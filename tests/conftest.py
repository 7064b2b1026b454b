"""Fixtures shared by every test folder: real daemons in temp dirs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import DaemonProcess

DaemonFactory = Callable[..., DaemonProcess]


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
            d.start()
        return d

    yield make
    for d in started:
        try:
            d.stop()
        except Exception:
            d.kill()


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """One running daemon with default limits."""
    return daemon_factory()
