"""An appliance tarball may unpack to at most ``appliance.import_max_bytes``: one that
declares more is refused at the member that passes it, before writing it, naming the
limit and the tarball, and leaves nothing behind; the bytes written are counted too, so
a member that unpacks to more than its header said cannot pass the limit either
(qemud/appliance/images/unpack.py, the child that unpacks). A plain tarball is read
twice (every header first, so nothing is written when it is refused), a compressed one
once (the members before the refused one are written, then removed). Tarballs of a few
KiB that declare far more: GNU tar's sparse members (``tar -S``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import appliance_images as images
from client.errors import InvalidArgError
from qemud.appliance.images import unpack
from tests.helpers.daemon import DaemonProcess, serving, wait_for

MIB = 1 << 20
LIMIT = 32 * MIB


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img-limit"),
                           {"appliance": {"import_max_bytes": LIMIT}})
    with serving(daemon):
        yield daemon


def sparse_tree(directory: Path, name: str, size: int) -> Path:
    """The files of an appliance booting from a raw system disk of ``size`` bytes, all
    holes but its first bytes, in ``directory``/build-``name`` (returned)."""
    root = directory / f"build-{name}"
    root.mkdir(parents=True)
    (root / "appliance.json").write_text(json.dumps({
        "name": name, "version": "1.0", "arch": "x86_64", "memory": 64,
        "boot": {"disk": "vda"},
        "disks": [{"file": "system.raw", "class": "system", "format": "raw",
                   "target": "vda"}]}))
    with open(root / "system.raw", "wb") as f:
        f.write(b"SYSTEM")
        f.truncate(size)
    return root


def sparse_appliance(directory: Path, name: str, size: int) -> Path:
    """A tar.gz of :func:`sparse_tree`: a few KiB whatever ``size`` is."""
    root = sparse_tree(directory, name, size)
    out = directory / f"{name}.tar.gz"
    subprocess.run(["tar", "-S", "-czf", str(out), "-C", str(root), "."], check=True)
    return out


#: tar's option and the suffix of each compression an appliance tarball may use
COMPRESSIONS = {"gz": "-z", "bz2": "-j", "xz": "-J"}


def compressed_appliance(directory: Path, name: str, compression: str, first: int,
                         then: int) -> Path:
    """A compressed tarball of an appliance whose members come in this order: its
    descriptor, ``first.bin`` (``first`` random bytes: real data, written as unpacked)
    and ``system.raw`` (``then`` bytes, all holes but its first: a few KiB stored)."""
    root = sparse_tree(directory, name, then)
    (root / "first.bin").write_bytes(os.urandom(first))
    out = directory / f"{name}.tar.{compression}"
    subprocess.run(["tar", "-S", COMPRESSIONS[compression], "-cf", str(out), "-C",
                    str(root), "appliance.json", "first.bin", "system.raw"], check=True)
    return out


def nothing_named(qemud: DaemonProcess, name: str) -> None:
    """No file ``name`` (one no other test's tarball holds) anywhere in the daemon's
    state directory: not kept in the store, nor left beside it."""
    assert not list(qemud.state_dir.rglob(name))


def store_is_clean(qemud: DaemonProcess, name: str) -> None:
    """No trace of the import ``name`` in the image store (its staging tree is renamed
    away at once and removed by a child)."""
    store = qemud.state_dir / "images"
    assert not (store / name).exists()
    assert not list(store.glob(".staging-*"))
    wait_for(lambda: not list(store.glob(".*.qemud-discard-*")),
             message="the refused import's staging tree to be removed")


def test_a_tarball_over_the_limit_is_refused_and_leaves_nothing(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    huge = sparse_appliance(tmp_path, "huge", 1 << 30)
    assert huge.stat().st_size < 64 * 1024  # what was downloaded: a few KiB
    with qemud.connect() as conn:
        with pytest.raises(InvalidArgError) as info:
            images.import_appliance(conn, str(huge))
        message = str(info.value)
        assert f"appliance tarball {huge} unpacks to more than appliance.import_max_bytes " \
               f"= {LIMIT} (32 MiB)" in message, message
        assert "the limit passed at member 'system.raw'" in message, message
        assert "refused at that member, before writing it; nothing was kept" in message, \
            message
        store_is_clean(qemud, "huge")
        assert "huge" not in {i.name for i in images.list_appliances(conn)}
        # within the limit (sparse members count at their full size): imported
        fits = sparse_appliance(tmp_path, "fits", LIMIT - MIB)
        assert images.import_appliance(conn, str(fits)) == "fits:1.0"
        stored = qemud.state_dir / "images" / "fits" / "1.0" / "system.raw"
        assert stored.stat().st_size == LIMIT - MIB
        assert stored.read_bytes()[:6] == b"SYSTEM"


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_a_later_member_of_a_compressed_tarball_past_the_limit_is_refused(
        qemud: DaemonProcess, tmp_path: Path, compression: str) -> None:
    """A compressed tarball is read in one pass: its first members are written before
    the one whose declared size passes the limit is read. That one is refused, named,
    before it is written, and what was written before it is not kept."""
    name = f"later-{compression}"
    path = compressed_appliance(tmp_path, name, compression, MIB, 1 << 30)
    declared = sum(p.stat().st_size for p in (tmp_path / f"build-{name}").iterdir())
    with qemud.connect() as conn:
        with pytest.raises(InvalidArgError) as info:
            images.import_appliance(conn, str(path))
        message = str(info.value)
        assert f"appliance tarball {path} unpacks to more than appliance.import_max_bytes " \
               f"= {LIMIT} (32 MiB): its files declare at least {declared} bytes" \
            in message, message
        assert "the limit passed at member 'system.raw'; refused at that member, before " \
               "writing it; nothing was kept" in message, message
        store_is_clean(qemud, name)
        nothing_named(qemud, "first.bin")
        assert name not in {i.name for i in images.list_appliances(conn)}


def test_a_symlink_after_a_file_of_a_compressed_tarball_is_refused(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    """In the one pass over a compressed tarball each member is checked before it is
    written: a symlink after a regular file is refused, named, and neither is kept."""
    path = tmp_path / "symlink.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (("appliance.json", b"{}"), ("data.bin", os.urandom(MIB))):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with qemud.connect() as conn, pytest.raises(InvalidArgError) as err:
        images.import_appliance(conn, str(path))
    assert str(err.value).endswith(f"{path}: member 'link' is a symlink: an appliance "
                                   "tarball may hold only regular files and directories"), \
        err.value
    store_is_clean(qemud, "symlink")
    nothing_named(qemud, "data.bin")


def test_names_outside_the_tarball_are_refused(qemud: DaemonProcess,
                                               tmp_path: Path) -> None:
    """Absolute names and ``..`` are refused, naming the member; nothing is written
    outside the staging directory (nor kept in it)."""
    for bad in ("../escaped.txt", "/tmp/escaped.txt", "a/../../escaped.txt"):
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as tar:
            data = b"{}"
            info = tarfile.TarInfo("appliance.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(bad)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        with qemud.connect() as conn, pytest.raises(InvalidArgError) as err:
            images.import_appliance(conn, str(path))
        assert f"member '{bad}' has " in str(err.value), err.value
        assert not (qemud.state_dir / "images" / "escaped.txt").exists()
        assert not (qemud.state_dir / "escaped.txt").exists()
        store_is_clean(qemud, "bad")


def test_a_tarball_of_too_many_members_is_refused(qemud: DaemonProcess,
                                                 tmp_path: Path) -> None:
    """Empty files cost no bytes but an inode each: more than ``unpack.MAX_MEMBERS``
    members are refused before anything is written."""
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tar:
        for n in range(unpack.MAX_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"f{n}"))
    with qemud.connect() as conn, pytest.raises(InvalidArgError) as err:
        images.import_appliance(conn, str(path))
    assert str(err.value).endswith(
        f"{path}: the tarball holds more than {unpack.MAX_MEMBERS} members (files and "
        "directories): an appliance tarball holds a descriptor and a few files"), err.value
    store_is_clean(qemud, "many")


def test_deep_names_and_the_directories_they_imply_are_refused(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    """Each missing parent of a member is made too: names nested too deep, or the
    directories many names imply, are refused before anything is written (a few hundred
    members of a few KiB made hundreds of thousands of directories)."""
    deep, many = tmp_path / "deep.tar", tmp_path / "implied.tar"
    with tarfile.open(deep, "w") as tar:
        tar.addfile(tarfile.TarInfo("/".join(["d"] * (unpack.MAX_DEPTH + 1)) + "/f"))
    with tarfile.open(many, "w") as tar:  # 400 x 30 directories: past MAX_MEMBERS
        for n in range(400):
            tar.addfile(tarfile.TarInfo(f"top{n}/" + "/".join(["d"] * 29) + "/f"))
    with qemud.connect() as conn:
        with pytest.raises(InvalidArgError) as err:
            images.import_appliance(conn, str(deep))
        assert f"has a name of more than {unpack.MAX_DEPTH} levels or {unpack.MAX_NAME} " \
               "characters" in str(err.value), err.value
        with pytest.raises(InvalidArgError) as err:
            images.import_appliance(conn, str(many))
        assert f"holds more than {unpack.MAX_MEMBERS} members (files and directories)" \
            in str(err.value), err.value
    store_is_clean(qemud, "deep")


def test_links_a_file_named_twice_and_a_link_to_a_later_member(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    """GNU tar stores a file named twice as a hard link to itself: unpacked once, as
    ``tar -x`` does. A link to a member that comes later is refused, naming it."""
    appliance = sparse_appliance(tmp_path, "twice", MIB)
    root = tmp_path / "build-twice"
    twice = tmp_path / "twice.tar"
    subprocess.run(["tar", "-cf", str(twice), "-C", str(root), "appliance.json", "."],
                   check=True)
    assert appliance.exists()
    forward = tmp_path / "forward.tar"
    with tarfile.open(forward, "w") as tar:
        link = tarfile.TarInfo("early.bin")
        link.type, link.linkname = tarfile.LNKTYPE, "late.bin"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("late.bin"))
    with qemud.connect() as conn:
        assert images.import_appliance(conn, str(twice)) == "twice:1.0"
        with pytest.raises(InvalidArgError) as err:
            images.import_appliance(conn, str(forward))
        assert "member 'early.bin' links to 'late.bin', which is no earlier file of the " \
               "tarball" in str(err.value), err.value


# -- the unpacking child, on its own -----------------------------------------------------


def test_unpacking_counts_what_it_writes_and_stops_at_the_limit(tmp_path: Path) -> None:
    """The second line of defence: whatever the headers declared (pass 1 is skipped
    here, as a tarball rewritten between the passes or a lying header would get past
    it), no more than the limit is written, and the member that would pass it is named."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a.bin", "b.bin"):
        (source / name).write_bytes(os.urandom(3 * MIB))
    path = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(path), "-C", str(source), "a.bin", "b.bin"],
                   check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    limit = 4 * MIB
    with tarfile.open(path) as tar, pytest.raises(unpack.Refused) as info:
        unpack.extract(tar, str(dest), limit)
    assert info.value.code == unpack.EXIT_TOO_BIG
    assert info.value.message.startswith("written ") and info.value.message.endswith(" b.bin")
    assert sum(p.stat().st_size for p in dest.rglob("*")) <= limit
    # as the daemon runs it: refused by the declared sizes, before writing anything
    dest2 = tmp_path / "dest2"
    dest2.mkdir()
    child = subprocess.run([sys.executable, "-I", unpack.__file__, str(limit), str(path),
                            str(dest2)], capture_output=True, text=True)
    assert child.returncode == unpack.EXIT_TOO_BIG, child.stderr
    assert child.stderr == f"declared {6 * MIB} b.bin\n"
    assert list(dest2.iterdir()) == []
    # and within the limit: unpacked whole
    child = subprocess.run([sys.executable, "-I", unpack.__file__, str(6 * MIB), str(path),
                            str(dest2)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    for name in ("a.bin", "b.bin"):
        assert (dest2 / name).read_bytes() == (source / name).read_bytes()


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two members (``a.bin``, ``b.bin``: 3 MiB of random bytes each, in this
    order; the files are in ``src`` beside the tarballs) as a plain tarball (key ``""``)
    and compressed each way (:data:`COMPRESSIONS`)."""
    directory = tmp_path_factory.mktemp("tarballs")
    source = directory / "src"
    source.mkdir()
    for name in ("a.bin", "b.bin"):
        (source / name).write_bytes(os.urandom(3 * MIB))
    paths = {}
    for compression in ("", *sorted(COMPRESSIONS)):
        path = directory / ("t.tar" + (f".{compression}" if compression else ""))
        flags = [COMPRESSIONS[compression]] if compression else []
        subprocess.run(["tar", *flags, "-cf", str(path), "-C", str(source), "a.bin",
                        "b.bin"], check=True)
        paths[compression] = path
    return paths


def test_compression_is_told_by_the_first_bytes(tarballs: dict[str, Path],
                                                tmp_path: Path) -> None:
    """gzip, bzip2 and xz are compressed, whatever the file's name; a plain tarball is
    not; the file is left at its start for tarfile to read."""
    for compression, path in tarballs.items():
        renamed = tmp_path / f"renamed-{compression or 'plain'}"
        shutil.copyfile(path, renamed)
        with open(renamed, "rb") as f:
            assert unpack.is_compressed(f) is bool(compression), compression
            assert f.tell() == 0
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb") as f:
        assert not unpack.is_compressed(f)


@pytest.mark.parametrize("compression", ["", *sorted(COMPRESSIONS)])
def test_a_compressed_tarball_is_read_once_a_plain_one_twice(
        tarballs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        compression: str) -> None:
    """A compressed tarball's members cannot be skipped without decompressing them: it
    is opened (decompressed) once, never read by ``check`` first; a plain one, which
    ``check`` reads by seeking over its members, twice."""
    path = tarballs[compression]
    opened: list[str] = []
    real_open = tarfile.open

    def counting_open(*args: Any, **kwargs: Any) -> tarfile.TarFile:
        opened.append(str(kwargs.get("mode")))
        return real_open(*args, **kwargs)

    def no_check(tar: tarfile.TarFile, limit: int) -> int:
        raise AssertionError("a compressed tarball read by check before unpacking")

    monkeypatch.setattr(tarfile, "open", counting_open)
    if compression:
        monkeypatch.setattr(unpack, "check", no_check)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack.main(["unpack.py", str(8 * MIB), str(path), str(dest)]) == 0
    assert len(opened) == (1 if compression else 2), opened
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin", "b.bin"]
    for name in ("a.bin", "b.bin"):
        assert (dest / name).read_bytes() == path.with_name("src").joinpath(name).read_bytes()


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_a_compressed_tarball_is_refused_at_the_member_past_the_limit(
        tarballs: dict[str, Path], tmp_path: Path, compression: str) -> None:
    """As the daemon runs it: in the one pass, the member whose declared size passes
    the limit is refused before it is written (the members before it were written, for
    the daemon to remove), with the line the importer reads."""
    path = tarballs[compression]
    dest = tmp_path / "dest"
    dest.mkdir()
    child = subprocess.run([sys.executable, "-I", unpack.__file__, str(4 * MIB),
                            str(path), str(dest)], capture_output=True, text=True)
    assert child.returncode == unpack.EXIT_TOO_BIG, child.stderr
    assert child.stderr == f"declared {6 * MIB} b.bin\n"
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]
