"""``<panic model='isa'><address type='isa' iobase='0x505'/></panic>``: the panic notifier.

A guest kernel that panics tells the host through this device (QEMU's ``pvpanic`` on
x86, the pseries firmware's own call on ppc64); QEMU then emits GUEST_PANICKED and the
domain's ``<on_crash>`` applies.  Without one, a panicked guest just sits there and the
daemon never learns of it.

libvirt allows several panic devices, one per model.  Which models exist on which
architecture, and the model of a ``<panic>`` that names none (libvirt's per-arch
default), is the QEMU layer's business; here we only refuse what libvirt refuses on
every architecture: an unknown model, a malformed ``iobase``, two devices of one model.
"""

from __future__ import annotations

import re
from typing import ClassVar

from ..xmlmodel import XMLProperty
from .base import Device

__all__ = ["Panic"]

# libvirt's schema for an ISA iobase (<define name="iobase">)
_IOBASE = re.compile(r"0x[0-9a-fA-F]{1,4}")


class Panic(Device):
    """A panic notification device (several per domain, one per model)."""

    __slots__ = ()

    XML_TAG = "panic"
    XML_TAGS = ("panic",)
    XML_CHILD_ORDER = {".": ("alias", "address")}

    MODELS: ClassVar[tuple[str, ...]] = ("isa", "pseries", "hyperv", "s390", "pvpanic")
    """libvirt's ``<panic model>`` names."""

    model = XMLProperty(
        "./@model",
        doc="'isa' (x86 pvpanic), 'pseries', 'hyperv', 's390', 'pvpanic' (PCI); None: the "
        "architecture's default, written at define time by the QEMU layer.",
    )
    _iobase = XMLProperty("./address/@iobase")

    @property
    def iobase(self) -> int | None:
        """``<address type='isa' iobase='0x505'/>``: the I/O port, None when not given
        (or not an ISA address).  :meth:`check` has refused a malformed one."""
        if self.address_type != "isa":
            return None
        text = self._iobase
        return None if text is None or not _IOBASE.fullmatch(text) else int(text, 16)

    def describe(self) -> str:
        return f"panic '{self.model}'" if self.model else "panic"

    def check(self) -> None:
        """Known model; an ISA address's iobase is 0x and 1 to 4 hex digits."""
        super().check()
        if self.model is not None:
            self._check_choice(self.model, self.MODELS, "panic model")
        text = self._iobase
        if self.address_type == "isa" and text is not None and not _IOBASE.fullmatch(text):
            raise self._error(
                f"invalid iobase '{text}' (expected 0x and 1 to 4 hex digits)", "address")

    def matches(self, other: Device) -> bool:
        """One device per model: a model, when given, must agree."""
        if not super().matches(other):
            return False
        assert isinstance(other, Panic)
        return other.alias is not None or not other.model or other.model == self.model
