"""Running a call in a thread and keeping its outcome, for tests that block a call
(test_snapshot_reattach, test_snapshot_failures, tests/integration/test_domain_jobs).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["in_thread"]


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
