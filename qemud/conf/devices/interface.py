"""``<interface>``: network cards of type user, bridge and ethernet.

::

    <interface type='user|bridge|ethernet'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>            (type='bridge')
      <target dev='tap0'/>
      <model type='virtio'/>
      <link state='down'/>              (libvirt's virtual cable; absent: up)
      <boot order='2'/>
    </interface>

MAC addresses are validated and normalised to lower case; missing ones are generated in
QEMU's locally administered 52:54:00 range by ``DomainDef.assign_missing_ids()``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from typing import ClassVar

from ..xmlmodel import XMLIntProperty, XMLProperty
from .base import Device

__all__ = ["MAC_PREFIX", "RUNTIME_IFNAME_PREFIXES", "Interface", "generate_mac", "normalise_mac"]

MAC_PREFIX = "52:54:00"
"""QEMU's OUI-less prefix for generated guest MACs (same as libvirt)."""

RUNTIME_IFNAME_PREFIXES: tuple[str, ...] = ("vnet", "macvtap", "macvlan")
"""Host interface names libvirt reserves for automatic assignment: runtime-only data."""

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_MODEL = re.compile(r"[A-Za-z0-9_-]+")


def normalise_mac(text: str) -> str:
    """Validate a MAC (six hex octets, colon separated, unicast) and lower-case it.

    Raises ``ValueError`` naming the problem; a multicast address (lowest bit of the first
    octet set) cannot be a NIC address and QEMU would refuse it at start-up.
    """
    mac = text.strip()
    if not _MAC.fullmatch(mac):
        raise ValueError(f"invalid MAC address '{text}' (expected six hex octets like"
                         " 52:54:00:12:34:56)")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"MAC address '{text}' is multicast; a NIC needs a unicast address")
    return mac.lower()


def generate_mac(rng: random.Random | None = None, taken: Collection[str] = ()) -> str:
    """A random 52:54:00:xx:xx:xx address not in ``taken`` (lower case)."""
    gen = rng if rng is not None else random.SystemRandom()
    used = {m.lower() for m in taken}
    while True:
        tail = ":".join(f"{gen.randrange(256):02x}" for _ in range(3))
        mac = f"{MAC_PREFIX}:{tail}"
        if mac not in used:
            return mac


class Interface(Device):
    """A guest NIC."""

    __slots__ = ()

    XML_TAG = "interface"
    XML_TAGS = ("interface",)
    XML_CHILD_ORDER = {
        ".": (
            "start", "mac", "source", "vlan", "virtualport", "ip", "route", "script",
            "backenddomain", "target", "guest", "model", "driver", "backend", "filterref",
            "tune", "teaming", "link", "mtu", "bandwidth", "port", "coalesce", "rom", "boot",
            "alias", "address", "acpi",
        ),
    }

    TYPES: ClassVar[tuple[str, ...]] = ("user", "bridge", "ethernet")

    type = XMLProperty("./@type", default="", doc="'user', 'bridge' or 'ethernet'.")
    _mac = XMLProperty("./mac/@address")
    source_bridge = XMLProperty("./source/@bridge", doc="Host bridge for type='bridge'.")
    target_dev = XMLProperty("./target/@dev", doc="Host tap device name.")
    model = XMLProperty("./model/@type", doc="NIC model ('virtio', 'e1000', ...).")
    boot_order = XMLIntProperty("./boot/@order", doc="Per-device ``<boot order>``.")
    link_state = XMLProperty("./link/@state", doc="'up' or 'down': whether the virtual "
                             "cable is plugged in (QEMU's set_link); absent is up.")

    LINK_STATES: ClassVar[tuple[str, ...]] = ("up", "down")

    @property
    def link_down(self) -> bool:
        return self.link_state == "down"

    @property
    def mac(self) -> str | None:
        """Guest MAC address (lower case once parsed); None until generated."""
        return self._mac

    @mac.setter
    def mac(self, value: str | None) -> None:
        if value is None:
            self._mac = None
            return
        try:
            self._mac = normalise_mac(value)
        except ValueError as exc:
            raise self._error(str(exc), "mac") from None

    def describe(self) -> str:
        return f"interface '{self.mac}'" if self.mac else "interface"

    def check(self) -> None:
        """Type, MAC, bridge source and model-name sanity."""
        super().check()
        itype = self.type
        if not itype:
            raise self._error("missing type attribute (expected 'user', 'bridge' or"
                              " 'ethernet')")
        self._check_choice(itype, self.TYPES, "interface type")
        mac = self._mac
        if mac is not None:
            try:
                normalise_mac(mac)
            except ValueError as exc:
                raise self._error(str(exc), "mac") from None
        if itype == "bridge" and not self.source_bridge:
            raise self._error("type='bridge' needs <source bridge='...'>", "source")
        model = self.model
        if model is not None and not _MODEL.fullmatch(model):
            # The model name ends up on QEMU's command line.
            raise self._error(f"invalid model type '{model}'", "model")
        self._check_positive(self.boot_order, "boot order", "boot")
        if self.link_state is not None:
            self._check_choice(self.link_state, self.LINK_STATES, "link state", "link")

    def normalise(self) -> None:
        if self._mac is not None:
            self._mac = normalise_mac(self._mac)

    def strip_runtime(self) -> None:
        """Also drop automatically assigned host tap names (vnetN, macvtapN)."""
        super().strip_runtime()
        dev = self.target_dev
        if dev is not None and dev.startswith(RUNTIME_IFNAME_PREFIXES):
            self.target_dev = None

    def matches(self, other: Device) -> bool:
        """libvirt's rule: a NIC is identified by its MAC; without one, by type."""
        if not super().matches(other):
            return False
        assert isinstance(other, Interface)
        if other.alias is not None:
            return True
        if other.mac is not None:
            return self.mac is not None and other.mac.lower() == self.mac.lower()
        return not other.type or other.type == self.type
