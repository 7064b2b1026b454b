"""vcpupin / emulatorpin's cpulist, as virsh reads it (virshParseCPUList) and prints a
cpumap (virBitmapDataFormat); the commands against a real daemon are in
tests/integration/test_pinning.py."""

from __future__ import annotations

import pytest

from client.shell.commands.pinning import cpumap_text, parse_cpulist
from client.shell.registry import UsageError


@pytest.mark.parametrize(("text", "maxcpu", "cpumap"), [
    ("0", 2, b"\x01"), ("1", 2, b"\x02"), ("0-1", 2, b"\x03"), ("0-3,^2", 4, b"\x0b"),
    ("r", 2, b"\x03"), ("r", 12, b"\xff\x0f"), ("9", 12, b"\x00\x02"),
])
def test_cpulist(text: str, maxcpu: int, cpumap: bytes) -> None:
    assert parse_cpulist(text, maxcpu) == cpumap


@pytest.mark.parametrize(("text", "error"), [
    ("7", "CPU 7 in cpulist '7' exceed the maxcpu 2"),
    ("0,3-4", "CPU 4 in cpulist '0,3-4' exceed the maxcpu 2"),
    ("", "Invalid cpulist ''"), ("x", "Invalid cpulist 'x'"), ("1,^1", "Invalid cpulist '1,^1'"),
    ("2-1", "Invalid cpulist '2-1'"), ("1024", "Invalid cpulist '1024'"),
])
def test_bad_cpulist(text: str, error: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_cpulist(text, 2)
    assert info.value.lines == [error]


@pytest.mark.parametrize(("cpumap", "text"), [
    (b"\x01", "0"), (b"\x03", "0-1"), (b"\x0b", "0-1,3"), (b"\xff\x0f", "0-11"),
    (b"\x05\x01", "0,2,8"), (b"", ""),
])
def test_cpumap_text(cpumap: bytes, text: str) -> None:
    assert cpumap_text(cpumap) == text
