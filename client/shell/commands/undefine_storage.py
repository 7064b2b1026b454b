"""undefine's storage options (--storage, --remove-all-storage, --wipe-storage,
--delete-storage-volume-snapshots): which of the domain's disks they name, and what virsh
says about each.

virsh implements them in the client, through the storage pool API: it looks each disk's
source up as a storage volume, and deletes (and with --wipe-storage first wipes) the
volumes it found, after the domain is undefined. qemud has no storage pools, so no disk is
a volume libvirt manages: virsh's answer for such a disk is its "is not managed by
libvirt. Remove it manually." line, and the domain is undefined anyway, the files kept.
That is what qemush does (docs/CONFORMANCE.md). No command is registered here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["DiskVolume", "split_volume_list", "selected_volumes"]

#: virsh's XPath for a disk's source: file, dir, (network/pool volume) name, dev, volume
_SOURCE_ATTRS = ("file", "dir", "name", "dev", "volume")


@dataclass(frozen=True)
class DiskVolume:
    """One disk the options select: its target dev, its source, and its pool (a disk
    ``<source pool=... volume=...>``; qemud has none to find it in)."""

    target: str
    source: str
    pool: str | None = None

    def messages(self) -> tuple[str | None, str | None]:
        """(virsh's stdout line, virsh's error line) for a volume no pool manages."""
        if self.pool is not None:
            return (f"Storage pool '{self.pool}' for volume '{self.target}' not found.", None)
        return (None, f"Storage volume '{self.target}'({self.source}) is not managed by "
                      "libvirt. Remove it manually.")


def split_volume_list(text: str) -> list[str]:
    """virsh's vshStringToArray: the comma-separated list of --storage, where ``,,`` is a
    comma inside one name."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return items


def selected_volumes(domain_xml: str, wanted: list[str] | None
                     ) -> tuple[list[DiskVolume], list[str]]:
    """The disks ``wanted`` names (by target or source; None: every disk with a source),
    in the definition's order, and the names that match no disk (virsh refuses those).

    A disk without a source (an empty cdrom) is no volume, as in virsh; each name
    selects one disk at most.
    """
    root = ET.fromstring(domain_xml)
    left = list(wanted) if wanted is not None else None
    found: list[DiskVolume] = []
    for disk in root.iterfind("./devices/disk"):
        target_el = disk.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        source_el = disk.find("source")
        source = next((source_el.get(a) for a in _SOURCE_ATTRS
                       if source_el is not None and source_el.get(a)), None)
        if not source:
            continue
        if left is not None:
            match = next((i for i, name in enumerate(left) if name in (target, source)),
                         None)
            if match is None:
                continue
            del left[match]
        pool = source_el.get("pool") if source_el is not None else None
        found.append(DiskVolume(target, source, pool))
    return found, left or []
