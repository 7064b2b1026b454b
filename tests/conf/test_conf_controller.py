"""``<controller>`` in the domain model: what it reads, the checks that belong to the XML
alone, and the pcie-root-port the QEMU layer adds (qemud.conf.devices.controller)."""

from __future__ import annotations

import pytest

from qemud.conf import DefinitionError, parse_domain_xml


def domain(devices: str) -> str:
    return (f"<domain type='qemu'><name>c</name><memory>65536</memory><os><type "
            f"arch='x86_64' machine='q35'>hvm</type></os><devices>{devices}</devices>"
            "</domain>")


def test_pci_controllers_are_read_as_libvirt_writes_them() -> None:
    dom = parse_domain_xml(domain(
        "<controller type='usb' index='0' model='qemu-xhci'/>"
        "<controller type='pci' index='0' model='pcie-root'/>"
        "<controller type='pci' index='1' model='pcie-root-port'><model "
        "name='ioh3420'/><target chassis='1' port='0x10' hotplug='off'/></controller>"))
    root, port = dom.pci_controllers
    assert (root.index, root.model, root.is_root_port) == (0, "pcie-root", False)
    assert (port.index, port.model_name, port.chassis, port.port, port.hotplug) == \
        (1, "ioh3420", 1, 0x10, "off")
    assert port.is_root_port and port.describe() == \
        "controller 'pci' model 'pcie-root-port' index 1"


def test_an_added_root_port_is_written_as_libvirt_writes_one() -> None:
    """After the other controllers, index right after type, <model name>, <target>."""
    dom = parse_domain_xml(domain("<disk type='file' device='disk'><source file='/a'/>"
                                  "<target dev='vda'/></disk><interface type='user'/>"))
    port = dom.add_pcie_root_port(3)
    port.set_target(3, 0x12)
    port.assign_pci_slot(2, function=2)
    assert port.to_xml().replace('"', "'").split() == (
        "<controller type='pci' index='3' model='pcie-root-port'> <model "
        "name='pcie-root-port'/> <target chassis='3' port='0x12'/> <address type='pci' "
        "domain='0x0000' bus='0x00' slot='0x02' function='0x2'/> </controller>").split()
    assert [d.tag for d in dom.devices] == ["disk", "controller", "interface"]


def test_an_index_assigned_later_goes_right_after_the_type() -> None:
    dom = parse_domain_xml(domain("<controller type='pci' model='pcie-root-port'/>"))
    [port] = dom.pci_controllers
    assert port.index is None
    port.assign_index(5)
    assert port.to_xml().startswith("<controller type='pci' index='5' "
                                    "model='pcie-root-port'")


@pytest.mark.parametrize(("devices", "message"), [
    ("<controller type='pci' index='1' model='pcie-root-port'/>" * 2,
     "Multiple 'pci' controllers with index '1'"),
    ("<controller type='pci' index='1' model='pcie-root-port'><target chassis='300'/>"
     "</controller>",
     r"devices/controller\[1\]/target: Invalid chassis '300' \(expected a number 0 to 255\)"),
])
def test_bad_controllers_are_refused_naming_the_element(devices: str, message: str
                                                        ) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_domain_xml(domain(devices))


def test_usb_companion_controllers_share_their_index() -> None:
    """libvirt's ICH9 USB: one EHCI and its UHCI companions, all index 0."""
    dom = parse_domain_xml(domain(
        "<controller type='usb' index='0' model='ich9-ehci1'/>"
        "<controller type='usb' index='0' model='ich9-uhci1'><master startport='0'/>"
        "</controller>"))
    assert dom.pci_controllers == []
