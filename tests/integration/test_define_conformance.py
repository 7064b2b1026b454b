"""define / create / load as libvirt does them, through a real daemon (and qemush):

* the memory of a definition stays in the user's KiB (``100001``) in the inactive XML and
  the stored file, across start, destroy and a daemon restart; only the running guest's
  XML (and QEMU's ``-m``) is aligned to 1 MiB, as libvirt's qemuDomainAlignMemorySizes;
* an XML syntax error names its place once, libvirt's way
  (``(domain_definition):LINE: <libxml2's message>``);
* more vCPUs than the machine type takes are refused at define and create, in
  libvirt's words;
* a stored definition written without the defaults define fills in (the machine, the
  default ``<memballoon>``) gets them when the daemon loads it, the file left as it is;
* an ``<emulator>`` that does not exist is refused at define and create, in libvirt's
  words; a stored definition whose emulator vanished is still loaded, and kept (its
  start fails, naming the binary).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess, qemush
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
INACTIVE = 2  # libvirt's VIR_DOMAIN_XML_INACTIVE
PAUSED = 1  # VIR_DOMAIN_START_PAUSED


def odd_memory_xml(name: str) -> str:
    return bare_xml(name).replace("<memory unit='MiB'>128</memory>",
                                  "<memory unit='KiB'>100001</memory>")


def memory_lines(xml: str) -> list[str]:
    return [line.strip() for line in xml.splitlines() if "emory" in line]


def restart(daemon: DaemonProcess) -> None:
    daemon.stop()
    daemon.start()


def test_memory_keeps_the_users_kib_and_only_the_live_xml_is_aligned(
        daemon: DaemonProcess) -> None:
    kept = "<memory unit='KiB'>100001</memory>"
    with daemon.connect() as conn:
        dom = conn.define_xml(odd_memory_xml("mem"))
        assert kept in memory_lines(dom.xml(INACTIVE))
        assert kept in (daemon.paths.domains_dir / "mem.xml").read_text()

        dom.create(PAUSED)
        status = json.loads((daemon.run_dir / "qemu" / "mem.status.json").read_text())
        argv = Path(f"/proc/{status['pid']}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("-m") + 1] == "size=100352k"  # 98 MiB: what QEMU runs
        assert "<memory unit='KiB'>100352</memory>" in memory_lines(dom.xml())
        assert kept in memory_lines(dom.xml(INACTIVE))
        dom.destroy()
        assert kept in memory_lines(dom.xml())
        assert kept in (daemon.paths.domains_dir / "mem.xml").read_text()

    restart(daemon)
    with daemon.connect() as conn:
        assert kept in memory_lines(conn.lookup_by_name("mem").xml(INACTIVE))


def test_syntax_error_names_its_place_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<domain type='qemu'>\n  <name>b</nam>\n</domain>\n")
    proc = qemush(daemon, "define", str(broken))
    assert proc.returncode == 1, proc
    assert proc.stderr.splitlines()[1:] == [
        "error: XML error: not well-formed XML: (domain_definition):2: Opening and ending "
        "tag mismatch: name line 2 and nam"]

    with daemon.connect() as conn, pytest.raises(client.XMLError) as info:
        conn.create_xml(broken.read_text())
    assert str(info.value).count("(domain_definition):2:") == 1
    assert "column" not in str(info.value)


def test_a_stored_definition_gets_defines_defaults_when_loaded(
        daemon: DaemonProcess) -> None:
    daemon.stop()
    stored = daemon.paths.domains_dir / "old.xml"
    stored.parent.mkdir(parents=True, exist_ok=True)
    text = ("<domain type='qemu'>\n  <name>old</name>\n"
            "  <uuid>0b5a1f3e-5d2c-4a57-9b0e-6f1d2c3b4a59</uuid>\n"
            "  <memory unit='KiB'>131072</memory>\n  <vcpu>1</vcpu>\n"
            "  <os>\n    <type arch='x86_64'>hvm</type>\n  </os>\n</domain>\n")
    stored.write_text(text)
    daemon.start()

    proc = qemush(daemon, "dumpxml", "--inactive", "old")
    assert proc.returncode == 0, proc
    assert "<memballoon model='virtio'>\n      <address type='pci' domain='0x0000' " \
        "bus='0x00' slot='0x03' function='0x0'/>" in proc.stdout  # (and its slot)
    assert "machine='pc'" in proc.stdout
    assert stored.read_text() == text  # loading rewrites nothing
    with daemon.connect() as conn:  # and the guest starts with the balloon it shows
        dom = conn.lookup_by_name("old")
        dom.create(PAUSED)
        assert "<memballoon model='virtio'" in dom.xml()
        dom.destroy()


def test_a_missing_emulator_is_refused_at_define_and_create(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-qemu"
    xml = bare_xml("emu").replace(
        "</os>", f"</os>\n  <devices><emulator>{missing}</emulator></devices>")
    expected = f"Cannot check QEMU binary {missing}: No such file or directory"
    with daemon.connect() as conn:
        for call in (conn.define_xml, conn.create_xml):
            with pytest.raises(client.QemudClientError) as info:
                call(xml)
            assert str(info.value) == expected
        assert conn.list_domains() == []
    assert not (daemon.paths.domains_dir / "emu.xml").exists()

    not_executable = tmp_path / "not-executable"
    not_executable.write_text("")
    with daemon.connect() as conn, pytest.raises(
            client.QemudClientError, match="is not executable: Permission denied"):
        conn.define_xml(xml.replace(str(missing), str(not_executable)))


def test_more_vcpus_than_the_machine_takes_are_refused_at_define_and_create(
        daemon: DaemonProcess) -> None:
    """libvirt's words, with QEMU's cpu-max of the machine (i440FX 255, Q35 288 in 7.2),
    at define and create rather than when QEMU refuses them at start."""
    many = bare_xml("many").replace("<vcpu>1</vcpu>", "<vcpu>256</vcpu>")
    with daemon.connect() as conn:
        for call in (conn.define_xml, conn.create_xml):
            with pytest.raises(client.QemudClientError) as info:
                call(many)
            assert str(info.value) == ("unsupported configuration: Maximum CPUs greater "
                                       "than specified machine type limit 255")
        assert conn.list_domains() == []
        q35 = bare_xml("many", machine="q35").replace("<vcpu>1</vcpu>", "<vcpu>256</vcpu>")
        assert "<vcpu>256</vcpu>" in conn.define_xml(q35).xml(INACTIVE)


def test_a_stored_definition_whose_emulator_vanished_is_kept(
        daemon: DaemonProcess, tmp_path: Path) -> None:
    emulator = tmp_path / "qemu-system-x86_64"
    emulator.symlink_to(os.path.realpath(
        subprocess.run(["which", "qemu-system-x86_64"], capture_output=True, text=True,
                       check=True).stdout.strip()))
    xml = bare_xml("gone").replace(
        "</os>", f"</os>\n  <devices><emulator>{emulator}</emulator></devices>")
    with daemon.connect() as conn:
        conn.define_xml(xml)
    stored = daemon.paths.domains_dir / "gone.xml"
    text = stored.read_text()

    daemon.stop()
    emulator.unlink()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("gone")
        assert str(emulator) in dom.xml(INACTIVE)
        with pytest.raises(client.QemudClientError, match=str(emulator)):
            dom.create()
        assert [d.name for d in conn.list_domains(client.ListFlags.INACTIVE)] == ["gone"]
    assert stored.read_text() == text


def test_a_stored_definition_of_an_arch_this_build_lacks_is_kept(
        daemon: DaemonProcess) -> None:
    """Written by hand (or by a build with more architectures): loaded and kept; its start
    says why it cannot run, as a config error, not an internal one."""
    daemon.stop()
    stored = daemon.paths.domains_dir / "odd.xml"
    stored.write_text(bare_xml("odd").replace("arch='x86_64'", "arch='riscv64'"))
    text = stored.read_text()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("odd")
        with pytest.raises(client.ConfigUnsupportedError) as info:
            dom.create()
        assert "riscv64" in str(info.value), str(info.value)
        assert dom.state()[0] == client.DomainState.SHUTOFF
    assert stored.read_text() == text
