"""Which file a qcow2 image reads from: its backing file, read from the header.

The snapshot deletion must know whether an image it is about to write is read by
another disk through a backing chain the daemon did not record (a VM cloned by hand
with ``qemu-img create -b``). ``qemu-img info --backing-chain`` would tell, but it is a
subprocess per disk, and the daemon runs in one single-threaded loop: reading the
first 4 KiB of each image (a few syscalls) is cheap, a child process per disk is not.

Only what is needed to follow a chain is read (qcow2 spec, ``docs/interop/qcow2.txt``
in QEMU; all fields big-endian)::

    0  magic "QFI\\xfb"         4  version (1: qcow, 2, 3: qcow2)
    8  backing_file_offset u64  16 backing_file_size u32   20 cluster_bits u32 (v2/3)
    100 header_length u32 (v3; 72 for v2), then header extensions up to type 0,
        among them the backing format (0xE2792ACA)

Whatever cannot be followed for sure raises :class:`ChainError` (the caller must then
assume the worst): a ``json:`` or protocol (``nbd:``...) backing name, a header that is
truncated or inconsistent, an image format that can have a backing file but is not
qcow2 (qed, vmdk), an unreadable file, a file that is neither a regular file nor a block
device (a FIFO, a socket, a character device), a loop, a chain deeper than
:data:`MAX_DEPTH`. A file that does not exist ends the chain: nothing reads from it.

The chains read include the disks of other domains, on the daemon's loop: every file
is opened with ``O_NONBLOCK`` (which regular files and block devices ignore) and checked
with ``fstat`` before any read, so that a FIFO named as a disk cannot stall the loop.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from qemud.fileopen import WrongFileKind, open_for_reading

__all__ = ["MAGIC", "MAX_DEPTH", "Backing", "ChainError", "read_backing", "probe_format",
           "backing_chain"]

MAGIC: Final = b"QFI\xfb"
#: how deep :func:`backing_chain` follows links: far more than any real chain, but a
#: bound on the work one call does in the daemon's loop
MAX_DEPTH: Final = 256
#: what is read in one go: the header, its extensions and (usually) the backing name
HEADER_READ: Final = 4096
#: QEMU refuses longer backing names (``bdrv_open`` ... "Backing file name too long")
_NAME_MAX: Final = 1023
_EXT_BACKING_FORMAT: Final = 0xE2792ACA
_V2_HEADER_LENGTH: Final = 72
#: the cluster sizes QEMU accepts (512 B to 2 MiB): the header is read up to one cluster
_CLUSTER_BITS: Final = (9, 21)
#: magics of the other formats QEMU opens with a backing file: they are not followed
_OTHER_BACKING_MAGICS: Final = (b"QED\x00", b"KDMV", b"# Disk DescriptorFile")
#: a name QEMU hands to a protocol driver (``path_has_protocol``: a colon before any slash)
_PROTOCOL_RE: Final = re.compile(r"[^/]*:")


class ChainError(Exception):
    """A backing link that cannot be followed for sure; the message names the file and
    the cause."""


@dataclass(frozen=True)
class Backing:
    """A qcow2 image's backing link: ``file`` (None: the image has none) as QEMU opens
    it (a relative name joined to the image's directory, not resolved further) and its
    recorded ``format`` (None: not recorded, QEMU probes it)."""

    file: str | None
    format: str | None


def _cluster_bits(head: bytes) -> int:
    bits: int = struct.unpack_from(">I", head, 20)[0]
    return bits


def _read(fd: int, offset: int, size: int, path: str, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ChainError(f"{path}: truncated qcow2 header ({what} at byte {offset} is "
                         f"past the end of the file)")
    return data


def _open_image(path: str) -> int:
    """``path`` opened read-only for :func:`pread`, without blocking the loop
    (:func:`~qemud.fileopen.open_for_reading`). Raises :class:`OSError` as ``open`` does
    (IsADirectoryError for a directory) and :class:`ChainError` for a FIFO, socket or
    character device."""
    try:
        return open_for_reading(path, block_devices=True)[0]
    except WrongFileKind as exc:
        if exc.is_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path) from None
        raise ChainError(f"{path}: not a regular file or a block device") from None


def read_backing(path: str) -> Backing:
    """The backing link in the header of the qcow2 (or qcow v1) image ``path``.

    Raises :class:`ChainError` when ``path`` is not a qcow2 image (nor a regular file or
    a block device) or its header cannot be trusted, and :class:`OSError` when it cannot
    be read."""
    fd = _open_image(path)
    try:
        head = os.pread(fd, HEADER_READ, 0)
        if len(head) < 4 or head[:4] != MAGIC:
            raise ChainError(f"{path}: not a qcow2 image (no QFI\\xfb magic)")
        if len(head) < 24:
            raise ChainError(f"{path}: truncated qcow2 header ({len(head)} bytes)")
        version, offset, size = struct.unpack_from(">IQI", head, 4)
        if version not in (1, 2, 3):
            raise ChainError(f"{path}: unsupported qcow2 version {version}")
        if version > 1 and not _CLUSTER_BITS[0] <= _cluster_bits(head) <= _CLUSTER_BITS[1]:
            raise ChainError(f"{path}: cluster_bits {_cluster_bits(head)} out of range "
                             "(corrupt header)")
        if offset == 0 or size == 0:
            name = None
        elif size > _NAME_MAX:
            raise ChainError(f"{path}: backing file name of {size} bytes (corrupt header)")
        elif offset + size > 1 << (_cluster_bits(head) if version > 1
                                   else _CLUSTER_BITS[1]):
            raise ChainError(f"{path}: backing file name outside the first cluster "
                             "(corrupt header)")
        else:
            raw = (head[offset:offset + size] if offset + size <= len(head)
                   else _read(fd, offset, size, path, "the backing file name"))
            if len(raw) != size:
                raise ChainError(f"{path}: truncated qcow2 header (the backing file name "
                                 f"at byte {offset} is past the end of the file)")
            try:
                name = raw.decode()
            except UnicodeDecodeError:
                raise ChainError(f"{path}: backing file name is not UTF-8 (corrupt "
                                 "header)") from None
            if "\0" in name:
                raise ChainError(f"{path}: backing file name with NUL bytes (corrupt "
                                 "header)")
        fmt = _backing_format(fd, head, version, path) if name is not None else None
    finally:
        os.close(fd)
    if name is None:
        return Backing(None, None)
    if name.startswith("file:"):
        name = name[len("file:"):]
    elif name.startswith("json:") or _PROTOCOL_RE.match(name):
        raise ChainError(f"{path}: backing file {name[:80]!r} is not a plain file name")
    return Backing(os.path.join(os.path.dirname(path), name), fmt)


def _backing_format(fd: int, head: bytes, version: int, path: str) -> str | None:
    """The backing format header extension of a v2/v3 header, or None."""
    if version == 1:
        return None  # qcow v1 has no extensions
    if version == 2:
        pos = _V2_HEADER_LENGTH
    else:
        if len(head) < 104:
            raise ChainError(f"{path}: truncated qcow2 v3 header")
        pos = struct.unpack_from(">I", head, 100)[0]
    cluster = 1 << _cluster_bits(head)
    while True:
        if pos + 8 > cluster:
            raise ChainError(f"{path}: header extensions run past the first cluster "
                             "(corrupt header)")
        ext = head[pos:pos + 8] if pos + 8 <= len(head) else _read(
            fd, pos, 8, path, "a header extension")
        kind, length = struct.unpack(">II", ext)
        if kind == 0:
            return None
        if pos + 8 + length > cluster:
            raise ChainError(f"{path}: header extension {kind:#x} runs past the first "
                             "cluster (corrupt header)")
        if kind == _EXT_BACKING_FORMAT:
            data = (head[pos + 8:pos + 8 + length] if pos + 8 + length <= len(head)
                    else _read(fd, pos + 8, length, path, "the backing format"))
            return data.decode(errors="replace")
        pos += 8 + (length + 7) // 8 * 8


def probe_format(path: str) -> str:
    """What QEMU's probing makes of ``path``, as far as chains go: "qcow2" (or qcow),
    "raw" (no backing file), or raises :class:`ChainError` for a format that may have a
    backing file this module does not read (qed, vmdk) or for a file that is not a
    regular file or a block device; :class:`OSError` when it cannot be read."""
    fd = _open_image(path)
    try:
        head = os.pread(fd, 32, 0)
    finally:
        os.close(fd)
    if head.startswith(MAGIC):
        return "qcow2"
    if head.startswith(_OTHER_BACKING_MAGICS):
        raise ChainError(f"{path}: an image format whose backing file is not read here")
    return "raw"


def backing_chain(path: str, fmt: str | None, *, max_depth: int = MAX_DEPTH
                  ) -> Iterator[tuple[str, str]]:
    """The files ``path`` (opened as ``fmt``: "raw", "qcow2", or None to probe) reads,
    itself first, each with the format it is opened as ("raw" ends the chain: the same
    file opened as qcow2 may read more), lazily: the caller can stop once it has found
    what it looks for.

    Raises :class:`ChainError` (mid-iteration) for a link that cannot be followed, an
    unreadable file, a loop (by realpath) or more than ``max_depth`` links. A missing
    file ends the chain (it is not yielded)."""
    seen: set[str] = set()
    link: str | None = path
    while link is not None:
        real = os.path.realpath(link)
        if real in seen:
            raise ChainError(f"{link}: the backing chain of {path} loops")
        if len(seen) > max_depth:
            raise ChainError(f"the backing chain of {path} is deeper than {max_depth}")
        seen.add(real)
        try:
            kind = fmt if fmt is not None else probe_format(link)
            if kind == "raw":
                if os.path.exists(link):
                    yield link, kind
                return
            if kind not in ("qcow2", "qcow"):
                raise ChainError(f"{link}: backing format {kind!r} is not read here")
            backing = read_backing(link)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ChainError(f"{link}: {exc.strerror or exc}") from None
        yield link, "qcow2"
        link, fmt = backing.file, backing.format
