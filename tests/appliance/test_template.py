"""Template rendering: golden files per (template, fake host), directives, errors.

Regenerate the golden files after an intended change with
``QEMUD_UPDATE_GOLDEN=1 pytest tests/appliance/test_template.py`` and review the diff.
"""

from __future__ import annotations

import os

import pytest

from qemud.appliance.inspect import NIC, HostInventory, inspect_host
from qemud.appliance.template import TemplateError, check_rendered, render
from qemud.conf import parse_domain_xml

from .conftest import DATA, HOSTS, TEMPLATES

GOLDEN = DATA / "golden"
CASES = [("router", "server-ht"), ("router", "nodmi-cpuinfo"), ("router", "minimal"),
         ("kiosk", "server-ht")]


@pytest.mark.parametrize(("template", "host"), CASES, ids=[f"{t}-{h}" for t, h in CASES])
def test_golden(template: str, host: str) -> None:
    xml = render((TEMPLATES / f"{template}.xml").read_text(), inspect_host(HOSTS / host), 512)
    golden = GOLDEN / f"{template}.{host}.xml"
    if os.environ.get("QEMUD_UPDATE_GOLDEN"):
        golden.write_text(xml)
    assert xml == golden.read_text()
    check_rendered(xml)  # libvirt's schema and qemud's checks accept it


@pytest.mark.parametrize("host", ["nodmi-cpuinfo", "minimal"])
def test_missing_host_names_are_errors(host: str) -> None:
    with pytest.raises(TemplateError, match=r"unknown name 'host\.(dmi\.product_name|nic0\.mac)"):
        render((TEMPLATES / "kiosk.xml").read_text(), inspect_host(HOSTS / host))


def host(nics: int = 2, dmi: dict[str, str] | None = None) -> HostInventory:
    return HostInventory(memory_kib=8 * 1024 * 1024, logical_cpus=8, cores=4, sockets=1,
                         cpu_source="test",
                         nics=[NIC(f"eth{i}", f"00:11:22:33:44:{i:02x}") for i in range(nics)],
                         dmi=dmi)


def domain(body: str, metadata: str = "", root_ns: bool = True) -> str:
    ns = " xmlns:qemud='http://qemud.org/xmlns/appliance/1'" if root_ns else ""
    return (f"<domain type='qemu'{ns}><name>t</name>"
            f"{f'<metadata>{metadata}</metadata>' if metadata else ''}"
            "<memory unit='MiB'>256</memory>"
            f"<os><type arch='x86_64'>hvm</type></os>{body}</domain>")


def formulas(*sets: tuple[str, str]) -> str:
    return "<qemud:formulas>" + "".join(
        f"<qemud:set name='{n}' value='{v}'/>" for n, v in sets) + "</qemud:formulas>"


def test_formulas_chain_and_units() -> None:
    xml = render(domain("<vcpu>{{b}}</vcpu><description>{{a:GiB}} {{c}} {{d}}</description>",
                        formulas(("a", "host.memory - 2GiB"), ("b", "host.cores // 3 + 1"),
                                 ("c", "(1 + 2) * 3 - -1"), ("d", "7 / 2"))), host())
    assert "<vcpu>2</vcpu>" in xml
    assert "<description>6 10 3.5</description>" in xml


def test_formulas_and_directives_removed_empty_metadata_too() -> None:
    xml = render(domain("<vcpu>{{n}}</vcpu>", formulas(("n", "1"))), host())
    assert "metadata" not in xml and "formulas" not in xml and "xmlns:qemud" not in xml
    parse_domain_xml(xml)


def test_placeholders_in_attributes_and_strings() -> None:
    xml = render(domain("<devices><interface type='bridge'><mac address='{{host.nic1.mac}}'/>"
                        "<source bridge='br-{{host.nic1.name}}'/></interface></devices>"),
                 host())
    assert "<mac address='00:11:22:33:44:01'/>" in xml
    assert "<source bridge='br-eth1'/>" in xml


def test_string_in_arithmetic_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"formula 'x'.*position 1: '\+' needs numbers"):
        render(domain("", formulas(("x", "host.nic0.mac + 1"))), host())


def test_unit_on_a_string_placeholder_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"cannot be shown in MiB"):
        render(domain("<description>{{host.nic0.mac:MiB}}</description>"), host())


