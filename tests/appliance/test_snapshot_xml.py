"""DOMAIN_SNAPSHOT_GET_XML: libvirt's ``<domainsnapshot>`` XML of a snapshot, against a
real daemon, real ``qemu-img`` and a real QEMU (a diskless-firmware guest with a qcow2
disk: a live snapshot needs a running QEMU, not a booted guest).

What a virsh user reads in ``snapshot-dumpxml``: name, description, state (libvirt's words
for a disk-only snapshot: ``disk-snapshot`` when taken from a running domain, ``shutoff``
from a shut-off one), parent, creation time, ``<memory snapshot='no'/>``, the overlay each
disk got (``snapshot='no'`` for a CD-ROM), and the definition at that moment, with the
VNC password only on request (never on a read-only connection).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

import client
from client.domain import SNAPSHOT_XML_SECURE
from client.errors import InvalidArgError, NoDomainError, NoSnapshotError, ReadOnlyError
from protocol.constants import DomainState, UndefineFlags
from tests.helpers.daemon import DaemonProcess, remove_domain, serving
from tests.integration.domains import bare_xml

from .conftest import wait_state

pytestmark = pytest.mark.integration

PASSWORD = "s3cret"
SCHEMA = Path("/usr/share/libvirt/schemas/domainsnapshot.rng")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-snapxml"))) as daemon:
        yield daemon


def define(conn: client.Connection, tmp_path: Path, name: str) -> tuple[client.Domain, Path]:
    """A domain with a qcow2 disk vda, an empty CD-ROM hdc and a VNC password."""
    image = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                   check=True)
    devices = (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        "<target dev='hdc' bus='ide'/><readonly/></disk>"
        "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' "
        f"passwd='{PASSWORD}'/>")
    xml = bare_xml(name).replace("</os>", f"</os><devices>{devices}</devices>")
    return conn.define_xml(xml), image


def cleanup(dom: client.Domain) -> None:
    remove_domain(dom)


def backing_file(image: str) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", image], check=True,
                          capture_output=True, text=True).stdout
    return str(json.loads(info)["backing-filename"])


def children(node: etree._Element) -> list[str]:
    return [str(c.tag) for c in node]


def disks(root: etree._Element) -> list[dict[str, str]]:
    """Each ``<disks>/<disk>``: its attributes, driver type and source file."""
    found = []
    for disk in root.iterfind("disks/disk"):
        entry = {k: str(v) for k, v in disk.attrib.items()}
        driver, source = disk.find("driver"), disk.find("source")
        if driver is not None:
            entry["driver"] = str(driver.get("type"))
        if source is not None:
            entry["source"] = str(source.get("file"))
        found.append(entry)
    return found


def test_snapshot_xml_of_shut_off_and_running_snapshots(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    images = qemud.state_dir / "snapshots" / "sx" / "images"
    with qemud.connect() as conn:
        dom, image = define(conn, tmp_path, "sx")
        try:
            dom.snapshot_create("s1", "before the upgrade")
            dom = dom.create()
            wait_state(dom, DomainState.RUNNING)
            dom.snapshot_create("s2")
            times = {s.name: s.creation_time for s in dom.snapshots()}

            # a snapshot of the shut-off domain: libvirt's elements, in libvirt's order
            s1 = etree.fromstring(dom.snapshot_xml("s1").encode())
            assert s1.tag == "domainsnapshot"
            assert children(s1) == ["name", "description", "state", "creationTime",
                                    "memory", "disks", "domain"]
            assert s1.findtext("name") == "s1"
            assert s1.findtext("description") == "before the upgrade"
            assert s1.findtext("state") == "shutoff"
            assert s1.findtext("creationTime") == str(times["s1"])
            assert dict(s1.find("memory").attrib) == {"snapshot": "no"}
            assert disks(s1) == [
                {"name": "vda", "snapshot": "external", "type": "file", "driver": "qcow2",
                 "source": str(images / "vda.s1.qcow2")},
                {"name": "hdc", "snapshot": "no"}]
            # the overlay the snapshot made sits on the image it froze: the user's original
            assert backing_file(str(images / "vda.s1.qcow2")) == str(image)
            # the definition when it was taken: the disk still on the original image
            domain = s1.find("domain")
            assert domain.findtext("name") == "sx" and domain.findtext("uuid") == dom.uuid
            assert domain.find("devices/disk/source").get("file") == str(image)

            # a snapshot of the running domain: a child of s1, on s1's overlay
            s2 = etree.fromstring(dom.snapshot_xml("s2").encode())
            assert children(s2) == ["name", "state", "parent", "creationTime", "memory",
                                    "disks", "domain"]  # no description: none given
            assert s2.findtext("state") == "disk-snapshot"
            assert s2.findtext("parent/name") == "s1"
            assert s2.findtext("creationTime") == str(times["s2"])
            assert disks(s2)[0]["source"] == str(images / "vda.s2.qcow2")
            assert backing_file(str(images / "vda.s2.qcow2")) == str(images / "vda.s1.qcow2")
            assert s2.find("domain/devices/disk/source").get("file") == str(
                images / "vda.s1.qcow2")
            # and the running guest writes to the overlay s2 names
            live = etree.fromstring(dom.xml().encode())
            assert live.find("devices/disk/source").get("file") == disks(s2)[0]["source"]
        finally:
            cleanup(dom)


def test_snapshot_xml_secure_flag(qemud: DaemonProcess, tmp_path: Path) -> None:
    def passwd(xml: str) -> str | None:
        graphics = etree.fromstring(xml.encode()).find("domain/devices/graphics")
        assert graphics is not None, xml
        return graphics.get("passwd")

    with qemud.connect() as conn, qemud.connect(readonly=True) as ro:
        dom, _ = define(conn, tmp_path, "sx-secure")
        try:
            dom.snapshot_create("s1")
            # as dumpxml: the password only on request
            assert passwd(dom.snapshot_xml("s1")) is None
            assert PASSWORD not in dom.snapshot_xml("s1")
            assert passwd(dom.snapshot_xml("s1", SNAPSHOT_XML_SECURE)) == PASSWORD

            # a read-only connection reads the XML, never the secrets (libvirt's words)
            rodom = ro.lookup_by_name("sx-secure")
            assert rodom.snapshot_xml("s1") == dom.snapshot_xml("s1")
            with pytest.raises(ReadOnlyError) as info:
                rodom.snapshot_xml("s1", SNAPSHOT_XML_SECURE)
            assert info.value.message == (
                "operation forbidden: virDomainSnapshotGetXMLDesc with secure flag")
        finally:
            cleanup(dom)


def test_snapshot_xml_errors(qemud: DaemonProcess, tmp_path: Path) -> None:
    with qemud.connect() as conn:
        dom, _ = define(conn, tmp_path, "sx-err")
        try:
            with pytest.raises(NoSnapshotError) as info:
                dom.snapshot_xml("s1")  # no snapshot at all yet
            assert info.value.message == ("Domain snapshot not found: no domain snapshot "
                                          "with matching name 's1'")
            dom.snapshot_create("s1")
            with pytest.raises(NoSnapshotError, match="matching name 'nope'"):
                dom.snapshot_xml("nope")
            with pytest.raises(InvalidArgError, match=r"unsupported flags \(0x2\)"):
                dom.snapshot_xml("s1", 2)
            dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
            with pytest.raises(NoDomainError):
                dom.snapshot_xml("s1")
        finally:
            cleanup(dom)


def test_snapshot_xml_is_valid_for_libvirts_schema(qemud: DaemonProcess,
                                                  tmp_path: Path) -> None:
    """Both kinds (shut off, running) validate against libvirt's domainsnapshot.rng."""
    if not SCHEMA.is_file():
        pytest.skip(f"libvirt's {SCHEMA} is not installed (Debian: libvirt-daemon)")
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    with qemud.connect() as conn:
        dom, _ = define(conn, tmp_path, "sx-rng")
        try:
            dom.snapshot_create("off", "a <description> & more")
            dom = dom.create()
            wait_state(dom, DomainState.RUNNING)
            dom.snapshot_create("on")
            for name in ("off", "on"):
                for flags in (0, SNAPSHOT_XML_SECURE):
                    doc = etree.fromstring(dom.snapshot_xml(name, flags).encode())
                    assert schema.validate(doc), (name, flags, schema.error_log)
            assert etree.fromstring(dom.snapshot_xml("off").encode()).findtext(
                "description") == "a <description> & more"
        finally:
            cleanup(dom)
