"""DOMAIN_SET_METADATA / DOMAIN_GET_METADATA of type ELEMENT and the METADATA_CHANGE
event, against a real daemon, as libvirt's virDomainSetMetadata / virDomainGetMetadata
behave: one ``<metadata>`` child per namespace, set with a prefix and read back without
it; the appliance layer's own namespace only in the persistent definition, checked as
at define. The running domain is a diskless guest started paused under TCG."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

import client
from client import EventId
from client.domain import AFFECT_CONFIG, AFFECT_LIVE
from protocol.constants import ErrorCode, MetadataType
from tests.helpers.daemon import DaemonProcess, serving
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

ELEMENT, TITLE, DESCRIPTION = MetadataType.ELEMENT, MetadataType.TITLE, \
    MetadataType.DESCRIPTION
URI = "http://example.org/xmlns/inventory/1"
OTHER = "http://example.org/xmlns/backup/2"
APPLIANCE = "http://qemud.org/xmlns/appliance/1"
MISSING = "metadata not found: Requested metadata element is not present"


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-metadata-element"))
    with serving(daemon):
        yield daemon


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c


def stored(qemud: DaemonProcess, name: str) -> str:
    return (qemud.config_dir / "domains" / f"{name}.xml").read_text()


def undefine(qemud: DaemonProcess, name: str) -> None:
    with qemud.connect() as c:
        dom = c.lookup_by_name(name)
        if dom.is_active():
            dom.destroy()
        dom.undefine()


def test_set_get_replace_remove(qemud: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(bare_xml("el-off"))
    try:
        with pytest.raises(client.NoMetadataError) as missing:
            dom.metadata(ELEMENT, uri=URI)
        assert missing.value.code == ErrorCode.NO_DOMAIN_METADATA
        assert str(missing.value) == MISSING

        dom.set_metadata(ELEMENT, "<asset id='42'><owner>alice</owner></asset>",
                         key="inv", uri=URI)
        # read back as it was set: without the namespace, indented as libvirt's dump
        assert dom.metadata(ELEMENT, uri=URI) == \
            '<asset id="42">\n  <owner>alice</owner>\n</asset>'
        # in the definition: in the namespace, under the prefix given, before the reply
        for xml in (dom.xml(client.XML_INACTIVE), stored(qemud, "el-off")):
            assert f'<inv:asset xmlns:inv="{URI}" id="42">' in xml
            assert "<inv:owner>alice</inv:owner>" in xml

        dom.set_metadata(ELEMENT, "<backup keep='7'/>", key="bk", uri=OTHER)
        dom.set_metadata(ELEMENT, "<asset id='43'/>", key="inv2", uri=URI)  # replaces
        xml = dom.xml()
        assert xml.count(URI) == 1 and 'id="43"' in xml and "alice" not in xml
        assert dom.metadata(ELEMENT, uri=URI) == '<asset id="43"/>'
        assert dom.metadata(ELEMENT, AFFECT_CONFIG, uri=OTHER) == '<backup keep="7"/>'

        dom.set_metadata(ELEMENT, "", uri=URI)  # "" (libvirt's NULL): removed
        with pytest.raises(client.NoMetadataError, match=f"^{MISSING}$"):
            dom.metadata(ELEMENT, uri=URI)
        assert URI not in stored(qemud, "el-off")
        assert dom.metadata(ELEMENT, uri=OTHER) == '<backup keep="7"/>'  # untouched
        dom.set_metadata(ELEMENT, "", uri=URI)  # nothing to remove: fine, as libvirt

        # kept across a daemon restart: it is in the definition
        conn.close()
        qemud.stop()
        qemud.start()
        with qemud.connect() as again:
            assert again.lookup_by_name("el-off").metadata(ELEMENT, uri=OTHER) == \
                '<backup keep="7"/>'
    finally:
        undefine(qemud, "el-off")


def test_refusals_change_nothing(qemud: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(bare_xml("el-bad"))
    try:
        dom.set_metadata(ELEMENT, "<keep/>", key="k", uri=URI)
        before = stored(qemud, "el-bad")
        refusals: list[tuple[type[Exception], str, dict[str, object]]] = [
            (client.InvalidArgError, "invalid argument: uri in virDomainSetMetadata must "
             "not be NULL", {"text": "<a/>", "key": "k", "uri": ""}),
            (client.InvalidArgError, "invalid argument: key in virDomainSetMetadata must "
             "not be NULL", {"text": "<a/>", "key": "", "uri": URI}),
            (client.XMLError, "XML error: not well-formed XML: (metadata_xml):1: ",
             {"text": "<a><b></a>", "key": "k", "uri": URI}),
            (client.InvalidArgError, "invalid argument: failed to validate prefix for a "
             "new XML namespace: 'a b' is not an XML name",
             {"text": "<a/>", "key": "a b", "uri": URI}),
            (client.InvalidArgError, "invalid argument: invalid metadata namespace URI "
             "'not a uri'", {"text": "<a/>", "key": "k", "uri": "not a uri"}),
            (client.XMLError, "XML error: metadata element <a> is in namespace "
             f"'{OTHER}', not in '{URI}'",
             {"text": f"<a xmlns='{OTHER}'/>", "key": "k", "uri": URI}),
        ]
        for error, message, call in refusals:
            with pytest.raises(error) as caught:
                dom.set_metadata(ELEMENT, str(call["text"]), key=str(call["key"]),
                                 uri=str(call["uri"]))
            assert str(caught.value).startswith(message), (str(caught.value), message)
        for kind in (TITLE, DESCRIPTION):  # libvirt: no uri or key with these
            with pytest.raises(client.InvalidArgError,
                               match="^invalid argument: uri in virDomainSetMetadata "
                                     "must be NULL$"):
                dom.set_metadata(kind, "x", uri=URI)
            with pytest.raises(client.InvalidArgError,
                               match="key in virDomainSetMetadata must be NULL"):
                dom.set_metadata(kind, "x", key="k")
        with pytest.raises(client.InvalidArgError,
                           match="uri in virDomainGetMetadata must not be NULL"):
            dom.metadata(ELEMENT)
        with pytest.raises(client.InvalidArgError,
                           match="uri in virDomainGetMetadata must be NULL"):
            dom.metadata(TITLE, uri=URI)
        with pytest.raises(client.InvalidArgError, match="unknown metadata type '7'"):
            dom.set_metadata(7, "<a/>", key="k", uri=URI)
        assert stored(qemud, "el-bad") == before
        assert dom.metadata(ELEMENT, uri=URI) == "<keep/>"
    finally:
        undefine(qemud, "el-bad")


def test_live_and_config_of_a_running_domain(qemud: DaemonProcess,
                                             conn: client.Connection) -> None:
    dom = conn.define_xml(bare_xml("el-run"))
    dom.create(client.START_PAUSED)
    try:
        dom.set_metadata(ELEMENT, "<state>busy</state>", key="inv", uri=URI)  # live
        assert dom.metadata(ELEMENT, uri=URI) == "<state>busy</state>"
        assert dom.metadata(ELEMENT, AFFECT_LIVE, uri=URI) == "<state>busy</state>"
        assert URI in dom.xml() and URI not in dom.xml(client.XML_INACTIVE)
        with pytest.raises(client.NoMetadataError):
            dom.metadata(ELEMENT, AFFECT_CONFIG, uri=URI)

        dom.set_metadata(ELEMENT, "<state>idle</state>", AFFECT_CONFIG, "inv", URI)
        assert dom.metadata(ELEMENT, AFFECT_CONFIG, uri=URI) == "<state>idle</state>"
        assert dom.metadata(ELEMENT, uri=URI) == "<state>busy</state>"  # live unchanged
        assert f'<inv:state xmlns:inv="{URI}">idle</inv:state>' in stored(qemud, "el-run")

        dom.set_metadata(ELEMENT, "", AFFECT_LIVE | AFFECT_CONFIG, uri=URI)
        for flags in (AFFECT_LIVE, AFFECT_CONFIG):
            with pytest.raises(client.NoMetadataError):
                dom.metadata(ELEMENT, flags, uri=URI)

        # the appliance layer's namespace: read freely, never changed live
        with pytest.raises(client.OperationInvalid) as refused:
            dom.set_metadata(ELEMENT, "<appliance><power guest-shutdown='none'/>"
                             "</appliance>", key="qemud", uri=APPLIANCE)
        assert "appliance settings" in str(refused.value)
        assert "persistent definition (--config)" in str(refused.value)
        with pytest.raises(client.OperationInvalid, match="appliance settings"):
            dom.set_metadata(ELEMENT, "", AFFECT_LIVE | AFFECT_CONFIG, uri=APPLIANCE)
        with pytest.raises(client.NoMetadataError):
            dom.metadata(ELEMENT, AFFECT_CONFIG, uri=APPLIANCE)  # nor the config then
    finally:
        undefine(qemud, "el-run")


def test_appliance_namespace_in_the_persistent_definition(
        qemud: DaemonProcess, conn: client.Connection) -> None:
    xml = bare_xml("el-app").replace(
        "<vcpu>", f"<metadata><qemud:appliance xmlns:qemud='{APPLIANCE}'>"
        "<qemud:power guest-shutdown='none'/></qemud:appliance></metadata>\n  <vcpu>")
    dom = conn.define_xml(xml)
    try:
        assert dom.metadata(ELEMENT, uri=APPLIANCE) == \
            '<appliance>\n  <power guest-shutdown="none"/>\n</appliance>'
        before = stored(qemud, "el-app")
        # a bad value is refused with the define's own message, nothing changed
        with pytest.raises(client.XMLError) as refused:
            dom.set_metadata(ELEMENT, "<appliance><power guest-shutdown='explode'/>"
                             "</appliance>", key="qemud", uri=APPLIANCE)
        assert "guest-shutdown" in str(refused.value) and "explode" in str(refused.value)
        assert stored(qemud, "el-app") == before
        with pytest.raises(client.XMLError) as at_define:
            conn.define_xml(xml.replace("'none'", "'explode'"))
        assert str(at_define.value) == str(refused.value)

        dom.set_metadata(ELEMENT, "<appliance><power guest-reboot='restart'/></appliance>",
                         key="qemud", uri=APPLIANCE)  # shut off: the persistent one
        assert "<qemud:power guest-reboot=\"restart\"/>" in stored(qemud, "el-app")
        dom.set_metadata(ELEMENT, "", AFFECT_CONFIG, uri=APPLIANCE)
        assert APPLIANCE not in stored(qemud, "el-app")
    finally:
        undefine(qemud, "el-app")


def test_metadata_change_event(qemud: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(bare_xml("el-ev"))
    other = conn.define_xml(bare_xml("el-ev-other"))
    try:
        with qemud.connect() as watcher:
            everything = watcher.register_event(EventId.METADATA_CHANGE)
            mine = watcher.register_event(EventId.METADATA_CHANGE,
                                          domain=watcher.lookup_by_name("el-ev-other"))
            dom.set_metadata(TITLE, "t")
            dom.set_metadata(DESCRIPTION, "d")
            with pytest.raises(client.XMLError):  # refused: no event
                dom.set_metadata(ELEMENT, "<a", key="k", uri=URI)
            dom.set_metadata(ELEMENT, "<a/>", key="k", uri=URI)
            dom.set_metadata(ELEMENT, "", uri=URI)
            other.set_metadata(TITLE, "")
            seen = []
            for _ in range(6):
                record = watcher.next_event(timeout=10)
                assert record is not None, seen
                seen.append((record.callback_id, record.domain.name, record.event_id,
                             record.event, record.uri))
            assert watcher.next_event(timeout=0.2) is None
        assert seen == [
            (everything, "el-ev", EventId.METADATA_CHANGE, TITLE, ""),
            (everything, "el-ev", EventId.METADATA_CHANGE, DESCRIPTION, ""),
            (everything, "el-ev", EventId.METADATA_CHANGE, ELEMENT, URI),
            (everything, "el-ev", EventId.METADATA_CHANGE, ELEMENT, URI),
            (everything, "el-ev-other", EventId.METADATA_CHANGE, TITLE, ""),
            (mine, "el-ev-other", EventId.METADATA_CHANGE, TITLE, ""),
        ]
    finally:
        undefine(qemud, "el-ev")
        undefine(qemud, "el-ev-other")


def test_readonly_connection_reads_elements(qemud: DaemonProcess,
                                            conn: client.Connection) -> None:
    dom = conn.define_xml(bare_xml("el-ro"))
    try:
        dom.set_metadata(ELEMENT, "<a/>", key="k", uri=URI)
        with qemud.connect(readonly=True) as ro:
            rdom = ro.lookup_by_name("el-ro")
            assert rdom.metadata(ELEMENT, uri=URI) == "<a/>"
            with pytest.raises(client.ReadOnlyError):
                rdom.set_metadata(ELEMENT, "", uri=URI)
        assert re.search(r"<k:a xmlns:k=\"[^\"]+\"/>", dom.xml())
    finally:
        undefine(qemud, "el-ro")
