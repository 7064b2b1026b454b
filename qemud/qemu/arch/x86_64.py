"""x86_64: ISA serial ports, everything else comes from the table."""

from __future__ import annotations

from qemud.qemu.arch.base import ArchStrategy
from qemud.qemu.arch.registry import register

__all__ = ["X86_64"]


@register
class X86_64(ArchStrategy):
    name = "x86_64"

    def serial_args(self, chardev_id: str, device_id: str, port: int) -> list[str]:
        # Explicit index so COM numbering follows <target port>, not argv order.
        return ["-device", f"isa-serial,chardev={chardev_id},id={device_id},index={port}"]
