"""CPU pinning in the domain model: libvirt's cpuset syntax, ``<vcpu cpuset>``,
``<cputune><vcpupin>`` / ``<emulatorpin>``: parsed, checked (errors name the element),
written back canonically, edited in place.

Which CPUs the host has is the driver's check (tests/integration/test_pinning.py).
"""

from __future__ import annotations

import pytest

from qemud.conf import DefinitionError, parse_domain_xml
from qemud.conf.cputune import format_cpuset, parse_cpuset


def domain(vcpu: str = "<vcpu>2</vcpu>", cputune: str = "") -> str:
    return f"""<domain type='qemu'>
  <name>p</name>
  <memory unit='MiB'>128</memory>
  {vcpu}
  {cputune}
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("1,3", {1, 3}), ("0-3", {0, 1, 2, 3}), ("0-3,^2", {0, 1, 3}),
    (" 0 - 2 , ^1 ", {0, 2}), ("^1,0-1", {0, 1}),  # left to right, as virBitmapParse
    ("0,^0", set()), ("16383", {16383}),
])
def test_cpuset_syntax(text: str, cpus: set[int]) -> None:
    assert parse_cpuset(text) == cpus


@pytest.mark.parametrize("text", ["", " ", "a", "0-", "-1", "3-1", "^1-2", "0,,1", "1.5",
                                  "16384", "0-16384", "0;1"])
def test_bad_cpuset_syntax(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpuset(text)
    assert str(info.value) == f"Failed to parse bitmap '{text}'"


@pytest.mark.parametrize(("cpus", "text"), [
    (set(), ""), ({0}, "0"), ({0, 1}, "0-1"), ({0, 1, 3}, "0-1,3"), ({5, 0, 2, 3, 4}, "0,2-5"),
])
def test_canonical_cpuset(cpus: set[int], text: str) -> None:
    assert format_cpuset(cpus) == text


def test_pins_are_parsed_and_written_back_canonically() -> None:
    dom = parse_domain_xml(domain(
        "<vcpu placement='static' cpuset='0-3,^2' current='1'>4</vcpu>",
        "<cputune><shares>2048</shares><vcpupin vcpu='03' cpuset='2,1'/>"
        "<vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='1-2,^2'/>"
        "<period>100000</period></cputune>"))
    assert dom.cpuset == {0, 1, 3}
    assert dom.vcpupins == {0: {0}, 3: {1, 2}}
    assert dom.emulatorpin == {1}
    text = dom.to_xml()
    assert "<vcpu placement='static' cpuset='0-1,3' current='1'>4</vcpu>" in text
    assert ("<cputune>\n    <shares>2048</shares>\n    <vcpupin vcpu='3' cpuset='1-2'/>\n"
            "    <vcpupin vcpu='0' cpuset='0'/>\n    <emulatorpin cpuset='1'/>\n"
            "    <period>100000</period>\n  </cputune>") in text
    assert parse_domain_xml(text).to_xml() == text


def test_no_pinning() -> None:
    dom = parse_domain_xml(domain())
    assert (dom.cpuset, dom.vcpupins, dom.emulatorpin) == (None, {}, None)
    assert "cputune" not in dom.to_xml()


def test_editing_pins() -> None:
    dom = parse_domain_xml(domain("<vcpu current='1'>3</vcpu>"))
    dom.set_vcpupin(2, frozenset({1}))
    dom.set_vcpupin(0, frozenset({0, 1}))
    dom.emulatorpin = frozenset({0})
    dom.cpuset = frozenset({1})
    text = dom.to_xml()
    assert "<vcpu cpuset='1' current='1'>3</vcpu>\n  <cputune>\n" \
           "    <vcpupin vcpu='0' cpuset='0-1'/>\n    <vcpupin vcpu='2' cpuset='1'/>\n" \
           "    <emulatorpin cpuset='0'/>\n  </cputune>\n  <os>" in text
    dom.set_vcpupin(2, frozenset({0}))
    assert dom.vcpupins == {0: {0, 1}, 2: {0}}
    dom.validate(schema=False)
    # a lowered maximum forgets the pins of the vCPUs it removed (libvirt does too)
    dom.set_vcpus(1, 2)
    assert dom.vcpupins == {0: {0, 1}}
    dom.set_vcpupin(0, None)
    dom.emulatorpin = None
    dom.cpuset = None
    assert "cputune" not in dom.to_xml() and "cpuset" not in dom.to_xml()
    with pytest.raises(DefinitionError, match="Invalid value of 'cpuset'"):
        dom.set_vcpupin(0, frozenset())


@pytest.mark.parametrize(("vcpu", "cputune", "error"), [
    ("<vcpu cpuset='x'>2</vcpu>", "", "vcpu: Failed to parse bitmap 'x'"),
    ("<vcpu cpuset='1,^1'>2</vcpu>", "", "vcpu: Invalid value of 'cpuset': 1,^1"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin cpuset='0'/></cputune>",
     "cputune/vcpupin: Missing required attribute 'vcpu' in element 'vcpupin'"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin vcpu='-1' cpuset='0'/></cputune>",
     "cputune/vcpupin: Invalid value for attribute 'vcpu' in element 'vcpupin': '-1'"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin vcpu='2' cpuset='0'/></cputune>",
     "cputune/vcpupin: vcpupin for vCPU 2, but the domain has 2 vCPU(s)"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin vcpu='1' cpuset='0'/>"
                       "<vcpupin vcpu='1' cpuset='1'/></cputune>",
     "cputune/vcpupin[2]: duplicate vcpupin for vcpu '1'"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin vcpu='0'/></cputune>",
     "cputune/vcpupin: missing cpuset for vcpupin"),
    ("<vcpu>2</vcpu>", "<cputune><vcpupin vcpu='0' cpuset='0-'/></cputune>",
     "cputune/vcpupin: Failed to parse bitmap '0-'"),
    ("<vcpu>2</vcpu>", "<cputune><emulatorpin cpuset='0,^0'/></cputune>",
     "cputune/emulatorpin: Invalid value of 'cpuset': 0,^0"),
    ("<vcpu>2</vcpu>", "<cputune><emulatorpin cpuset='0'/><emulatorpin cpuset='1'/>"
                       "</cputune>",
     "cputune/emulatorpin[2]: only one emulatorpin is supported"),
])
def test_errors_name_the_element(vcpu: str, cputune: str, error: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_domain_xml(domain(vcpu, cputune), validate_schema=False)
    assert str(info.value).startswith(error)
