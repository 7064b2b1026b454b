"""``<graphics type='vnc'>``: the VNC console.

::

    <graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'/>
    <graphics type='vnc' port='-1' autoport='yes'/>      (port chosen at start-up)
    <graphics type='vnc' port='-1' passwd='secret' passwdValidTo='2027-01-01T00:00:00'/>

Canonical form follows libvirt: after parsing, ``autoport`` is always explicit and an
automatic port is written as ``-1``.  The port QEMU actually got is runtime data: it shows
in the live XML only.
"""

from __future__ import annotations

import datetime
from typing import ClassVar

from ..xmlmodel import XMLIntProperty, XMLProperty, XMLYesNoProperty
from .base import Device

__all__ = ["VNC_PORT_MAX", "VNC_PORT_MIN", "Graphics"]

VNC_PORT_MIN = 5900
"""QEMU addresses VNC by display number, port = 5900 + display."""

VNC_PORT_MAX = 65535


class Graphics(Device):
    """A graphical console; only VNC is supported."""

    __slots__ = ()

    XML_TAG = "graphics"
    XML_TAGS = ("graphics",)
    XML_CHILD_ORDER = {".": ("listen", "image", "channel", "gl", "audio", "alias")}

    TYPES: ClassVar[tuple[str, ...]] = ("vnc",)

    type = XMLProperty("./@type", default="", doc="'vnc'.")
    port = XMLIntProperty(
        "./@port", doc="TCP port; -1 means automatic, None when not given."
    )
    _autoport = XMLYesNoProperty("./@autoport")
    passwd = XMLProperty(
        "./@passwd",
        doc="The VNC password (set through QMP at start); like libvirt, the domain XML shows "
            "it only when asked for secure information on a read-write connection.")
    passwd_valid_to = XMLProperty(
        "./@passwdValidTo", doc="When the password expires: UTC, YYYY-MM-DDTHH:MM:SS.")
    _listen_attr = XMLProperty("./@listen")
    _listen_address = XMLProperty("./listen/@address")

    @property
    def autoport(self) -> bool:
        """Whether the port is picked at start-up; libvirt's default when no port is set."""
        explicit = self._autoport
        if explicit is not None:
            return explicit
        port = self.port
        return port is None or port == -1

    @autoport.setter
    def autoport(self, value: bool) -> None:
        self._autoport = value

    @property
    def listen(self) -> str | None:
        """Listen address: the ``listen`` attribute, else the first ``<listen address>``."""
        attr = self._listen_attr
        return attr if attr is not None else self._listen_address

    @listen.setter
    def listen(self, value: str | None) -> None:
        # Keep the attribute and libvirt's <listen type='address'> child in agreement.
        self._listen_attr = value
        if self._listen_address is not None:
            self._listen_address = value

    def describe(self) -> str:
        return f"graphics '{self.type}'" if self.type else "graphics"

    def check(self) -> None:
        """VNC only; port -1 or 5900-65535; a fixed port when autoport='no'."""
        super().check()
        if not self.type:
            raise self._error("missing type attribute (expected 'vnc')")
        self._check_choice(self.type, self.TYPES, "graphics type")
        port = self.port
        auto = self._autoport  # also validates yes/no
        if port is not None and port != -1 and not VNC_PORT_MIN <= port <= VNC_PORT_MAX:
            raise self._error(
                f"vnc port must be -1 (automatic) or {VNC_PORT_MIN}-{VNC_PORT_MAX}, got '{port}'"
            )
        if auto is False and (port is None or port == -1):
            raise self._error("autoport='no' needs a port")
        if self.passwd_valid_to is not None:
            self.password_expiry()  # raises on a bad time

    def password_expiry(self) -> int | None:
        """``passwdValidTo`` as seconds since the epoch (None when not given)."""
        text = self.passwd_valid_to
        if text is None:
            return None
        try:
            when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            raise self._error(f"passwdValidTo must be a UTC time YYYY-MM-DDTHH:MM:SS, got "
                              f"'{text}'") from None
        return int(when.replace(tzinfo=datetime.UTC).timestamp())

    def normalise(self) -> None:
        """Make autoport explicit and write an automatic port as -1 (libvirt's form)."""
        auto = self.autoport
        if self.port is None and auto:
            self.port = -1
        if self._autoport is None:
            self._autoport = auto

    def strip_runtime(self) -> None:
        """An automatic port is only known while running: -1 in the persistent form."""
        super().strip_runtime()
        if self.autoport and self.port is not None:
            self.port = -1

    def matches(self, other: Device) -> bool:
        """Graphics are identified by type (one VNC console per guest in practice)."""
        if not super().matches(other):
            return False
        assert isinstance(other, Graphics)
        return other.alias is not None or not other.type or other.type == self.type
