"""qemush ``metadata``, ``desc --edit``, ``event --event metadata-change`` and ``list
--title`` on a real daemon, printing what virsh prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from client.domain import AFFECT_CONFIG
from protocol.constants import MetadataType
from tests.client.conftest import REPO_ROOT, Qemush, ok
from tests.helpers.daemon import DaemonProcess

URI = "http://example.org/xmlns/inventory/1"
APPLIANCE = "http://qemud.org/xmlns/appliance/1"
GUEST = ("<domain type='qemu'><name>{name}</name><memory unit='KiB'>131072</memory>"
         "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")


@pytest.fixture
def defined(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> str:
    for name in ("sm", "sm-plain"):
        path = tmp_path / f"{name}.xml"
        path.write_text(GUEST.format(name=name))
        ok(qemush("-c", daemon.uri, "define", str(path)))
    return "sm"


def editor(tmp_path: Path, text: str | None) -> str:
    """An $EDITOR that writes ``text`` into the file it is given (None: leaves it)."""
    script = tmp_path / "editor.sh"
    body = ":" if text is None else f"cat {tmp_path / 'new.txt'} > \"$1\""
    if text is not None:
        (tmp_path / "new.txt").write_text(text)
    script.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path / 'seen.txt'}\n{body}\n")
    script.chmod(0o755)
    return str(script)


def seen(tmp_path: Path) -> str:
    return (tmp_path / "seen.txt").read_text()


def run(qemush: Qemush, daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    proc = qemush("-c", daemon.uri, *args)
    return proc.returncode, proc.stdout, proc.stderr


def test_metadata_get_set_remove(daemon: DaemonProcess, qemush: Qemush,
                                 defined: str) -> None:
    assert run(qemush, daemon, "metadata", "sm", URI) == (
        1, "", "error: metadata not found: Requested metadata element is not present\n")
    assert run(qemush, daemon, "metadata", "sm", URI, "--key", "inv", "--set",
               "<asset id='42'><owner>alice</owner></asset>") == (0, "Metadata modified\n",
                                                                 "")
    assert run(qemush, daemon, "metadata", "sm", URI) == (
        0, '<asset id="42">\n  <owner>alice</owner>\n</asset>\n', "")
    assert run(qemush, daemon, "metadata", "sm", "--uri", URI, "--config") == (
        0, '<asset id="42">\n  <owner>alice</owner>\n</asset>\n', "")
    dumped = ok(qemush("-c", daemon.uri, "dumpxml", "sm"))
    assert f'<inv:asset xmlns:inv="{URI}" id="42">' in dumped
    assert run(qemush, daemon, "metadata", "sm", URI, "--remove") == (
        0, "Metadata removed\n", "")
    assert run(qemush, daemon, "metadata", "sm", URI)[0] == 1


def test_metadata_errors(daemon: DaemonProcess, qemush: Qemush, defined: str) -> None:
    key_needed = (1, "", "error: namespace key is required when modifying metadata\n")
    assert run(qemush, daemon, "metadata", "sm", URI, "--set", "<a/>") == key_needed
    assert run(qemush, daemon, "metadata", "sm", URI, "--edit") == key_needed
    assert run(qemush, daemon, "metadata", "sm", URI, "--remove", "--set", "<a/>") == (
        1, "", "error: Options --remove and --set are mutually exclusive\n")
    assert run(qemush, daemon, "metadata", "sm", URI, "--edit", "--key", "k", "--set",
               "<a/>") == (1, "", "error: Options --edit and --set are mutually exclusive\n")
    assert run(qemush, daemon, "metadata", "sm", URI, "--current", "--live") == (
        1, "", "error: Options --current and --live are mutually exclusive\n")
    code, out, err = run(qemush, daemon, "metadata", "sm", URI, "--key", "k", "--set",
                         "<a><b></a>")
    assert (code, out) == (1, "")
    assert err.startswith("error: XML error: not well-formed XML: (metadata_xml):1: ")
    code, out, err = run(qemush, daemon, "metadata", "sm", URI, "--key", "k", "--live",
                         "--set", "<a/>")
    assert (code, out) == (1, "") and "is not running" in err
    # the appliance layer's settings: checked as at define
    code, out, err = run(qemush, daemon, "metadata", "sm", APPLIANCE, "--key", "qemud",
                         "--set", "<appliance><power guest-shutdown='explode'/></appliance>")
    assert (code, out) == (1, "") and "guest-shutdown" in err and "explode" in err
    assert run(qemush, daemon, "metadata", "sm", APPLIANCE, "--key", "qemud", "--set",
               "<appliance><power guest-shutdown='none'/></appliance>") == (
        0, "Metadata modified\n", "")


def test_metadata_edit(daemon: DaemonProcess, qemush: Qemush, shell_env: dict[str, str],
                       defined: str, tmp_path: Path) -> None:
    shell_env.pop("VISUAL", None)
    shell_env["EDITOR"] = editor(tmp_path, None)  # saves what it was given
    assert run(qemush, daemon, "metadata", "sm", URI, "--key", "inv", "--edit") == (
        0, "Metadata not changed\n", "")
    assert seen(tmp_path) == "\n"  # nothing yet: an empty file to write it in

    shell_env["EDITOR"] = editor(tmp_path, "<asset id='7'/>\n")
    assert run(qemush, daemon, "metadata", "sm", URI, "--key", "inv", "--edit") == (
        0, "Metadata modified\n", "")
    assert run(qemush, daemon, "metadata", "sm", URI) == (0, '<asset id="7"/>\n', "")

    shell_env["EDITOR"] = editor(tmp_path, "<asset id='7'")  # refused: nothing changes
    code, out, err = run(qemush, daemon, "metadata", "sm", URI, "--key", "inv", "--edit")
    assert (code, out) == (1, "") and "(metadata_xml)" in err
    assert seen(tmp_path) == '<asset id="7"/>'  # what is there, as a get gives it
    assert run(qemush, daemon, "metadata", "sm", URI) == (0, '<asset id="7"/>\n', "")
    assert not list(tmp_path.glob("qemush*.xml"))


def test_desc_edit(daemon: DaemonProcess, qemush: Qemush, shell_env: dict[str, str],
                   defined: str, tmp_path: Path) -> None:
    shell_env.pop("VISUAL", None)
    shell_env["TMPDIR"] = str(tmp_path)
    shell_env["EDITOR"] = editor(tmp_path, None)
    assert run(qemush, daemon, "desc", "sm", "--edit") == (
        0, "Domain description not changed\n", "")
    assert seen(tmp_path) == ""

    shell_env["EDITOR"] = editor(tmp_path, "two\nlines")
    assert run(qemush, daemon, "desc", "sm", "--edit") == (
        0, "Domain description updated successfully\n", "")
    assert run(qemush, daemon, "desc", "sm") == (0, "two\nlines\n", "")

    shell_env["EDITOR"] = editor(tmp_path, "A title\n")  # the editor's newline goes
    assert run(qemush, daemon, "desc", "sm", "--title", "--edit", "--config") == (
        0, "Domain title updated successfully\n", "")
    assert run(qemush, daemon, "desc", "sm", "--title") == (0, "A title\n", "")
    shell_env["EDITOR"] = editor(tmp_path, None)
    assert run(qemush, daemon, "desc", "sm", "--title", "--edit") == (
        0, "Domain title not changed\n", "")
    assert seen(tmp_path) == "A title"
    # with words, the editor starts from them; saved unchanged, nothing is set (virsh)
    assert run(qemush, daemon, "desc", "sm", "--title", "--edit", "New", "one") == (
        0, "Domain title not changed\n", "")
    assert seen(tmp_path) == "New one"
    assert run(qemush, daemon, "desc", "sm", "--title") == (0, "A title\n", "")

    shell_env["EDITOR"] = editor(tmp_path, "still\ntwo\n")
    code, out, err = run(qemush, daemon, "desc", "sm", "--title", "--edit")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: Failed to set new domain title",
        "error: invalid argument: metadata title can't contain newlines"]
    assert not list(tmp_path.glob("qemush*.xml"))


def test_event_metadata_change(daemon: DaemonProcess, qemush: Qemush,
                               shell_env: dict[str, str], defined: str) -> None:
    assert "metadata-change" in ok(qemush("-c", daemon.uri, "event", "--list")).split()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("sm")
        for change, line in [
                (lambda: dom.set_metadata(MetadataType.TITLE, "t"), "type title, uri <null>"),
                (lambda: dom.set_metadata(MetadataType.ELEMENT, "<a/>", AFFECT_CONFIG, "k",
                                          URI), f"type element, uri {URI}")]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "client.shell", "-c", daemon.uri, "event", "sm",
                 "--event", "metadata-change", "--timeout", "60"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shell_env,
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
            try:
                for _ in range(600):  # until it has registered and seen one
                    change()
                    try:
                        proc.wait(timeout=0.1)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert (proc.returncode, err) == (0, "")
            assert out == f"event 'metadata-change' for domain 'sm': {line}\n" \
                          "events received: 1\n"


def test_list_title(daemon: DaemonProcess, qemush: Qemush, defined: str) -> None:
    ok(qemush("-c", daemon.uri, "desc", "sm", "--title", "The", "shop"))
    lines = ok(qemush("-c", daemon.uri, "list", "--all", "--title")).splitlines()
    assert lines[0].split() == ["Id", "Name", "State", "Title"]
    rows = {line.split()[1]: line.split()[2:] for line in lines[2:] if line.strip()}
    assert rows == {"sm": ["shut", "off", "The", "shop"], "sm-plain": ["shut", "off"]}
