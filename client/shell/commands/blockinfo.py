"""``domblkinfo DOMAIN [DEVICE] [--human] [--all]``: virsh's sizes of a domain's disks;
``blockresize DOMAIN PATH SIZE``: a running domain's disk gets a new size."""

from __future__ import annotations

from lxml import etree

from protocol import payloads as pl

from ...domain import BLOCK_RESIZE_BYTES
from ...format import key_values, pretty_capacity, table
from ..context import Shell
from ..registry import Arg, Args, CommandError, Opt, UsageError, command
from .domain import DOM
from .resources import scaled_bytes


def _sizes(info: pl.BlockInfoReply | None, human: bool) -> list[str]:
    """virsh's cmdDomblkinfoGet: "-" for all three when all are 0 (a disk without
    media, or nothing known), bytes, or with ``human`` ``1.500 GiB``."""
    values = (0, 0, 0) if info is None else (info.capacity, info.allocation, info.physical)
    if not any(values):
        return ["-", "-", "-"]
    return [pretty_capacity(v) if human else str(v) for v in values]


def _disks(xml: str) -> list[tuple[str, bool]]:
    """(target dev, has a <source>) of every disk of a domain XML, in its order."""
    try:
        root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False,
                                                              no_network=True))
    except etree.XMLSyntaxError as exc:
        raise CommandError(f"cannot parse the domain XML: {exc}") from None
    disks = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        disks.append((dev or "", disk.find("source") is not None))
    return disks


@command("domblkinfo", "monitor", "domain block device size information", description=(
    "Get the block device size info of a domain's disk (DEVICE: its target dev, e.g. "
    "vda, or its source path): Capacity (the size the guest sees), Allocation (host "
    "storage in use) and Physical (the size of the image file), in bytes, or with units "
    "with --human. --all prints a table of every disk ('-' for one without media)."),
    args=(DOM, Arg("device", "block device", required=False)),
    opts=(Opt("human", "Human readable output"),
          Opt("all", "display all block devices info")))
def cmd_domblkinfo(sh: Shell, args: Args) -> None:
    device, every = args.get("device"), args.flag("all")
    if every and device is not None:
        raise UsageError("Options --all and --device are mutually exclusive")
    if not every and not device:
        raise UsageError("command 'domblkinfo' requires <device> option")
    human = args.flag("human")
    dom = sh.domain(args.req("domain"))
    if device is not None:
        with sh.failing(""):  # virsh prints the daemon's error alone
            info = dom.block_info(device)
        sh.write(key_values(zip(("Capacity:", "Allocation:", "Physical:"),
                                _sizes(info, human), strict=True)))
        return
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        disks = _disks(dom.xml())
    rows: list[tuple[str, pl.BlockInfoReply | None]] = []
    for target, has_source in disks:
        found: pl.BlockInfoReply | None = None
        if has_source:
            with sh.failing(""):
                found = dom.block_info(target)
        rows.append((target, found))
    sh.write(table(["Target", "Capacity", "Allocation", "Physical"],
                   [[target, *_sizes(info, human)] for target, info in rows]))
    sh.print()


@command("blockresize", "domain", "Resize block device of domain.", description=(
    "Give a running domain's disk a new size; the guest sees it at once (it may need "
    "to rescan the disk). The size is a scaled integer (KiB without a suffix; 10G, "
    "512MiB, 1TB...); a qcow2 disk's is rounded up to 512 bytes. A smaller size "
    "shrinks the disk and loses what lay beyond it. After a snapshot the layer on top "
    "is resized, not the snapshot's."),
    args=(DOM, Arg("path", "Fully-qualified path of block device"),
          Arg("size", "New size of the block device, as scaled integer (default KiB)")))
def cmd_blockresize(sh: Shell, args: Args) -> None:
    size = scaled_bytes(args.req("size"))
    path = args.req("path")
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to resize block device '{path}'"):
        dom.block_resize(path, size, BLOCK_RESIZE_BYTES)
    sh.print(f"Block device '{path}' is resized")
