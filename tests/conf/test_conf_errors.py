"""Every semantic check, and that each error names the element at fault.

Runs with the installed schema when there is one: semantic checks come first, so these
messages are what users see either way.
"""

from __future__ import annotations

import pickle
import re

import pytest

from qemud.conf import (
    ConfError,
    DefinitionError,
    SchemaError,
    XMLParseError,
    parse_device_xml,
    parse_domain_xml,
)

BASE = """<domain type='{type}'>
  <name>{name}</name>
  {uuid}
  <memory unit='KiB'>{memory}</memory>
  {extra}
  <vcpu{vcpu_attrs}>{vcpu}</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    {os}
  </os>
  {lifecycle}
  <devices>
    {devices}
  </devices>
</domain>"""

DEFAULTS = {
    "type": "kvm", "name": "guest", "uuid": "", "memory": "1048576", "extra": "", "vcpu": "1",
    "vcpu_attrs": "",
    "os": "", "lifecycle": "", "devices": "",
}

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

DISK = ("<disk type='file' device='disk'><source file='/i/{0}.img'/>"
        "<target dev='{0}' bus='virtio'/></disk>")


def domain(**kw: str) -> str:
    return BASE.format(**{**DEFAULTS, **kw})


def test_base_document_is_valid() -> None:
    assert parse_domain_xml(domain(devices=DISK.format("vda"))).name == "guest"


