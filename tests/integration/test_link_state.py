"""An interface's link state (``<link state='down'/>``, ``domif-setlink``,
``domif-getlink``) and ``update-device``, on a real daemon and the test guest.

QEMU does not report a NIC's link state back (no query shows it), so what QEMU was told
is read from the daemon's QMP log: ``set_link`` with the NIC's id, and QEMU's "ok" (a
wrong id is an error there). What a user sees is asked of the daemon: the live and the
persistent XML, and qemush's output.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, bare_xml, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

MAC, MAC2 = "52:54:00:11:22:33", "52:54:00:44:55:66"
DEVICE_ID, DEVICE_ID2 = "net-525400112233", "net-525400445566"
DOWN_NIC = (f"<interface type='user'><mac address='{MAC}'/><model type='virtio'/>"
            "<link state='down'/></interface>")


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-link"))) as daemon:
        yield daemon


def shell(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    proc = qemush(daemon, *args)
    return proc.returncode, proc.stdout, proc.stderr


def set_links(daemon: DaemonProcess, name: str, offset: int) -> list[str]:
    """The set_link commands the daemon sent guest ``name`` since log ``offset``, each
    as "ID up|down", and only those QEMU answered with ok."""
    prefix = f"qemud.qemu.monitor.{name}: "
    sent, ok = [], 0
    for line in daemon.log_text()[offset:].splitlines():
        m = re.search(re.escape(prefix) + r"--> set_link \{'name': '([^']+)', 'up': (\w+)\}",
                      line)
        if m:
            sent.append(f"{m.group(1)} {'up' if m.group(2) == 'True' else 'down'}")
        elif prefix + "<-- set_link ok" in line:
            ok += 1
    assert ok == len(sent), (sent, ok)
    return sent


@pytest.fixture
def running(qemud: DaemonProcess, test_guest: TestGuest,
            tmp_path: Path) -> Iterator[client.Domain]:
    """Guest "lnk", booted, with a user NIC defined with its cable out."""
    sock = tmp_path / "s.sock"
    with qemud.connect() as conn:
        dom = conn.define_xml(guest_xml("lnk", test_guest, sock, extra=DOWN_NIC))
        offset = len(qemud.log_text())
        dom.create()
        serial = SerialPort(sock)
        try:
            serial.wait_for(READY)
            log = qemud.log_text()[offset:]
            # the link went down before the vCPUs first ran
            assert log.index("--> set_link") < log.index("monitor.lnk: --> cont"), log
            assert set_links(qemud, "lnk", offset) == [f"{DEVICE_ID} down"]
            yield dom
        finally:
            serial.close()
            if dom.is_active():
                dom.destroy()
            dom.undefine()


def test_link_state_follows_the_definition_and_domif_setlink(qemud: DaemonProcess,
                                                             running: client.Domain) -> None:
    assert "<link state='down'/>" in running.xml().replace('"', "'")
    assert shell(qemud, "domif-getlink", "lnk", MAC) == (0, f"{MAC} down\n", "")
    offset = len(qemud.log_text())
    assert shell(qemud, "domif-setlink", "lnk", MAC.upper(), "up") == (
        0, "Device updated successfully\n", "")
    assert set_links(qemud, "lnk", offset) == [f"{DEVICE_ID} up"]
    assert shell(qemud, "domif-getlink", "lnk", MAC) == (0, f"{MAC} up\n", "")
    # the live change leaves the persistent definition as it was
    assert shell(qemud, "domif-getlink", "lnk", MAC, "--config") == (0, f"{MAC} down\n", "")
    assert shell(qemud, "domif-setlink", "lnk", MAC, "up", "--config") == (
        0, "Device updated successfully\n", "")
    assert shell(qemud, "domif-getlink", "lnk", MAC, "--config") == (0, f"{MAC} up\n", "")
    assert "<link" not in running.xml(client.XML_INACTIVE)  # up is the default
    offset = len(qemud.log_text())
    assert shell(qemud, "domif-setlink", "lnk", MAC, "down")[0] == 0
    assert set_links(qemud, "lnk", offset) == [f"{DEVICE_ID} down"]


def test_update_device_refusals_change_nothing(qemud: DaemonProcess,
                                               running: client.Domain) -> None:
    before = running.xml(), running.xml(client.XML_INACTIVE)
    model = DOWN_NIC.replace("virtio", "e1000")
    with pytest.raises(client.NotSupportedError) as exc:
        running.update_device(model, client.AFFECT_LIVE | client.AFFECT_CONFIG)
    assert exc.value.message == ("Operation not supported: cannot modify network device "
                                 "model from 'virtio' to 'e1000'")
    moved = DOWN_NIC.replace("</interface>", "<address type='pci' domain='0x0000' "
                             "bus='0x00' slot='0x09' function='0x0'/></interface>")
    with pytest.raises(client.NotSupportedError) as exc:
        running.update_device(moved, client.AFFECT_LIVE | client.AFFECT_CONFIG)
    assert exc.value.message == ("Operation not supported: cannot modify network device "
                                 "guest address")
    with pytest.raises(client.OperationFailed, match=f"no device matching MAC address "
                       f"{MAC2} found"):
        running.update_device(DOWN_NIC.replace(MAC, MAC2))
    with pytest.raises(client.NotSupportedError, match="update of device 'graphics' is not"):
        running.update_device("<graphics type='vnc'/>")
    assert (running.xml(), running.xml(client.XML_INACTIVE)) == before
    assert shell(qemud, "domif-setlink", "lnk", MAC2, "up") == (
        1, "", f"error: interface (mac: {MAC2}) not found\n")
    assert shell(qemud, "domif-getlink", "lnk", "vnet9") == (
        1, "", "error: interface (target: vnet9) not found\n")
    code, _, err = shell(qemud, "domif-setlink", "lnk", MAC, "sideways")
    assert code == 1 and "sideways" in err, err


def test_hot_plugged_nic_can_come_with_its_cable_out(qemud: DaemonProcess,
                                                     running: client.Domain) -> None:
    offset = len(qemud.log_text())
    running.attach_device(DOWN_NIC.replace(MAC, MAC2), client.AFFECT_LIVE)
    log = qemud.log_text()[offset:]
    assert log.index("--> device_add") < log.index("--> set_link"), log
    assert set_links(qemud, "lnk", offset) == [f"{DEVICE_ID2} down"]
    assert shell(qemud, "domif-getlink", "lnk", MAC2) == (0, f"{MAC2} down\n", "")


def test_shut_off_domain_and_cdrom_media(qemud: DaemonProcess, tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"\0" * 4096)
    cdrom = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             "<target dev='hdc' bus='ide'/><readonly/></disk>")
    with qemud.connect() as conn:
        xml = bare_xml("lnk-off").replace(
            "</os>", f"</os><devices>{DOWN_NIC}{cdrom}</devices>")
        dom = conn.define_xml(xml)
        try:
            # a shut-off domain: the persistent definition, without --config
            assert shell(qemud, "domif-setlink", "lnk-off", MAC, "up") == (
                0, "Device updated successfully\n", "")
            assert "<link" not in dom.xml()
            # update-device with a CD-ROM: its medium, as change-media
            dom.update_device(cdrom.replace("<target", f"<source file='{iso}'/><target"))
            assert f"<source file='{iso}'/>" in dom.xml().replace('"', "'")
            with pytest.raises(client.XMLError, match="link: unsupported link state "
                               "'sideways'"):
                conn.define_xml(xml.replace("state='down'", "state='sideways'"))
        finally:
            dom.undefine()
