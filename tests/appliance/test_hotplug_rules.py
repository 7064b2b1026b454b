"""udev hotplug rules without guests: parsing, matching, target names, start-up errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemud.appliance.hotplug import (
    DISK_TARGET,
    HostDevice,
    Rule,
    first_match,
    load_rules,
    next_target,
    parse_rules,
    target_name,
)
from qemud.errors import ConfigError
from tests.conftest import DaemonFactory

GOOD = """
[[rule]]
name = "usb-storage"
match = { ID_BUS = "usb", DEVTYPE = "disk" }
domain = "appliance1"
target = "virtio-disk"
readonly = false

[[rule]]
name = "optical"
match = { ID_CDROM = "1", DEVNAME = "/dev/sr*" }
domain = "appliance1"
target = "cdrom:hdc"

[[rule]]
name = "loops"
match = { DEVNAME = "/dev/loop[0-9]" }
domain = "lab"
readonly = true
"""


def test_parse_good_rules() -> None:
    usb, optical, loops = parse_rules(GOOD)
    assert usb == Rule("usb-storage", (("DEVTYPE", "disk"), ("ID_BUS", "usb")), "appliance1",
                       DISK_TARGET, False)
    assert usb.cdrom is None
    assert optical.target == "cdrom:hdc" and optical.cdrom == "hdc"
    assert loops.target == DISK_TARGET and loops.readonly is True


def test_matching_exact_glob_and_missing_property() -> None:
    rules = parse_rules(GOOD)
    usb_disk = {"SUBSYSTEM": "block", "DEVTYPE": "disk", "ID_BUS": "usb",
                "DEVNAME": "/dev/sdb"}
    assert first_match(rules, usb_disk) is rules[0]
    assert first_match(rules, {**usb_disk, "DEVTYPE": "partition"}) is None
    assert first_match(rules, {"DEVNAME": "/dev/sr0", "ID_CDROM": "1"}) is rules[1]
    assert first_match(rules, {"DEVNAME": "/dev/sr0"}) is None  # ID_CDROM missing
    assert first_match(rules, {"DEVNAME": "/dev/loop3"}) is rules[2]
    assert first_match(rules, {"DEVNAME": "/dev/loop12"}) is None  # [0-9] is one char
    assert first_match(rules, {"DEVNAME": "/dev/LOOP3"}) is None  # case-sensitive


def test_first_matching_rule_wins() -> None:
    rules = parse_rules("""
