"""ppc64 (pseries): serial ports are PAPR virtual terminals on the VIO bus."""

from __future__ import annotations

from typing import Final

from qemud.qemu.arch.base import ArchStrategy
from qemud.qemu.arch.registry import register

__all__ = ["PPC64"]

# First VIO address QEMU and libvirt use for spapr-vty; one page per port.
_VTY_BASE: Final = 0x30000000
_VTY_STRIDE: Final = 0x1000


@register
class PPC64(ArchStrategy):
    name = "ppc64"

    def serial_args(self, chardev_id: str, device_id: str, port: int) -> list[str]:
        reg = _VTY_BASE + port * _VTY_STRIDE
        return ["-device", f"spapr-vty,chardev={chardev_id},id={device_id},reg={reg:#x}"]
