"""UEFI guests through a real daemon: ``<os firmware='efi'>`` resolved at define (the
host's real descriptors), the test guest booting under OVMF (direct kernel boot), the
NVRAM file created once and then left to the guest, and undefine's NVRAM rule with
``qemush undefine --nvram / --keep-nvram``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from lxml import etree

import client
from tests.helpers.daemon import DaemonProcess, qemush

from .conftest import TestGuest
from .domains import READY, guest_xml
from .serial import SerialPort

pytestmark = pytest.mark.integration

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
#: OVMF under TCG: firmware start-up before the kernel takes several seconds
BOOT_TIMEOUT = 180.0


def efi_xml(name: str, guest: TestGuest, sock: Path, machine: str = "") -> str:
    xml = guest_xml(name, guest, sock)
    machine_attr = f" machine='{machine}'" if machine else ""
    return xml.replace("<os>", "<os firmware='efi'>").replace(
        "<type arch='x86_64'>", f"<type arch='x86_64'{machine_attr}>")


def os_element(xml: str) -> etree._Element:
    found = etree.fromstring(xml.encode()).find("os")
    assert found is not None
    return found


def shell(daemon: DaemonProcess, *args: str, ok: bool = True) -> str:
    done = qemush(daemon, *args)
    assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
    return done.stdout if ok else done.stderr


def boot(dom: client.Domain, sock: Path) -> None:
    dom.create()
    serial = SerialPort(sock)
    try:
        serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    finally:
        serial.close()


def test_efi_guest_boots_under_ovmf_and_keeps_its_nvram(
        daemon: DaemonProcess, test_guest: TestGuest, tmp_path: Path) -> None:
    sock = tmp_path / "serial.sock"
    nvram = daemon.state_dir / "nvram" / "uefi1_VARS.fd"
    with daemon.connect() as conn:
        dom = conn.define_xml(efi_xml("uefi1", test_guest, sock))
        # libvirt >= 9.2: the selection is part of the definition, shown by dumpxml
        os_ = os_element(dom.xml(client.XML_INACTIVE))
        loader, nv = os_.find("loader"), os_.find("nvram")
        assert loader is not None and nv is not None
        assert (loader.text, loader.get("readonly"), loader.get("type")) == (
            OVMF_CODE, "yes", "pflash")
        assert (nv.text, nv.get("template")) == (str(nvram), OVMF_VARS)
        features = {f.get("name"): f.get("enabled") for f in os_.iterfind("firmware/feature")}
        assert features == {"secure-boot": "no", "enrolled-keys": "no"}
        assert not nvram.exists()  # made at the first start

        boot(dom, sock)
        live = os_element(dom.xml())
        assert live.findtext("loader") == OVMF_CODE and live.findtext("nvram") == str(nvram)
        info = nvram.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_size == Path(OVMF_VARS).stat().st_size
        dom.destroy()

        boot(dom, sock)  # the same file again: the guest's, never recreated by qemud
        assert nvram.stat().st_ino == info.st_ino
        dom.destroy()

        # a rename takes the default-path NVRAM along (libvirt does), and back
        shell(daemon, "domrename", "uefi1", "uefi1b")
        moved = daemon.state_dir / "nvram" / "uefi1b_VARS.fd"
        assert moved.stat().st_ino == info.st_ino and not nvram.exists()
        renamed = conn.lookup_by_name("uefi1b")
        assert os_element(renamed.xml(client.XML_INACTIVE)).findtext("nvram") == str(moved)
        shell(daemon, "domrename", "uefi1b", "uefi1")
        assert nvram.stat().st_ino == info.st_ino
        dom = conn.lookup_by_name("uefi1")

        # start --reset-nvram: the variables are the template's again (started paused:
        # the file is written before QEMU starts)
        nvram.write_bytes(b"\xa5" * info.st_size)
        shell(daemon, "start", "uefi1", "--reset-nvram", "--paused")
        assert nvram.read_bytes() == Path(OVMF_VARS).read_bytes()
        assert stat.S_IMODE(nvram.stat().st_mode) == 0o600
        dom.destroy()

        with pytest.raises(client.OperationInvalid, match="cannot undefine domain with nvram"):
            dom.undefine()
        assert nvram.exists() and conn.lookup_by_name("uefi1")

    shell(daemon, "undefine", "uefi1", "--keep-nvram")
    assert nvram.exists()
    with daemon.connect() as conn:
        conn.define_xml(efi_xml("uefi1", test_guest, sock))
    assert "cannot undefine domain with nvram" in shell(daemon, "undefine", "uefi1", ok=False)
    shell(daemon, "undefine", "uefi1", "--nvram")
    assert not nvram.exists()


def test_efi_define_refusals_name_the_cause(daemon: DaemonProcess, test_guest: TestGuest,
                                            tmp_path: Path) -> None:
    sock = tmp_path / "serial.sock"
    secure_pc = efi_xml("uefi2", test_guest, sock, machine="pc").replace(
        "<os firmware='efi'>", "<os firmware='efi'><firmware>"
        "<feature enabled='yes' name='secure-boot'/></firmware>")
    with daemon.connect() as conn:
        with pytest.raises(client.OperationFailed,
                           match="Unable to find any firmware to satisfy 'efi'.*secure-boot"):
            conn.define_xml(secure_pc)
        # q35 has SMM: the secure build is chosen, with SMM turned on (as libvirt does)
        dom = conn.define_xml(secure_pc.replace("machine='pc'", "machine='q35'"))
        xml = dom.xml(client.XML_INACTIVE)
        os_ = os_element(xml)
        loader = os_.find("loader")
        assert loader is not None and loader.get("secure") == "yes"
        assert loader.text == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"  # first by priority
        assert etree.fromstring(xml.encode()).find("features/smm").get("state") == "on"
        dom.undefine()  # never started: no NVRAM file, nothing to refuse
