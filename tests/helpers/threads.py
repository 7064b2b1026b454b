"""Running a call in a thread and keeping its outcome, for tests that block a call
(test_snapshot_reattach, test_snapshot_failures, tests/integration/test_domain_jobs;
:class:`Background`, a call on its own connection: tests/faults, the image switch and
destroy-during-start tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.helpers.daemon import DaemonProcess

__all__ = ["in_thread", "Background"]


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``call`` (which makes its own connection) in a thread; its outcome lands in
    the dict (``result`` or ``error``)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


class Background:
    """A client call on its own connection and thread: ``result`` or ``error`` once done."""

    def __init__(self, daemon: DaemonProcess, call: Callable[[Any], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._conn = daemon.connect()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[Any], Any]) -> None:
        try:
            self.result = call(self._conn)
        except BaseException as exc:
            self.error = exc

    @property
    def answered(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float = 30) -> Any:
        self._thread.join(timeout)
        assert self.answered, "the call was never answered"
        self._conn.close()
        if self.error is not None:
            raise self.error
        return self.result