CASES: list[tuple[str, dict[str, str], str]] = [
    ("domain type", {"type": "xen"},
     "domain: unsupported domain type 'xen' (only 'qemu' and 'kvm' are supported)"),
    ("empty name", {"name": ""}, "name: must not be empty"),
    ("blank name", {"name": "  "}, "name: must not be empty"),
    ("slash in name", {"name": "a/b"}, "name: must not contain '/', got 'a/b'"),
    ("bad uuid", {"uuid": "<uuid>xyz</uuid>"}, "uuid: malformed uuid 'xyz'"),
    ("short uuid", {"uuid": "<uuid>0123456789abcdef0123456789abcde</uuid>"},
     "uuid: malformed uuid"),
    ("negative memory", {"memory": "-5"}, "memory: must be a positive integer, got '-5'"),
    ("zero memory", {"memory": "0"}, "memory: must be a positive integer, got '0'"),
    ("garbage memory", {"memory": "lots"}, "memory: must be a positive integer, got 'lots'"),
    ("fractional memory", {"memory": "1.5"}, "memory: must be a positive integer, got '1.5'"),
    ("bad currentMemory", {"extra": "<currentMemory>-1</currentMemory>"},
     "currentMemory: must be a positive integer, got '-1'"),
    ("zero vcpu", {"vcpu": "0"}, "vcpu: must be at least 1, got '0'"),
    ("negative vcpu", {"vcpu": "-2"}, "vcpu: must be at least 1, got '-2'"),
    ("garbage vcpu", {"vcpu": "two"}, "vcpu: expected an integer, got 'two'"),
    ("current vcpus > maximum", {"vcpu": "1", "vcpu_attrs": " current='2'"},
     "vcpu: maxvcpus must not be less than current vcpus (1 < 2)"),
    ("zero current vcpus", {"vcpu": "2", "vcpu_attrs": " current='0'"},
     "vcpu: attribute current must be at least 1, got '0'"),
    ("qemu:arg without value", {"extra": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'>"
                                         "<qemu:arg/></qemu:commandline>"},
     "qemu:commandline/qemu:arg: missing value attribute"),
    ("qemu:env without name", {"extra": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'>"
                                        "<qemu:env value='x'/></qemu:commandline>"},
     "qemu:commandline/qemu:env: missing name attribute"),
    ("qemu:env bad name", {"extra": f"<qemu:commandline xmlns:qemu='{QEMU_NS}'>"
                                    "<qemu:env name='1X' value='x'/></qemu:commandline>"},
     "qemu:commandline/qemu:env: invalid environment name '1X'"),
    ("boot dev", {"os": "<boot dev='hd'/><boot dev='floppy'/>"},
     "os/boot[2]: unsupported boot device 'floppy'"),
    ("on_poweroff", {"lifecycle": "<on_poweroff>explode</on_poweroff>"},
     "on_poweroff: unsupported action 'explode'"),
    ("coredump only on crash", {"lifecycle": "<on_reboot>coredump-destroy</on_reboot>"},
     "on_reboot: unsupported action 'coredump-destroy'"),
    ("on_crash", {"lifecycle": "<on_crash>nope</on_crash>"},
     "on_crash: unsupported action 'nope'"),
    ("duplicate target", {"devices": DISK.format("vda") + DISK.format("vda")},
     "devices/disk[2]/target: duplicate target dev 'vda'"),
    ("disk device", {"devices": "<disk type='file' device='floppy'><source file='/f'/>"
                                "<target dev='fda'/></disk>"},
     "devices/disk[1]: unsupported disk device 'floppy'"),
    ("disk type", {"devices": "<disk type='network' device='disk'><target dev='vda'/></disk>"},
     "devices/disk[1]: unsupported disk type 'network'"),
    ("driver type", {"devices": "<disk type='file'><driver name='qemu' type='vmdk'/>"
                                "<source file='/f'/><target dev='vda'/></disk>"},
     "devices/disk[1]/driver: unsupported driver type 'vmdk'"),
    ("driver name", {"devices": "<disk type='file'><driver name='tap'/>"
                                "<source file='/f'/><target dev='vda'/></disk>"},
     "devices/disk[1]/driver: unsupported driver name 'tap'"),
    ("disk without source", {"devices": "<disk type='file' device='disk'>"
                                        "<target dev='vda'/></disk>"},
     "devices/disk[1]/source: a disk with device='disk' needs <source file='...'>"),
    ("block disk with file source", {"devices": "<disk type='block' device='disk'>"
                                                "<source file='/f'/><target dev='vda'/></disk>"},
     "devices/disk[1]/source: a disk with device='disk' needs <source dev='...'>"),
    ("cdrom without target", {"devices": "<disk type='file' device='cdrom'><readonly/></disk>"},
     "devices/disk[1]/target: cdrom needs <target dev='...'>"),
    ("disk without target", {"devices": "<disk type='file'><source file='/f'/></disk>"},
     "devices/disk[1]/target: disk needs <target dev='...'>"),
    ("target dev", {"devices": "<disk type='file'><source file='/f'/><target dev='c:'/></disk>"},
     "devices/disk[1]/target: invalid target dev 'c:'"),
    ("boot order zero", {"devices": "<disk type='file'><source file='/f'/><target dev='vda'/>"
                                    "<boot order='0'/></disk>"},
     "devices/disk[1]/boot: boot order must be a positive integer, got '0'"),
    ("bad mac", {"devices": "<interface type='user'><mac address='52:54:00:zz:00:01'/>"
                            "</interface>"},
     "devices/interface[1]/mac: invalid MAC address '52:54:00:zz:00:01'"),
    ("short mac", {"devices": "<interface type='user'><mac address='52:54:00:00:01'/>"
                              "</interface>"},
     "devices/interface[1]/mac: invalid MAC address '52:54:00:00:01'"),
    ("multicast mac", {"devices": "<interface type='user'><mac address='01:00:5e:00:00:01'/>"
                                  "</interface>"},
     "devices/interface[1]/mac: MAC address '01:00:5e:00:00:01' is multicast"),
    ("interface type", {"devices": "<interface type='network'><source network='default'/>"
                                   "</interface>"},
     "devices/interface[1]: unsupported interface type 'network'"),
    ("bridge without source", {"devices": "<interface type='bridge'/>"},
     "devices/interface[1]/source: type='bridge' needs <source bridge='...'>"),
    ("nic model", {"devices": "<interface type='user'><model type='e1000,x=1'/></interface>"},
     "devices/interface[1]/model: invalid model type 'e1000,x=1'"),
    ("graphics type", {"devices": "<graphics type='spice'/>"},
     "devices/graphics[1]: unsupported graphics type 'spice'"),
    ("vnc port", {"devices": "<graphics type='vnc' port='80'/>"},
     "devices/graphics[1]: vnc port must be -1 (automatic) or 5900-65535, got '80'"),
    ("autoport without port", {"devices": "<graphics type='vnc' autoport='no'/>"},
     "devices/graphics[1]: autoport='no' needs a port"),
    ("autoport value", {"devices": "<graphics type='vnc' autoport='maybe'/>"},
     "devices/graphics[1]: expected 'yes' or 'no', got 'maybe'"),
    ("serial type", {"devices": "<serial type='tcp'><source mode='bind' host='::' "
                                "service='4000'/></serial>"},
     "devices/serial[1]: unsupported serial type 'tcp'"),
    ("file serial without path", {"devices": "<serial type='file'/>"},
     "devices/serial[1]/source: type='file' needs <source path='...'>"),
    ("source mode", {"devices": "<channel type='unix'><source mode='listen' path='/s'/>"
                                "<target type='virtio' name='a'/></channel>"},
     "devices/channel[1]/source: unsupported source mode 'listen'"),
    ("negative port", {"devices": "<serial type='pty'><target port='-1'/></serial>"},
     "devices/serial[1]/target: target port must not be negative, got '-1'"),
    ("channel target", {"devices": "<channel type='unix'><target type='guestfwd'/></channel>"},
     "devices/channel[1]/target: unsupported channel target type 'guestfwd'"),
    ("duplicate serial port", {"devices": "<serial type='pty'><target port='0'/></serial>"
                                          "<serial type='null'><target port='0'/></serial>"},
     "devices/serial[2]/target: duplicate serial port '0'"),
    ("duplicate channel", {"devices": "<channel type='unix'><target type='virtio' name='a'/>"
                                      "</channel><channel type='pty'>"
                                      "<target type='virtio' name='a'/></channel>"},
     "devices/channel[2]/target: duplicate channel name 'a'"),
    ("watchdog model", {"devices": "<watchdog model='bogus'/>"},
     "devices/watchdog[1]: unsupported watchdog model 'bogus'"),
    ("watchdog action", {"devices": "<watchdog model='ib700' action='explode'/>"},
     "devices/watchdog[1]: unsupported watchdog action 'explode'"),
    ("two watchdogs", {"devices": "<watchdog model='ib700'/><watchdog model='i6300esb'/>"},
     "devices/watchdog[2]: only one watchdog is supported"),
    ("memballoon model", {"devices": "<memballoon model='bogus'/>"},
     "devices/memballoon[1]: unsupported memballoon model 'bogus'"),
    ("memballoon period", {"devices": "<memballoon model='virtio'><stats period='0'/>"
                                      "</memballoon>"},
     "devices/memballoon[1]/stats: stats period must be a positive integer, got '0'"),
    ("memballoon switch", {"devices": "<memballoon model='virtio' autodeflate='yes'/>"},
     "devices/memballoon[1]: unsupported autodeflate value 'yes'"),
    ("two memballoons", {"devices": "<memballoon model='virtio'/><memballoon model='none'/>"},
     "devices/memballoon[2]: only one memballoon is supported"),
    ("duplicate alias", {"devices": DISK.format("vda").replace("</disk>",
                                                               "<alias name='ua-x'/></disk>")
                         + "<interface type='user'><alias name='ua-x'/></interface>"},
     "devices/interface[1]/alias: duplicate alias 'ua-x'"),
    ("bad alias", {"devices": "<interface type='user'><alias name='a b'/></interface>"},
     "devices/interface[1]/alias: invalid alias 'a b'"),
    ("duplicate boot order", {"devices": DISK.format("vda").replace("</disk>",
                                                                    "<boot order='1'/></disk>")
                              + "<interface type='user'><boot order='1'/></interface>"},
     "devices/interface[1]/boot: boot order 1 is already used by devices/disk[1]"),
    ("os boot with device boot", {"os": "<boot dev='hd'/>",
                                  "devices": DISK.format("vda").replace(
                                      "</disk>", "<boot order='1'/></disk>")},
     "os/boot: <os><boot dev> cannot be combined with per-device <boot order>"),
    ("empty emulator", {"devices": "<emulator> </emulator>"},
     "devices/emulator: must not be empty"),
]


