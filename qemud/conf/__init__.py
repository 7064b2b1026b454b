"""qemud's domain XML layer: libvirt-compatible definitions as a typed, declarative model.

The model is a thin view over the lxml tree (virt-manager's xmlbuilder idea, our own code):
properties read and write the tree, so XML nobody touched survives a round trip.  The
contract other layers code against is docs/internal/domain-model-api.md.

    dom = parse_domain_xml(text)      # XMLParseError / DefinitionError / SchemaError
    dom.assign_missing_ids()
    dom.disks[0].source = "/new.iso"
    text = dom.to_xml()
"""

from __future__ import annotations

from . import schema, units
from .devices import (
    DEVICE_CLASSES,
    MAC_PREFIX,
    USER_ALIAS_PREFIX,
    CharDevice,
    Controller,
    Device,
    Disk,
    Graphics,
    Interface,
    Memballoon,
    Panic,
    Watchdog,
    generate_mac,
    normalise_mac,
    parse_device_xml,
)
from .domain import DOMAIN_TYPES, DomainDef, OSDef, normalise_uuid, parse_domain_xml
from .errors import ConfError, DefinitionError, SchemaError, XMLParseError

__all__ = [
    "DEVICE_CLASSES",
    "DOMAIN_TYPES",
    "MAC_PREFIX",
    "USER_ALIAS_PREFIX",
    "CharDevice",
    "Controller",
    "ConfError",
    "DefinitionError",
    "Device",
    "Disk",
    "DomainDef",
    "Graphics",
    "Interface",
    "Memballoon",
    "OSDef",
    "Panic",
    "SchemaError",
    "Watchdog",
    "XMLParseError",
    "generate_mac",
    "normalise_mac",
    "normalise_uuid",
    "parse_device_xml",
    "parse_domain_xml",
    "schema",
    "units",
]
