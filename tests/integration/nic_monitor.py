"""NICs as the guest's QEMU holds them, for test_nic_hotplug, test_unplug_restart and
test_q35_hotplug: the test guest with a second QMP monitor for the test, the guest's
QEMU as that monitor shows it (devices, netdevs, PCI ids), a user-mode NIC, and the MAC
addresses and QEMU ids of a domain's interfaces.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tests.integration.conftest import TestGuest
from tests.integration.domains import guest_xml
from tests.qemu.qmpclient import QMPTestClient

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
USER_NIC = "<interface type='user'><model type='virtio'/></interface>"


def domain_xml(name: str, guest: TestGuest, serial: Path, qmp: Path, extra: str = "") -> str:
    """The test guest with a second QMP monitor on ``qmp`` for the test."""
    xml = guest_xml(name, guest, serial, extra=extra)
    xml = xml.replace("<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'>")
    return xml.replace("</domain>", (
        "<qemu:commandline><qemu:arg value='-qmp'/>"
        f"<qemu:arg value='unix:{qmp},server=on,wait=off'/></qemu:commandline></domain>"))


def macs(xml: str) -> list[str]:
    return [str(m.get("address")) for m in ET.fromstring(xml).iterfind(
        "./devices/interface/mac")]


def ids(mac: str) -> tuple[str, str]:
    suffix = mac.replace(":", "")
    return f"net-{suffix}", f"hostnet-{suffix}"


class Qemu:
    """The guest's QEMU as its test monitor shows it."""

    def __init__(self, path: Path) -> None:
        self.qmp = QMPTestClient(path)
        self.qmp.execute("qmp_capabilities")

    def devices(self) -> set[str]:
        found: Any = self.qmp.execute("qom-list", {"path": "/machine/peripheral"})
        return {str(p["name"]) for p in found}

    def netdevs(self) -> str:
        return str(self.qmp.execute("human-monitor-command",
                                    {"command-line": "info network"}))

    def pci_ids(self) -> set[str]:
        found: Any = self.qmp.execute("query-pci")
        return {str(d.get("qdev_id")) for bus in found for d in bus["devices"]}

    def close(self) -> None:
        self.qmp.close()
