"""Opening a path someone else chose without blocking the loop (``qemud.fileopen``):
a FIFO with no writer neither blocks the open nor is kept, nor is any kind the caller
does not read, and nothing is left open."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from qemud.fileopen import WrongFileKind, file_kind, open_for_reading


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(20)  # a blocking open of the FIFO would hang here
def test_only_the_kinds_asked_for_are_kept(tmp_path: Path) -> None:
    regular = tmp_path / "disk.img"
    regular.write_bytes(b"x" * 10)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = open_fds()
    fd, st = open_for_reading(regular)
    try:
        assert st.st_size == 10 and os.read(fd, 100) == b"x" * 10
    finally:
        os.close(fd)
    refused = {fifo: "a FIFO", tmp_path: "a directory", Path("/dev/null"): "a character device"}
    for path, kind in refused.items():
        for block_devices in (False, True):
            with pytest.raises(WrongFileKind) as err:
                open_for_reading(path, block_devices=block_devices)
            assert (err.value.kind, err.value.path) == (kind, str(path))
            assert err.value.is_dir == (path == tmp_path)
            assert str(err.value) == f"{path} is {kind}"
    assert not isinstance(WrongFileKind("x", 0), OSError)  # the open worked
    with pytest.raises(FileNotFoundError):
        open_for_reading(tmp_path / "missing")
    assert open_fds() == before  # every refused file was closed again


def test_a_socket_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        with pytest.raises(OSError):  # ENXIO: open(2) of a socket
            open_for_reading(path)


def test_block_devices_only_when_asked() -> None:
    device = next((p for p in (Path("/dev/loop0"), Path("/dev/ram0"), Path("/dev/vda"),
                               Path("/dev/sda")) if p.is_block_device()), None)
    if device is None:
        pytest.skip("no block device node here")
    with pytest.raises(WrongFileKind, match="is a block device"):
        open_for_reading(device)
    fd, _ = open_for_reading(device, block_devices=True)
    os.close(fd)


def test_file_kind_names() -> None:
    assert file_kind(os.stat("/dev/null").st_mode) == "a character device"
    assert file_kind(os.lstat("/proc/self").st_mode) == "a symlink"
    assert file_kind(0) == "an unknown kind of file"
