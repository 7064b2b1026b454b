"""``<metadata>``: kept verbatim; get/set by namespace URI (appliance settings live there)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from qemud.conf import DefinitionError, DomainDef, parse_domain_xml

DATA = Path(__file__).parent / "data"

APP = "https://qemud.example/appliance/1"
TAGS = "https://example.org/tags"


def _dom() -> DomainDef:
    return parse_domain_xml((DATA / "unknown-elements-in.xml").read_text())


def test_get_metadata_returns_the_live_element() -> None:
    dom = _dom()
    app = dom.get_metadata(APP)
    assert app is not None
    assert etree.QName(app).localname == "appliance" and app.get("version") == "3"
    app.set("version", "4")  # edits write through
    assert 'version="4"' in dom.to_xml()
    assert dom.get_metadata("urn:missing") is None
    assert DomainDef.new("x").get_metadata(APP) is None


def test_metadata_is_verbatim() -> None:
    out = _dom().to_xml()
    assert "<app:notes><![CDATA[free text <kept>]]></app:notes>" in out
    assert '<app:setting name="role" value="dns"/>' in out
    assert '<other:tags xmlns:other="https://example.org/tags">' in out


def test_set_metadata_replaces_only_its_namespace() -> None:
    dom = _dom()
    dom.set_metadata(APP, f"<a:appliance xmlns:a='{APP}'><a:role>vpn</a:role></a:appliance>")
    app = dom.get_metadata(APP)
    assert app is not None and app.findtext(f"{{{APP}}}role") == "vpn"
    tags = dom.get_metadata(TAGS)
    assert tags is not None and tags.findtext(f"{{{TAGS}}}tag") == "blue"
    meta = dom.node.find("metadata")
    assert meta is not None
    assert [etree.QName(c).namespace for c in meta] == [APP, TAGS]  # position kept
    again = parse_domain_xml(dom.to_xml())
    assert again.get_metadata(APP) is not None


def test_set_metadata_creates_metadata_in_place_and_copies() -> None:
    dom = DomainDef.new("m")
    element = etree.Element(f"{{{APP}}}appliance", nsmap={"app": APP})
    etree.SubElement(element, f"{{{APP}}}role").text = "dns"
    dom.set_metadata(APP, element)
    element.set("changed", "later")  # the domain stored a copy
    stored = dom.get_metadata(APP)
    assert stored is not None and stored.get("changed") is None
    assert [c.tag for c in dom.node][:3] == ["name", "metadata", "memory"]
    dom.validate()


def test_remove_metadata() -> None:
    dom = _dom()
    dom.set_metadata(TAGS, None)
    assert dom.get_metadata(TAGS) is None and dom.get_metadata(APP) is not None
    dom.set_metadata(APP, None)
    assert dom.node.find("metadata") is None
    dom.set_metadata(APP, None)  # removing what is not there is fine


def test_set_metadata_checks_the_namespace() -> None:
    dom = DomainDef.new("m")
    with pytest.raises(DefinitionError, match=r"^metadata: element <x> is in namespace ''"):
        dom.set_metadata(APP, "<x/>")
    with pytest.raises(DefinitionError, match="metadata: element <t:x>"):
        dom.set_metadata(APP, f"<t:x xmlns:t='{TAGS}'/>")
    with pytest.raises(DefinitionError, match="must not be empty"):
        dom.set_metadata("", "<x/>")
