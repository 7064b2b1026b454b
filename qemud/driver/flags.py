"""libvirt's ``virCheckFlags`` for the QEMU driver's procedures.

Why one function: every procedure refuses the flag bits it does not know before it looks
anything up, with libvirt's code (INVALID_ARG) and words, naming libvirt's function
(``unsupported flags (0x4) in function qemuDomainGetBlockInfo``): a flag silently ignored
would do something the caller did not ask for, and scripts written against virsh match
that text.
"""

from __future__ import annotations

from protocol.constants import ErrorDomain
from qemud.errors import InvalidArg

__all__ = ["check_flags"]


def check_flags(flags: int, allowed: int, function: str) -> None:
    """Refuse the bits of ``flags`` outside ``allowed``; ``function`` is libvirt's name
    of the driver function (``qemuDomainOpenConsole``)."""
    unknown = int(flags) & ~allowed
    if unknown:
        raise InvalidArg(f"unsupported flags ({unknown:#x}) in function {function}",
                         domain=ErrorDomain.QEMU)
