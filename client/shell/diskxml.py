"""Device XML for attach-disk / detach-disk, built the way virsh builds it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .xmltext import virsh_xml

__all__ = ["build_disk_xml", "disk_has_media", "find_disk_xml", "graphics_display",
           "os_type"]


def build_disk_xml(source: str, target: str, *, driver: str | None = None,
                   subdriver: str | None = None, device: str | None = None,
                   mode: str | None = None, targetbus: str | None = None,
                   sourcetype: str | None = None) -> str:
    """The ``<disk>`` element for ``attach-disk``.

    ``sourcetype`` defaults to ``block`` for paths under /dev and ``file`` otherwise;
    ``device`` (``--type``) defaults to ``disk``; ``mode`` may be ``readonly`` or
    ``shareable``. An empty ``source`` with ``device='cdrom'`` gives an empty drive.
    """
    if not target:
        raise ValueError("a disk needs a target device name (e.g. vdb)")
    kind = sourcetype or ("block" if source.startswith("/dev/") else "file")
    if kind not in ("file", "block"):
        raise ValueError(f"unsupported source type '{kind}' (file or block)")
    if mode not in (None, "readonly", "shareable"):
        raise ValueError(f"no support for {mode} in --mode (readonly or shareable)")
    disk = ET.Element("disk", {"type": kind, "device": device or "disk"})
    if driver or subdriver:
        attrs = {"name": driver or "qemu"}
        if subdriver:
            attrs["type"] = subdriver
        ET.SubElement(disk, "driver", attrs)
    if source:
        ET.SubElement(disk, "source", {"dev" if kind == "block" else "file": source})
    target_attrs = {"dev": target}
    if targetbus:
        target_attrs["bus"] = targetbus
    ET.SubElement(disk, "target", target_attrs)
    if mode:
        ET.SubElement(disk, mode)
    return virsh_xml(disk)


def find_disk_xml(domain_xml: str, target: str) -> str | None:
    """The ``<disk>`` of ``domain_xml`` whose target dev (or source path) is ``target``."""
    root = ET.fromstring(domain_xml)
    for disk in root.iterfind("./devices/disk"):
        tgt = disk.find("target")
        src = disk.find("source")
        sources = [] if src is None else [src.get("file"), src.get("dev")]
        if (tgt is not None and tgt.get("dev") == target) or target in sources:
            disk.tail = None
            return ET.tostring(disk, encoding="unicode").strip() + "\n"
    return None


def disk_has_media(domain_xml: str, target: str) -> bool | None:
    """Whether the disk ``target`` of ``domain_xml`` has a ``<source>`` with a path
    (None: there is no such disk)."""
    root = ET.fromstring(domain_xml)
    for disk in root.iterfind("./devices/disk"):
        tgt = disk.find("target")
        if tgt is not None and tgt.get("dev") == target:
            src = disk.find("source")
            return src is not None and bool(src.get("file") or src.get("dev"))
    return None


def graphics_display(domain_xml: str, kind: str = "vnc") -> str | None:
    """virsh vncdisplay: ``ADDR:N`` (N = port - 5900), ``:N`` when listening on every
    address; None when there is no such display or its port is not known yet."""
    root = ET.fromstring(domain_xml)
    for gfx in root.iterfind("./devices/graphics"):
        if gfx.get("type") != kind:
            continue
        try:
            port = int(gfx.get("port", "-1"))
        except ValueError:
            return None
        if port < 5900:
            return None
        listen = gfx.get("listen")
        if listen is None:
            el = gfx.find("listen")
            listen = el.get("address") if el is not None else None
        if not listen or listen in ("0.0.0.0", "::", "[::]"):
            return f":{port - 5900}"
        if ":" in listen and not listen.startswith("["):
            listen = f"[{listen}]"
        return f"{listen}:{port - 5900}"
    return None


def os_type(domain_xml: str) -> str | None:
    """``<os><type>`` of a domain XML (``hvm``)."""
    el = ET.fromstring(domain_xml).find("./os/type")
    return el.text.strip() if el is not None and el.text else None