@pytest.mark.parametrize(("changes", "expected"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_semantic_error_names_the_element(changes: dict[str, str], expected: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_domain_xml(domain(**changes))
    assert str(info.value).startswith(expected), str(info.value)
    path = expected.split(": ", 1)[0]
    assert info.value.path == path
    assert str(info.value) == f"{info.value.path}: {info.value.message}"


def test_semantic_errors_also_reported_without_schema(no_schema: None) -> None:
    for _name, changes, expected in CASES:
        with pytest.raises(DefinitionError) as info:
            parse_domain_xml(domain(**changes))
        assert str(info.value).startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("<domain type='kvm'><memory>1</memory><os><type>hvm</type></os></domain>",
     "name: element is required"),
    ("<domain type='kvm'><name>a</name><os><type>hvm</type></os></domain>",
     "memory: element is required"),
    ("<domain><name>a</name><memory>1</memory><os><type>hvm</type></os></domain>",
     "domain: missing type attribute"),
    ("<domain type='kvm'><name>a</name><memory>1</memory></domain>",
     "os/type: element is required"),
    ("<domain type='kvm'><name>a</name><memory>1</memory><os><type>xen</type></os></domain>",
     "os/type: unsupported os type 'xen' (expected 'hvm')"),
    ("<domain type='kvm'><name>a</name><title>x\ny</title><memory>1</memory>"
     "<os><type>hvm</type></os></domain>", "title: must not contain a newline"),
    ("<domain type='kvm'><name>a</name><memory unit='XB'>1</memory>"
     "<os><type>hvm</type></os></domain>", "memory: unknown unit 'XB'"),
    ("<domain type='kvm'><name>a</name><memory unit='EiB'>16</memory>"
     "<os><type>hvm</type></os></domain>", "memory: value too large: 16EiB"),
], ids=["no name", "no memory", "no type", "no os type", "os type", "title newline",
        "unit", "too large"])
def test_structural_errors(text: str, expected: str, no_schema: None) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_domain_xml(text)
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "empty document"),
    ("   ", "empty document"),
    ("<domain type='kvm'><name>a</name>", "not well-formed XML: (domain_definition):1: "),
    ("<domain type='kvm'>&bogus;</domain>", "not well-formed XML"),
    ("<!DOCTYPE domain [<!ENTITY x 'y'>]><domain type='kvm'/>",
     "domain: DOCTYPE declarations are not allowed"),
    ("<disk type='file'/>", "disk: expected a <domain> document, got <disk>"),
])
def test_parse_errors(text: str, expected: str) -> None:
    with pytest.raises(XMLParseError) as info:
        parse_domain_xml(text)
    assert str(info.value).startswith(expected), str(info.value)


