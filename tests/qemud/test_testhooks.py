"""qemud.testhooks: a test hook shortens a wait, a stray value never breaks one, and a
switch is on only when set to 1."""

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


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), ("1", True), ("0", False), ("true", False), ("yes", False), ("", False),
    (" 1", False),
])
def test_flag(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv("QEMUD_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("QEMUD_TEST_SWITCH", value)
    assert testhooks.flag("QEMUD_TEST_SWITCH") is expected
