"""qemush domain commands end to end (subprocess + real daemon), without starting QEMU:
define, list, dumpxml, dominfo, domstate, domid/domname/domuuid, autostart, undefine,
domstats, event — and read-only refusals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO

import pytest

from client.format import state_text
from client.shell.completion import Completer
from client.shell.context import Shell
from tests.client.conftest import READONLY_REFUSAL, REPO_ROOT, Qemush, ok
from tests.helpers.daemon import DaemonProcess, wait_for

TINY = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")


@pytest.fixture
def xml_file(tmp_path: Path) -> Path:
    path = tmp_path / "t1.xml"
    path.write_text(TINY.format(name="t1"))
    return path


def define(qemush: Qemush, daemon: DaemonProcess, path: Path, name: str = "t1") -> None:
    assert ok(qemush("-c", daemon.uri, "define", str(path))) == \
        f"Domain '{name}' defined from {path}\n"


def test_define_list_undefine(daemon: DaemonProcess, qemush: Qemush, xml_file: Path) -> None:
    empty = " Id   Name   State\n--------------------\n\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all")) == empty

    define(qemush, daemon, xml_file)
    # active only by default: t1 is shut off
    assert ok(qemush("-c", daemon.uri, "list")) == empty
    assert ok(qemush("-c", daemon.uri, "list", "--all")) == (
        " Id   Name   State\n"
        "-----------------------\n"
        " -    t1     shut off\n"
        "\n"
    )
    assert ok(qemush("-c", daemon.uri, "list", "--inactive", "--name")) == "t1\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--persistent", "--name")) == "t1\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--transient", "--name")) == ""
    assert ok(qemush("-c", daemon.uri, "list", "--state-shutoff", "--name")) == "t1\n"
    assert ok(qemush("-c", daemon.uri, "list", "--state-running", "--name")) == ""
    assert ok(qemush("-c", daemon.uri, "list", "--state-running", "--state-shutoff",
                     "--name")) == "t1\n"
    with daemon.connect() as conn:
        uuid = conn.lookup_by_name("t1").uuid
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--uuid")) == f"{uuid}\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--id")) == ""  # not running
    # inactive domains by name, ignoring case, as virsh's strcasecmp
    for name in ("Zeta", "alpha"):
        path = xml_file.parent / f"{name}.xml"
        path.write_text(TINY.format(name=name))
        define(qemush, daemon, path, name)
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--name")) == "alpha\nt1\nZeta\n"
    for name in ("Zeta", "alpha"):
        ok(qemush("-c", daemon.uri, "undefine", name))

    data = json.loads(ok(qemush("-c", daemon.uri, "list", "--all", "--json")))
    assert data == [{"id": None, "name": "t1", "uuid": uuid, "state": "shut off",
                     "reason": data[0]["reason"], "state_code": 5,
                     "reason_code": data[0]["reason_code"], "persistent": True,
                     "autostart": False}]
    assert json.loads(ok(qemush("--json", "-c", daemon.uri, "list", "--all"))) == data

    assert ok(qemush("-c", daemon.uri, "undefine", "t1")) == \
        "Domain 't1' has been undefined\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all")) == empty
    proc = qemush("-c", daemon.uri, "dominfo", "t1")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: failed to get domain 't1'\nerror: ")


def test_dumpxml_dominfo_domstate(daemon: DaemonProcess, qemush: Qemush,
                                  xml_file: Path) -> None:
    define(qemush, daemon, xml_file)
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("t1")
        state, reason = dom.state()

    for extra in ([], ["--inactive"]):
        text = ok(qemush("-c", daemon.uri, "dumpxml", "t1", *extra))
        # quoted as virsh prints it, for scripts that grep for <domain type='qemu'
        assert text.startswith("<domain type='qemu'") and '="' not in text
        root = ET.fromstring(text)
        assert root.tag == "domain" and root.get("type") == "qemu"
        assert root.findtext("name") == "t1"
        assert root.findtext("uuid") == dom.uuid
        mem = root.find("memory")
        assert mem is not None
        factor = {"KiB": 1, "MiB": 1024}[mem.get("unit", "KiB")]
        assert int(mem.text or 0) * factor == 65536

    info = ok(qemush("-c", daemon.uri, "dominfo", "t1"))
    assert info == (
        "Id:             -\n"
        "Name:           t1\n"
        f"UUID:           {dom.uuid}\n"
        "OS Type:        hvm\n"
        "State:          shut off\n"
        "CPU(s):         1\n"
        "Max memory:     65536 KiB\n"
        "Used memory:    65536 KiB\n"
        "Persistent:     yes\n"
        "Autostart:      disable\n"
        "Managed save:   no\n"
        "\n"
    )
    data = json.loads(ok(qemush("-c", daemon.uri, "dominfo", "t1", "--json")))
    assert data == {"id": None, "name": "t1", "uuid": dom.uuid, "os_type": "hvm",
                    "state": "shut off", "state_code": 5, "vcpus": 1, "cpu_time_ns": None,
                    "max_memory_kib": 65536, "used_memory_kib": 65536, "persistent": True,
                    "autostart": False, "managed_save": False}
    # a domain may be named by uuid too
    assert ok(qemush("-c", daemon.uri, "dominfo", dom.uuid)) == info

    assert ok(qemush("-c", daemon.uri, "domstate", "t1")) == "shut off\n"
    with_reason = ok(qemush("-c", daemon.uri, "domstate", "t1", "--reason"))
    assert with_reason == state_text(state, reason) + "\n"
    assert re.fullmatch(r"shut off \([a-z ]+\)\n", with_reason)
    data = json.loads(ok(qemush("-c", daemon.uri, "domstate", "t1", "--json")))
    assert data["state"] == "shut off" and data["state_code"] == 5
    assert data["reason_code"] == reason

    assert ok(qemush("-c", daemon.uri, "domid", "t1")) == "-\n"
    assert ok(qemush("-c", daemon.uri, "domuuid", "t1")) == dom.uuid + "\n"
    assert ok(qemush("-c", daemon.uri, "domname", dom.uuid)) == "t1\n"


def test_autostart(daemon: DaemonProcess, qemush: Qemush, xml_file: Path) -> None:
    define(qemush, daemon, xml_file)
    assert ok(qemush("-c", daemon.uri, "autostart", "t1")) == \
        "Domain 't1' marked as autostarted\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--autostart", "--name")) == "t1\n"
    assert "Autostart:      enable\n" in ok(qemush("-c", daemon.uri, "dominfo", "t1"))
    with daemon.connect() as conn:
        assert conn.lookup_by_name("t1").autostart() is True
    assert ok(qemush("-c", daemon.uri, "autostart", "--disable", "t1")) == \
        "Domain 't1' unmarked as autostarted\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--autostart", "--name")) == ""
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--no-autostart", "--name")) == \
        "t1\n"


def test_define_errors(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    missing = tmp_path / "missing.xml"
    proc = qemush("-c", daemon.uri, "define", str(missing))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"error: Failed to define domain from {missing}"
    assert str(missing) in proc.stderr.splitlines()[1]

    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='qemu'><name>x</name>")
    proc = qemush("-c", daemon.uri, "define", str(bad))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: Failed to define domain from {bad}"
    assert len(lines) == 2 and lines[1].startswith("error: ")


def test_read_only_refuses_mutations(daemon: DaemonProcess, qemush: Qemush,
                                     xml_file: Path) -> None:
    proc = qemush("-r", "-c", daemon.uri, "define", str(xml_file))
    assert proc.returncode == 1 and READONLY_REFUSAL in proc.stderr.splitlines()

    define(qemush, daemon, xml_file)
    for argv in (["undefine", "t1"], ["autostart", "t1"], ["start", "t1"],
                 ["destroy", "t1"], ["suspend", "t1"]):
        proc = qemush("-r", "-c", daemon.uri, *argv)
        assert proc.returncode == 1, argv
        assert READONLY_REFUSAL in proc.stderr.splitlines(), (argv, proc.stderr)
        assert proc.stdout == ""
    # reading is fine, and nothing changed
    assert ok(qemush("-r", "-c", daemon.uri, "list", "--all", "--name")) == "t1\n"
    assert "Autostart:      disable" in ok(qemush("-r", "-c", daemon.uri, "dominfo", "t1"))


def test_domstats(daemon: DaemonProcess, qemush: Qemush, xml_file: Path) -> None:
    define(qemush, daemon, xml_file)
    text = ok(qemush("-c", daemon.uri, "domstats", "t1"))
    lines = text.splitlines()
    assert lines[0] == "Domain: 't1'"
    assert "  state.state=5" in lines
    assert all(re.fullmatch(r"  [\w.]+=\S*", line) for line in lines[1:-1])
    assert text.endswith("\n\n")
    data = json.loads(ok(qemush("-c", daemon.uri, "domstats", "--json")))
    assert [d["domain"] for d in data] == ["t1"]
    assert data[0]["stats"]["state.state"] == 5
    assert json.loads(ok(qemush("-c", daemon.uri, "domstats", "--all", "--json"))) == data
    proc = qemush("-c", daemon.uri, "domstats", "t1", "--all")
    assert proc.returncode == 1 and "mutually exclusive" in proc.stderr


def test_nodestats(daemon: DaemonProcess, qemush: Qemush) -> None:
    data = json.loads(ok(qemush("-c", daemon.uri, "nodestats", "--json")))
    assert isinstance(data, dict) and data
    text = ok(qemush("-c", daemon.uri, "nodestats"))
    assert {line.partition("=")[0] for line in text.splitlines()} == set(data)


def _collect_lines(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def test_event_lifecycle(daemon: DaemonProcess, shell_env: dict[str, str],
                         xml_file: Path, tmp_path: Path) -> None:
    errors = tmp_path / "event.stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "client.shell", "-c", daemon.uri, "event", "--event",
             "lifecycle", "--loop", "--timeout", "20"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=shell_env,
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
            # Ctrl+C's default action, whatever this run inherited: a suite started in
            # the background by a shell has SIGINT ignored, and a Python started with it
            # ignored never turns it into KeyboardInterrupt (qemush would run to its
            # --timeout and say "timed out")
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    out: list[str] = []
    reader = threading.Thread(target=_collect_lines, args=(proc.stdout, out), daemon=True)
    reader.start()
    try:
        with daemon.connect() as conn:
            # registered once its connection made HELLO + EVENT_REGISTER
            wait_for(lambda: any(c.identity.startswith(f"pid={proc.pid} ") and c.calls >= 2
                                 for c in conn.client_list()), timeout=20,
                     message="qemush event registered")
            dom = conn.define_xml(xml_file.read_text())
            dom.undefine()
        # qemush prints (and flushes) each event as it comes: once both are out, stop it
        # as Ctrl+C would (a fixed pause could end it before a loaded machine got them out)
        wait_for(lambda: len(out) >= 2, timeout=20, message="both events printed")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(30)
    assert errors.read_text() == ""
    assert proc.returncode == 0
    assert out == [
        "event 'lifecycle' for domain 't1': Defined Added",
        "event 'lifecycle' for domain 't1': Undefined Removed",
        "event loop interrupted",
        "events received: 2",
    ]


def test_event_one_shot_and_timeout(daemon: DaemonProcess, qemush: Qemush) -> None:
    assert ok(qemush("-c", daemon.uri, "event", "--all", "--timeout", "1")) == \
        "event loop timed out\nevents received: 0\n"
    assert ok(qemush("-c", daemon.uri, "event", "--list")) == \
        "lifecycle\nreboot\nwatchdog\nmetadata-change\nappliance\n"
    proc = qemush("-c", daemon.uri, "event", "--event", "bogus")
    assert proc.returncode == 1 and "--event" in proc.stderr


def test_domain_name_completion_from_the_daemon(daemon: DaemonProcess, xml_file: Path
                                                ) -> None:
    sh = Shell(uri=daemon.uri)
    try:
        completer = Completer(sh.domain_names, sh.snapshot_names)
        assert completer.candidates("dominfo t") == []  # no domains yet
        with daemon.connect() as conn:
            conn.define_xml(xml_file.read_text())
            conn.define_xml(TINY.format(name="t2"))
        sh.forget_names()  # the shell does this after every command
        assert completer.candidates("dominfo ") == ["t1", "t2"]
        assert completer.candidates("start t") == ["t1", "t2"]
        assert completer.candidates("undefine t2") == ["t2"]
    finally:
        sh.disconnect()


def test_interactive_domain_session(daemon: DaemonProcess, qemush: Qemush,
                                    xml_file: Path) -> None:
    script = (f"define {xml_file}\n"
              "domstate nope\n"
              "domstate t1; domid t1\n"
              "autostart t1\n"
              "list --all --autostart --name\n"
              "undefine t1\n"
              "list --all --name\n")
    proc = qemush("-c", daemon.uri, input=script)
    assert proc.returncode == 0
    assert proc.stdout == (f"Domain 't1' defined from {xml_file}\n"
                           "shut off\n-\n"
                           "Domain 't1' marked as autostarted\n"
                           "t1\n"
                           "Domain 't1' has been undefined\n")
    assert proc.stderr.startswith("error: failed to get domain 'nope'\n")


# -- XML files: encodings and sizes (QA lifecycle A1, A2) ---------------------------------

LATIN1 = ('<?xml version="1.0" encoding="ISO-8859-1"?><domain type="qemu"><name>l\xe4t</name>'
          '<memory unit="MiB">64</memory><vcpu>1</vcpu>'
          '<os><type arch="x86_64">hvm</type></os></domain>\n').encode("latin-1")


def test_define_latin1_file_as_it_declares(daemon: DaemonProcess, qemush: Qemush,
                                           tmp_path: Path) -> None:
    path = tmp_path / "latin.xml"
    path.write_bytes(LATIN1)
    assert ok(qemush("-c", daemon.uri, "define", str(path))) == \
        f"Domain 'l\xe4t' defined from {path}\n"
    assert ok(qemush("-c", daemon.uri, "list", "--all", "--name")) == "l\xe4t\n"


@pytest.mark.parametrize("command", ["define", "create", "appliance-generate"])
def test_binary_file_is_an_error_and_the_session_goes_on(
        daemon: DaemonProcess, qemush: Qemush, tmp_path: Path, xml_file: Path,
        command: str) -> None:
    path = tmp_path / "bin.xml"
    path.write_bytes(bytes(range(256)) * 8)  # not UTF-8, no declaration
    proc = qemush("-c", daemon.uri, command, str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: Failed to ")
    assert lines[0].endswith(str(path))
    assert lines[1].startswith(f"error: {path} is not an XML document: byte 0x80 ")
    # interactive (piped): the error, then the next command still runs
    proc = qemush("-c", daemon.uri, input=f"{command} {path}\ndefine {xml_file}\n")
    assert proc.returncode == 0
    assert proc.stdout == f"Domain 't1' defined from {xml_file}\n"
    assert proc.stderr.splitlines()[1] == lines[1]


def test_too_large_file_is_an_error_and_the_session_goes_on(
        daemon: DaemonProcess, qemush: Qemush, tmp_path: Path, xml_file: Path) -> None:
    big = tmp_path / "big.xml"
    padding = "A" * 5_000_000
    big.write_text(TINY.format(name="big").replace(
        "<vcpu>", f"<description>{padding}</description><vcpu>"))
    size = big.stat().st_size
    for command in ("define", "create"):
        proc = qemush("-c", daemon.uri, command, str(big))
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"error: Failed to {command} domain from {big}",
            f"error: {big} is too large: {size} bytes, the protocol's limit is 4 MiB"]
    proc = qemush("-c", daemon.uri, input=f"define {big}\ndefine {xml_file}\n")
    assert proc.returncode == 0
    assert proc.stdout == f"Domain 't1' defined from {xml_file}\n"
    assert "too large" in proc.stderr


def test_call_the_protocol_cannot_carry_keeps_the_connection(daemon: DaemonProcess) -> None:
    """Under the shell's size check: the library refuses the call before sending it
    (InvalidCall), and the connection goes on working."""
    from client.errors import InvalidCall

    with daemon.connect() as conn:
        with pytest.raises(InvalidCall) as info:
            conn.define_xml(TINY.format(name="x" * 5_000_000))
        assert info.value.procedure == "DOMAIN_DEFINE_XML"
        assert info.value.message.startswith("cannot send DOMAIN_DEFINE_XML: ")
        # within MAX_STRING but over the frame limit: refused the same way
        fill = 4 * 1024 * 1024 - len(TINY.format(name=""))
        with pytest.raises(InvalidCall) as info:
            conn.define_xml(TINY.format(name="x" * fill))
        assert "frame limit" in info.value.message
        assert conn.is_alive
        assert conn.list_domains(0) == []


def test_domblklist_domiflist_inactive(daemon: DaemonProcess, qemush: Qemush,
                                       tmp_path: Path) -> None:
    path = tmp_path / "dev.xml"
    path.write_text(TINY.format(name="dev").replace("</os>", (
        "</os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{tmp_path}/d.img'/><target dev='vda' bus='virtio'/></disk>"
        "<interface type='user'><mac address='52:54:00:12:34:56'/>"
        "<model type='virtio'/></interface></devices>")))
    define(qemush, daemon, path, "dev")
    u = daemon.uri
    assert ok(qemush("-c", u, "domblklist", "dev", "--inactive")) == (
        " Target   Source\n"
        f"{'-' * (9 + len(str(tmp_path)) + 9)}\n"
        f" vda      {tmp_path}/d.img\n"
        "\n")
    assert ok(qemush("-c", u, "domiflist", "dev")) == (
        " Interface   Type   Source   Model    MAC\n"
        f"{'-' * 57}\n"
        " -           user   -        virtio   52:54:00:12:34:56\n"
        "\n")
    proc = qemush("-c", u, "domblklist", "nope")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: failed to get domain 'nope'\n")
