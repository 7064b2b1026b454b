"""qemush dumpxml --xpath/--wrap and list --title, on a real daemon (no guest runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.shell.commands.domxml import xpath_output
from client.shell.registry import CommandError
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.helpers.daemon import DaemonProcess

GUEST = """<domain type='qemu'><name>xp</name><title>Build box</title>
<memory unit='KiB'>131072</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/lib/a.img'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/var/lib/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>
</devices></domain>
"""
UNTITLED = """<domain type='qemu'><name>plain</name><memory unit='KiB'>131072</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>
"""


@pytest.fixture
def uri(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> str:
    for name, xml in (("xp", GUEST), ("plain", UNTITLED)):
        path = tmp_path / f"{name}.xml"
        path.write_text(xml)
        ok(qemush("-c", daemon.uri, "define", str(path)))
    return daemon.uri


def test_xpath_selects_elements_attributes_and_values(uri: str, qemush: Qemush) -> None:
    disks = ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "//disk[target/@dev='vdb']"))
    assert disks == ('<disk type="file" device="disk">\n'
                     '  <driver name="qemu" type="qcow2"/>\n'
                     '  <source file="/var/lib/b.qcow2"/>\n'
                     '  <target dev="vdb" bus="virtio"/>\n'
                     # (its PCI slot, assigned at define as libvirt does)
                     '  <address type="pci" domain="0x0000" bus="0x00" slot="0x04" '
                     'function="0x0"/>\n'
                     '</disk>\n')
    # relative to <domain>, as virsh evaluates it
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "./devices/disk/source/@file")) \
        == ' file="/var/lib/a.img"\n file="/var/lib/b.qcow2"\n'
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "count(//disk)")) == "2\n"
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "string(title)")) == "Build box\n"
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath=name/text()")) == "xp\n"
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "//nothing")) == ""


def test_wrap(uri: str, qemush: Qemush) -> None:
    text = ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "//target", "--wrap"))
    assert text == ('<nodes>\n  <target dev="vda" bus="virtio"/>\n'
                    '  <target dev="vdb" bus="virtio"/>\n</nodes>\n')
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "//nothing", "--wrap")) \
        == "<nodes/>\n"


def test_xpath_applies_to_the_xml_the_other_options_select(uri: str, qemush: Qemush) -> None:
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--xpath", "//graphics/@passwd")) == ""
    assert ok(qemush("-c", uri, "dumpxml", "xp", "--security-info", "--inactive",
                     "--xpath", "//graphics/@passwd")) == ' passwd="s3cret"\n'
    proc = qemush("-r", "-c", uri, "dumpxml", "xp", "--security-info", "--xpath", "//name")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == \
        "error: operation forbidden: virDomainGetXMLDesc with secure flag"
    assert READONLY_REFUSAL not in proc.stderr


@pytest.mark.parametrize(("expression", "why"), [
    ("//[", "Invalid expression"), ("count(", "Invalid number of arguments"),
    ("nope:thing", "Undefined namespace prefix"), ("frobnicate(1)", "Unregistered function"),
])
def test_invalid_expressions(uri: str, qemush: Qemush, expression: str, why: str) -> None:
    proc = qemush("-c", uri, "dumpxml", "xp", "--xpath", expression)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"error: invalid XPath expression '{expression}': {why}\n"


def test_namespaces_declared_by_the_domain_may_be_used() -> None:
    xml = ("<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>n</name>"
           "<qemu:commandline><qemu:arg value='-S'/></qemu:commandline></domain>")
    assert xpath_output(xml, "//qemu:arg/@value", False) == ' value="-S"\n'
    # an attribute prints as libxml2 dumps it: double quotes, '"' and '<' escaped
    assert xpath_output("<domain><name a='x\"&lt;'/></domain>", "//@a", False) == \
        ' a="x&quot;&lt;"\n'
    with pytest.raises(CommandError, match="cannot parse the domain XML"):
        xpath_output("<domain>", "/", False)


def test_list_title(uri: str, qemush: Qemush) -> None:
    text = ok(qemush("-c", uri, "list", "--all", "--title"))
    assert text == (" Id   Name    State      Title\n"
                    "------------------------------------\n"
                    " -    plain   shut off   \n"
                    " -    xp      shut off   Build box\n"
                    "\n")
    assert "Title" not in ok(qemush("-c", uri, "list", "--all"))
    entries = json.loads(ok(qemush("-c", uri, "list", "--all", "--title", "--json")))
    assert [(e["name"], e["title"]) for e in entries] == [("plain", ""), ("xp", "Build box")]
    assert "title" not in json.loads(ok(qemush("-c", uri, "list", "--all", "--json")))[0]
    # read-only connections may list titles (it is the XML without secrets)
    assert "Build box" in ok(qemush("-r", "-c", uri, "list", "--all", "--title"))
