"""RelaxNG validation with libvirt's installed domain.rng (and behaviour without it)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from qemud.conf import SchemaError, parse_device_xml, parse_domain_xml, schema
from qemud.conf import domain as domain_module

DATA = Path(__file__).parent / "data"

VALID = (DATA / "full-in.xml").read_text()

# Each passes our semantic checks; only libvirt's schema knows they are wrong.
SCHEMA_ONLY = [
    ("driver cache", VALID.replace("<driver name='qemu' type='qcow2'/>",
                                   "<driver name='qemu' type='qcow2' cache='bogus'/>"),
     "devices/disk[1]/driver", "attribute cache='bogus'"),
    ("unknown device", VALID.replace("<emulator>", "<bogus/><emulator>"),
     "devices/bogus[1]", "element <bogus>"),
    ("unknown top element", VALID.replace("<vcpu", "<turbo/><vcpu"),
     "turbo", "element <turbo>"),
    ("feature value", VALID.replace("<acpi/>", "<acpi/><vmport state='maybe'/>"),
     "features/vmport", "attribute state='maybe'"),
    ("vcpu placement", VALID.replace("placement='static'", "placement='wherever'"),
     "vcpu", "attribute placement='wherever'"),
    ("target bus", VALID.replace("bus='sata'", "bus='warp'"),
     "devices/disk[3]/target", "attribute bus='warp'"),
]


def test_installed_schema_file_is_used(installed_schema: Path, isolated_schema: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """When libvirt's domain.rng exists it is what validates, loaded once and lazily."""
    loaded: list[str] = []
    real = etree.RelaxNG

    def spy(doc: Any) -> Any:
        loaded.append(doc.docinfo.URL)
        return real(doc)

    monkeypatch.setattr(etree, "RelaxNG", spy)  # the module schema.py uses
    parse_domain_xml(VALID, validate_schema=False)
    assert loaded == []  # lazy: nothing loaded until validation is needed
    for _ in range(3):
        parse_domain_xml(VALID)
    parse_device_xml("<watchdog model='ib700'/>")
    assert len(loaded) == 1 and Path(loaded[0]) == installed_schema  # cached after the first
    assert schema.schema_path() == installed_schema


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in SCHEMA_ONLY],
                         ids=[c[0] for c in SCHEMA_ONLY])
def test_schema_rejects_and_names_the_culprit(
    text: str, path: str, message: str, installed_schema: Path
) -> None:
    with pytest.raises(SchemaError) as info:
        parse_domain_xml(text)
    assert info.value.path == path
    assert message in info.value.message
    assert info.value.details  # libxml2's own words are kept


@pytest.mark.parametrize("text", [c[1] for c in SCHEMA_ONLY], ids=[c[0] for c in SCHEMA_ONLY])
def test_without_schema_only_semantic_checks_run(text: str, no_schema: None) -> None:
    assert schema.schema_path() is None
    parse_domain_xml(text)


def test_schema_checks_standalone_devices(installed_schema: Path) -> None:
    with pytest.raises(SchemaError) as info:
        parse_device_xml("<disk type='file'><driver name='qemu' io='sideways'/>"
                         "<source file='/x'/><target dev='vda'/></disk>")
    assert str(info.value).startswith("disk/driver: attribute io='sideways'")
    with pytest.raises(SchemaError) as info:  # (the model does not read <mtu>)
        parse_device_xml("<interface type='user'><mtu size='big'/></interface>")
    assert info.value.path == "interface/mtu"
    parse_device_xml("<disk type='file'><driver name='qemu' io='sideways'/>"
                     "<source file='/x'/><target dev='vda'/></disk>", validate_schema=False)


def test_several_errors_still_raise_schema_error(installed_schema: Path) -> None:
    text = VALID.replace("<vcpu", "<turbo/><vcpu").replace("<acpi/>", "<acpi/><nitro/>")
    with pytest.raises(SchemaError) as info:
        parse_domain_xml(text)
    assert "rejected by libvirt's domain schema" in info.value.message


def test_every_golden_output_is_schema_valid(installed_schema: Path) -> None:
    rng = schema.domain_schema()
    assert rng is not None
    for out in sorted(DATA.glob("*-out.xml")):
        assert rng.validate(etree.parse(str(out))), out.name


