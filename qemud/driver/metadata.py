"""DOMAIN_SET_METADATA / DOMAIN_GET_METADATA: a domain's ``<title>``, ``<description>``
and custom ``<metadata>`` elements, ``virsh desc`` and ``virsh metadata``.

Why procedures of their own rather than a redefine from the client: the live definition
of a running domain can only change in the daemon, and a read-modify-define from the
client would race with any other change to the definition. The AFFECT flags pick the
definitions as for setmem (:meth:`Resources.affected_defs`); a live change is written to
the guest's status file, a config change to its stored definition, each before the reply.
Every successful set emits libvirt's METADATA_CHANGE event.

ELEMENT is libvirt's VIR_DOMAIN_METADATA_ELEMENT (virDomainDefSetMetadata): ``<metadata>``
holds at most one child per namespace ``uri``; a set parses the given XML, puts each of
its elements that has no namespace into ``uri`` under the prefix ``key``, and replaces
that namespace's child; a get gives the child back without the namespace, as it was set.

The appliance layer keeps its settings in ``<metadata>`` under its own namespace
(:mod:`qemud.appliance.metadata`). Its duties read them when a guest starts (a heartbeat
watcher, QEMU's reboot action), so a change to a running guest's live definition would
claim a policy that is not in force: only the persistent definition may change, and it
goes through the checks a define makes (the registry's validators), so a bad value is
refused with the define's message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lxml import etree

from protocol import Empty, Procedure
from protocol import payloads as pl
from protocol.constants import MetadataType
from qemud.appliance.metadata import NS as APPLIANCE_NS
from qemud.conf import DomainDef, XMLParseError
from qemud.conf.xmlmodel import not_xml_text, parse_document
from qemud.dispatch import Handler
from qemud.errors import InvalidArg, NoMetadata, OperationInvalid, XMLError

from .flags import check_flags
from .resources import AFFECT_CONFIG, AFFECT_LIVE

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["Metadata", "inject_namespace", "extract_namespace"]

_FIELDS = {MetadataType.DESCRIPTION: "description", MetadataType.TITLE: "title"}
#: prefixes XML reserves: libxml2's xmlNewNs refuses them
_RESERVED_PREFIXES = ("xml", "xmlns")


def _kind(kind: int) -> MetadataType:
    try:
        return MetadataType(kind)
    except ValueError:
        raise InvalidArg(f"unknown metadata type '{kind}'") from None


def _check_args(kind: MetadataType, uri: str, key: str | None, function: str) -> None:
    """libvirt's public-API checks (virCheckNullArg / virCheckNonNullArg): a uri (and a
    key) only with ELEMENT, and there always a uri. "" stands for libvirt's NULL."""
    if kind == MetadataType.ELEMENT:
        if not uri:
            raise InvalidArg(f"uri in {function} must not be NULL")
        return
    if uri:
        raise InvalidArg(f"uri in {function} must be NULL")
    if key:
        raise InvalidArg(f"key in {function} must be NULL")


def inject_namespace(text: str, uri: str, key: str) -> etree._Element:
    """libvirt's virXMLInjectNamespace on the parsed ``text``: the root element and every
    descendant without a namespace go into ``uri``, declared with prefix ``key`` on the
    root; elements already in a namespace keep it. Refuses what libvirt refuses (bad XML,
    a prefix that is not an XML name) and, unlike libvirt (which would store it where a
    get by ``uri`` never finds it), a root element that is in another namespace."""
    if key in _RESERVED_PREFIXES:
        raise InvalidArg(f"failed to validate prefix for a new XML namespace: '{key}' is "
                         "reserved by XML")
    try:
        root = etree.Element(f"{{{uri}}}metadata", nsmap={key: uri})
    except ValueError as exc:
        if "prefix" in str(exc):
            raise InvalidArg(f"failed to validate prefix for a new XML namespace: '{key}' "
                             "is not an XML name") from None
        raise InvalidArg(f"invalid metadata namespace URI '{uri}': {exc}") from None
    try:
        source = parse_document(text, source="(metadata_xml)")
    except XMLParseError as exc:
        raise XMLError(str(exc)) from None
    found = etree.QName(source).namespace
    if found is not None and found != uri:
        raise XMLError(f"metadata element <{etree.QName(source).localname}> is in namespace "
                       f"'{found}', not in '{uri}' (leave the namespace out: the given "
                       "uri and key are put on it)")
    # the root's declarations stay (a default namespace can only be uri itself: key
    # stands for it instead)
    nsmap: dict[str, str] = {prefix: ns for prefix, ns in source.nsmap.items()
                             if prefix is not None and prefix != key}
    nsmap[key] = uri
    element = etree.SubElement(root, f"{{{uri}}}{etree.QName(source).localname}",
                               {str(k): str(v) for k, v in source.attrib.items()},
                               nsmap=nsmap)
    element.text = source.text
    for child in list(source):  # moved: the namespaces they use come along
        element.append(child)
    for node in element.iter():
        if isinstance(node.tag, str) and etree.QName(node).namespace is None:
            node.tag = f"{{{uri}}}{node.tag}"
    etree.cleanup_namespaces(element)
    return element


