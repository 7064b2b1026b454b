"""qemush as a subprocess against a real daemon: host commands, errors, modes."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import client
from client.format import version_string
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.helpers.daemon import DaemonProcess, wait_for


def test_uri_and_hostname(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as conn:
        uri, hostname = conn.uri(), conn.hostname()
    assert ok(qemush("-c", daemon.uri, "uri")) == uri + "\n"
    assert ok(qemush("--connect", daemon.uri, "hostname")) == hostname + "\n"
    assert ok(qemush(f"--connect={daemon.uri}", "-r", "hostname")) == hostname + "\n"
    # several commands in one argument, as virsh allows
    assert ok(qemush("-c", daemon.uri, "uri; hostname")) == f"{uri}\n{hostname}\n"


def test_version(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as conn:
        v = conn.version()
    lines = ok(qemush("-c", daemon.uri, "version")).splitlines()
    assert re.fullmatch(r"Compiled against library: qemud \S+", lines[0])
    assert re.fullmatch(r"Using library: qemud \d+\.\d+\.\d+", lines[1])
    assert f"Running against daemon: qemud {v.daemon_version_string}" in lines
    hv = version_string(v.hypervisor_version) if v.hypervisor_version else "(version unknown)"
    assert f"Running hypervisor: {v.hypervisor} {hv}" in lines
    data = json.loads(ok(qemush("-c", daemon.uri, "version", "--json")))
    assert data["daemon"] == v.daemon_version_string
    assert data["hypervisor"] == v.hypervisor
    assert data["hypervisor_version_code"] == v.hypervisor_version
    assert data["protocol"] == 1
    # the global --json gives the same document
    assert json.loads(ok(qemush("-c", daemon.uri, "--json", "version"))) == data


def test_nodeinfo_text_and_json(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as conn:
        n = conn.node_info()
    text = ok(qemush("-c", daemon.uri, "nodeinfo"))
    assert text == (
        f"CPU model:           {n.model}\n"
        f"CPU(s):              {n.cpus}\n"
        f"CPU frequency:       {n.mhz} MHz\n"
        f"CPU socket(s):       {n.sockets}\n"
        f"Core(s) per socket:  {n.cores}\n"
        f"Thread(s) per core:  {n.threads}\n"
        f"NUMA cell(s):        {n.nodes}\n"
        f"Memory size:         {n.memory_kib} KiB\n"
        "\n"
    )
    data = json.loads(ok(qemush("-c", daemon.uri, "nodeinfo", "--json")))
    assert data == {"model": n.model, "cpus": n.cpus, "mhz": n.mhz, "sockets": n.sockets,
                    "cores": n.cores, "threads": n.threads, "nodes": n.nodes,
                    "memory_kib": n.memory_kib}
    assert json.loads(ok(qemush("--json", "-c", daemon.uri, "nodeinfo"))) == data
    # read-only connections may ask
    assert json.loads(ok(qemush("-r", "-c", daemon.uri, "--json", "nodeinfo"))) == data


def test_capabilities(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as conn:
        expected = conn.capabilities()
    out = ok(qemush("-c", daemon.uri, "capabilities"))
    assert out.rstrip("\n") == expected.rstrip("\n")
    assert ET.fromstring(out).tag == "capabilities"


def test_client_list(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect(client_name="observer") as other:
        lines = ok(qemush("-c", daemon.uri, "client-list")).splitlines()
        assert re.fullmatch(r" Id +Connection time +Transport +Read-only +Calls +Identity",
                            lines[0])
        assert set(lines[1]) == {"-"}
        rows = [line.split() for line in lines[2:] if line]
        assert len(rows) == 2  # the library connection and qemush itself
        assert all(r[3] == "unix" and r[4] == "no" for r in rows)
        data = json.loads(ok(qemush("-c", daemon.uri, "client-list", "--json")))
        assert len(data) == 2
        assert {c["transport"] for c in data} == {"unix"}
        assert all(c["identity"].startswith("pid=") and c["readonly"] is False for c in data)
        assert other.is_alive


def test_client_list_refused_read_only(daemon: DaemonProcess, qemush: Qemush) -> None:
    proc = qemush("-r", "-c", daemon.uri, "client-list")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert READONLY_REFUSAL in proc.stderr.splitlines()
    assert all(line.startswith("error: ") for line in proc.stderr.splitlines())


def test_client_disconnect(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as victim, daemon.connect() as admin:
        before = {c.id for c in admin.client_list()}
        # the victim is the older of the two
        victim_id = min(before)
        proc = qemush("-r", "-c", daemon.uri, "client-disconnect", str(victim_id))
        assert proc.returncode == 1 and READONLY_REFUSAL in proc.stderr
        assert ok(qemush("-c", daemon.uri, "client-disconnect", str(victim_id))) == \
            f"Client '{victim_id}' disconnected\n"
        wait_for(lambda: not _answers(victim), timeout=10, message="victim disconnected")
        proc = qemush("-c", daemon.uri, "client-disconnect", "99999")
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[0] == "error: Failed to disconnect client '99999'"
        for bad in ("abc", "1_0", str(2**64)):  # (the id is 64 bits on the wire)
            proc = qemush("-c", daemon.uri, "client-disconnect", bad)
            assert proc.returncode == 1 and f"Invalid client ID '{bad}'" in proc.stderr


def _answers(conn: client.Connection) -> bool:
    try:
        conn.hostname()
        return True
    except client.QemudClientError:
        return False


def test_help_needs_no_daemon(qemush: Qemush, tmp_path: Path) -> None:
    nowhere = f"qemud+unix:///session?socket={tmp_path}/none"
    text = ok(qemush("-c", nowhere, "help"))
    assert text.startswith("Grouped commands:")
    for title in ("Domain Management (help keyword 'domain')",
                  "Domain Monitoring (help keyword 'monitor')", "Snapshot",
                  "Host and Hypervisor", "Daemon Administration"):
        assert title in text
    assert re.search(r"^    dominfo +domain information$", text, re.M)

    page = ok(qemush("-c", nowhere, "help", "list"))
    assert "  NAME\n    list - list domains\n" in page
    for flag in ("--all", "--inactive", "--state-running", "--state-paused",
                 "--state-shutoff", "--name", "--uuid", "--persistent", "--transient",
                 "--autostart", "--table", "--json"):
        assert f"    {flag} " in page, flag
    assert ok(qemush("-c", nowhere, "list", "--help")) == page

    assert "snapshot-revert" in ok(qemush("help", "snapshot"))
    proc = qemush("help", "frobnicate")
    assert proc.returncode == 1
    assert proc.stderr == "error: command or command group 'frobnicate' doesn't exist\n"


def test_unknown_command_and_bad_options(daemon: DaemonProcess, qemush: Qemush) -> None:
    proc = qemush("-c", daemon.uri, "frobnicate")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "error: unknown command: 'frobnicate'\n"

    proc = qemush("-c", daemon.uri, "list", "--bogus")
    assert proc.returncode == 1
    assert proc.stderr == "error: command 'list' doesn't support option --bogus\n"

    proc = qemush("-c", daemon.uri, "dominfo")
    assert proc.returncode == 1
    assert proc.stderr == "error: command 'dominfo' requires <domain> option\n"

    proc = qemush("--frobnicate", "uri")
    assert proc.returncode == 1
    assert "error: unsupported option '--frobnicate'" in proc.stderr

    # one-shot, as virsh: a failure does not stop the rest, the last one's status counts
    proc = qemush("-c", daemon.uri, "frobnicate; uri")
    assert (proc.returncode, proc.stdout) == (0, "qemud:///session\n"), proc.stderr
    assert proc.stderr == "error: unknown command: 'frobnicate'\n"
    proc = qemush("-c", daemon.uri, "uri; frobnicate")
    assert (proc.returncode, proc.stdout) == (1, "qemud:///session\n")


def test_missing_domain(daemon: DaemonProcess, qemush: Qemush) -> None:
    proc = qemush("-c", daemon.uri, "dominfo", "no-such-domain")
    assert (proc.returncode, proc.stdout) == (1, "")
    lines = proc.stderr.splitlines()
    assert lines[0] == "error: failed to get domain 'no-such-domain'"
    assert len(lines) == 2 and lines[1].startswith("error: ")


def test_cannot_connect(qemush: Qemush, tmp_path: Path) -> None:
    proc = qemush("-c", f"qemud+unix:///session?socket={tmp_path}/none", "uri")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "error: failed to connect to the hypervisor"
    assert "does not exist" in lines[1]
    proc = qemush("-c", "qemud+tls:///system", "uri")
    assert proc.returncode == 1 and "qemud+tls needs a host" in proc.stderr


def test_interactive_via_stdin(daemon: DaemonProcess, qemush: Qemush) -> None:
    with daemon.connect() as conn:
        uri, hostname = conn.uri(), conn.hostname()
    script = "\n".join([
        "frobnicate",  # fails ...
        "hostname",  # ... and the session goes on
        "dominfo 'no such'",
        "uri; nodeinfo --json",
        "# a comment line",
        "",
        "list --bogus",
        'help "unterminated',
        "quit",
        "uri",  # never reached
    ]) + "\n"
    proc = qemush("-c", daemon.uri, input=script)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"{hostname}\n{uri}\n{{")
    assert out.count(uri) == 1
    assert "qemush #" not in out  # no prompt when stdin is not a terminal
    assert json.loads(out[len(hostname) + len(uri) + 2:])["cpus"] >= 1
    assert proc.stderr.splitlines() == [
        "error: unknown command: 'frobnicate'",
        "error: failed to get domain 'no such'",
        proc.stderr.splitlines()[2],  # the daemon's message
        "error: command 'list' doesn't support option --bogus",
        'error: missing "',
    ]


def test_interactive_eof_and_exit(daemon: DaemonProcess, qemush: Qemush) -> None:
    proc = qemush("-c", daemon.uri, input="uri\n")  # EOF ends the session
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    proc = qemush("-c", daemon.uri, input="exit\nuri\n")
    assert (proc.returncode, proc.stdout) == (0, "")
    proc = qemush("-r", "-c", daemon.uri, input="client-list\nuri\n")
    assert proc.returncode == 0
    assert READONLY_REFUSAL in proc.stderr and proc.stdout.strip().startswith("qemud")
    # connect switches the session's connection (here: to read-only and back)
    proc = qemush("-c", daemon.uri, input="client-list --json\nconnect --readonly\n"
                  "client-list\nconnect\nclient-list --json\n")
    assert proc.returncode == 0
    assert proc.stderr.splitlines()[-1] == READONLY_REFUSAL
    assert proc.stdout.count('"transport": "unix"') == 2


def test_connection_failure_in_interactive_mode_is_not_fatal(qemush: Qemush,
                                                            tmp_path: Path) -> None:
    proc = qemush("-c", f"qemud+unix:///session?socket={tmp_path}/none",
                  input="uri\nhelp help\n")
    assert proc.returncode == 0
    assert "error: failed to connect to the hypervisor" in proc.stderr
    assert "help - print help" in proc.stdout


def test_console_script_is_installed() -> None:
    import shutil
    import sys

    script = Path(sys.executable).parent / "qemush"
    assert script.exists() or shutil.which("qemush"), "pip install -e . generates qemush"
