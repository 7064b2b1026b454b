"""libvirt's VIR_DOMAIN_XML_MIGRATABLE (``virsh dumpxml --migratable``) for qemud.

What libvirt's QEMU driver leaves out of migratable XML (qemuDomainDefFormatBufInternal,
virDomainDefFormatInternal), and what of it applies here:

* the default USB controller, when it is the only USB controller: index 0, model absent
  or piix3-uhci, no user alias ('ua-') - so that an older libvirt, which added it by
  itself, can read the XML. qemud adds no controllers, but keeps one the user wrote.
* the default pci-root, when it is the only PCI controller: index 0, model pci-root, no
  ``<pcihole64>``, no user alias - for the same reason.
* listen addresses, TLS settings and VNC sockets the host's qemu.conf supplied rather
  than the XML: qemud writes none into a definition, so there is nothing to leave out.

Everything else stays, as in libvirt: the migratable form of a running domain is its live
XML (id, device aliases, the VNC port QEMU got, pty paths), because a migration
destination must start QEMU with the same device ids; with VIR_DOMAIN_XML_INACTIVE it is
the persistent XML. Secrets follow VIR_DOMAIN_XML_SECURE as in any other form.
"""

from __future__ import annotations

from lxml import etree

from qemud.conf.domain import DomainDef

__all__ = ["XML_MIGRATABLE", "migratable"]

XML_MIGRATABLE = 8  # libvirt's VIR_DOMAIN_XML_MIGRATABLE

_USER_ALIAS = "ua-"
_DEFAULT_USB_MODELS = (None, "piix3-uhci")


def _controllers(devices: etree._Element, kind: str) -> list[etree._Element]:
    return [c for c in devices.iterchildren("controller") if c.get("type") == kind]


def _user_alias(controller: etree._Element) -> bool:
    alias = controller.find("alias")
    return alias is not None and alias.get("name", "").startswith(_USER_ALIAS)


def _default_usb(devices: etree._Element) -> etree._Element | None:
    usb = _controllers(devices, "usb")
    if len(usb) != 1:
        return None
    only = usb[0]
    if only.get("index", "0") == "0" and only.get("model") in _DEFAULT_USB_MODELS \
            and not _user_alias(only):
        return only
    return None


def _default_pci_root(devices: etree._Element) -> etree._Element | None:
    pci = _controllers(devices, "pci")
    if len(pci) != 1:
        return None
    only = pci[0]
    if only.get("index", "0") == "0" and only.get("model") == "pci-root" \
            and only.find("pcihole64") is None and not _user_alias(only):
        return only
    return None


def migratable(definition: DomainDef) -> DomainDef:
    """A copy of ``definition`` (live or persistent) in libvirt's migratable form: without
    the lone default USB controller and pci-root (see the module docstring)."""
    out = definition.copy()
    devices = out.node.find("devices")
    if devices is None:
        return out
    for controller in (_default_usb(devices), _default_pci_root(devices)):
        if controller is not None:
            devices.remove(controller)
    return out
