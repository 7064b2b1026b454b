"""The QEMU driver: domain registry, persistence, QEMU processes and QMP, in the loop."""

from .driver import QemuDriver

__all__ = ["QemuDriver"]