[[rule]]
name = "a"
match = { DEVNAME = "/dev/loop*" }
domain = "one"
[[rule]]
name = "b"
match = { DEVNAME = "/dev/loop1" }
domain = "two"
""")
    assert first_match(rules, {"DEVNAME": "/dev/loop1"}).name == "a"  # type: ignore[union-attr]


def test_empty_file_is_no_rules(tmp_path: Path) -> None:
    assert parse_rules("") == []
    assert load_rules(tmp_path / "absent.toml", required=False) == []
    with pytest.raises(ConfigError, match="absent.toml does not exist"):
        load_rules(tmp_path / "absent.toml", required=True)


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "r1"\ndomain = "d"\n',
     r"rule #1 \('r1'\): key 'match' is missing"),
    ('[[rule]]\nname = "r1"\nmatch = {}\ndomain = "d"\n',
     r"rule #1 \('r1'\): key 'match' must be a non-empty table"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = 1 }\ndomain = "d"\n',
     r"rule #1 \('r1'\): key 'match' entry 'DEVTYPE' must be a non-empty string"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = "disk" }\ndomain = "d"\ntarget = "usb"\n',
     r"rule #1 \('r1'\): key 'target' must be 'virtio-disk' or 'cdrom:"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = "disk" }\ndomain = "d"\n'
     'target = "cdrom:"\n', r"key 'target'"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = "disk" }\ndomain = "d"\nreadonly = "no"\n',
     r"rule #1 \('r1'\): key 'readonly' must be true or false"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = "disk" }\ndomain = "d"\nfoo = 1\n',
     r"rule #1 \('r1'\): key 'foo' is unknown"),
    ('[[rule]]\nmatch = { DEVTYPE = "disk" }\ndomain = "d"\n',
     r"rule #1: key 'name' is missing"),
    ('[[rule]]\nname = "r1"\nmatch = { DEVTYPE = "disk" }\ndomain = ""\n',
     r"rule #1 \('r1'\): key 'domain' must be a domain name"),
    ('[[rule]]\nname = "r1"\nmatch = { A = "x" }\ndomain = "d"\n'
     '[[rule]]\nname = "r1"\nmatch = { A = "y" }\ndomain = "d"\n',
     r"rule #2 \('r1'\): key 'name' is used by an earlier rule"),
    ('[rules]\nname = "r1"\n', r"unknown key 'rules'"),
    ('rule = 3\n', r"'rule' must be an array of tables"),
    ('[[rule]\n', r"hotplug rules"),  # TOML syntax error
])
def test_bad_rules_name_rule_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules(text)


def test_target_names() -> None:
    assert [target_name(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"]
    assert next_target([]) == "vda"
    assert next_target(["vda", "hdc", "vdc"]) == "vdb"
    assert next_target([target_name(i) for i in range(30)]) == "vdae"


def test_medium_from_size_and_cdrom_media(tmp_path: Path) -> None:
    sys_dir = tmp_path / "loop7"
    (sys_dir / "loop").mkdir(parents=True)
    (sys_dir / "size").write_text("0\n")
    (sys_dir / "loop" / "autoclear").write_text("0\n")
    rule = Rule("r", (("DEVNAME", "/dev/loop7"),), "d")
    dev = HostDevice("/dev/loop7", str(sys_dir), rule)
    dev.refresh_size()
    assert dev.is_loop and not dev.has_medium  # losetup's add/change before the file
    (sys_dir / "size").write_text("8192\n")
    dev.refresh_size()
    assert dev.size == 8192 and dev.has_medium and not dev.read_autoclear()
    (sys_dir / "loop" / "autoclear").write_text("1\n")
    assert dev.read_autoclear()
    dev.released = True
    assert not dev.has_medium
    dev.released = False
    dev.cdrom_media = "0"  # udev says: no disc, whatever the size says
    assert not dev.has_medium
    dev.cdrom_media = "1"
    assert dev.has_medium
    dev.present = False
    assert not dev.has_medium
    assert dev.host_use() is None


def test_host_use_refuses_mounted_devices() -> None:
    mounted = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()
               if line.startswith("/dev/")]
    disks = [(f[0], f[1]) for f in mounted
             if os.path.isdir(f"/sys/class/block/{os.path.basename(f[0])}")]
    if not disks:
        pytest.skip("no /dev block device mounted on this host")
    node, where = disks[0]
    sys_path = os.path.realpath(f"/sys/class/block/{os.path.basename(node)}")
    if os.path.exists(os.path.join(sys_path, "partition")):  # the whole disk holds it
        sys_path = os.path.dirname(sys_path)
    dev = HostDevice("/dev/" + os.path.basename(sys_path), sys_path,
                     Rule("r", (("DEVTYPE", "disk"),), "d"))
    assert dev.host_use() in (f"{node} is mounted on {where} on the host",
                              *(f"held by {h} on the host" for h in
                                os.listdir(os.path.join(sys_path, "holders"))))


def test_bad_rules_file_is_a_startup_error(daemon_factory: DaemonFactory,
                                           tmp_path: Path) -> None:
    rules = tmp_path / "hotplug.toml"
    rules.write_text('[[rule]]\nname = "usb"\nmatch = { ID_BUS = "usb" }\ndomain = "a"\n'
                     'target = "floppy"\n')
    daemon = daemon_factory(config={"appliance": {"hotplug_rules": str(rules)}}, start=False)
    daemon.write_config()
    import subprocess
    proc = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"hotplug rules {rules}: rule #1 ('usb'): key 'target'" in proc.stderr


def test_without_rules_the_list_is_empty(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()  # <config_dir>/hotplug.toml does not exist: no rules
    with daemon.connect() as conn:
        assert conn.hotplug_list() == []
    assert "hotplug: no rules" in daemon.log_text()
