"""The real domain model (qemud.conf) satisfies the views the driver reads.

Statically: mypy checks the assignment below (run ``mypy --strict tests/qemu``).
At run time: every member of every view exists on parsed objects, and the
members fill_defaults writes are writable and land in the XML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from qemud.qemu import domain
from qemud.qemu.arch import get_strategy

if TYPE_CHECKING:
    from qemud.conf import DomainDef

    def _static_check(dom: DomainDef) -> domain.DomainView:
        return dom  # mypy: DomainDef must be structurally a DomainView


conf = pytest.importorskip("qemud.conf")

XML = """
<domain type='qemu'>
  <name>contract</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/a.img'/><target dev='sda'/></disk>
    <interface type='user'/>
    <graphics type='vnc' autoport='yes'/>
    <serial type='pty'/>
    <console type='pty'/>
    <channel type='unix'><target type='virtio' name='a.b'/></channel>
    <watchdog model='i6300esb'/>
    <memballoon model='virtio'><stats period='5'/></memballoon>
  </devices>
</domain>
"""


def members(view: type[Any]) -> list[str]:
    return [name for name in vars(view) if not name.startswith("_")] + list(
        getattr(view, "__annotations__", {})
    )


def test_every_view_member_exists_on_the_real_model() -> None:
    dom = conf.parse_domain_xml(XML)
    objects: list[tuple[type[Any], Any]] = [
        (domain.DomainView, dom),
        (domain.OSView, dom.os),
        (domain.DiskView, dom.disks[0]),
        (domain.InterfaceView, dom.interfaces[0]),
        (domain.GraphicsView, dom.graphics[0]),
        (domain.CharDeviceView, dom.serials[0]),
        (domain.CharDeviceView, dom.channels[0]),
        (domain.WatchdogView, dom.watchdog),
        (domain.MemballoonView, dom.memballoon),
    ]
    for view, obj in objects:
        for name in members(view):
            getattr(obj, name)  # raises AttributeError on a contract gap


def test_fill_defaults_writes_through_to_the_xml() -> None:
    dom = conf.parse_domain_xml(XML)
    dom.assign_missing_ids()
    get_strategy("x86_64").fill_defaults(dom)
    reparsed = conf.parse_domain_xml(dom.to_xml())
    assert reparsed.os.machine == "pc"
    assert reparsed.disks[0].target_bus == "scsi"
    assert reparsed.interfaces[0].model == "virtio"
    ppc = conf.parse_domain_xml(
        XML.replace("x86_64", "ppc64").replace("<watchdog model='i6300esb'/>", "")
    )
    ppc.disks[0].target_bus = "scsi"
    get_strategy("ppc64").fill_defaults(ppc)
    # the RAM size is the user's (aligned only for the running guest, as libvirt does)
    assert conf.parse_domain_xml(ppc.to_xml()).memory_kib == 128 * 1024


def test_fill_defaults_writes_the_default_balloon_to_the_xml() -> None:
    bare = XML.replace("<memballoon model='virtio'><stats period='5'/></memballoon>", "")
    dom = conf.parse_domain_xml(bare)
    assert dom.memballoon is None
    get_strategy("x86_64").fill_defaults(dom)
    reparsed = conf.parse_domain_xml(dom.to_xml())
    assert reparsed.memballoon is not None and reparsed.memballoon.model == "virtio"
    arm = conf.parse_domain_xml(bare.replace("x86_64", "aarch64")
                                .replace("<watchdog model='i6300esb'/>", ""))
    get_strategy("aarch64").fill_defaults(arm)
    assert arm.memballoon is None  # libvirt adds none on arm