def test_bad_placeholder_names_element_and_position() -> None:
    with pytest.raises(TemplateError, match=r"placeholder \{\{1 \+\}\} in vcpu, position 4"):
        render(domain("<vcpu>{{1 +}}</vcpu>"), host())


def test_formula_name_rules() -> None:
    with pytest.raises(TemplateError, match="formula name 'host.x' is not allowed"):
        render(domain("", formulas(("host.x", "1"))), host())
    with pytest.raises(TemplateError, match="formula name 'min' is not allowed"):
        render(domain("", formulas(("min", "1"))), host())


def test_unknown_directive_outside_metadata() -> None:
    with pytest.raises(TemplateError, match="unknown template directive <qemud:disks>"):
        render(domain("<devices><qemud:disks/></devices>"), host())


def test_nics_in_place_with_host_mac_and_model() -> None:
    xml = render(domain("<devices><serial type='pty'/>"
                        "<qemud:nics bridge-prefix='lan' first-mac='host' model='e1000'/>"
                        "</devices>"), host(nics=2))
    dom = parse_domain_xml(xml)
    ifaces = dom.interfaces
    assert [i.source_bridge for i in ifaces] == ["lan0", "lan1"]
    assert ifaces[0].mac == "00:11:22:33:44:00" and ifaces[1].mac is None
    assert "qemud:nics" not in xml
    assert xml.index("lan1") > xml.index("<serial")  # replaced where it stood


def test_nics_outside_devices_go_in_device_order() -> None:
    xml = render(domain("<devices><serial type='pty'/></devices>",
                        "<qemud:formulas><qemud:nics/></qemud:formulas>"), host(nics=1))
    assert xml.index("<interface") < xml.index("<serial")  # libvirt's device order
    assert "<source bridge='br0'/>" in xml and "<mac" not in xml


def test_nics_without_host_nics_and_bad_first_mac() -> None:
    assert "<interface" not in render(domain("<devices><qemud:nics/></devices>"), host(0))
    with pytest.raises(TemplateError, match="first-mac: 'all' is not one of host, generate"):
        render(domain("<devices><qemud:nics first-mac='all'/></devices>"), host())


DMI = {"sys_vendor": "V", "product_name": "P", "product_uuid": "4c4c4544-0042-3510-8051-"
       "b7c04f4e3232", "board_vendor": "BV", "board_name": "BN"}


def test_smbios_absent_dmi_is_nothing() -> None:
    xml = render(domain("<qemud:smbios inherit='yes'/>"), host(dmi=None))
    assert "sysinfo" not in xml and "smbios" not in xml
    xml = render(domain("<qemud:smbios inherit='no'/>"), host(dmi=DMI))
    assert "sysinfo" not in xml


def test_smbios_entries_and_uuid() -> None:
    xml = render(domain("<qemud:smbios/>"), host(dmi=DMI))
    dom = parse_domain_xml(xml)
    assert "<entry name='manufacturer'>V</entry>" in xml and "uuid" not in xml
    assert "<smbios mode='sysinfo'/>" in xml and "<bios>" not in xml  # no bios_* in DMI
    assert dom.uuid == ""
    xml = render(domain("<qemud:smbios uuid='inherit'/>"), host(dmi=DMI))
    assert parse_domain_xml(xml).uuid == DMI["product_uuid"]
    assert f"<entry name='uuid'>{DMI['product_uuid']}</entry>" in xml
    clash = domain("<qemud:smbios uuid='inherit'/>").replace(
        "<name>t</name>", "<name>t</name><uuid>00000000-0000-0000-0000-000000000001</uuid>")
    with pytest.raises(TemplateError, match="differs from the host's"):
        render(clash, host(dmi=DMI))


def test_existing_os_smbios_is_set_to_sysinfo() -> None:
    xml = render(domain("<qemud:smbios/>").replace(
        "<type arch='x86_64'>hvm</type>", "<type arch='x86_64'>hvm</type><smbios mode='host'/>"),
        host(dmi=DMI))
    assert xml.count("<smbios") == 1 and "mode='sysinfo'" in xml


def test_not_a_domain_and_bad_xml() -> None:
    with pytest.raises(TemplateError, match="expected a <domain>"):
        render("<network/>", host())
    with pytest.raises(TemplateError, match="not well-formed"):
        render("<domain>", host())


def test_check_rendered_refuses_invalid_domains() -> None:
    with pytest.raises(TemplateError, match="not a valid domain"):
        check_rendered(render(domain("<vcpu>{{7 / 2}}</vcpu>"), host()))
