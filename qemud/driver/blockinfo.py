"""DOMAIN_GET_BLOCK_INFO: the sizes of one disk, ``virsh domblkinfo``.

libvirt's QEMU driver is the reference (``qemuDomainGetBlockInfo``), with its three
numbers, in bytes (libvirt's virDomainBlockInfo):

* capacity: the size the guest sees (a qcow2 image's virtual size, a raw file's size);
* allocation: the host storage the image occupies (``du``);
* physical: the size of the image's container (``ls -l``; a block device's size).

A shut-off domain's image is read here, as libvirt's ``qemuStorageLimitsRefresh`` does:
``fstat`` (a regular file: physical = size, allocation = st_blocks * 512) or the end
offset of a block device (all three the device's size), and the virtual size from a
qcow2 header (8 bytes at offset 24). No subprocess (``qemu-img info``): the daemon's
loop must not wait for one; a few syscalls are cheap.

A running domain is asked through QMP, as libvirt asks it: ``query-block`` for the
image's ``virtual-size`` (capacity) and ``actual-size``, ``query-blockstats`` for the
highest offset written to the storage node. The allocation is libvirt's choice: QEMU's
``actual-size`` for a qcow2 file (``wr_highest_offset`` says little about a file that
grows by clusters), else the highest written offset (``actual-size`` while nothing was
written). The physical size is the image file's size (libvirt reports QEMU's
``actual-size`` instead in the rare case allocation and actual-size differ: a raw file
written to, where that reads as ``du``, not ``ls -l``).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from functools import partial
from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from qemud.conf import Disk, DomainDef
from qemud.dispatch import Deferred, Handler
from qemud.errors import InvalidArg, OperationFailed
from qemud.fileopen import WrongFileKind, open_for_reading
from qemud.qemu import naming
from qemud.qemu.qcow2 import MAGIC as QCOW2_MAGIC

from .domain import DomainObj
from .flags import check_flags
from .stats import QMP_TIMEOUT

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["BlockInfo", "find_disk", "image_info", "live_info"]

log = logging.getLogger(__name__)

#: the qcow2 header's ``size`` (the virtual size, big-endian u64) is at byte 24
_QCOW2_SIZE = struct.Struct(">Q")
_QCOW2_SIZE_OFFSET = 24
_SECTOR = 512  # st_blocks counts 512-byte units (libvirt's DEV_BSIZE)


def find_disk(definition: DomainDef, name: str) -> Disk | None:
    """libvirt's virDomainDiskByName: a name without a leading slash is a target dev, one
    with it a source path (which must name one disk only: an ambiguous path is none)."""
    found: Disk | None = None
    for disk in definition.disks:
        if not name.startswith("/"):
            if disk.target_dev == name:
                return disk
        elif disk.source == name:
            if found is not None:
                return None
            found = disk
    return found


def _open(path: str) -> tuple[int, os.stat_result]:
    """Open an image (a regular file or a block device) read-only, without blocking the
    loop: a FIFO named as a source cannot stall it (:mod:`qemud.fileopen`)."""
    try:
        return open_for_reading(path, block_devices=True)
    except WrongFileKind:
        raise OperationFailed(f"cannot read the size of '{path}': not a regular file or a "
                              "block device") from None
    except OSError as exc:
        raise OperationFailed(f"cannot open file '{path}': {exc.strerror or exc}") from None


def _physical(fd: int, st: os.stat_result) -> tuple[int, int]:
    """(physical size, allocation) of an open image: a regular file's size and blocks,
    or a block device's size for both (libvirt's virStorageSourceUpdateBackingSizes)."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size, st.st_blocks * _SECTOR
    end = os.lseek(fd, 0, os.SEEK_END)  # a block device (the only other kind _open keeps)
    return end, end


def _qcow2_virtual_size(fd: int, path: str) -> int:
    head = os.pread(fd, _QCOW2_SIZE_OFFSET + _QCOW2_SIZE.size, 0)
    if len(head) < _QCOW2_SIZE_OFFSET + _QCOW2_SIZE.size or not head.startswith(QCOW2_MAGIC):
        raise OperationFailed(f"cannot read the virtual size of '{path}': the disk's format "
                              "is qcow2 but the file has no qcow2 header")
    size: int = _QCOW2_SIZE.unpack_from(head, _QCOW2_SIZE_OFFSET)[0]
    return size


