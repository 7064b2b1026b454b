"""``<memballoon model='virtio'><stats period='10'/></memballoon>``: the memory balloon.

The balloon is how a running guest's memory changes (``setmem --live``) and where the
guest's own memory figures come from (``dommemstat``).  One per domain, as libvirt's
schema says; ``model='none'`` is the explicit "no balloon" (libvirt's QEMU driver adds a
virtio one to a definition that has no ``<memballoon>`` on some architectures: that
default is the QEMU layer's business, see ``ArchStrategy.fill_defaults``).  The
``<address>`` is kept as written and not interpreted.
"""

from __future__ import annotations

from typing import ClassVar

from ..xmlmodel import XMLIntProperty, XMLProperty
from .base import Device

__all__ = ["Memballoon"]


class Memballoon(Device):
    """A memory balloon device, or with ``model='none'`` the absence of one."""

    __slots__ = ()

    XML_TAG = "memballoon"
    XML_TAGS = ("memballoon",)
    XML_CHILD_ORDER = {".": ("alias", "stats", "address")}

    MODELS: ClassVar[tuple[str, ...]] = (
        "virtio", "virtio-transitional", "virtio-non-transitional", "xen", "none",
    )
    ON_OFF: ClassVar[tuple[str, ...]] = ("on", "off")

    model = XMLProperty(
        "./@model", default="", doc="'virtio' (or libvirt's other names); 'none': no balloon."
    )
    stats_period = XMLIntProperty(
        "./stats/@period",
        doc="Seconds between the guest's memory statistics updates; None: QEMU's default "
        "(no polling).",
    )
    autodeflate = XMLProperty(
        "./@autodeflate", doc="'on': the balloon deflates when the guest runs out of memory."
    )
    free_page_reporting = XMLProperty(
        "./@freePageReporting", doc="'on': the guest reports free pages to the host."
    )

    @property
    def active(self) -> bool:
        """Whether there is a balloon at all (libvirt's virDomainDefHasMemballoon)."""
        return self.model != "none"

    def describe(self) -> str:
        return f"memballoon '{self.model}'" if self.model else "memballoon"

    def check(self) -> None:
        """Known model, on/off switches, a positive stats period."""
        super().check()
        if not self.model:
            raise self._error("missing model attribute (expected 'virtio' or 'none')")
        self._check_choice(self.model, self.MODELS, "memballoon model")
        if self.autodeflate is not None:
            self._check_choice(self.autodeflate, self.ON_OFF, "autodeflate value")
        if self.free_page_reporting is not None:
            self._check_choice(self.free_page_reporting, self.ON_OFF, "freePageReporting value")
        self._check_positive(self.stats_period, "stats period", "stats")

    def matches(self, other: Device) -> bool:
        """There is only one balloon; a model, when given, must agree."""
        if not super().matches(other):
            return False
        assert isinstance(other, Memballoon)
        return other.alias is not None or not other.model or other.model == self.model
