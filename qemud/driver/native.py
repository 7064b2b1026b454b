"""CONNECT_DOMAIN_XML_TO_NATIVE (virsh ``domxml-to-native``): the QEMU command line of
domain XML, without starting anything.

libvirt builds it as a "pretend" start (qemuProcessCreatePretendCmdBuild): the XML is
checked as a define checks it, then the command line is built as a start would build it,
with no side effect. qemud does the same with its own pieces:

* the definition: :meth:`Registry.parse` — what define does (the arch defaults, the host
  checks, the validators, among them the firmware resolution of ``<os firmware='efi'>``,
  which only reads the installed descriptors), minus storing it;
* the command line: what :meth:`Lifecycle.start` does to its live copy
  (:func:`.lifecycle.command_line`: the RAM aligned as QEMU gets it, the PCI addresses
  and PCIe root ports assigned, ``build_argv`` with the driver's capabilities), with the
  guest's paths under the daemon's run directory.

Left out, as a dry run must: the start hooks (the NVRAM file is not created, the
appliance layer adds no heartbeat channel), the VNC port allocation (an autoport display
gets port 5900, ``-vnc ...:0``, as libvirt's pretend start gives it), the run directory,
the guest log. Nothing is defined: the XML may name a domain that exists or not.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from protocol import payloads as pl
from protocol.constants import ErrorDomain
from qemud.conf import DomainDef
from qemud.dispatch import Handler
from qemud.errors import ConfigUnsupported, InvalidArg
from qemud.qemu.arch import strategy_for
from qemud.qemu.errors import QemuError

from .flags import check_flags
from .lifecycle import command_line

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["QEMU_ARGV", "VNC_PRETEND_PORT", "handler", "native_argv", "xml_to_native"]

#: libvirt's QEMU_CONFIG_FORMAT_ARGV: the only native format of the QEMU driver
QEMU_ARGV = "qemu-argv"
#: the port an autoport VNC display gets in libvirt's pretend start (display :0)
VNC_PRETEND_PORT = 5900


def xml_to_native(driver: QemuDriver, fmt: str, xml: str, flags: int) -> str:
    """The command line of ``xml`` as one line of shell words (``shlex.quote`` each)."""
    check_flags(flags, 0, "qemuConnectDomainXMLToNative")
    if fmt != QEMU_ARGV:
        # libvirt's code and words (qemuConnectDomainXMLToNative)
        raise InvalidArg(f"unsupported config type {fmt}", domain=ErrorDomain.QEMU)
    definition = driver.registry.parse(xml)  # (XMLError, ConfigUnsupported... as define)
    return " ".join(shlex.quote(word) for word in native_argv(driver, definition))


def native_argv(driver: QemuDriver, definition: DomainDef) -> list[str]:
    """What :meth:`Lifecycle.start` would run for ``definition`` (checked by the
    registry), computed on a copy and creating nothing."""
    live = definition.copy()
    try:
        strategy = strategy_for(live, driver.caps.host_arch)
    except QemuError as exc:
        raise ConfigUnsupported(str(exc)) from None
    for graphics in live.graphics:
        if graphics.type == "vnc" and (graphics.autoport or graphics.port in (None, -1)):
            graphics.port = VNC_PRETEND_PORT
    try:
        return command_line(live, strategy, driver.caps,
                            driver.lifecycle.guest_paths(live.name))
    except QemuError as exc:
        raise ConfigUnsupported(str(exc)) from None


def handler(driver: QemuDriver) -> Handler:
    """The CONNECT_DOMAIN_XML_TO_NATIVE handler (the procedure table keeps it off
    read-only connections)."""

    def handle(ctx: Any, args: pl.XMLToNativeArgs) -> pl.StringReply:
        return pl.StringReply(xml_to_native(driver, args.format, args.xml, args.flags))

    return handle
