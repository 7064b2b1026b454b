"""The rows of ``domblklist`` and ``domiflist``, read from the domain XML as virsh reads
them (virshDomblklist / virshDomiflist): client-side only, so any daemon that returns the
XML can answer them, and a missing value prints as ``-``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = ["block_rows", "interface_rows", "BLOCK_HEADERS", "BLOCK_DETAIL_HEADERS",
           "INTERFACE_HEADERS"]

BLOCK_HEADERS = ("Target", "Source")
BLOCK_DETAIL_HEADERS = ("Type", "Device", "Target", "Source")
INTERFACE_HEADERS = ("Interface", "Type", "Source", "Model", "MAC")

#: where a disk's source is, in virsh's order (the first one present wins)
_DISK_SOURCE_ATTRS = ("file", "dev", "dir", "name", "volume")
#: where an interface's source is, in virsh's order
_IF_SOURCE_ATTRS = ("bridge", "dev", "network", "name", "path")


def _first(el: ET.Element | None, attrs: tuple[str, ...]) -> str | None:
    if el is None:
        return None
    for attr in attrs:
        value = el.get(attr)
        if value:
            return value
    return None


def _attr(el: ET.Element | None, attr: str) -> str | None:
    return (el.get(attr) or None) if el is not None else None


def block_rows(domain_xml: str, details: bool = False) -> list[list[str]]:
    """One row per ``<disk>``: target and source (``-`` for an empty drive); with
    ``details`` the disk's type and device come first.

    A disk from a storage pool shows as ``POOL/VOLUME``, as virsh shows it.
    """
    rows = []
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        source_el = disk.find("source")
        source = _first(source_el, _DISK_SOURCE_ATTRS)
        pool = _attr(source_el, "pool")
        if pool and source:
            source = f"{pool}/{source}"
        target = _attr(disk.find("target"), "dev") or "-"
        row = [target, source or "-"]
        if details:
            row = [disk.get("type") or "-", disk.get("device") or "disk", *row]
        rows.append(row)
    return rows


def interface_rows(domain_xml: str) -> list[list[str]]:
    """One row per ``<interface>``: host device name (``-`` until it runs), type, source,
    model and MAC."""
    rows = []
    for iface in ET.fromstring(domain_xml).iterfind("./devices/interface"):
        rows.append([
            _attr(iface.find("target"), "dev") or "-",
            iface.get("type") or "-",
            _first(iface.find("source"), _IF_SOURCE_ATTRS) or "-",
            _attr(iface.find("model"), "type") or "-",
            _attr(iface.find("mac"), "address") or "-",
        ])
    return rows
