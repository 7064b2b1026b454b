"""Unpacking an appliance tarball within a size limit, as a child of the daemon:
``python -I unpack.py LIMIT TARBALL DEST`` (see ``importer``). Standard library only: it
runs as a script, not as part of the package, and never in the daemon's loop.

Why not ``tar -x``: nothing bounds what it writes. A tarball of a few KiB can declare
(gzip'ed zeros) or expand to (a sparse member: the header gives the stored size, the
sparse map the real one) far more than the file system holds, and ``state_dir`` is
the file system the guests' disks, saved states and snapshots live on. Here every
member is checked (:class:`_Tally`): its name (relative, no ``..``, at most
:data:`MAX_NAME` characters and :data:`MAX_DEPTH` levels), its type (only regular files,
directories and hard links to earlier regular files), the members and implied
directories so far (at most :data:`MAX_MEMBERS`) and the regular files' declared sizes
added up (their real sizes, for sparse members: at most LIMIT bytes); and every byte
written is counted, the chunk that would take the count past LIMIT not written. How
often the tarball is read depends on whether it is compressed:

* a plain tarball is read twice: (1, :func:`check`) every header first, refused at the
  member that passes a limit or is refused, before anything is written; then (2,
  :func:`extract`) the members are written, checked and counted again (a header that
  claims less than its member unpacks to, or a tarball rewritten between the two
  passes, cannot write past the limit). ``tarfile`` seeks over the members' data in
  pass 1, so it costs little;
* a compressed one (gzip, bzip2, xz: :func:`is_compressed`) is read once, by
  :func:`extract` alone, each member checked just before it is written: refused at the
  member that passes a limit or is refused, before writing it (the members before it
  were written: the daemon removes them with DEST). Its members' data cannot be
  skipped without decompressing it, so a pass 1 would cost as much as unpacking: an
  import took about twice as long as ``tar -x`` (2.6 s against 1.8 s for 256 MiB
  gzip'ed, 4.3 s against 2.1 s for 64 MiB xz'ed), and reached the daemon's call
  deadline at ~30 GiB gzip'ed or ~4-5 GiB xz'ed, well below the default limit.

Runs of zeros are left as holes (a sparse raw image stays sparse). Files are made 0600
and directories 0700; the importer makes them read-only afterwards. The daemon removes
DEST, whatever this left in it, when the import fails.

Exit status, with one line on stderr: 0 unpacked; :data:`EXIT_BAD_TARBALL` (not a
tarball, a damaged one, a write error: the reason); :data:`EXIT_BAD_MEMBER` (a member
refused: the reason); :data:`EXIT_TOO_BIG` (``declared BYTES NAME`` or ``written BYTES
NAME``: the count that passed the limit, at member NAME).
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile
from typing import IO

__all__ = ["Refused", "is_compressed", "check", "extract", "unpack_tarball", "main",
           "EXIT_BAD_TARBALL", "EXIT_BAD_MEMBER", "EXIT_TOO_BIG"]

EXIT_BAD_TARBALL = 1
EXIT_BAD_MEMBER = 2
EXIT_TOO_BIG = 3

#: members (files, directories, links) a tarball may hold: an appliance is a descriptor,
#: a few disk images and perhaps a kernel, and the byte limit does not bound the inodes
#: (and the staging tree's removal) that millions of empty files take
MAX_MEMBERS = 10_000
#: the longest member name, and the most levels of directories in it
MAX_NAME = 1024
MAX_DEPTH = 32
#: bytes read and written at a time
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: how the compressed streams ``tarfile`` reads (mode ``r:*``) begin: gzip, bzip2, xz
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class Refused(Exception):
    """The tarball is refused: ``code`` is the exit status, ``message`` the stderr line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def member_path(name: str) -> str:
    """``name`` below the destination, normalised (``""`` for the top, ``./``);
    absolute names and ``..`` are refused."""
    if name.startswith("/"):
        raise Refused(EXIT_BAD_MEMBER, f"member '{name}' has an absolute name: an "
                                       "appliance tarball holds relative names only")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(EXIT_BAD_MEMBER, f"member '{name}' has '..' in its name: an "
                                       "appliance tarball holds names below its top only")
    return "/".join(parts)


