"""qemush domrename end to end (subprocess + real daemon, no QEMU started): virsh's output
and errors, by name and by uuid, and the read-only refusal."""

from __future__ import annotations

from pathlib import Path

from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.helpers.daemon import DaemonProcess

TINY = ("<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")


def define(qemush: Qemush, daemon: DaemonProcess, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.xml"
    path.write_text(TINY.format(name=name))
    ok(qemush("-c", daemon.uri, "define", str(path)))
    return ok(qemush("-c", daemon.uri, "domuuid", name)).strip()


def names(qemush: Qemush, daemon: DaemonProcess) -> list[str]:
    lines = ok(qemush("-c", daemon.uri, "list", "--all", "--name")).splitlines()
    return [line for line in lines if line]


def test_domrename_by_name_and_by_uuid(daemon: DaemonProcess, qemush: Qemush,
                                       tmp_path: Path) -> None:
    uuid = define(qemush, daemon, tmp_path, "sh-a")
    assert ok(qemush("-c", daemon.uri, "domrename", "sh-a", "sh-b")) == \
        "Domain successfully renamed\n"
    assert names(qemush, daemon) == ["sh-b"]
    assert ok(qemush("-c", daemon.uri, "domuuid", "sh-b")).strip() == uuid
    # --option form, and the domain named by its uuid
    assert ok(qemush("-c", daemon.uri, "domrename", "--domain", uuid,
                     "--new-name", "sh-c")) == "Domain successfully renamed\n"
    assert names(qemush, daemon) == ["sh-c"]


def test_domrename_errors(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    define(qemush, daemon, tmp_path, "er-a")
    define(qemush, daemon, tmp_path, "er-b")
    taken = qemush("-c", daemon.uri, "domrename", "er-a", "er-b")
    assert taken.returncode == 1 and taken.stdout == ""
    assert taken.stderr == ("error: Requested operation is not valid: domain with name "
                            "'er-b' already exists\n")
    missing = qemush("-c", daemon.uri, "domrename", "nope", "x")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: failed to get domain 'nope'\n")
    usage = qemush("-c", daemon.uri, "domrename", "er-a")
    assert usage.returncode == 1
    assert usage.stderr == "error: command 'domrename' requires <new-name> option\n"
    readonly = qemush("-r", "-c", daemon.uri, "domrename", "er-a", "er-c")
    assert readonly.returncode == 1 and READONLY_REFUSAL in readonly.stderr
    assert names(qemush, daemon) == ["er-a", "er-b"]
