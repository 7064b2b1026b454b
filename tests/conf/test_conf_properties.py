"""The descriptor machinery: coverage by the golden files, generic get/set/prune.

Like virt-manager's property check: a descriptor no golden file exercises is untested XML
handling, so adding a property without golden data fails here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from qemud.conf import (
    CharDevice,
    Disk,
    DomainDef,
    Graphics,
    Interface,
    Memballoon,
    OSDef,
    Watchdog,
    parse_device_xml,
    parse_domain_xml,
)
from qemud.conf.xmlmodel import (
    XMLIntProperty,
    XMLListProperty,
    XMLModel,
    XMLPresenceProperty,
    XMLProperty,
    XMLPropertyBase,
    XMLYesNoProperty,
    all_properties,
    element_path,
    iter_model_properties,
    read_only_scope,
)

DATA = Path(__file__).parent / "data"


def _golden_models() -> list[XMLModel]:
    models: list[XMLModel] = []
    for path in sorted(DATA.glob("*-in.xml")):
        models.extend(parse_domain_xml(path.read_text()).iter_models())
    for path in sorted((DATA / "devices").glob("*-in.xml")):
        models.append(parse_device_xml(path.read_text()))
    return models


def test_every_property_is_exercised_by_golden_files() -> None:
    covered: set[XMLPropertyBase] = set()
    for model in _golden_models():
        for prop in iter_model_properties(type(model)):
            if prop.is_present(model):
                covered.add(prop)
    missing = [repr(p) for p in all_properties() if p not in covered]
    assert not missing, f"properties no golden input sets: {missing}"


def test_registry_knows_the_model_classes() -> None:
    owners = {p.owner for p in all_properties()}
    for cls in (DomainDef, OSDef, Disk, Interface, Graphics, CharDevice, Watchdog,
                Memballoon):
        assert cls in owners or any(issubclass(cls, o) for o in owners if o is not None)
    assert len(all_properties()) >= 40


def _fresh(owner: type[XMLModel]) -> XMLModel:
    if owner is OSDef:
        return OSDef(etree.Element("domain"))
    if owner.XML_TAG:
        return owner()
    return Disk()  # Device base: any device works


def _sample(prop: XMLPropertyBase) -> Any:
    if isinstance(prop, XMLListProperty):
        return ["hd", "cdrom"]
    if isinstance(prop, XMLPresenceProperty):
        return True
    if isinstance(prop, XMLYesNoProperty):
        return True
    if isinstance(prop, XMLIntProperty):
        return 7
    assert isinstance(prop, XMLProperty)
    return "sample"


@pytest.mark.parametrize("prop", all_properties(), ids=repr)
def test_every_property_writes_reads_and_removes(prop: XMLPropertyBase) -> None:
    """Set on an empty element, read back, clear: the element is as it was."""
    assert prop.owner is not None
    model = _fresh(prop.owner)
    before = etree.tostring(model.node)
    value = _sample(prop)
    setattr(model, prop.name, value)
    assert getattr(model, prop.name) == value
    assert prop.is_present(model)
    setattr(model, prop.name, [] if isinstance(prop, XMLListProperty) else None)
    assert not prop.is_present(model)
    assert etree.tostring(model.node) == before


def test_yes_no_false_is_written_as_no() -> None:
    g = Graphics()
    g.type = "vnc"
    g.autoport = False
    assert g.node.get("autoport") == "no" and g.autoport is False


def test_clearing_keeps_elements_that_still_carry_data() -> None:
    disk = parse_device_xml(
        "<disk type='file' device='cdrom'><source file='/a.iso' startupPolicy='optional'/>"
        "<target dev='sda'/></disk>"
    )
    assert isinstance(disk, Disk)
    disk.source = None
    assert etree.tostring(disk.node.find("source")) == b'<source startupPolicy="optional"/>'


def test_new_elements_go_where_libvirt_puts_them() -> None:
    dom = parse_domain_xml(
        "<domain type='kvm'><name>x</name><memory>1024</memory>"
        "<os><type>hvm</type><boot dev='hd'/></os>"
        "<devices><disk type='file' device='cdrom'><target dev='sda'/></disk></devices>"
        "</domain>"
    )
    dom.title = "T"
    dom.os.kernel = "/k"
    dom.on_crash = "preserve"
    dom.disks[0].source = "/new.iso"
    dom.disks[0].driver_type = "raw"
    dom.emulator = "/usr/bin/qemu"
    order = [c.tag for c in dom.node]
    assert order == ["name", "title", "memory", "os", "on_crash", "devices"]
    assert [c.tag for c in dom.node.find("os")] == ["type", "kernel", "boot"]
    assert [c.tag for c in dom.disks[0].node] == ["driver", "source", "target"]
    assert dom.node.find("devices")[0].tag == "emulator"
    dom.validate()


def test_unknown_tags_and_comments_do_not_move() -> None:
    dom = parse_domain_xml(
        "<domain type='kvm'><name>x</name><!--c--><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    dom.description = "d"
    assert dom.to_xml().splitlines()[1:5] == [
        "  <name>x</name>",
        "  <!--c-->",
        "  <description>d</description>",
        "  <memory unit='KiB'>1024</memory>",
    ]


def test_int_property_rejects_garbage_with_element_path() -> None:
    disk = Disk()
    disk.node.append(etree.fromstring("<boot order='first'/>"))
    with pytest.raises(ValueError, match=r"^disk/boot: expected an integer, got 'first'$"):
        _ = disk.boot_order


def test_type_errors_on_wrong_python_types() -> None:
    disk = Disk()
    with pytest.raises(TypeError):
        disk.target_dev = 5  # type: ignore[assignment]
    with pytest.raises(TypeError):
        disk.boot_order = "1"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        DomainDef().os.boot_devs = "hd"


def test_views_of_the_same_element_are_equal() -> None:
    dom = parse_domain_xml((DATA / "full-in.xml").read_text())
    assert dom.disks[0] == dom.disks[0]
    assert dom.disks[0] != dom.disks[1]
    assert len({dom.disks[0], dom.disks[0]}) == 1
    assert dom.disks[0] != Interface(dom.disks[0].node)
    assert "Disk(" in repr(dom.disks[0])


def test_element_paths() -> None:
    dom = parse_domain_xml((DATA / "full-in.xml").read_text())
    assert dom.disks[1].path == "devices/disk[2]"
    assert dom.serials[0].path == "devices/serial[1]"
    emulator = dom.node.find("devices/emulator")
    assert emulator is not None and element_path(emulator) == "devices/emulator"
    assert element_path(dom.node) == "domain"
    boots = dom.node.findall("os/boot")
    assert [element_path(b) for b in boots] == ["os/boot[1]", "os/boot[2]"]
    meta = dom.get_metadata("https://example.org/appliance/1")
    assert meta is not None and element_path(meta) == "metadata/app:appliance"


def test_bad_property_paths_are_refused() -> None:
    for bad in ("os/type", "./a[1]", "./@", "./a/@b/c"):
        with pytest.raises(ValueError):
            XMLProperty(bad)


def test_read_only_scope_is_per_thread() -> None:
    """A check running in one thread must not serve stale lookups to another thread."""
    dom = DomainDef.new("scoped")
    seen: list[str | None] = []

    def edit() -> None:
        dom.title = "set in another thread"
        seen.append(dom.title)

    with read_only_scope():
        assert dom.title is None
        worker = threading.Thread(target=edit)
        worker.start()
        worker.join()
    assert seen == ["set in another thread"]
    assert dom.title == "set in another thread"
