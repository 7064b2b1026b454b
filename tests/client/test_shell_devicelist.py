"""client/shell/devicelist.py: the rows of domblklist and domiflist, as virsh reads them
from the domain XML."""

from __future__ import annotations

from client.format import table
from client.shell.devicelist import (
    BLOCK_DETAIL_HEADERS,
    BLOCK_HEADERS,
    INTERFACE_HEADERS,
    block_rows,
    interface_rows,
)

XML = """<domain type='qemu'><name>d</name><devices>
  <disk type='file' device='disk'><source file='/var/img/d.qcow2'/><target dev='vda'/></disk>
  <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb'/></disk>
  <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
  <disk type='volume' device='disk'><source pool='default' volume='v1'/>
    <target dev='vdc'/></disk>
  <disk type='network' device='disk'><source protocol='nbd' name='exp'/>
    <target dev='vdd'/></disk>
  <interface type='network'><mac address='52:54:00:aa:bb:cc'/>
    <source network='default'/><target dev='vnet0'/><model type='virtio'/></interface>
  <interface type='user'><mac address='52:54:00:11:22:33'/></interface>
  <interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>
</devices></domain>"""


def test_block_rows() -> None:
    assert block_rows(XML) == [["vda", "/var/img/d.qcow2"], ["vdb", "/dev/sdb"],
                               ["sda", "-"], ["vdc", "default/v1"], ["vdd", "exp"]]


def test_block_rows_with_details() -> None:
    assert block_rows(XML, details=True)[:3] == [
        ["file", "disk", "vda", "/var/img/d.qcow2"], ["block", "disk", "vdb", "/dev/sdb"],
        ["file", "cdrom", "sda", "-"]]


def test_block_table_is_virshs() -> None:
    assert table(BLOCK_HEADERS, block_rows(XML)[:3]) == (
        " Target   Source\n"
        "----------------------------\n"
        " vda      /var/img/d.qcow2\n"
        " vdb      /dev/sdb\n"
        " sda      -\n")
    assert table(BLOCK_DETAIL_HEADERS, []).startswith(" Type   Device   Target   Source\n")


def test_interface_rows() -> None:
    assert interface_rows(XML) == [
        ["vnet0", "network", "default", "virtio", "52:54:00:aa:bb:cc"],
        ["-", "user", "-", "-", "52:54:00:11:22:33"],
        ["-", "bridge", "br0", "e1000", "-"]]
    assert table(INTERFACE_HEADERS, []).startswith(
        " Interface   Type   Source   Model   MAC\n")


def test_no_devices() -> None:
    xml = "<domain><name>d</name></domain>"
    assert block_rows(xml) == [] and interface_rows(xml) == []
