"""Device listings computed from the domain XML (no daemon procedure of their own), and
device attach/detach from an XML file or, for interfaces, from options (as virsh)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...domain import AFFECT_CONFIG, AFFECT_LIVE, MODIFY_FORCE, XML_INACTIVE, Domain
from ...format import table
from ..context import Shell
from ..devicelist import (
    BLOCK_DETAIL_HEADERS,
    BLOCK_HEADERS,
    INTERFACE_HEADERS,
    block_rows,
    interface_rows,
)
from ..diskxml import build_disk_xml, find_disk_xml
from ..ifacexml import (
    InterfaceLookupError,
    build_interface_xml,
    find_interface_xml,
    find_link_interface,
    link_state,
    with_link_state,
)
from ..registry import FILE, Arg, Args, CommandError, Opt, UsageError, command
from .domain import CONFIG, CURRENT, DOM, LIVE, PERSISTENT, affect_flags, read_xml

AFFECT = (PERSISTENT, CONFIG, LIVE, CURRENT)

INACTIVE = Opt("inactive", "get inactive rather than running configuration")


def _xml(sh: Shell, args: Args) -> tuple[str, str]:
    """(domain name, its XML: the live one, or with --inactive the persistent one)."""
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        return dom.name, dom.xml(XML_INACTIVE if args.flag("inactive") else 0)


@command("domblklist", "monitor", "list all domain blocks", description=(
    "Get the summary of block devices for a domain: each disk's target and source ('-' "
    "for an empty drive), read from the domain XML."),
    args=(DOM,), opts=(INACTIVE, Opt("details", "additionally display the type and device "
                                                "value")))
def cmd_domblklist(sh: Shell, args: Args) -> None:
    name, xml = _xml(sh, args)
    details = args.flag("details")
    try:
        rows = block_rows(xml, details)
    except Exception as exc:  # the daemon's XML, not ours: say so rather than crash
        raise CommandError(f"failed to read the disks of domain '{name}'", str(exc)) from None
    sh.write(table(BLOCK_DETAIL_HEADERS if details else BLOCK_HEADERS, rows))
    sh.print()


@command("domiflist", "monitor", "list all domain virtual interfaces", description=(
    "Get the summary of virtual interfaces for a domain: host device ('-' while it is "
    "not running), type, source, model and MAC, read from the domain XML."),
    args=(DOM,), opts=(INACTIVE,))
def cmd_domiflist(sh: Shell, args: Args) -> None:
    name, xml = _xml(sh, args)
    try:
        rows = interface_rows(xml)
    except Exception as exc:
        raise CommandError(f"failed to read the interfaces of domain '{name}'",
                           str(exc)) from None
    sh.write(table(INTERFACE_HEADERS, rows))
    sh.print()


# -- attach / detach -----------------------------------------------------------------------

@command("attach-disk", "domain", "attach disk device", description=(
    "Attach a new disk device to the domain; the <disk> XML is built from the options "
    "(--print-xml shows it without attaching)."),
    args=(DOM, Arg("source", "source of disk device (file or /dev path)", complete=FILE),
          Arg("target", "target of disk device (e.g. vdb)")),
    opts=(
        Opt("driver", "driver of disk device", "string", suggest=("qemu",)),
        Opt("subdriver", "subdriver of disk device (image format)", "string",
            suggest=("raw", "qcow2")),
        Opt("type", "target device type", "string", suggest=("disk", "cdrom")),
        Opt("mode", "mode of device reading and writing", "string",
            choices=("readonly", "shareable")),
        Opt("sourcetype", "type of source (block|file)", "string", choices=("file", "block")),
        Opt("targetbus", "target bus of disk device", "string",
            suggest=("virtio", "sata", "scsi", "ide", "usb")),
        Opt("print-xml", "print XML document rather than attach the disk"),
        PERSISTENT, CONFIG, LIVE, CURRENT,
    ))
def cmd_attach_disk(sh: Shell, args: Args) -> None:
    try:
        xml = build_disk_xml(
            args.req("source"), args.req("target"), driver=args.get("driver"),
            subdriver=args.get("subdriver"), device=args.get("type"), mode=args.get("mode"),
            targetbus=args.get("targetbus"), sourcetype=args.get("sourcetype"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _attach_built(sh, args, xml, "disk")


@command("detach-disk", "domain", "detach disk device", description=(
    "Detach the disk whose target (or source path) is TARGET from the domain."),
    args=(DOM, Arg("target", "target of disk device (e.g. vdb)")),
    opts=(PERSISTENT, CONFIG, LIVE, CURRENT))
def cmd_detach_disk(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    target = args.req("target")
    flags = affect_flags(sh, args, dom)
    only_config = flags & AFFECT_CONFIG and not flags & AFFECT_LIVE
    with sh.failing("Failed to detach disk"):
        xml = dom.xml(XML_INACTIVE if only_config else 0)
    disk = find_disk_xml(xml, target)
    if disk is None:
        raise CommandError("Failed to detach disk",
                           f"No disk found whose source path or target is {target}")
    with sh.failing("Failed to detach disk"):
        dom.detach_device(disk, flags)
    sh.print("Disk detached successfully")


FILE_ARG = Arg("file", "XML file", complete=FILE)


@command("attach-device", "domain", "attach device from an XML file", description=(
    "Attach the device described by the XML in FILE (a <disk> or an <interface>) to the "
    "domain: by default to the running guest if it runs, else to its persistent "
    "definition (--current); --config for the definition, --live for the guest, "
    "--persistent for both."),
    args=(DOM, FILE_ARG), opts=AFFECT)
def cmd_attach_device(sh: Shell, args: Args) -> None:
    _device_from_file(sh, args, "attach")


@command("detach-device", "domain", "detach device from an XML file", description=(
    "Detach the device described by the XML in FILE from the domain (a disk is found by "
    "its target, an interface by its MAC, else by its type); flags as attach-device."),
    args=(DOM, FILE_ARG), opts=AFFECT)
def cmd_detach_device(sh: Shell, args: Args) -> None:
    _device_from_file(sh, args, "detach")


@command("update-device", "domain", "update device from an XML file", description=(
    "Change a device of the domain in place from the XML in FILE: a CD-ROM's or "
    "floppy's medium (<source>, none ejects), an interface's <link state> (found by "
    "its MAC). Flags as attach-device; --force is accepted (virsh's eject of a locked "
    "tray) and changes nothing here."),
    args=(DOM, FILE_ARG), opts=(*AFFECT, Opt("force", "force device update")))
def cmd_update_device(sh: Shell, args: Args) -> None:
    _device_from_file(sh, args, "update")


_VERBS = {"attach": "attached", "detach": "detached", "update": "updated"}


def _device_from_file(sh: Shell, args: Args, verb: str) -> None:
    """attach-device / detach-device / update-device: the device XML in FILE, virsh's
    words."""
    path = args.req("file")
    dom = sh.domain(args.req("domain"))
    context = f"Failed to {verb} device from {path}"
    xml = read_xml(path, context)
    flags = affect_flags(sh, args, dom) | (MODIFY_FORCE if args.flag("force") else 0)
    call = {"attach": dom.attach_device, "detach": dom.detach_device,
            "update": dom.update_device}[verb]
    with sh.failing(context):
        call(xml, flags)
    sh.print(f"Device {_VERBS[verb]} successfully")


# -- link state ------------------------------------------------------------------------------

IFACE_ARG = Arg("interface", "interface device (MAC Address)")


def _link_interface(sh: Shell, args: Args) -> tuple[Domain, ET.Element, bool]:
    """(domain, its ``<interface>`` named by the argument, --config) for domif-*link:
    the persistent definition with --config, else the running one (virsh's choice)."""
    dom = sh.domain(args.req("domain"))
    config = args.flag("config")
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        xml = dom.xml(XML_INACTIVE if config else 0)
    try:
        return dom, find_link_interface(xml, args.req("interface")), config
    except InterfaceLookupError as exc:
        raise CommandError(str(exc)) from None


@command("domif-setlink", "monitor", "set link state of a virtual interface", description=(
    "Plug the virtual cable of an interface (named by its MAC or host device) in (up) "
    "or out (down): in the running guest, or with --config in the persistent "
    "definition (a shut-off domain: always there)."),
    args=(DOM, IFACE_ARG, Arg("state", "new state of the device", choices=("up", "down"))),
    opts=(Opt("config", "affect next boot"),))
def cmd_domif_setlink(sh: Shell, args: Args) -> None:
    state = args.req("state")
    dom, node, config = _link_interface(sh, args)
    with sh.failing(f"failed to get state of domain '{dom.name}'"):
        flags = AFFECT_CONFIG if config or not dom.is_active() else AFFECT_LIVE
    with sh.failing("Failed to update interface link state"):
        dom.update_device(with_link_state(node, state), flags)
    sh.print("Device updated successfully")


@command("domif-getlink", "monitor", "get link state of a virtual interface", description=(
    "Print an interface's link state (up: its virtual cable is plugged in), from the "
    "running guest, or with --config from the persistent definition."),
    args=(DOM, IFACE_ARG), opts=(Opt("config", "Get persistent interface state"),))
def cmd_domif_getlink(sh: Shell, args: Args) -> None:
    _, node, _ = _link_interface(sh, args)
    sh.print(f"{args.req('interface')} {link_state(node)}")


def _attach_built(sh: Shell, args: Args, xml: str, noun: str) -> None:
    """attach-disk / attach-interface, once the XML is built from the options: print it
    (--print-xml) or attach it."""
    if args.flag("print-xml"):
        sh.write(xml)
        return
    dom = sh.domain(args.req("domain"))
    flags = affect_flags(sh, args, dom)
    with sh.failing(f"Failed to attach {noun}"):
        dom.attach_device(xml, flags)
    sh.print(f"{noun.capitalize()} attached successfully")


@command("attach-interface", "domain", "attach network interface", description=(
    "Attach a new network interface; the <interface> XML is built from the options "
    "(--print-xml shows it without attaching). TYPE bridge needs SOURCE (the host "
    "bridge); user and ethernet take none (virsh refuses both types here, qemush takes "
    "them: user networking needs no host set-up). Without --mac one is generated "
    "(52:54:00:xx:xx:xx); without --model the architecture's default model is used."),
    args=(DOM, Arg("type", "network interface type (user, bridge, ethernet)"),
          Arg("source", "source of network interface (the bridge for type bridge)",
              required=False)),
    opts=(
        Opt("target", "target network name (host tap device)", "string"),
        Opt("mac", "MAC address", "string"),
        Opt("model", "model type", "string", suggest=("virtio", "e1000", "rtl8139")),
        Opt("alias", "custom alias name of interface device", "string"),
        *AFFECT,
        Opt("print-xml", "print XML document rather than attach the interface"),
    ))
def cmd_attach_interface(sh: Shell, args: Args) -> None:
    try:
        xml = build_interface_xml(args.req("type"), args.get("source"),
                                  target=args.get("target"), mac=args.get("mac"),
                                  model=args.get("model"), alias=args.get("alias"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _attach_built(sh, args, xml, "interface")


@command("detach-interface", "domain", "detach network interface", description=(
    "Detach the network interface of type TYPE: the one with --mac, or the only one of "
    "that type. With --config it is looked up in the persistent definition, else in the "
    "running configuration (in both with --persistent)."),
    args=(DOM, Arg("type", "network interface type")),
    opts=(Opt("mac", "MAC address", "string"), *AFFECT))
def cmd_detach_interface(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    kind, mac = args.req("type"), args.get("mac")
    flags = affect_flags(sh, args, dom)
    context = "Failed to detach interface"
    # virsh: the config's element from the inactive XML, the guest's from the live one
    steps = []
    if flags & AFFECT_CONFIG:
        steps.append((XML_INACTIVE, AFFECT_CONFIG))
    if flags & AFFECT_LIVE or not flags:
        steps.append((0, flags & ~AFFECT_CONFIG))
    for xml_flags, detach_flags in steps:
        with sh.failing(context):
            domain_xml = dom.xml(xml_flags)
        try:
            xml = find_interface_xml(domain_xml, kind, mac)
        except InterfaceLookupError as exc:
            raise CommandError(str(exc), context) from None
        with sh.failing(context):
            dom.detach_device(xml, detach_flags)
    sh.print("Interface detached successfully")
