"""``<watchdog model='i6300esb' action='reset'/>``: the guest watchdog.

One per domain (libvirt 9.0's rule).  Which models exist on which architecture is the
QEMU layer's business; here we only refuse names libvirt does not know.
"""

from __future__ import annotations

from typing import ClassVar

from ..xmlmodel import XMLProperty
from .base import Device

__all__ = ["Watchdog"]


class Watchdog(Device):
    """A watchdog timer and what to do when it fires."""

    __slots__ = ()

    XML_TAG = "watchdog"
    XML_TAGS = ("watchdog",)
    XML_CHILD_ORDER = {".": ("alias", "address")}

    MODELS: ClassVar[tuple[str, ...]] = ("i6300esb", "ib700", "diag288", "itco")
    ACTIONS: ClassVar[tuple[str, ...]] = (
        "reset", "shutdown", "poweroff", "pause", "dump", "none", "inject-nmi",
    )

    model = XMLProperty("./@model", default="", doc="'i6300esb', 'ib700', 'diag288', 'itco'.")
    action = XMLProperty(
        "./@action", default="reset", doc="What happens on expiry; libvirt's default is reset."
    )

    def describe(self) -> str:
        return f"watchdog '{self.model}'" if self.model else "watchdog"

    def check(self) -> None:
        """Known model and action."""
        super().check()
        if not self.model:
            raise self._error("missing model attribute")
        self._check_choice(self.model, self.MODELS, "watchdog model")
        self._check_choice(self.action, self.ACTIONS, "watchdog action")

    def matches(self, other: Device) -> bool:
        """There is only one watchdog; a model, when given, must agree."""
        if not super().matches(other):
            return False
        assert isinstance(other, Watchdog)
        return other.alias is not None or not other.model or other.model == self.model
