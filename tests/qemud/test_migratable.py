"""VIR_DOMAIN_XML_MIGRATABLE's form of a definition (qemud.driver.migratable): only the
lone default USB controller and pci-root go, as in libvirt's qemu driver."""

from __future__ import annotations

from qemud.conf.domain import parse_domain_xml
from qemud.driver.migratable import migratable


def _controllers(devices: str) -> list[str]:
    xml = ("<domain type='qemu'><name>m</name><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os>"
           f"<devices>{devices}</devices></domain>")
    out = migratable(parse_domain_xml(xml, validate_schema=False))
    return [f"{c.get('type')}:{c.get('index')}:{c.get('model')}"
            for c in out.node.iter("controller")]


def test_lone_defaults_go() -> None:
    assert _controllers("<controller type='usb' index='0'/>"
                        "<controller type='pci' index='0' model='pci-root'/>") == []
    assert _controllers("<controller type='usb' index='0' model='piix3-uhci'/>") == []


def test_anything_else_stays() -> None:
    kept = ["<controller type='usb' index='0' model='qemu-xhci'/>",
            "<controller type='usb' index='0'><alias name='ua-usb'/></controller>",
            "<controller type='pci' index='0' model='pci-root'><pcihole64 unit='KiB'>0"
            "</pcihole64></controller>",
            "<controller type='pci' index='0' model='pcie-root'/>"]
    for devices in kept:
        assert len(_controllers(devices)) == 1, devices
    # two USB controllers: neither is the lone default
    assert _controllers("<controller type='usb' index='0'/>"
                        "<controller type='usb' index='1' model='ehci'/>") == \
        ["usb:0:None", "usb:1:ehci"]


def test_the_definition_itself_is_untouched() -> None:
    xml = ("<domain type='qemu'><name>m</name><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os>"
           "<devices><controller type='usb' index='0'/></devices></domain>")
    definition = parse_domain_xml(xml, validate_schema=False)
    migratable(definition)
    assert "<controller type='usb' index='0'/>" in definition.to_xml()
