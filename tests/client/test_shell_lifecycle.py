"""qemush lifecycle commands against a daemon that really starts QEMU (a diskless guest
with nothing to boot: enough for start/suspend/resume/save/restore/destroy)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import REPO_ROOT, Qemush, ok
from tests.helpers.daemon import DaemonProcess
from tests.helpers.tty import read_to_eof

pytestmark = pytest.mark.integration

GUEST = """<domain type='qemu'>
  <name>life</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <serial type='pty'/>
    <console type='pty'/>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
  </devices>
</domain>
"""


def state(qemush: Qemush, daemon: DaemonProcess) -> str:
    return ok(qemush("-c", daemon.uri, "domstate", "life", "--reason")).strip()


def test_lifecycle(daemon: DaemonProcess, qemush: Qemush, shell_env: dict[str, str],
                   tmp_path: Path) -> None:
    xml = tmp_path / "life.xml"
    xml.write_text(GUEST)
    u = daemon.uri
    ok(qemush("-c", u, "define", str(xml)))
    try:
        assert ok(qemush("-c", u, "start", "life")) == "Domain 'life' started\n"
        assert state(qemush, daemon) == "running (booted)"
        dom_id = ok(qemush("-c", u, "domid", "life")).strip()
        assert dom_id.isdigit()
        assert re.search(rf"^ {dom_id} +life +running$",
                         ok(qemush("-c", u, "list")), re.M)
        assert ok(qemush("-c", u, "list", "--id")) == f"{dom_id}\n"
        assert re.fullmatch(r"127\.0\.0\.1:\d+\n", ok(qemush("-c", u, "vncdisplay", "life")))
        assert re.search(r"^CPU time: +\d+\.\ds$", ok(qemush("-c", u, "dominfo", "life")),
                         re.M)

        assert ok(qemush("-c", u, "suspend", "life")) == "Domain 'life' suspended\n"
        assert state(qemush, daemon) == "paused (user)"
        assert ok(qemush("-c", u, "resume", "life")) == "Domain 'life' resumed\n"
        assert state(qemush, daemon) == "running (unpaused)"

        cdrom = tmp_path / "cd.iso"
        cdrom.write_bytes(b"\0" * 65536)
        assert ok(qemush("-c", u, "change-media", "life", "sda", str(cdrom), "--insert")) == \
            "Successfully inserted media.\n"
        assert str(cdrom) in ok(qemush("-c", u, "dumpxml", "life"))
        assert ok(qemush("-c", u, "change-media", "life", "sda", "--eject")) == \
            "Successfully ejected media.\n"

        # the serial console, piped: stdin to the guest, nothing to read back from a
        # guest without an OS, and the command ends once stdin has ended
        proc = qemush("-c", u, "console", "life", input="\n", timeout=30)
        assert proc.returncode == 0, proc.stderr
        # virsh's --safe and --force reach the daemon (it refuses flags it does not know)
        proc = qemush("-c", u, "console", "life", "--safe", "--force", "--devname",
                      "serial0", input="\n", timeout=30)
        assert proc.returncode == 0, proc.stderr

        # save with stderr on a terminal: the progress line is drawn, then erased
        saved = tmp_path / "life.save"
        out, err = _run_with_tty_stderr(["-c", u, "save", "life", str(saved)], shell_env)
        assert out == f"Domain 'life' saved to {saved}\n"
        assert "Saving domain 'life' ... " in err and err.endswith("\r\x1b[K")
        assert state(qemush, daemon) == "shut off (saved)"
        # and without a terminal nothing but the result (ok() checks stderr is empty)
        assert ok(qemush("-c", u, "restore", str(saved))) == f"Domain restored from {saved}\n"
        assert state(qemush, daemon) == "running (restored)"

        assert ok(qemush("-c", u, "destroy", "life")) == "Domain 'life' destroyed\n"
        assert state(qemush, daemon) == "shut off (destroyed)"
        assert ok(qemush("-c", u, "domid", "life")) == "-\n"

        proc = qemush("-c", u, "resume", "life")
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[0] == "error: Failed to resume domain 'life'"

        ok(qemush("-c", u, "start", "life"))
        # virsh's --mode: what qemud cannot do is the daemon's error, in virsh's two lines
        proc = qemush("-c", u, "reboot", "life", "--mode", "agent")
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[:2] == [
            "error: Failed to reboot domain 'life'",
            "error: argument unsupported: QEMU guest agent is not configured (qemud has no "
            "guest agent channel support): the 'agent' reboot mode cannot work; use the "
            "'acpi' mode (alone, or with 'agent' to fall back to it)"]
        proc = qemush("-c", u, "shutdown", "life", "--mode", "initctl,signal")
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[:2] == [
            "error: Failed to shutdown domain 'life'",
            "error: invalid argument: unsupported flags (0xc) in shutdown: mode 'initctl', "
            "mode 'signal' (the QEMU driver has the 'acpi' and 'agent' modes)"]
        assert state(qemush, daemon) == "running (booted)"
        # (no OS: the ACPI button does nothing, the timeout destroys it)
        assert ok(qemush("-c", u, "reboot", "life", "--mode", "agent,acpi")) == \
            "Domain 'life' is being rebooted\n"
        assert ok(qemush("-c", u, "shutdown", "life", "--mode", "acpi,agent",
                         "--timeout", "1")) == \
            "Domain 'life' did not shut down within 1 s: destroyed\n"
        assert state(qemush, daemon) == "shut off (destroyed)"
    finally:
        qemush("-c", u, "destroy", "life")
        qemush("-c", u, "undefine", "life")


def _run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[str, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "client.shell", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=env, cwd=REPO_ROOT, text=True)
    os.close(slave)
    err = read_to_eof(master)
    out = proc.communicate(timeout=60)[0]
    os.close(master)
    assert proc.returncode == 0, (out, err)
    return out, err.decode()


NAMED = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
         "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")


def test_start_paused_and_lookup_order(daemon: DaemonProcess, qemush: Qemush,
                                       tmp_path: Path) -> None:
    """start --paused; then virsh's lookup order: a running domain's id wins over a domain
    whose name is that number (QA lifecycle B3)."""
    u = daemon.uri
    xml = tmp_path / "life.xml"
    xml.write_text(GUEST)
    ok(qemush("-c", u, "define", str(xml)))
    try:
        assert ok(qemush("-c", u, "start", "life", "--paused")) == "Domain 'life' started\n"
        assert state(qemush, daemon).startswith("paused")
        dom_id = ok(qemush("-c", u, "domid", "life")).strip()
        life_uuid = ok(qemush("-c", u, "domuuid", "life")).strip()
        named = tmp_path / "named.xml"
        named.write_text(NAMED.format(name=dom_id))
        assert ok(qemush("-c", u, "define", str(named))) == \
            f"Domain '{dom_id}' defined from {named}\n"
        other_uuid = ok(qemush("-c", u, "list", "--all", "--uuid", "--name")).split(
            f" {dom_id}\n")[0].splitlines()[-1]
        # virsh's columns in its order, one space apart; an inactive domain's id is "-"
        assert ok(qemush("-c", u, "list", "--all", "--id", "--name")) == \
            f"{dom_id} life\n- {dom_id}\n"
        assert ok(qemush("-c", u, "list", "--all", "--name", "--uuid", "--id")) == \
            f"{life_uuid} {dom_id} life\n{other_uuid} - {dom_id}\n"
        assert ok(qemush("-c", u, "list", "--all", "--id")) == f"{dom_id}\n"
        assert ok(qemush("-c", u, "domname", dom_id)) == "life\n"
        assert ok(qemush("-c", u, "domuuid", dom_id)) == f"{life_uuid}\n"
        assert ok(qemush("-c", u, "domname", other_uuid)) == f"{dom_id}\n"
        # the running domain's disks, from its live XML
        assert ok(qemush("-c", u, "domblklist", dom_id, "--details")) == (
            " Type   Device   Target   Source\n"
            "----------------------------------\n"
            " file   cdrom    sda      -\n"
            "\n")
        ok(qemush("-c", u, "destroy", "life"))
        # no longer running: the number is only a name now
        assert ok(qemush("-c", u, "domname", dom_id)) == f"{dom_id}\n"
    finally:
        qemush("-c", u, "destroy", "life")
        qemush("-c", u, "undefine", "life")


def test_create_paused(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    u = daemon.uri
    xml = tmp_path / "trans.xml"
    xml.write_text(GUEST.replace("<name>life</name>", "<name>trans</name>"))
    try:
        proc = qemush("-c", u, "create", str(xml), "--paused")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"Domain 'trans' created from {xml}\n"
        assert proc.stderr == ""
        assert ok(qemush("-c", u, "domstate", "trans", "--reason")) == "paused (user)\n"
        assert ok(qemush("-c", u, "resume", "trans")) == "Domain 'trans' resumed\n"
    finally:
        qemush("-c", u, "destroy", "trans")
