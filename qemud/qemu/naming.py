"""Deterministic QEMU ids: device ids, chardev ids, block node names.

Ids are how the daemon addresses devices after launch (``device_del``,
``blockdev-snapshot``, ``eject``...), so they must be computable from the
definition alone, identically at start and at hotplug time, without state
stored anywhere else.  Hence:

* disks are named after their target dev ("vda" -> device ``disk-vda``,
  nodes ``drive-vda-storage`` / ``drive-vda-format``): the target dev is
  unique per domain and stable across unplug/replug of other disks;
* NICs are named after their MAC for the same reason (the MAC is unique and
  assigned before start), not after their list position, which shifts;
* everything else is a singleton or never hotplugged and uses libvirt's
  index-based names (``charserial0``, ``virtio-serial0``...).

A guest's run directory (sockets, pidfile) is named after the domain too, but
a unix socket path has at most 107 bytes, so a name too long for that (or one
that is not a plain file name) gets a short stable form instead: see
:func:`guest_dir_name`.
"""

from __future__ import annotations

import os
import re
from typing import Final

__all__ = [
    "BALLOON_ID",
    "MONITOR_CHARDEV",
    "MONITOR_ID",
    "SATA_ID",
    "SCSI_ID",
    "USB_ID",
    "VIDEO_ID",
    "VIRTIO_SERIAL_ID",
    "WATCHDOG_ID",
    "chardev_ids",
    "disk_device_id",
    "disk_index",
    "disk_node_names",
    "guest_dir_name",
    "is_valid_id",
    "nic_ids",
    "split_target_dev",
]

MONITOR_CHARDEV: Final = "charmonitor"
MONITOR_ID: Final = "monitor"
VIRTIO_SERIAL_ID: Final = "virtio-serial0"
SCSI_ID: Final = "scsi0"
USB_ID: Final = "usb"
SATA_ID: Final = "sata0"
VIDEO_ID: Final = "video0"
WATCHDOG_ID: Final = "watchdog0"
BALLOON_ID: Final = "balloon0"

_ID_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_TARGET_RE: Final = re.compile(r"(?P<prefix>xvd|ubd|hd|sd|vd|fd)(?P<letters>[a-z]+)\Z")
_MAC_RE: Final = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
# QEMU's node-name limit (BlockDriverState.node_name is char[32]).
_NODE_NAME_MAX: Final = 31
# sizeof(sockaddr_un.sun_path) - 1
UNIX_PATH_MAX: Final = 107
# Room kept for "/<file>" after a run directory: the longest socket put there
# ("/charchannel12.sock", "/heartbeat.sock", "/monitor.sock") with a margin.
_RUN_FILE_ROOM: Final = 24
# A shortened run directory: as many bytes of the name as fit, "~", a digest.
_DIGEST_HEX: Final = 16
_DIGEST_HEX_MIN: Final = 8


def guest_dir_name(run_root: str | os.PathLike[str], name: str) -> str:
    """Name of the run directory of the domain ``name`` under ``run_root``.

    The domain name itself when every socket the daemon puts in it fits in a unix
    socket path; otherwise (and for ``.``/``..``) as much of the name's start as fits
    plus a digest of the whole name (``nnnnnnnnnn~3f2a9c...``; the digest alone when the
    run root leaves little room), as libvirt keeps its runtime paths short
    (``domain-<id>-<first 20 characters>``).  A function of the two arguments only, so
    a restarted daemon computes the same directory for a running guest.
    """
    raw = os.fsencode(name)
    room = UNIX_PATH_MAX - len(os.fsencode(run_root)) - 1 - _RUN_FILE_ROOM
    if name not in (".", "..") and len(raw) <= room:
        return name
    import hashlib  # here: it loads OpenSSL (~4 MiB), otherwise only TLS needs it
    digest = hashlib.sha256(raw).hexdigest()
    if room < _DIGEST_HEX + 2:  # no room for a readable prefix
        return digest[:max(room, _DIGEST_HEX_MIN)]
    prefix = raw[:room - _DIGEST_HEX - 1].decode("utf-8", "ignore")
    return f"{prefix}~{digest[:_DIGEST_HEX]}"


def is_valid_id(value: str) -> bool:
    """True if ``value`` is acceptable to QEMU as a device/chardev/node id."""
    return bool(_ID_RE.match(value))


def split_target_dev(target_dev: str) -> tuple[str, int] | None:
    """``"vdb"`` -> ``("vd", 1)``; ``None`` when it is not a disk name."""
    match = _TARGET_RE.match(target_dev)
    if match is None:
        return None
    index = 0
    for position, letter in enumerate(match.group("letters")):
        # Bijective base 26, as in libvirt's virDiskNameToIndex: a=0, z=25, aa=26.
        index = (index + (1 if position else 0)) * 26 + (ord(letter) - ord("a"))
    return match.group("prefix"), index


def disk_index(target_dev: str) -> int | None:
    """Zero-based unit index encoded in a target dev name (``hdc`` -> 2)."""
    parsed = split_target_dev(target_dev)
    return None if parsed is None else parsed[1]


def disk_node_names(target_dev: str, medium: int = 0) -> tuple[str, str]:
    """Block node names ``(storage, format)`` for the disk ``target_dev``. A CD-ROM's
    media alternate between the start's pair (``medium`` 0) and a second one (1), so
    that a new medium's nodes are open before the old one's close."""
    suffix = str(medium) if medium else ""
    storage = f"drive-{target_dev}-storage{suffix}"
    fmt = f"drive-{target_dev}-format{suffix}"
    if not all(is_valid_id(name) and len(name) <= _NODE_NAME_MAX for name in (storage, fmt)):
        raise ValueError(f"target dev {target_dev!r} does not make a valid node name")
    return storage, fmt


def disk_device_id(target_dev: str) -> str:
    """Frontend device id of the disk ``target_dev``."""
    return f"disk-{target_dev}"


def nic_ids(mac: str) -> tuple[str, str]:
    """``(device id, netdev id)`` of the NIC with ``mac``."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}")
    suffix = mac.replace(":", "").lower()
    return f"net-{suffix}", f"hostnet-{suffix}"


def chardev_ids(kind: str, index: int) -> tuple[str, str]:
    """``(chardev id, device id)`` for the ``index``-th ``kind`` char device.

    ``kind`` is the element name: ``serial``, ``console`` or ``channel``.
    """
    return f"char{kind}{index}", f"{kind}{index}"
