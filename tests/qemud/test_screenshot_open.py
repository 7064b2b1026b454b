"""The screendump file is opened without blocking the loop and refused unless it is a
regular file (DOMAIN_SCREENSHOT opens whatever sits at the path QEMU was told to write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemud.driver.screenshot import open_screendump
from qemud.errors import OperationFailed


def test_regular_file_is_opened(tmp_path: Path) -> None:
    image = tmp_path / "screendump-1.ppm"
    image.write_bytes(b"P6\n1 1\n255\n\0\0\0")
    fd = open_screendump(image)
    try:
        assert os.read(fd, 2) == b"P6"
    finally:
        os.close(fd)


@pytest.mark.timeout(20)  # a regression blocks in open(2) forever: fail, do not hang
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Nobody opens the FIFO's write end: a blocking open would never return."""
    fifo = tmp_path / "screendump-1.ppm"
    os.mkfifo(fifo)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OperationFailed, match="screendump-1.ppm' is not a regular file"):
        open_screendump(fifo)
    assert set(os.listdir("/proc/self/fd")) <= before  # the fd was closed


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OperationFailed, match="is not a regular file"):
        open_screendump(tmp_path)
    with pytest.raises(OperationFailed, match="cannot open the screenshot QEMU wrote: "
                       "No such file or directory"):
        open_screendump(tmp_path / "none.ppm")