def image_info(path: str, fmt: str | None) -> pl.BlockInfoReply:
    """The sizes of the image ``path`` opened as ``fmt`` (None: raw, as the QEMU command
    line opens it), read from the file."""
    fd, st = _open(path)
    try:
        try:
            physical, allocation = _physical(fd, st)
            capacity = _qcow2_virtual_size(fd, path) if fmt == "qcow2" else physical
        except OSError as exc:
            raise OperationFailed(f"cannot read '{path}': {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return pl.BlockInfoReply(capacity=capacity, allocation=allocation, physical=physical)


def _physical_size(path: str | None) -> int | None:
    """The container size of a running disk's image (None when it cannot be read: QEMU's
    numbers are used then)."""
    if not path or not path.startswith("/"):
        return None
    try:
        fd, st = open_for_reading(path, block_devices=True)
    except (OSError, WrongFileKind):
        return None
    try:
        return _physical(fd, st)[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _entry(answer: Any, target: str) -> dict[str, Any] | None:
    """The query-block / query-blockstats entry of the disk ``target``: by its frontend
    (``qdev`` .../disk-vda/...), else by the format node the command line gave it."""
    device = naming.disk_device_id(target)
    try:
        node = naming.disk_node_names(target)[1]
    except ValueError:
        node = None
    entries = [e for e in answer if isinstance(e, dict)] if isinstance(answer, list) else []
    for entry in entries:
        if device in str(entry.get("qdev") or "").split("/"):
            return entry
    for entry in entries:
        inserted = entry.get("inserted")
        names = (entry.get("node-name"),
                 inserted.get("node-name") if isinstance(inserted, dict) else None)
        if node is not None and node in names:
            return entry
    return None


def _uint(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def live_info(disk: Disk, block: dict[str, Any], blockstats: dict[str, Any] | None
              ) -> pl.BlockInfoReply:
    """libvirt's sizes of a running disk from its query-block and query-blockstats
    entries (see the module docstring)."""
    inserted = block.get("inserted")
    image = inserted.get("image") if isinstance(inserted, dict) else None
    if not isinstance(image, dict):
        raise OperationFailed(f"failed to gather stats for disk '{disk.target_dev}': QEMU "
                              "reports no medium in it")
    capacity = _uint(image.get("virtual-size")) or 0
    actual = _uint(image.get("actual-size"))
    entry_physical = capacity if actual is None else actual  # not thin: as libvirt
    parent = (blockstats or {}).get("parent")
    parent_stats = parent.get("stats") if isinstance(parent, dict) else None
    highest = _uint(parent_stats.get("wr_highest_offset")) \
        if isinstance(parent_stats, dict) else None
    fmt = image.get("format") or disk.driver_type or "raw"
    if highest is None or (disk.type == "file" and fmt == "qcow2"):
        allocation = entry_physical
    else:
        allocation = highest or entry_physical
    filename = image.get("filename")
    physical = _physical_size(filename if isinstance(filename, str) else disk.source)
    if physical is None:
        physical = _physical_size(disk.source)
    return pl.BlockInfoReply(capacity=capacity, allocation=allocation,
                             physical=entry_physical if physical is None else physical)


#: libvirt's VIR_DOMAIN_BLOCK_RESIZE_BYTES: the size is in bytes, not KiB
RESIZE_BYTES = 1
_SIZE_MAX = 2**64 - 1


def _top_node(answer: Any, target: str) -> str | None:
    """The node QEMU's guest device reads, i.e. the disk's top layer (an overlay once a
    snapshot was taken), from query-block."""
    entry = _entry(answer, target)
    inserted = entry.get("inserted") if entry is not None else None
    node = inserted.get("node-name") if isinstance(inserted, dict) else None
    return node if isinstance(node, str) and node else None


class BlockInfo:
    """The handlers of DOMAIN_GET_BLOCK_INFO and DOMAIN_BLOCK_RESIZE."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_GET_BLOCK_INFO: self.get_block_info,
                Procedure.DOMAIN_BLOCK_RESIZE: self.block_resize}

    def get_block_info(self, ctx: Any, args: pl.BlockInfoArgs) -> pl.BlockInfoReply | Deferred:
        """libvirt's checks in libvirt's order: flags, the domain, the disk, its medium."""
        check_flags(args.flags, 0, "qemuDomainGetBlockInfo")
        dom = self.driver._dom(args)
        disk = find_disk(dom.current(), args.disk)
        if disk is None:
            raise InvalidArg(f"invalid path {args.disk} not assigned to domain")
        if disk.source is None:
            raise InvalidArg(f"disk '{args.disk}' does not currently have a source "
                             "assigned")
        if not dom.active:
            return image_info(disk.source, disk.driver_type)
        self.driver.lifecycle.require_active(dom)
        return self._live(dom, disk)

    def _live(self, dom: DomainObj, disk: Disk) -> Deferred:
        """query-block and query-blockstats, both sent at once; the answer when both are
        in (a failed query-blockstats only costs the highest written offset)."""
        monitor = dom.monitor
        assert monitor is not None
        target = disk.target_dev or ""
        answers: dict[str, Deferred] = {}
        out = Deferred()

        def got(command: str, d: Deferred) -> None:
            answers[command] = d
            if len(answers) < 2:
                return
            block = answers["query-block"]
            if block.error is not None:
                out.fail(block.error)
                return
            entry = _entry(block.result, target)
            if entry is None:
                out.fail(OperationFailed(f"failed to gather stats for disk '{target}'"))
                return
            stats = answers["query-blockstats"]
            if stats.error is not None:
                log.debug("domain %s: query-blockstats failed: %s", dom.name,
                          stats.error.message)
            stats_entry = _entry(stats.result, target) if stats.error is None else None
            try:
                out.resolve(live_info(disk, entry, stats_entry))
            except OperationFailed as exc:
                out.fail(exc)

        for command in ("query-block", "query-blockstats"):
            monitor.execute(command, timeout=QMP_TIMEOUT).add_done_callback(
                partial(got, command))
        return out

    def block_resize(self, ctx: Any, args: pl.BlockResizeArgs) -> Deferred:
        """libvirt's qemuDomainBlockResize: a running domain's disk grows (or shrinks: as
        libvirt, the caller's word is taken) through QEMU, on the layer the guest sees, so
        an overlay from a snapshot is what changes and the snapshot keeps its size."""
        check_flags(args.flags, RESIZE_BYTES, "qemuDomainBlockResize")
        size = args.size
        if not args.flags & RESIZE_BYTES:
            if size > _SIZE_MAX // 1024:
                raise InvalidArg(f"size must be less than {_SIZE_MAX // 1024}")
            size *= 1024
        dom = self.driver._dom(args)
        self.driver.lifecycle.require_active(dom)
        self.driver.lifecycle.require_no_job(dom)
        disk = find_disk(dom.current(), args.disk)
        if disk is None:
            raise InvalidArg(f"disk '{args.disk}' was not found in the domain config")
        if disk.driver_type in ("qcow2", "qed"):  # (their sizes count 512-byte sectors)
            size = -(-size // 512) * 512
        monitor = dom.monitor
        assert monitor is not None
        target = disk.target_dev or ""
        out = Deferred()

        def resize(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            node = _top_node(d.result, target)
            if node is None:
                out.fail(OperationFailed(f"cannot resize disk '{target}': QEMU has no "
                                         "medium for it"))
                return
            monitor.execute("block_resize", {"node-name": node, "size": size},
                            timeout=QMP_TIMEOUT).add_done_callback(done)

        def done(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
            else:
                log.info("domain %s: disk %s resized to %d bytes", dom.name, target, size)
                out.resolve(Empty())

        monitor.execute("query-block", timeout=QMP_TIMEOUT).add_done_callback(resize)
        return out