def test_validate_is_not_repeated_on_access(
    installed_schema: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []

    def counting(root: etree._Element) -> None:
        calls.append(root)
        schema.validate_domain(root)

    monkeypatch.setattr(domain_module, "validate_domain", counting)
    dom = parse_domain_xml(VALID)
    assert len(calls) == 1
    for _ in range(3):
        _ = (dom.name, dom.memory_kib, [d.source for d in dom.disks], dom.os.arch)
        dom.title = "changed"
        dom.to_xml()
    assert len(calls) == 1
    dom.validate()
    assert len(calls) == 2


def test_environment_override_disables(isolated_schema: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(schema.SCHEMA_ENV, "")
    assert schema.domain_schema() is None
    parse_domain_xml(VALID.replace("<emulator>", "<bogus/><emulator>"))


def test_missing_schema_file_disables(isolated_schema: None, tmp_path: Path) -> None:
    schema.set_schema_path(tmp_path / "absent.rng")
    assert schema.schema_path() is None
    parse_domain_xml(VALID)


def test_broken_schema_is_logged_and_ignored(isolated_schema: None, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "domain.rng"
    broken.write_text("<grammar xmlns='http://relaxng.org/ns/structure/1.0'><start/></grammar>")
    schema.set_schema_path(broken)
    with caplog.at_level(logging.WARNING, logger="qemud.conf.schema"):
        assert schema.domain_schema() is None
        assert schema.domain_schema() is None  # tried once
    assert len([r for r in caplog.records if "cannot load" in r.message]) == 1
    parse_domain_xml(VALID)


def test_custom_schema_file_is_honoured(isolated_schema: None, tmp_path: Path) -> None:
    """A site may point at another domain.rng; this one only admits <domain type='kvm'>."""
    custom = tmp_path / "kvm-only.rng"
    custom.write_text(
        "<grammar xmlns='http://relaxng.org/ns/structure/1.0'><start>"
        "<element name='domain'><attribute name='type'><value>kvm</value></attribute>"
        "<zeroOrMore><ref name='any'/></zeroOrMore></element></start>"
        "<define name='any'><element><anyName/><zeroOrMore><choice><attribute><anyName/>"
        "</attribute><text/><ref name='any'/></choice></zeroOrMore></element></define>"
        "</grammar>"
    )
    schema.set_schema_path(custom)
    assert schema.schema_path() == custom
    parse_domain_xml(VALID)
    with pytest.raises(SchemaError) as info:
        parse_domain_xml(VALID.replace("type='kvm'", "type='qemu'", 1))
    assert info.value.path == "domain"


# -- release and reload (the daemon drops an idle schema) --------------------------------

def test_release_and_reload_give_the_same_verdicts(installed_schema: Path,
                                                   isolated_schema: None) -> None:
    loads: list[float | None] = []
    schema.set_load_hook(lambda: loads.append(schema.idle_seconds()))
    try:
        assert schema.idle_seconds() is None and not schema.release_schema()
        bad = SCHEMA_ONLY[0][1]
        with pytest.raises(SchemaError) as first:
            parse_domain_xml(bad)
        assert len(loads) == 1 and loads[0] is not None  # held, and the hook was told
        idle = schema.idle_seconds()
        assert idle is not None and idle < 5
        assert schema.release_schema()
        assert schema.idle_seconds() is None and not schema.release_schema()
        with pytest.raises(SchemaError) as again:  # loaded again, same words
            parse_domain_xml(bad)
        assert (again.value.path, again.value.message, again.value.details) == \
            (first.value.path, first.value.message, first.value.details)
        parse_device_xml("<watchdog model='ib700'/>")
        assert len(loads) == 2 and schema.schema_path() == installed_schema
    finally:
        schema.set_load_hook(None)


def test_each_use_counts_as_use(installed_schema: Path, isolated_schema: None) -> None:
    parse_domain_xml(VALID)
    time.sleep(0.05)
    before = schema.idle_seconds()
    assert before is not None and before >= 0.05
    parse_device_xml("<watchdog model='ib700'/>")
    after = schema.idle_seconds()
    assert after is not None and after < before


def test_no_schema_is_nothing_to_release(no_schema: None) -> None:
    loads: list[int] = []
    schema.set_load_hook(lambda: loads.append(1))
    try:
        parse_domain_xml(VALID)
        assert schema.idle_seconds() is None and not schema.release_schema()
        assert loads == []
    finally:
        schema.set_load_hook(None)


def test_element_value_is_shown_as_given(installed_schema: Path,
                                         isolated_schema: None) -> None:
    """A value with spaces around it is quoted with its spaces: trimmed, it looks valid."""
    text = VALID.replace("<memory unit='GiB'>2<", "<memory unit='GiB'> 2 <", 1)
    assert text != VALID
    with pytest.raises(SchemaError) as info:
        parse_domain_xml(text)
    assert info.value.path == "memory"
    assert "<memory> value ' 2 '" in info.value.message
    assert "(leading or trailing whitespace)" in info.value.message
