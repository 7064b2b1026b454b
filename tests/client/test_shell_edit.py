"""qemush edit on a real daemon: $VISUAL/$EDITOR run through ``sh -c`` on a temporary
file holding the persistent XML with its secrets; unchanged, edited and refused edits;
virsh's "Try again?" on a terminal; the temporary file never outlives the command."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.client.conftest import Qemush, ok
from tests.client.pty_shell import PtyShell
from tests.helpers.daemon import DaemonProcess

GUEST = ("<domain type='qemu'><name>ed</name><memory unit='KiB'>131072</memory>"
         "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
         "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>"
         "</devices></domain>\n")
#: an editor that records the file it was given (and a copy of it), then runs "$@"
RECORDER = """#!/bin/sh
file=$(eval echo \\${$#})
echo "$file" >> {log}
stat -c %a "$file" > {copy}.mode
cp "$file" {copy}
if [ $# -gt 1 ]; then
    "$@"
fi
"""


@pytest.fixture
def defined(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> Path:
    path = tmp_path / "ed.xml"
    path.write_text(GUEST)
    ok(qemush("-c", daemon.uri, "define", str(path)))
    return path


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "editor.sh"
    script.write_text(RECORDER.replace("{log}", str(tmp_path / "files.log"))
                      .replace("{copy}", str(tmp_path / "seen.xml")))
    script.chmod(0o755)
    return script


def edited_files(tmp_path: Path) -> list[str]:
    return (tmp_path / "files.log").read_text().split()


def memory(qemush: Qemush, daemon: DaemonProcess) -> str | None:
    root = ET.fromstring(ok(qemush("-c", daemon.uri, "dumpxml", "ed", "--inactive")))
    return root.findtext("memory")


def run_edit(qemush: Qemush, shell_env: dict[str, str], daemon: DaemonProcess,
             **editors: str) -> tuple[int, str, str]:
    for name in ("VISUAL", "EDITOR"):
        shell_env.pop(name, None)
    shell_env.update(editors)
    proc = qemush("-c", daemon.uri, "edit", "ed")
    return proc.returncode, proc.stdout, proc.stderr


def test_unchanged(daemon: DaemonProcess, qemush: Qemush, shell_env: dict[str, str],
                   defined: Path, recorder: Path, tmp_path: Path) -> None:
    code, out, err = run_edit(qemush, shell_env, daemon, EDITOR=str(recorder),
                              TMPDIR=str(tmp_path))
    assert (code, out, err) == (0, "Domain 'ed' XML configuration not changed.\n", "")
    [name] = edited_files(tmp_path)
    assert Path(name).parent == tmp_path and name.endswith(".xml")
    assert not Path(name).exists()
    # the inactive XML with its secrets, as virsh edit gives it
    seen = (tmp_path / "seen.xml").read_text()
    assert "passwd='s3cret'" in seen
    assert (tmp_path / "seen.xml.mode").read_text() == "600\n"  # for the user's eyes only


def test_edited_through_sh_c(daemon: DaemonProcess, qemush: Qemush,
                             shell_env: dict[str, str], defined: Path, recorder: Path,
                             tmp_path: Path) -> None:
    # $EDITOR carries its own arguments, as with virsh ("sh -c '$EDITOR FILE'")
    code, out, err = run_edit(qemush, shell_env, daemon, TMPDIR=str(tmp_path),
                              EDITOR=f"{recorder} sed -i s/131072/98304/g")
    assert (code, out, err) == (0, "Domain 'ed' XML configuration edited.\n", "")
    assert memory(qemush, daemon) == "98304"
    assert not Path(edited_files(tmp_path)[0]).exists()
    # $VISUAL comes first
    code, out, _ = run_edit(qemush, shell_env, daemon, VISUAL="sed -i s/98304/65536/g",
                            EDITOR="false")
    assert (code, out) == (0, "Domain 'ed' XML configuration edited.\n")
    assert memory(qemush, daemon) == "65536"


def test_refused_edit_without_a_terminal(daemon: DaemonProcess, qemush: Qemush,
                                         shell_env: dict[str, str], defined: Path,
                                         recorder: Path, tmp_path: Path) -> None:
    code, out, err = run_edit(qemush, shell_env, daemon, TMPDIR=str(tmp_path),
                              EDITOR=f"{recorder} sed -i s/131072/banana/")
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "banana" in lines[0], err
    assert lines[1] == "error: Failed. Domain 'ed' XML configuration not changed."
    assert memory(qemush, daemon) == "131072"
    assert not Path(edited_files(tmp_path)[0]).exists()


def test_failing_editor(daemon: DaemonProcess, qemush: Qemush, shell_env: dict[str, str],
                        defined: Path, tmp_path: Path) -> None:
    code, out, err = run_edit(qemush, shell_env, daemon, EDITOR="exit 3;",
                              TMPDIR=str(tmp_path))
    assert (code, out) == (1, "")
    assert re.fullmatch(r"error: Child process \(sh -c 'exit 3; \S+/qemush\w+\.xml'\) "
                        r"unexpected exit status 3\n", err), err
    assert list(tmp_path.glob("qemush*.xml")) == []
    assert memory(qemush, daemon) == "131072"


def test_try_again_on_a_terminal(daemon: DaemonProcess, qemush: Qemush,
                                 shell_env: dict[str, str], defined: Path,
                                 tmp_path: Path) -> None:
    # first run: a refused edit; second run (after "y"): a good one
    editor = tmp_path / "twice.sh"
    editor.write_text(f"""#!/bin/sh
if [ -e {tmp_path}/once ]; then
    sed -i s/banana/98304/ "$1"
else
    touch {tmp_path}/once
    sed -i s/131072/banana/ "$1"
fi
""")
    editor.chmod(0o755)
    env = dict(shell_env, EDITOR=str(editor), TMPDIR=str(tmp_path))
    shell = PtyShell(["-c", daemon.uri, "edit", "ed"], env)
    try:
        shell.read_until(b"Failed. Try again? [y,n,f,?]: ")
        assert b"error: " in shell.output and b"banana" in shell.output
        shell.send("?")
        shell.read_until(b"f - force, try to redefine again")
        shell.send("x")  # not an answer: asked again
        shell.send("y")
        shell.read_until(b"Domain 'ed' XML configuration edited.")
    finally:
        code = shell.close()
    assert code == 0
    text = shell.output.decode()
    assert "y - yes, start editor again" in text and "n - no, throw away my changes" in text
    assert "i - " not in text  # qemud has no validation to turn off
    assert memory(qemush, daemon) == "98304"
    assert list(tmp_path.glob("qemush*.xml")) == []

    # "n" gives up: nothing changes, status 1
    shell = PtyShell(["-c", daemon.uri, "edit", "ed"],
                     dict(env, EDITOR="sed -i s/98304/banana/"))
    try:
        shell.read_until(b"Try again? [y,n,f,?]: ")
        shell.send("n")
    finally:
        code = shell.close()
    assert code == 1
    assert memory(qemush, daemon) == "98304"
    assert list(tmp_path.glob("qemush*.xml")) == []
