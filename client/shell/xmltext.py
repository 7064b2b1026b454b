"""Device XML printed the way virsh prints it.

virsh writes the XML it builds (``attach-disk --print-xml``, ``attach-interface
--print-xml``) with libvirt's buffer formatter: two spaces per level, attribute values in
single quotes (``<source file='/img/a.qcow2'/>``) and no space before ``/>``. Scripts
compare or grep that text, so the shell prints its own snippets alike. ElementTree writes
double quotes and ``" />"``, and the client does not depend on lxml or the daemon's
formatter, so this is a small writer for the element-only snippets the shell builds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

__all__ = ["virsh_xml"]

_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;",
                       '"': "&quot;", "\n": "&#10;", "\t": "&#9;", "\r": "&#13;"})
_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def virsh_xml(element: ET.Element) -> str:
    """``element`` and its children as virsh prints them, ending in a newline. Elements
    hold either children or text, as device XML does; whitespace-only text and tails
    (an ``ET.indent``'s) are layout and dropped."""
    lines: list[str] = []

    def write(el: ET.Element, depth: int) -> None:
        pad = "  " * depth
        attrs = "".join(f" {k}='{v.translate(_ATTR)}'" for k, v in el.attrib.items())
        text = (el.text or "").strip()
        if len(el):
            if text:
                raise ValueError(f"<{el.tag}> holds both text and elements")
            lines.append(f"{pad}<{el.tag}{attrs}>")
            for child in el:
                write(child, depth + 1)
            lines.append(f"{pad}</{el.tag}>")
        elif text:
            lines.append(f"{pad}<{el.tag}{attrs}>{text.translate(_TEXT)}</{el.tag}>")
        else:
            lines.append(f"{pad}<{el.tag}{attrs}/>")

    write(element, 0)
    return "\n".join(lines) + "\n"
