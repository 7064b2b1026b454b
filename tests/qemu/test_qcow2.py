"""The qcow2 backing-file reader against images made by the real ``qemu-img``, and
against headers damaged by hand (what the reader must refuse to guess about)."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemud.qemu import qcow2
from qemud.qemu.qcow2 import Backing, ChainError, backing_chain, read_backing


def paths(chain: Iterator[tuple[str, str]]) -> list[str]:
    return [path for path, _ in chain]


def create(path: Path, backing: str | None = None, backing_fmt: str = "qcow2",
           *, cwd: Path | None = None, compat: str = "1.1") -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compat={compat}"]
    if backing is not None:
        args += ["-b", backing, "-F", backing_fmt]
    subprocess.run([*args, str(path), "1M"], check=True, cwd=cwd)
    return path


def rebase_unsafe(image: Path, backing: str, backing_fmt: str = "qcow2") -> None:
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F",
                    backing_fmt, str(image)], check=True)


def test_no_backing_file(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    assert read_backing(str(base)) == Backing(None, None)
    assert paths(backing_chain(str(base), "qcow2")) == [str(base)]


@pytest.mark.parametrize("compat", ["0.10", "1.1"])  # qcow2 v2 and v3 headers
def test_absolute_backing_name(tmp_path: Path, compat: str) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base), compat=compat)
    assert read_backing(str(top)) == Backing(str(base), "qcow2")


def test_qcow_v1(tmp_path: Path) -> None:
    """qcow (v1) keeps the backing name where qcow2 does; it records no format, so the
    backing file is probed."""
    base = create(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow", "-b", str(base), "-F",
                    "qcow2", str(top), "1M"], check=True)
    assert read_backing(str(top)) == Backing(str(base), None)
    assert paths(backing_chain(str(top), None)) == [str(top), str(base)]


def test_relative_name_is_relative_to_the_overlays_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = create(tmp_path / "a" / "base.qcow2")
    # written as given ("../a/base.qcow2"), resolved by QEMU against b/, not the cwd
    top = create(tmp_path / "b" / "top.qcow2", "../a/base.qcow2", cwd=tmp_path / "b")
    backing = read_backing(str(top))
    assert backing.file is not None
    assert backing.file == str(tmp_path / "b" / "../a/base.qcow2")
    assert os.path.realpath(backing.file) == str(base)
    chain = [os.path.realpath(p) for p in paths(backing_chain(str(top), "qcow2"))]
    assert chain == [str(top), str(base)]


def test_chain_follows_the_backing_format(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"QFI\xfb" + bytes(508))  # raw content that looks like qcow2
    mid = create(tmp_path / "mid.qcow2", str(raw), "raw")
    top = create(tmp_path / "top.qcow2", str(mid))
    assert read_backing(str(mid)) == Backing(str(raw), "raw")
    # opened as raw (as the header says): not parsed, the chain ends there
    assert list(backing_chain(str(top), "qcow2")) == [
        (str(top), "qcow2"), (str(mid), "qcow2"), (str(raw), "raw")]


def test_raw_file_has_no_readable_backing(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(ChainError, match="not a qcow2 image"):
        read_backing(str(raw))
    assert paths(backing_chain(str(raw), "raw")) == [str(raw)]
    assert paths(backing_chain(str(raw), None)) == [str(raw)]  # probed: raw
    # declared qcow2 but is not: cannot say what it reads
    with pytest.raises(ChainError, match="not a qcow2 image"):
        paths(backing_chain(str(raw), "qcow2"))


@pytest.mark.parametrize("size", [0, 3, 20, 80])
def test_truncated_header(tmp_path: Path, size: int) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    data = top.read_bytes()
    top.write_bytes(data[:size])
    with pytest.raises(ChainError, match="qcow2"):
        read_backing(str(top))
    with pytest.raises(ChainError):
        paths(backing_chain(str(top), "qcow2"))


def test_backing_name_past_the_end(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    with open(top, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">Q", 5000))  # inside the first 64 KiB cluster...
        f.truncate(4500)  # ...past the end of the file
    with pytest.raises(ChainError, match="truncated"):
        read_backing(str(top))


def test_backing_name_with_nul_bytes(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    with open(top, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">Q", 60000))  # zeros (the first cluster is mostly empty)
    with pytest.raises(ChainError, match="corrupt header"):
        read_backing(str(top))


def test_name_offset_outside_the_first_cluster(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    with open(top, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">Q", (1 << 64) - 100))
    with pytest.raises(ChainError, match="outside the first cluster"):
        read_backing(str(top))
    with open(top, "r+b") as f:  # qcow v1: no cluster size in the same place
        f.seek(4)
        f.write(struct.pack(">I", 1))
    with pytest.raises(ChainError, match="outside the first cluster"):
        read_backing(str(top))


def test_corrupt_name_size(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    with open(top, "r+b") as f:
        f.seek(16)
        f.write(struct.pack(">I", 1 << 20))
    with pytest.raises(ChainError, match="corrupt header"):
        read_backing(str(top))


def test_loop(tmp_path: Path) -> None:
    a = create(tmp_path / "a.qcow2")
    b = create(tmp_path / "b.qcow2", str(a))
    rebase_unsafe(a, str(b))  # a -> b -> a
    with pytest.raises(ChainError, match="loops"):
        paths(backing_chain(str(b), "qcow2"))
    c = create(tmp_path / "c.qcow2")
    rebase_unsafe(c, str(c))  # on itself
    with pytest.raises(ChainError, match="loops"):
        paths(backing_chain(str(c), "qcow2"))


def test_depth_limit(tmp_path: Path) -> None:
    images = [create(tmp_path / "0.qcow2")]
    for i in range(1, 5):
        images.append(create(tmp_path / f"{i}.qcow2", str(images[-1])))
    top = str(images[-1])
    assert len(paths(backing_chain(top, "qcow2", max_depth=4))) == 5
    with pytest.raises(ChainError, match="deeper than 3"):
        paths(backing_chain(top, "qcow2", max_depth=3))
    assert qcow2.MAX_DEPTH >= 64


def test_json_and_protocol_names_are_not_followed(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    rebase_unsafe(top, 'json:{"driver":"file","filename":"/x"}')
    with pytest.raises(ChainError, match="not a plain file name"):
        read_backing(str(top))
    rebase_unsafe(top, "nbd:localhost:10809")
    with pytest.raises(ChainError, match="not a plain file name"):
        read_backing(str(top))
    rebase_unsafe(top, f"file:{base}")  # the file protocol: a plain name
    assert read_backing(str(top)) == Backing(str(base), "qcow2")


def test_missing_file_ends_the_chain(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", str(base))
    base.unlink()
    assert paths(backing_chain(str(top), "qcow2")) == [str(top)]
    assert paths(backing_chain(str(tmp_path / "none.qcow2"), "qcow2")) == []


def test_read_error(tmp_path: Path) -> None:
    """A read that fails (as root too: the backing "file" is a directory)."""
    (tmp_path / "base.qcow2").mkdir()
    top = create(tmp_path / "top.qcow2")
    rebase_unsafe(top, str(tmp_path / "base.qcow2"))
    with pytest.raises(ChainError, match="base.qcow2: Is a directory"):
        paths(backing_chain(str(top), "qcow2"))


def test_other_formats_with_a_backing_file_are_not_guessed(tmp_path: Path) -> None:
    qed = tmp_path / "disk.qed"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qed", str(qed), "1M"], check=True)
    top = create(tmp_path / "top.qcow2")
    rebase_unsafe(top, str(qed), "qed")
    with pytest.raises(ChainError, match="'qed'"):
        paths(backing_chain(str(top), "qcow2"))
    with pytest.raises(ChainError, match="not read here"):
        paths(backing_chain(str(qed), None))


@pytest.mark.timeout(20)  # a regression blocks in open(2) forever: fail, do not hang
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO named as a disk (or as a backing file) is opened with O_NONBLOCK and
    refused: nobody ever opens its write end, so a blocking open would never return."""
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)
    top = create(tmp_path / "top.qcow2")
    rebase_unsafe(top, str(fifo), "raw")
    with pytest.raises(ChainError, match="disk.fifo: not a regular file or a block device"):
        read_backing(str(fifo))
    with pytest.raises(ChainError, match="disk.fifo: not a regular file or a block device"):
        qcow2.probe_format(str(fifo))
    for fmt in (None, "qcow2"):
        with pytest.raises(ChainError, match="not a regular file or a block device"):
            paths(backing_chain(str(fifo), fmt))
    rebase_unsafe(top, str(fifo), "qcow2")
    with pytest.raises(ChainError, match="disk.fifo: not a regular file or a block device"):
        paths(backing_chain(str(top), "qcow2"))
