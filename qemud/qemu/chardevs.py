"""Which QEMU chardev each ``<serial>``, ``<console>`` and ``<channel>`` is, and the pty
QEMU allocated for it.

A ``type='pty'`` device gets its ``/dev/pts/N`` from QEMU at start-up; QMP
``query-chardev`` names it (``{"label": "charserial0", "filename": "pty:/dev/pts/3"}``).
libvirt shows it in the live XML (``<source path>``, and ``tty=`` on a console), so the
driver asks once QMP is up and writes what this module works out into the live
definition.

One rule decides which chardev a device uses, for the command line and for this look-up
alike: the first console of target type serial is not a device of its own but serial 0
seen as a console (libvirt's compatibility console), so it shares ``charserial0``.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import naming
from .domain import CharDeviceView, DomainView

__all__ = ["KINDS", "chardev_id_of", "console_is_serial0", "devices_of", "pty_paths"]

#: the char device kinds, as element names
KINDS = ("serial", "console", "channel")
_PTY_PREFIX = "pty:"


def console_is_serial0(dom: DomainView, index: int) -> bool:
    """Whether console ``index`` is serial 0 itself (it has no chardev of its own)."""
    return (index == 0 and bool(dom.serials)
            and dom.consoles[0].target_type in (None, "serial"))


def chardev_id_of(dom: DomainView, kind: str, index: int) -> str:
    """The id of the chardev the ``index``-th ``kind`` device is connected to."""
    if kind == "console" and console_is_serial0(dom, index):
        kind, index = "serial", 0
    return naming.chardev_ids(kind, index)[0]


def devices_of(dom: DomainView, kind: str) -> Sequence[CharDeviceView]:
    """The ``kind`` devices of ``dom`` ('serial', 'console' or 'channel')."""
    if kind == "serial":
        return dom.serials
    if kind == "console":
        return dom.consoles
    if kind == "channel":
        return dom.channels
    raise ValueError(f"not a char device kind: {kind!r}")


def pty_paths(dom: DomainView, query_chardev: object) -> list[tuple[str, int, str | None]]:
    """``(kind, index, /dev/pts/N)`` for each ``type='pty'`` device, from
    ``query-chardev``'s answer; None for one whose chardev the answer does not list as a
    pty (a malformed answer gives no paths rather than an error: they are for display).
    """
    ptys: dict[str, str] = {}
    if isinstance(query_chardev, list):
        for entry in query_chardev:
            if not isinstance(entry, dict):
                continue
            label, filename = entry.get("label"), entry.get("filename")
            if isinstance(label, str) and isinstance(filename, str) and \
                    filename.startswith(_PTY_PREFIX):
                ptys[label] = filename[len(_PTY_PREFIX):]
    return [(kind, index, ptys.get(chardev_id_of(dom, kind, index)) or None)
            for kind in KINDS for index, dev in enumerate(devices_of(dom, kind))
            if dev.type == "pty"]
