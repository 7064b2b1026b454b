"""DOMAIN_SET_METADATA / DOMAIN_GET_METADATA: a domain's ``<title>`` and ``<description>``,
``virsh desc``.

Why procedures of their own rather than a redefine from the client: the live definition
of a running domain can only change in the daemon, and a read-modify-define from the
client would race with any other change to the definition. The AFFECT flags pick the
definitions as for setmem (:meth:`Resources.affected_defs`); a live change is written to
the guest's status file, a config change to its stored definition, each before the reply.

libvirt's ELEMENT type (custom ``<metadata>`` children by namespace) is not offered: the
appliance layer keeps its settings there, and they are edited through the domain XML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import MetadataType
from qemud.conf import DomainDef
from qemud.dispatch import Handler
from qemud.errors import ArgumentUnsupported, InvalidArg, NoMetadata

from .flags import check_flags
from .resources import AFFECT_CONFIG, AFFECT_LIVE

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Metadata"]

_FIELDS = {MetadataType.DESCRIPTION: "description", MetadataType.TITLE: "title"}


def _field(kind: int) -> str:
    """The DomainDef attribute of metadata ``kind``, or libvirt's refusal."""
    if kind == MetadataType.ELEMENT:
        raise ArgumentUnsupported("metadata elements (VIR_DOMAIN_METADATA_ELEMENT) are not "
                                  "supported by qemud: edit <metadata> in the domain XML")
    try:
        return _FIELDS[MetadataType(kind)]
    except ValueError:
        raise InvalidArg(f"unknown metadata type '{kind}'") from None


class Metadata:
    """The handlers of DOMAIN_SET_METADATA and DOMAIN_GET_METADATA."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_SET_METADATA: self.set_metadata,
                Procedure.DOMAIN_GET_METADATA: self.get_metadata}

    def set_metadata(self, ctx: Any, args: pl.SetMetadataArgs) -> Empty:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainSetMetadata")
        field = _field(args.type)
        text = args.metadata or None  # libvirt: an empty text removes the element
        if field == "title" and text is not None and "\n" in text:
            raise InvalidArg("Domain title can't contain newlines")
        dom = self.driver._dom(args)
        live, config = self.driver.resources.affected_defs(dom, args.flags)
        if config is not None:  # first: a failed write changes nothing
            setattr(config, field, text)
            self.driver.resources.save_config(dom, config)
        if live is not None:
            setattr(live, field, text)
            self.driver.lifecycle.save_status(dom)
        return Empty()

    def get_metadata(self, ctx: Any, args: pl.GetMetadataArgs) -> pl.StringReply:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetMetadata")
        field = _field(args.type)
        dom = self.driver._dom(args)
        if args.flags & AFFECT_LIVE and args.flags & AFFECT_CONFIG:
            raise InvalidArg("Flags 'live' and 'config' are mutually exclusive")
        definition: DomainDef
        if args.flags & AFFECT_CONFIG:
            definition = dom.next_definition or dom.definition
        elif args.flags & AFFECT_LIVE:
            self.driver.lifecycle.require_active(dom)
            assert dom.live is not None
            definition = dom.live
        else:
            definition = dom.current()
        value: str | None = getattr(definition, field)
        if not value:
            raise NoMetadata("Requested metadata element is not present")
        return pl.StringReply(value)
