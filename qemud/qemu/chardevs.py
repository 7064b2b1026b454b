"""Which QEMU chardev each ``<serial>``, ``<console>`` and ``<channel>`` is, and the pty
QEMU allocated for it.

A ``type='pty'`` device gets its ``/dev/pts/N`` from QEMU at start-up; QMP
``query-chardev`` names it (``{"label": "charserial0", "filename": "pty:/dev/pts/3"}``).
libvirt shows it in the live XML (``<source path>``, and ``tty=`` on a console), so the
driver asks once QMP is up and writes what this module works out into the live
definition.

The console stream (``qemush console``) asks the same question -- which chardev is
``console0``, and what does QEMU have there -- so it gets its answer here too, for pty and
unix socket chardevs alike (:func:`console_sources`).

One rule decides which chardev a device uses, for the command line and for these look-ups
alike: the first console of target type serial is not a device of its own but serial 0
seen as a console (libvirt's compatibility console), so it shares ``charserial0``.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import naming
from .domain import CharDeviceView, DomainView

__all__ = ["KINDS", "chardev_id_of", "console_is_serial0", "console_sources", "devices_of",
           "pty_paths"]

#: the char device kinds, as element names
KINDS = ("serial", "console", "channel")
_PTY_PREFIX = "pty:"
#: query-chardev's filename of a unix socket QEMU listens on: ``unix:PATH,server=on``,
#: after ``disconnected:`` while no client is connected
_UNIX_PREFIX = "unix:"
_DISCONNECTED_PREFIX = "disconnected:"
_SERVER_SUFFIX = ",server=on"


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


def _filenames(query_chardev: object) -> dict[str, str]:
    """Chardev label -> filename, from ``query-chardev``'s answer; entries that are not a
    label and a filename are skipped (a malformed answer gives none)."""
    filenames: dict[str, str] = {}
    if isinstance(query_chardev, list):
        for entry in query_chardev:
            if not isinstance(entry, dict):
                continue
            label, filename = entry.get("label"), entry.get("filename")
            if isinstance(label, str) and isinstance(filename, str):
                filenames[label] = filename
    return filenames


def pty_paths(dom: DomainView, query_chardev: object) -> list[tuple[str, int, str | None]]:
    """``(kind, index, /dev/pts/N)`` for each ``type='pty'`` device, from
    ``query-chardev``'s answer; None for one whose chardev the answer does not list as a
    pty (a malformed answer gives no paths rather than an error: they are for display).
    """
    ptys = {label: filename[len(_PTY_PREFIX):]
            for label, filename in _filenames(query_chardev).items()
            if filename.startswith(_PTY_PREFIX)}
    return [(kind, index, ptys.get(chardev_id_of(dom, kind, index)) or None)
            for kind in KINDS for index, dev in enumerate(devices_of(dom, kind))
            if dev.type == "pty"]


def console_sources(dom: DomainView, query_chardev: object) -> dict[str, str]:
    """What a console stream can open, by device name (``console0``, ``serial1``...):
    the pty path, or ``unix:<path>`` of a socket QEMU listens on, from ``query-chardev``.

    The names are the device ids (libvirt's aliases), consoles first, then serial ports:
    libvirt's order of look-up, so the first entry is the default console. A console that
    is serial 0 (see :func:`console_is_serial0`) opens serial 0's chardev, as in libvirt.
    Channels are not consoles (libvirt does not open them either); a device whose chardev
    is neither a pty nor a listening socket (null, file, a socket QEMU connects out on) has
    nothing to open and is left out.
    """
    filenames = _filenames(query_chardev)
    sources: dict[str, str] = {}
    for kind in ("console", "serial"):
        for index in range(len(devices_of(dom, kind))):
            filename = filenames.get(chardev_id_of(dom, kind, index), "")
            source = _console_source(filename)
            if source:
                sources[naming.chardev_ids(kind, index)[1]] = source
    return sources


def _console_source(filename: str) -> str | None:
    """The pty, or ``unix:<path>`` of a listening socket, for a query-chardev filename."""
    if filename.startswith(_PTY_PREFIX):
        return filename[len(_PTY_PREFIX):] or None
    filename = filename.removeprefix(_DISCONNECTED_PREFIX)
    if filename.startswith(_UNIX_PREFIX) and filename.endswith(_SERVER_SUFFIX) and \
            len(filename) > len(_UNIX_PREFIX) + len(_SERVER_SUFFIX):
        return filename[:-len(_SERVER_SUFFIX)]
    return None
