"""Fixtures for the daemon-core tests.

Starting a daemon costs about a second (the QEMU driver probes the emulators), so tests
that neither change limits nor hurt the daemon share one per module: ``shared_daemon``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.daemon import DaemonProcess


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("shared-qemud")).start()
    yield d
    try:
        d.stop()
    except Exception:
        d.kill()
