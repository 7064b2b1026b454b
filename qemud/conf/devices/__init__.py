"""Device models, one module per kind, and the stand-alone device parser.

``parse_device_xml`` serves attach/detach requests, which carry one device element.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from lxml import etree

from ..errors import DefinitionError
from ..schema import validate_device
from ..xmlmodel import local_name, parse_document
from .base import USER_ALIAS_PREFIX, Device
from .chardev import CharDevice
from .controller import Controller
from .disk import Disk
from .graphics import Graphics
from .interface import MAC_PREFIX, Interface, generate_mac, normalise_mac
from .memballoon import Memballoon
from .panic import Panic
from .watchdog import Watchdog

__all__ = [
    "DEVICE_CLASSES",
    "MAC_PREFIX",
    "USER_ALIAS_PREFIX",
    "CharDevice",
    "Controller",
    "Device",
    "Disk",
    "Graphics",
    "Interface",
    "Memballoon",
    "Panic",
    "Watchdog",
    "generate_mac",
    "normalise_mac",
    "parse_device_xml",
    "wrap_device",
]

DEVICE_CLASSES: Mapping[str, type[Device]] = MappingProxyType(
    {
        tag: cls
        for cls in (Disk, Interface, Graphics, CharDevice, Watchdog, Memballoon, Panic,
                    Controller)
        for tag in cls.XML_TAGS
    }
)
"""Element name -> model class for every supported device."""


def wrap_device(node: etree._Element) -> Device | None:
    """The model object for a device element, or None for devices we do not model."""
    cls = DEVICE_CLASSES.get(node.tag) if isinstance(node.tag, str) else None
    return cls(node) if cls is not None else None


def parse_device_xml(text: str | bytes, *, validate_schema: bool = True) -> Device:
    """Parse one device element (``<disk>``, ``<interface>``, ...) for attach/detach.

    Runs the device's semantic checks and, when libvirt's schema is installed and
    ``validate_schema`` is true, validates it inside a scaffold domain.  Cross-device checks
    (duplicate targets, ...) happen in ``DomainDef.add_device``.  Raises
    :class:`XMLParseError`, :class:`SchemaError` or :class:`DefinitionError`.
    """
    root = parse_document(text, source="(device_definition)")
    dev = wrap_device(root)
    if dev is None:
        supported = ", ".join(f"<{t}>" for t in DEVICE_CLASSES)
        raise DefinitionError(
            f"unsupported device <{local_name(root)}> (supported: {supported})",
            path=local_name(root),
        )
    dev.check()
    if validate_schema:
        validate_device(root)
    dev.normalise()
    return dev
