"""qemud.testhooks: a test hook shortens a wait, a stray value never breaks one."""

from __future__ import annotations

import pytest

from qemud import testhooks


@pytest.mark.parametrize(("value", "expected"), [
    (None, 15.0), ("3", 3.0), ("0.25", 0.25),
    ("0", 15.0), ("-1", 15.0), ("soon", 15.0), ("", 15.0),
])
def test_seconds(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float) -> None:
    if value is None:
        monkeypatch.delenv("QEMUD_TEST_WAIT", raising=False)
    else:
        monkeypatch.setenv("QEMUD_TEST_WAIT", value)
    assert testhooks.seconds("QEMUD_TEST_WAIT", 15.0) == expected