def _check_type(member: tarfile.TarInfo, rel: str) -> None:
    if member.isreg() or member.isdir():
        return
    if member.islnk():
        member_path(member.linkname)
        return
    what = "a symlink" if member.issym() else "not a regular file"
    raise Refused(EXIT_BAD_MEMBER, f"member '{rel or member.name}' is {what}: an appliance "
                                   "tarball may hold only regular files and directories")


def _members(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next member; the ones before are not kept (a tarball may hold millions)."""
    member = tar.next()
    # TarFile keeps every member it read in ``members`` (undocumented, but stable since
    # Python 2), for random access this does not need
    tar.members.clear()  # type: ignore[attr-defined]
    return member


def is_compressed(f: IO[bytes]) -> bool:
    """Whether ``f`` (read from its start, and left there) holds a gzip, bzip2 or xz
    stream: one whose members' data cannot be skipped without decompressing it, so that
    it is unpacked in one pass (see the module's docstring). A wrong guess costs time,
    not safety: a plain tarball whose first name begins like a compressed stream is
    checked member by member as it is written, and a compressed stream not recognised
    here (``tarfile`` guesses on its own) is decompressed twice."""
    head = f.read(max(len(magic) for magic in COMPRESSED_MAGIC))
    f.seek(0)
    return head.startswith(COMPRESSED_MAGIC)


class _Tally:
    """What the members read so far add up to, counted the same way in every pass (a
    tarball rewritten between the two of a plain tarball gets no further in the second,
    and the one pass of a compressed tarball refuses what both would): members and the
    directories their names imply (``os.makedirs`` creates every missing parent, so a
    few members with deep names would otherwise make millions of directories), the
    regular files' declared sizes, and the files a hard link may name."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # (None: the declared sizes are not checked)
        self.declared = 0
        self.members = 0
        self.dirs: set[str] = set()
        self.files: set[str] = set()

    def add(self, member: tarfile.TarInfo) -> str:
        """``member``'s checked name below the destination (see :func:`member_path`);
        raises :class:`Refused` at the member that passes a limit or is refused."""
        self.members += 1
        if len(member.name) > MAX_NAME or member.name.count("/") > MAX_DEPTH:
            raise Refused(EXIT_BAD_MEMBER, f"member '{member.name[:64]}...' has a name of "
                                           f"more than {MAX_DEPTH} levels or {MAX_NAME} "
                                           "characters: an appliance tarball holds a "
                                           "descriptor and a few files")
        rel = member_path(member.name)
        _check_type(member, rel)
        parts = rel.split("/") if rel else []
        for depth in range(1, len(parts) + (1 if member.isdir() else 0)):
            self.dirs.add("/".join(parts[:depth]))
        if self.members + len(self.dirs) > MAX_MEMBERS:
            raise Refused(EXIT_BAD_MEMBER, f"the tarball holds more than {MAX_MEMBERS} "
                                           "members (files and directories): an appliance "
                                           "tarball holds a descriptor and a few files")
        if member.islnk():
            source = member_path(member.linkname)
            if source != rel and source not in self.files:
                raise Refused(EXIT_BAD_MEMBER, f"member '{rel}' links to "
                                               f"'{member.linkname}', which is no earlier "
                                               "file of the tarball")
            self.files.add(rel)
        elif member.isreg():
            self.declared += member.size
            if self.limit is not None and self.declared > self.limit:
                raise Refused(EXIT_TOO_BIG, f"declared {self.declared} {rel}")
            self.files.add(rel)
        return rel


def check(tar: tarfile.TarFile, limit: int) -> int:
    """Pass 1 of a plain tarball: every member's name, type and link checked, the
    regular files' declared sizes added up; refused past ``limit`` or
    :data:`MAX_MEMBERS` (or for a member's name, type or link) at the member that goes
    past it, before anything is written."""
    tally = _Tally(limit)
    while (member := _members(tar)) is not None:
        tally.add(member)
    return tally.declared


def extract(tar: tarfile.TarFile, dest: str, limit: int, *,
            check_declared: bool = False) -> int:
    """Write the members below ``dest``; returns the bytes written. Refused when the
    count would pass ``limit``, or for a member's name, type or link or past
    :data:`MAX_MEMBERS` as :func:`check` refuses; with ``check_declared`` (the one pass
    of a compressed tarball, which :func:`check` did not read first) also at the regular
    file whose declared size takes the sum past ``limit``, before writing it. What was
    written stays, for the caller to remove."""
    # (without check_declared, pass 2 of a plain tarball: pass 1 added the declared
    # sizes up, and the bytes written are what count here)
    tally = _Tally(limit if check_declared else None)
    written = 0
    while (member := _members(tar)) is not None:
        rel = tally.add(member)
        target = os.path.join(dest, rel) if rel else dest
        if member.isdir():
            os.makedirs(target, 0o700, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), 0o700, exist_ok=True)
        if member.islnk():
            source = os.path.join(dest, member_path(member.linkname))
            if source == target:  # (GNU tar: a file named twice, stored as a link to itself)
                continue
            if not stat.S_ISREG(os.lstat(source).st_mode):
                raise Refused(EXIT_BAD_MEMBER, f"member '{rel}' links to "
                                               f"'{member.linkname}', not a regular file")
            _unlink_file(target)
            os.link(source, target, follow_symlinks=False)
            continue
        _unlink_file(target)
        data = tar.extractfile(member)
        assert data is not None  # (a regular file)
        written = _write(data, target, rel, written, limit)
    return written


def _unlink_file(path: str) -> None:
    """A later member of the same name replaces a file (as ``tar`` does), not a
    directory."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _write(data: IO[bytes], target: str, rel: str, written: int, limit: int) -> int:
    size = 0
    with os.fdopen(os.open(target, _CREATE, 0o600), "wb") as out:
        while chunk := data.read(CHUNK):
            if written + len(chunk) > limit:
                raise Refused(EXIT_TOO_BIG, f"written {written + len(chunk)} {rel}")
            written += len(chunk)
            size += len(chunk)
            if chunk == _ZEROS[:len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)  # a hole
            else:
                out.write(chunk)
        out.truncate(size)
    return written


def unpack_tarball(f: IO[bytes], dest: str, limit: int) -> int:
    """Unpack the tarball ``f`` below ``dest`` within ``limit`` bytes; returns the bytes
    written. Two passes (:func:`check`, then :func:`extract`) over a plain tarball, one
    over a compressed one (see the module's docstring); raises :class:`Refused`."""
    if is_compressed(f):
        with tarfile.open(fileobj=f, mode="r:*") as tar:
            return extract(tar, dest, limit, check_declared=True)
    with tarfile.open(fileobj=f, mode="r:*") as tar:  # one open file for both passes
        check(tar, limit)
    f.seek(0)
    with tarfile.open(fileobj=f, mode="r:*") as tar:
        return extract(tar, dest, limit)


def main(argv: list[str]) -> int:
    try:
        limit, source, dest = int(argv[1]), argv[2], argv[3]
    except (IndexError, ValueError):
        print("usage: unpack.py LIMIT TARBALL DEST", file=sys.stderr)
        return EXIT_BAD_TARBALL
    try:
        with open(source, "rb") as f:
            unpack_tarball(f, dest, limit)
    except Refused as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    except tarfile.ReadError as exc:
        detail = str(exc)  # (several lines when no compression fits: left out)
        print("not a tar archive (plain, gzip, bzip2 or xz), or a damaged one"
              + (f": {detail}" if detail and "\n" not in detail else ""), file=sys.stderr)
        return EXIT_BAD_TARBALL
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_TARBALL
    except Exception as exc:  # a damaged stream: zlib, lzma, EOFError...
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_TARBALL
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
