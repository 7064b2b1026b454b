"""A snapshot's description in libvirt's ``<domainsnapshot>`` XML (DOMAIN_SNAPSHOT_GET_XML).

virsh users read a snapshot with ``snapshot-dumpxml`` and ``snapshot-current``; tools
that parse it expect libvirt's document, element for element, so it is built from the
record in libvirt's order (``virDomainSnapshotDefFormat``)::

    <domainsnapshot>
      <name>s1</name>
      <description>...</description>           (only when there is one)
      <state>disk-snapshot</state>
      <parent><name>s0</name></parent>          (only when there is one)
      <creationTime>1700000000</creationTime>
      <memory snapshot='no'/>
      <disks>
        <disk name='vda' snapshot='external' type='file'>
          <driver type='qcow2'/>
          <source file='.../images/vda.s1.qcow2'/>
        </disk>
        <disk name='hdc' snapshot='no'/>
      </disks>
      <domain>...</domain>                      (the definition when it was taken)
    </domainsnapshot>

qemud's snapshots are external and disk-only, so the words are libvirt's for those: the
``<state>`` of one taken while the domain was active is ``disk-snapshot`` (``shutoff`` if
it was shut off, as ``snapshot-list`` shows it), there is no memory image, and a
disk's ``<source>`` is the overlay the snapshot created (the file the guest wrote to
afterwards; the image it froze is that overlay's backing file). A disk the snapshot did
not cover (a CD-ROM, a read-only disk) is listed with ``snapshot='no'``.

The ``<domain>`` keeps its secrets (the VNC ``passwd``) only with
VIR_DOMAIN_SNAPSHOT_XML_SECURE, which a read-only connection may not ask for: the rule
and the words of DOMAIN_GET_XML (``dumpxml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lxml import etree

from protocol import payloads as pl
from protocol.constants import DomainState
from qemud.conf.errors import ConfError
from qemud.conf.xmlmodel import parse_document, serialize
from qemud.errors import OperationDenied, OperationFailed

from .base import SnapshotOps, check_flags

if TYPE_CHECKING:
    from .records import SnapshotRecord

__all__ = ["XMLOps", "snapshot_xml", "SNAPSHOT_XML_SECURE"]

#: libvirt's VIR_DOMAIN_SNAPSHOT_XML_SECURE: keep the secrets of the snapshot's <domain>
SNAPSHOT_XML_SECURE = 1

#: libvirt's states of an inactive domain's snapshot; any other is an active one's
_INACTIVE = (DomainState.SHUTOFF, DomainState.CRASHED)


class XMLOps(SnapshotOps):
    """DOMAIN_SNAPSHOT_GET_XML: reads the metadata, changes nothing."""

    def get_xml(self, ctx: Any, args: pl.SnapshotArgs) -> pl.StringReply:
        secure = bool(args.flags & SNAPSHOT_XML_SECURE)
        if secure and ctx.readonly:  # libvirt checks it first, in its public API
            raise OperationDenied("virDomainSnapshotGetXMLDesc with secure flag")
        check_flags(args.flags, SNAPSHOT_XML_SECURE, "snapshot XML", {})
        dom = self._dom(args)
        meta = self.store.load(dom)
        snap = meta.get(args.name)
        parent = snap.parent if snap.parent in meta.snapshots else ""
        return pl.StringReply(snapshot_xml(snap, parent, secure, dom.name))


def state_name(state: int) -> str:
    """libvirt's ``<state>`` of a disk-only snapshot taken in DomainState ``state``
    (``nostate`` for a record that names none, as libvirt formats it)."""
    if state == DomainState.NOSTATE:
        return "nostate"
    return "shutoff" if state in _INACTIVE else "disk-snapshot"


def snapshot_xml(snap: SnapshotRecord, parent: str, secure: bool, domain: str) -> str:
    """The ``<domainsnapshot>`` document of ``snap`` (``parent``: its parent's name, ""
    if none). ``secure`` keeps the VNC password in its ``<domain>``."""
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = snap.name
    if snap.description:
        etree.SubElement(root, "description").text = snap.description
    etree.SubElement(root, "state").text = state_name(snap.state)
    if parent:
        etree.SubElement(etree.SubElement(root, "parent"), "name").text = parent
    etree.SubElement(root, "creationTime").text = str(snap.creation_time)
    etree.SubElement(root, "memory", snapshot="no")
    definition = _definition(snap, secure, domain)
    disks = etree.SubElement(root, "disks")
    listed: set[str] = set()
    for target in _disk_targets(definition):
        listed.add(target)
        _disk(disks, snap, target)
    for target in snap.disks:  # not in its definition (a record without one): still its
        if target not in listed:
            _disk(disks, snap, target)
    if definition is not None:
        root.append(definition)
    return serialize(root)  # as dumpxml's documents


def _disk(disks: etree._Element, snap: SnapshotRecord, target: str) -> None:
    record = snap.disks.get(target)
    if record is None:
        etree.SubElement(disks, "disk", name=target, snapshot="no")
        return
    disk = etree.SubElement(disks, "disk", name=target, snapshot="external", type="file")
    etree.SubElement(disk, "driver", type="qcow2")  # every overlay is a qcow2 image
    etree.SubElement(disk, "source", file=record.overlay)


def _disk_targets(definition: etree._Element | None) -> list[str]:
    """The targets of the disks of ``definition``, in its order (libvirt's)."""
    if definition is None:
        return []
    targets: list[str] = []
    for disk in definition.iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev:
            targets.append(dev)
    return targets


def _definition(snap: SnapshotRecord, secure: bool, domain: str) -> etree._Element | None:
    """The domain definition recorded with ``snap``, without the VNC password unless
    ``secure`` (what ``dumpxml`` strips); None for a record that holds none."""
    if not snap.xml:
        return None
    try:
        root = parse_document(snap.xml)
    except ConfError as exc:
        raise OperationFailed(f"the domain definition recorded with snapshot '{snap.name}' "
                              f"of domain '{domain}' is damaged: {exc}") from None
    if not secure:
        for graphics in root.iterfind("devices/graphics"):
            if "passwd" in graphics.attrib:
                del graphics.attrib["passwd"]
    return root
