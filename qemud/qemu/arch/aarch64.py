"""aarch64 (virt): the one serial port is the machine's built-in PL011."""

from __future__ import annotations

from qemud.qemu.arch.base import ArchStrategy
from qemud.qemu.arch.registry import register

__all__ = ["AArch64"]


@register
class AArch64(ArchStrategy):
    name = "aarch64"

    def serial_args(self, chardev_id: str, device_id: str, port: int) -> list[str]:
        # The PL011 is not a -device; it is connected through the legacy
        # -serial option (max_serials = 1 in the table guarantees port 0).
        return ["-serial", f"chardev:{chardev_id}"]