def test_syntax_error_has_position() -> None:
    with pytest.raises(XMLParseError) as info:
        parse_domain_xml("<domain type='kvm'>\n  <name>a</nam>\n</domain>")
    assert info.value.line == 2 and info.value.column is not None


def test_syntax_error_says_where_once_as_libvirt_does() -> None:
    """``(domain_definition):LINE: <libxml2's message>``: the place once (lxml's own
    ", line L, column C" suffix is dropped), on one line."""
    with pytest.raises(XMLParseError) as info:
        parse_domain_xml("<domain type='kvm'>\n  <name>a</nam>\n</domain>")
    assert str(info.value) == (
        "not well-formed XML: (domain_definition):2: Opening and ending tag mismatch: "
        "name line 2 and nam")
    assert (info.value.line, info.value.column) == (2, 16)


def test_device_syntax_error_names_the_device_definition() -> None:
    from qemud.conf import parse_device_xml
    with pytest.raises(XMLParseError, match=r"^not well-formed XML: \(device_definition\):1: "):
        parse_device_xml("<disk type='file'>")


def test_xml_declaration_and_bytes_are_accepted() -> None:
    text = domain()
    decl = "<?xml version='1.0' encoding='UTF-8'?>\n"
    assert parse_domain_xml(decl + text).name == "guest"
    assert parse_domain_xml((decl + text).encode()).name == "guest"
    assert parse_domain_xml(text.replace("guest", "gäst").encode()).name == "gäst"


@pytest.mark.parametrize(("text", "expected"), [
    ("<video/>", "video: unsupported device <video>"),
    ("<controller/>", "controller: missing type attribute"),
    ("<controller type='pci' index='x'/>", "controller: Invalid index 'x' (expected a "
     "number 0 to 255)"),
    ("<controller type='pci' index='1' model='pcie-root-port'><target port='0x100'/>"
     "</controller>", "controller/target: Invalid port '0x100'"),
    ("<disk type='file' device='cdrom'/>", "disk/target: cdrom needs <target dev='...'>"),
    ("<interface type='user'><mac address='ff:ff:ff:ff:ff:ff'/></interface>",
     "interface/mac: MAC address 'ff:ff:ff:ff:ff:ff' is multicast"),
    ("<watchdog/>", "watchdog: missing model attribute"),
    ("<memballoon/>", "memballoon: missing model attribute"),
    ("<interface/>", "interface: missing type attribute"),
    ("<graphics/>", "graphics: missing type attribute"),
])
def test_device_errors_name_the_element(text: str, expected: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_device_xml(text)
    assert str(info.value).startswith(expected), str(info.value)


def test_hierarchy() -> None:
    for cls in (XMLParseError, SchemaError, DefinitionError):
        assert issubclass(cls, ConfError)
    assert issubclass(ConfError, ValueError)
    # The contract's spelling: one preformatted string.
    err = DefinitionError("devices/disk[2]/target: duplicate target dev 'vda'")
    assert str(err) == "devices/disk[2]/target: duplicate target dev 'vda'"
    assert err.path == ""


def test_errors_survive_pickling() -> None:
    errors: list[ConfError] = [
        DefinitionError("bad", path="memory"),
        XMLParseError("bad", path="", line=3, column=4),
        SchemaError("bad", path="devices/disk[1]", details=("x",)),
    ]
    for err in errors:
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err)
        assert (copy.path, copy.message, str(copy)) == (err.path, err.message, str(err))
        assert copy.__dict__ == err.__dict__


def test_messages_quote_the_offending_value() -> None:
    with pytest.raises(DefinitionError, match=re.escape("got '-5'")):
        parse_domain_xml(domain(memory="-5"))
