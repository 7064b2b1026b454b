"""``domxml-to-native`` against a real daemon (no QEMU process runs): the command line a
start would run, printed on one line; libvirt's refusals; a dry run that creates
nothing (qemud/driver/native.py, docs/CONFORMANCE.md)."""

from __future__ import annotations

import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.errors import InvalidArgError, ReadOnlyError
from protocol import payloads as pl
from protocol.procedures import Procedure
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.helpers.daemon import DaemonProcess

MAC = "52:54:00:6a:11:02"


def _xml(name: str, disk: Path, machine: str = "pc", os_attrs: str = "") -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os{os_attrs}><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='{MAC}'/><model type='virtio'/></interface>
    <graphics type='vnc' autoport='yes'/>
  </devices>
</domain>
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.xml"
    path.write_text(text)
    return path


def _argv(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The printed line as the words a shell makes of it (it is one line)."""
    text = ok(proc)
    assert text.endswith("\n") and text.count("\n") == 1, text
    return shlex.split(text)


def _fails(proc: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout,
                                                         proc.stderr)
    assert proc.stderr.splitlines() == [f"error: {line}" for line in lines], proc.stderr


def _emulator(qemush: Qemush, uri: str) -> str:
    caps = ET.fromstring(ok(qemush("-c", uri, "capabilities")))
    path = caps.findtext("./guest/arch[@name='x86_64']/emulator")
    assert path, "no x86_64 emulator in the capabilities"
    return path


def _devices(argv: list[str], driver: str) -> list[str]:
    """The ``-device`` values of ``driver`` (``virtio-net-pci,...``)."""
    return [value for flag, value in zip(argv, argv[1:], strict=False)
            if flag == "-device" and value.split(",")[0] == driver]


def _props(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in value.split(",")[1:] if "=" in item)


def test_the_command_line_of_xml(daemon: DaemonProcess, qemush: Qemush,
                                 tmp_path: Path) -> None:
    """The emulator first, the guest's name, its NIC and its disk, each word quoted so
    that a shell gives back exactly the argv: a path with a space survives."""
    disk = tmp_path / "my disk.img"
    path = _write(tmp_path, "n1", _xml("n1", disk))
    argv = _argv(qemush("-c", daemon.uri, "domxml-to-native", "qemu-argv", "--xml",
                        str(path)))
    assert argv[0] == _emulator(qemush, daemon.uri)
    assert argv[argv.index("-name") + 1].split(",")[0] == "guest=n1"
    (nic,) = _devices(argv, "virtio-net-pci")
    assert _props(nic)["mac"] == MAC
    assert any(f'"filename":"{disk}"' in word for word in argv), argv
    # an autoport display without a port assigned: :0, as libvirt's pretend start
    assert argv[argv.index("-vnc") + 1] == "127.0.0.1:0"


def test_q35_gets_its_pcie_root_ports(daemon: DaemonProcess, qemush: Qemush,
                                      tmp_path: Path) -> None:
    """On q35 each PCIe device sits on a root port, as a start puts it."""
    path = _write(tmp_path, "n2", _xml("n2", tmp_path / "d.img", machine="q35"))
    argv = _argv(qemush("-c", daemon.uri, "domxml-to-native", "qemu-argv", "--xml",
                        str(path)))
    ports = {_props(v)["id"] for v in _devices(argv, "pcie-root-port")}
    assert len(ports) >= 2, argv
    (nic,) = _devices(argv, "virtio-net-pci")
    (blk,) = _devices(argv, "virtio-blk-pci")
    assert _props(nic)["bus"] in ports and _props(blk)["bus"] in ports
    assert _props(nic)["bus"] != _props(blk)["bus"]


def test_domain_gives_the_line_of_its_xml(daemon: DaemonProcess, qemush: Qemush,
                                          tmp_path: Path) -> None:
    """--domain converts the domain's XML: the same line as --xml of its dumpxml."""
    u = daemon.uri
    ok(qemush("-c", u, "define", str(_write(tmp_path, "n3", _xml("n3", tmp_path / "d.img")))))
    dumped = _write(tmp_path, "dumped", ok(qemush("-c", u, "dumpxml", "n3", "--inactive")))
    by_domain = ok(qemush("-c", u, "domxml-to-native", "qemu-argv", "--domain", "n3"))
    by_xml = ok(qemush("-c", u, "domxml-to-native", "qemu-argv", "--xml", str(dumped)))
    assert by_domain == by_xml
    uuid = ok(qemush("-c", u, "domuuid", "n3")).strip()
    argv = shlex.split(by_domain)
    assert argv[argv.index("-uuid") + 1] == uuid
    _fails(qemush("-c", u, "domxml-to-native", "qemu-argv", "--domain", "nosuch"),
           "failed to get domain 'nosuch'",
           "Domain not found: no domain with matching name 'nosuch'")


def test_option_errors_are_virshs(daemon: DaemonProcess, qemush: Qemush,
                                  tmp_path: Path) -> None:
    u = daemon.uri
    path = _write(tmp_path, "n4", _xml("n4", tmp_path / "d.img"))
    _fails(qemush("-c", u, "domxml-to-native", "qemu-argv"),
           "need either domain or domain XML")
    proc = qemush("-c", u, "domxml-to-native", "qemu-argv", "--xml", str(path),
                  "--domain", "n4")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == \
        "error: Options --domain and --xml are mutually exclusive", proc.stderr
    _fails(qemush("-c", u, "domxml-to-native", "qemu-argv", "--xml",
                  str(tmp_path / "nosuch.xml")),
           f"cannot read '{tmp_path / 'nosuch.xml'}': No such file or directory")


def test_only_qemu_argv_is_a_format(daemon: DaemonProcess, qemush: Qemush,
                                    tmp_path: Path) -> None:
    path = _write(tmp_path, "n5", _xml("n5", tmp_path / "d.img"))
    _fails(qemush("-c", daemon.uri, "domxml-to-native", "xen-xm", "--xml", str(path)),
           "invalid argument: unsupported config type xen-xm")


def test_flags_must_be_zero(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.connect() as conn, pytest.raises(InvalidArgError) as exc:
        conn._call(Procedure.CONNECT_DOMAIN_XML_TO_NATIVE,
                   pl.XMLToNativeArgs("qemu-argv", _xml("n6", tmp_path / "d.img"), 1),
                   pl.StringReply)
    assert "unsupported flags (0x1) in function qemuConnectDomainXMLToNative" in \
        str(exc.value)


@pytest.mark.parametrize(("text", "problem"), [
    ("<domain type='qemu'><name>bad</name><vcpu>1</vcpu></domain>", "memory"),
    ("<domain type='qemu'><name>bad</name>", "not well-formed"),
])
def test_bad_xml_is_refused_naming_the_problem(daemon: DaemonProcess, qemush: Qemush,
                                               tmp_path: Path, text: str,
                                               problem: str) -> None:
    proc = qemush("-c", daemon.uri, "domxml-to-native", "qemu-argv", "--xml",
                  str(_write(tmp_path, "bad", text)))
    assert proc.returncode == 1 and proc.stdout == "", proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: XML error: ") and problem in line, line


def test_refused_on_the_read_only_socket(daemon: DaemonProcess, qemush: Qemush,
                                         tmp_path: Path) -> None:
    """libvirt's ACL for it is connect:write, though it changes nothing."""
    path = _write(tmp_path, "n7", _xml("n7", tmp_path / "d.img"))
    proc = qemush("-r", "-c", daemon.uri, "domxml-to-native", "qemu-argv", "--xml",
                  str(path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert READONLY_REFUSAL in proc.stderr.splitlines(), proc.stderr
    with daemon.connect(readonly=True) as conn, pytest.raises(ReadOnlyError):
        conn.domain_xml_to_native("qemu-argv", path.read_text())


def test_a_dry_run_creates_nothing(daemon: DaemonProcess, qemush: Qemush,
                                   tmp_path: Path) -> None:
    """Not defined, no run directory, log or NVRAM file; a UEFI guest's line names the
    NVRAM file a start would create from its template (when this host has UEFI
    firmware for q35)."""
    u = daemon.uri
    before = sorted(daemon.root.rglob("*"))
    plain = _write(tmp_path, "n8", _xml("n8", tmp_path / "d.img"))
    ok(qemush("-c", u, "domxml-to-native", "qemu-argv", "--xml", str(plain)))
    efi = _write(tmp_path, "n9", _xml("n9", tmp_path / "d.img", machine="q35",
                                      os_attrs=" firmware='efi'"))
    proc = qemush("-c", u, "domxml-to-native", "qemu-argv", "--xml", str(efi))
    if proc.returncode == 0:
        nvram = daemon.state_dir / "nvram" / "n9_VARS.fd"
        assert any(f'"filename":"{nvram}"' in w for w in shlex.split(proc.stdout)), proc
    else:  # no firmware descriptor fits here: define's refusal, in libvirt's words
        assert "operation failed" in proc.stderr, proc.stderr
    assert ok(qemush("-c", u, "list", "--all", "--name")).split() == []
    after = sorted(daemon.root.rglob("*"))
    new = [p for p in after if p not in before and p.name not in ("qemud.log", "audit.log")]
    assert new == [], new
    for name in ("n8", "n9"):
        assert not daemon.guest_run_dir(name).exists()
        assert not any(name in p.name for p in after), [p for p in after if name in p.name]


def test_qemu_env_comes_first(daemon: DaemonProcess, qemush: Qemush,
                              tmp_path: Path) -> None:
    """<qemu:env>: env(1) and the assignments before the emulator, as QEMU is started;
    a value with a space stays one word."""
    text = _xml("n10", tmp_path / "d.img").replace(
        "<domain type='qemu'>",
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
    ).replace("</devices>", "</devices><qemu:commandline>"
              "<qemu:env name='QEMUD_TEST' value='a b'/></qemu:commandline>")
    argv = _argv(qemush("-c", daemon.uri, "domxml-to-native", "qemu-argv", "--xml",
                        str(_write(tmp_path, "n10", text))))
    assert argv[:3] == ["/usr/bin/env", "QEMUD_TEST=a b", _emulator(qemush, daemon.uri)]
