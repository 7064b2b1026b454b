"""certs.fsutil: atomic, no-clobber writes with explicit modes."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from certs.errors import CertFileError, CertFileExistsError
from certs.fsutil import atomic_write, ensure_dir


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_mode_is_independent_of_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "key", b"k", mode=0o600)
        atomic_write(tmp_path / "cert", b"c", mode=0o644)
    finally:
        os.umask(old)
    assert (mode(tmp_path / "key"), mode(tmp_path / "cert")) == (0o600, 0o644)


def test_creates_parents_with_dir_mode(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a" / "b" / "f", b"x", mode=0o600, dir_mode=0o700)
    assert mode(tmp_path / "a" / "b") == 0o700
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"


def test_refuses_existing_file_and_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("f", "dangling"):
        with pytest.raises(CertFileExistsError) as info:
            atomic_write(tmp_path / name, b"new", mode=0o600)
        assert info.value.path == tmp_path / name
    assert (tmp_path / "f").read_bytes() == b"old"
    assert not (tmp_path / "nowhere").exists()


def test_force_replaces_atomically(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    os.chmod(tmp_path / "f", 0o644)
    atomic_write(tmp_path / "f", b"new", mode=0o600, force=True)
    assert (tmp_path / "f").read_bytes() == b"new" and mode(tmp_path / "f") == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_race_loser_does_not_clobber(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file appearing between the early check and link() is still not replaced."""
    target = tmp_path / "f"
    real_link = os.link

    def racing_link(src: str, dst: Path) -> None:
        Path(dst).write_bytes(b"winner")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(CertFileExistsError):
        atomic_write(target, b"loser", mode=0o600)
    assert target.read_bytes() == b"winner"
    assert os.listdir(tmp_path) == ["f"]  # temp file cleaned up


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: str, dst: Path) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    atomic_write(tmp_path / "f", b"data", mode=0o600)
    assert (tmp_path / "f").read_bytes() == b"data" and os.listdir(tmp_path) == ["f"]


def test_unwritable_target_names_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CertFileError, match="file"):
        atomic_write(tmp_path / "file" / "child", b"x", mode=0o600)
    with pytest.raises(CertFileError, match="cannot create directory"):
        ensure_dir(tmp_path / "file" / "sub", 0o700)
