"""``<serial>``, ``<console>`` and ``<channel>``: character devices.

::

    <serial type='pty'><target type='isa-serial' port='0'/></serial>
    <serial type='file'><source path='/var/log/guest.log'/><target port='1'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'>
      <source mode='bind' path='/run/qemud/guest.agent'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>

A pty's path is allocated by the host at start-up: runtime data, shown in the live XML only
(like the console's ``tty`` attribute).
"""

from __future__ import annotations

from typing import ClassVar, Self

from lxml import etree

from ..xmlmodel import XMLIntProperty, XMLProperty, first_child
from .base import Device

__all__ = ["CharDevice"]


class CharDevice(Device):
    """A serial port, console or channel; ``kind`` tells which (the element name)."""

    __slots__ = ()

    XML_TAG = "serial"
    XML_TAGS = ("serial", "console", "channel")
    XML_CHILD_ORDER = {".": ("source", "protocol", "log", "target", "alias", "address")}

    TYPES: ClassVar[tuple[str, ...]] = ("pty", "file", "unix", "null")
    SOURCE_MODES: ClassVar[tuple[str, ...]] = ("bind", "connect")
    CHANNEL_TARGET_TYPES: ClassVar[tuple[str, ...]] = ("virtio",)

    type = XMLProperty(
        "./@type", default="pty", doc="'pty', 'file', 'unix' or 'null'; libvirt defaults to pty."
    )
    source_path = XMLProperty(
        "./source/@path", doc="File, socket or (live) pty path."
    )
    source_mode = XMLProperty("./source/@mode", doc="'bind' or 'connect' for unix sockets.")
    target_type = XMLProperty(
        "./target/@type", doc="'isa-serial', 'serial', 'virtio', ... (per kind and arch)."
    )
    target_port = XMLIntProperty("./target/@port", doc="Port number of serials/consoles.")
    target_name = XMLProperty("./target/@name", doc="Name of a virtio channel.")
    tty = XMLProperty("./@tty", doc="Live only: the pty a console is attached to.")

    @classmethod
    def new(cls, kind: str = "serial") -> Self:
        """A fresh ``<serial>``, ``<console>`` or ``<channel>``."""
        if kind not in cls.XML_TAGS:
            raise ValueError(f"not a character device: {kind!r}")
        return cls(etree.Element(kind))

    @property
    def kind(self) -> str:
        """'serial', 'console' or 'channel'."""
        return self.tag

    def describe(self) -> str:
        if self.kind == "channel" and self.target_name:
            return f"channel '{self.target_name}'"
        port = self.target_port
        return f"{self.kind} {port}" if port is not None else self.kind

    def check(self) -> None:
        """Type, source and target sanity per kind."""
        super().check()
        kind = self.tag
        ctype = self.type
        self._check_choice(ctype, self.TYPES, f"{kind} type")
        source = first_child(self.node, "source")
        if source is not None:
            mode = source.get("mode")
            if mode is not None:
                self._check_choice(mode, self.SOURCE_MODES, "source mode", "source")
        if ctype == "file" and (source is None or not source.get("path")):
            raise self._error("type='file' needs <source path='...'>", "source")
        port = self.target_port
        if port is not None and port < 0:
            raise self._error(f"target port must not be negative, got '{port}'", "target")
        if kind == "channel":
            self._check_choice(
                self.target_type, self.CHANNEL_TARGET_TYPES, "channel target type", "target"
            )

    def strip_runtime(self) -> None:
        """Drop the pty path and tty the host allocated."""
        super().strip_runtime()
        if self.type == "pty":
            self.source_path = None
        self.tty = None

    def matches(self, other: Device) -> bool:
        """Channels match by target name, serials/consoles by target port (default 0)."""
        if not super().matches(other):
            return False
        assert isinstance(other, CharDevice)
        if other.alias is not None:
            return True
        if self.kind == "channel":
            return other.target_name is None or other.target_name == self.target_name
        return (other.target_port or 0) == (self.target_port or 0)
