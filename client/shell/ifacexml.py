"""Device XML for attach-interface / detach-interface, built and found as virsh does.

virsh builds the ``<interface>`` element from the options and calls the device
attach; for a detach it picks the element out of the domain XML (by type, and by MAC
when given) and sends it whole, so the daemon matches it by its MAC.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .xmltext import virsh_xml

__all__ = ["SOURCE_ATTRS", "NO_SOURCE_TYPES", "InterfaceLookupError", "build_interface_xml",
           "find_interface_xml"]

#: interface types whose SOURCE is an attribute of <source> (virsh: network, bridge,
#: direct); the daemon itself runs user, bridge and ethernet
SOURCE_ATTRS = {"network": "network", "bridge": "bridge", "direct": "dev"}
#: types qemush builds without a SOURCE (virsh 9.0 refuses them in attach-interface;
#: user networking is what works without host set-up, so qemush takes them)
NO_SOURCE_TYPES = ("user", "ethernet")


class InterfaceLookupError(ValueError):
    """No interface, or more than one, fits a detach-interface request (virsh's
    wording)."""


def build_interface_xml(kind: str, source: str | None, *, target: str | None = None,
                        mac: str | None = None, model: str | None = None,
                        alias: str | None = None) -> str:
    """The ``<interface>`` element for ``attach-interface`` (children in virsh's order).

    Raises ValueError for a type this shell cannot build (virsh's ``No support for TYPE
    in command 'attach-interface'``), a missing SOURCE where the type needs one, or a
    SOURCE given where it has no meaning.
    """
    if kind not in SOURCE_ATTRS and kind not in NO_SOURCE_TYPES:
        raise ValueError(f"No support for {kind} in command 'attach-interface'")
    iface = ET.Element("interface", {"type": kind})
    if kind in SOURCE_ATTRS:
        if not source:
            raise ValueError(f"interface type '{kind}' needs a <source>")
        ET.SubElement(iface, "source", {SOURCE_ATTRS[kind]: source})
    elif source:
        raise ValueError(f"interface type '{kind}' takes no <source> (got '{source}')")
    if target:
        ET.SubElement(iface, "target", {"dev": target})
    if mac:
        ET.SubElement(iface, "mac", {"address": mac})
    if model:
        ET.SubElement(iface, "model", {"type": model})
    if alias:
        ET.SubElement(iface, "alias", {"name": alias})
    return virsh_xml(iface)


def _mac_of(iface: ET.Element) -> str:
    node = iface.find("mac")
    return (node.get("address") or "").lower() if node is not None else ""


def find_interface_xml(domain_xml: str, kind: str, mac: str | None) -> str:
    """The ``<interface type=KIND>`` of ``domain_xml`` to detach: the one with ``mac``
    (compared without case), else the only one of that type.

    Raises :class:`InterfaceLookupError` with virsh's message when there is none, or
    several and no MAC says which.
    """
    found = ET.fromstring(domain_xml).findall(f"./devices/interface[@type='{kind}']") \
        if kind.replace("-", "").isalnum() else []
    if not found:
        raise InterfaceLookupError(f"No interface with MAC address {mac} was found" if mac
                                   else f"No interface found whose type is {kind}")
    if mac:
        found = [i for i in found if _mac_of(i) == mac.lower()]
        if not found:
            raise InterfaceLookupError(f"No interface with MAC address {mac} was found")
    elif len(found) > 1:
        raise InterfaceLookupError(f"Domain has {len(found)} interfaces. Please specify "
                                   "which one to detach using --mac")
    iface = found[0]
    iface.tail = None
    return ET.tostring(iface, encoding="unicode").strip() + "\n"


def _looks_like_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF"
                                                       for c in p) for p in parts)


def find_link_interface(domain_xml: str, iface: str) -> ET.Element:
    """The ``<interface>`` ``iface`` names for domif-setlink/getlink: by MAC if it is one,
    else by host device (``<target dev>``). Raises :class:`InterfaceLookupError` with
    virsh's words."""
    by_mac = _looks_like_mac(iface)
    for node in ET.fromstring(domain_xml).findall("./devices/interface"):
        if by_mac and _mac_of(node) == iface.lower():
            return node
        target = node.find("target")
        if not by_mac and target is not None and target.get("dev") == iface:
            return node
    raise InterfaceLookupError(f"interface ({'mac' if by_mac else 'target'}: {iface}) "
                               "not found")


def link_state(node: ET.Element) -> str:
    """An interface's ``<link state>``; none is up."""
    link = node.find("link")
    return (link.get("state") if link is not None else None) or "up"


def with_link_state(node: ET.Element, state: str) -> str:
    """The interface element with ``<link state=STATE>``, as XML for update-device."""
    link = node.find("link")
    if link is None:
        link = ET.SubElement(node, "link")
    link.set("state", state)
    node.tail = None
    return ET.tostring(node, encoding="unicode").strip() + "\n"
