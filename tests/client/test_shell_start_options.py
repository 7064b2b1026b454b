"""virsh's --validate of define/create and --console of start/create, through qemush,
against a daemon that really starts QEMU (a diskless guest, nothing to boot); and the
daemon's flag checks behind them (libvirt's virCheckFlags: VALIDATE accepted, since
every definition is validated anyway; unknown bits refused before anything changes)."""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.integration

GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><serial type='pty'/><console type='pty'/></devices>
</domain>
"""


def test_validate_flags(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    xml = tmp_path / "v.xml"
    xml.write_text(GUEST.format(name="val"))
    u = daemon.uri
    assert ok(qemush("-c", u, "define", str(xml), "--validate")) == \
        f"Domain 'val' defined from {xml}\n"
    # the schema check --validate asks for is the one every define gets
    bad = tmp_path / "bad.xml"
    bad.write_text(GUEST.format(name="val2").replace("<vcpu>", "<vcpus>").replace(
        "</vcpu>", "</vcpus>"))
    for extra in ((), ("--validate",)):
        proc = qemush("-c", u, "define", str(bad), *extra)
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"error: Failed to define domain from {bad}\n"
                                      "error: XML error: "), proc.stderr
    with daemon.connect() as conn:
        with pytest.raises(client.InvalidArgError,
                           match=r"^invalid argument: unsupported flags \(0x2\) in function "
                                 "qemuDomainDefineXMLFlags$"):
            conn.define_xml(GUEST.format(name="val3"), 2)
        with pytest.raises(client.InvalidArgError,
                           match=r"unsupported flags \(0x2\) in function qemuDomainCreateXML"):
            conn.create_xml(GUEST.format(name="val3"), 2)  # (AUTODESTROY: not offered)
        defined = conn.lookup_by_name("val")
        for flag in (2, 4, 64):  # AUTODESTROY, BYPASS_CACHE, unknown
            with pytest.raises(client.InvalidArgError,
                               match=rf"^invalid argument: unsupported flags \({flag:#x}\) "
                                     "in function qemuDomainCreateWithFlags$"):
                defined.create(flag | client.START_PAUSED)
        assert not defined.is_active()
        assert [d.name for d in conn.list_domains(0)] == ["val"]  # nothing was made
        dom = conn.create_xml(GUEST.format(name="val4"), 16 | client.START_PAUSED)
        try:
            assert dom.is_active()
        finally:
            dom.destroy()
    ok(qemush("-c", u, "undefine", "val"))


def test_start_and_create_with_console(daemon: DaemonProcess, qemush: Qemush,
                                       tmp_path: Path) -> None:
    """--console attaches right after the start (piped here: stdin to the guest until
    it ends, then the command ends once the guest is quiet)."""
    u = daemon.uri
    xml = tmp_path / "c.xml"
    xml.write_text(GUEST.format(name="cons"))
    ok(qemush("-c", u, "define", str(xml)))
    try:
        proc = qemush("-c", u, "start", "cons", "--paused", "--console", input="\n",
                      timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Domain 'cons' started\n"), proc.stdout
        # the console was really opened: a second session is refused while... it was
        # closed at the end, so the next one opens
        proc = qemush("-c", u, "console", "cons", input="\n", timeout=60)
        assert proc.returncode == 0, proc.stderr
        ok(qemush("-c", u, "destroy", "cons"))
        proc = qemush("-c", u, "start", "cons", "--console", "--force-boot", input="\n",
                      timeout=60)
        assert proc.returncode == 0, proc.stderr
        ok(qemush("-c", u, "destroy", "cons"))
    finally:
        ok(qemush("-c", u, "undefine", "cons"))

    created = tmp_path / "t.xml"
    created.write_text(GUEST.format(name="cons-t"))
    proc = qemush("-c", u, "create", str(created), "--paused", "--console", input="\n",
                  timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Domain 'cons-t' created from {created}\n")
    ok(qemush("-c", u, "destroy", "cons-t"))

    # a domain without a console: started, and then the console's error
    plain = tmp_path / "p.xml"
    plain.write_text(GUEST.format(name="nocons").replace(
        "<devices><serial type='pty'/><console type='pty'/></devices>", ""))
    proc = qemush("-c", u, "create", str(plain), "--paused", "--console", input="\n")
    assert proc.returncode == 1
    assert proc.stdout == f"Domain 'nocons' created from {plain}\n"
    assert proc.stderr.startswith("error: Failed to open the console of domain 'nocons'\n"
                                  "error: internal error: cannot find character device")
    ok(qemush("-c", u, "destroy", "nocons"))