def extract_namespace(element: etree._Element, uri: str) -> str:
    """libvirt's virXMLExtractNamespaceXML: ``element`` as text with the elements of
    ``uri`` taken out of it (and its declaration dropped), indented as libvirt's
    formatted node dump."""
    copied = etree.fromstring(etree.tostring(element, with_tail=False))
    for node in copied.iter():
        if isinstance(node.tag, str) and etree.QName(node).namespace == uri:
            node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(copied)
    return etree.tostring(copied, encoding="unicode", pretty_print=True).rstrip("\n")


def _set_element(definition: DomainDef, uri: str, element: etree._Element | None) -> None:
    """Replace the ``<metadata>`` child of ``uri`` (None: remove it, and any further one
    of the same namespace, as libvirt does)."""
    if element is None:
        while definition.get_metadata(uri) is not None:
            definition.set_metadata(uri, None)
    else:
        definition.set_metadata(uri, element)


class Metadata:
    """The handlers of DOMAIN_SET_METADATA and DOMAIN_GET_METADATA."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_SET_METADATA: self.set_metadata,
                Procedure.DOMAIN_GET_METADATA: self.get_metadata}

    def set_metadata(self, ctx: Any, args: pl.SetMetadataArgs) -> Empty:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainSetMetadata")
        kind = _kind(args.type)
        _check_args(kind, args.uri, args.key, "virDomainSetMetadata")
        element: etree._Element | None = None
        text: str | None = None
        if kind == MetadataType.ELEMENT:
            if args.metadata:
                if not args.key:
                    raise InvalidArg("key in virDomainSetMetadata must not be NULL")
                element = inject_namespace(args.metadata, args.uri, args.key)
        else:
            text = args.metadata or None  # libvirt: an empty text removes the element
            if kind == MetadataType.TITLE and text is not None and "\n" in text:
                raise InvalidArg("metadata title can't contain newlines")  # (libvirt's)
            bad = not_xml_text(text or "")
            if bad:
                raise InvalidArg(f"the {_FIELDS[kind]} cannot hold {bad}")
        dom = self.driver._dom(args)
        appliance = kind == MetadataType.ELEMENT and args.uri == APPLIANCE_NS
        live, config = self.driver.resources.affected_defs(dom, args.flags)
        if appliance and live is not None:
            raise OperationInvalid(
                f"the appliance settings (<metadata> namespace '{APPLIANCE_NS}') of a "
                f"running domain are in force since its start: change them in its "
                "persistent definition (--config) and restart it")

        def change(definition: DomainDef) -> None:
            if kind == MetadataType.ELEMENT:
                _set_element(definition, args.uri, element)
                return
            setattr(definition, _FIELDS[kind], text)

        if config is not None:  # first: a failed write changes nothing
            change(config)
            if appliance:  # the checks a define of this definition would make
                for validate in self.driver.registry.validators:
                    validate(config)
            self.driver.registry.save_persistent(dom, config)
        if live is not None:
            change(live)
            self.driver.lifecycle.save_status(dom)
        self.driver.events.metadata_change(dom.ref(), int(kind), args.uri)
        return Empty()

    def get_metadata(self, ctx: Any, args: pl.GetMetadataArgs) -> pl.StringReply:
        if args.flags & AFFECT_LIVE and args.flags & AFFECT_CONFIG:
            # virDomainGetMetadata's VIR_EXCLUSIVE_FLAGS_GOTO, before the driver's checks
            raise InvalidArg("Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' "
                             "are mutually exclusive")
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainGetMetadata")
        kind = _kind(args.type)
        _check_args(kind, args.uri, None, "virDomainGetMetadata")
        dom = self.driver._dom(args)
        definition: DomainDef
        if args.flags & AFFECT_CONFIG:
            if not dom.persistent:  # (libvirt's virDomainObjGetOneDefState)
                raise OperationInvalid("transient domains do not have any persistent "
                                       "config")
            definition = dom.persistent_definition
        elif args.flags & AFFECT_LIVE:
            self.driver.lifecycle.require_active(dom)
            assert dom.live is not None
            definition = dom.live
        else:
            definition = dom.current()
        value: str | None
        if kind == MetadataType.ELEMENT:
            node = definition.get_metadata(args.uri)
            value = None if node is None else extract_namespace(node, args.uri)
        else:
            value = getattr(definition, _FIELDS[kind])
        if not value:
            raise NoMetadata("Requested metadata element is not present")
        return pl.StringReply(value)
