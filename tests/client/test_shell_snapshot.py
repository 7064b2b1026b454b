"""qemush snapshot commands and the snapshot filters of ``list``, against a real daemon
(shut-off domains with qcow2 disks: snapshots need qemu-img, not a running QEMU)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import REPO_ROOT, Qemush, ok
from tests.helpers.daemon import DaemonProcess
from tests.helpers.tty import read_to_eof

pytestmark = pytest.mark.integration


def _domain_xml(name: str, image: Path) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>\n")


@pytest.fixture
def two_domains(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> list[str]:
    """Shut-off domains ``snap-a`` and ``snap-b`` (qcow2 disks), neither with a snapshot."""
    names = ["snap-a", "snap-b"]
    for name in names:
        image = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                       check=True)
        xml = tmp_path / f"{name}.xml"
        xml.write_text(_domain_xml(name, image))
        ok(qemush("-c", daemon.uri, "define", str(xml)))
    return names


def test_create_as_accepts_disk_only_and_atomic(daemon: DaemonProcess, qemush: Qemush,
                                                two_domains: list[str]) -> None:
    assert ok(qemush("-c", daemon.uri, "snapshot-create-as", "snap-a", "s1", "--disk-only",
                     "--atomic")) == "Domain snapshot s1 created\n"
    assert ok(qemush("-c", daemon.uri, "snapshot-list", "snap-a", "--name")) == "s1\n"


def test_snapshot_list_json_ends_with_a_newline(daemon: DaemonProcess, qemush: Qemush,
                                                two_domains: list[str]) -> None:
    ok(qemush("-c", daemon.uri, "snapshot-create-as", "snap-a", "s1"))
    for argv in (["snapshot-list", "snap-a", "--json"], ["--json", "snapshot-list", "snap-a"],
                 ["snapshot-list", "snap-b", "--json"]):
        out = ok(qemush("-c", daemon.uri, *argv))
        assert out.endswith("]\n"), argv
    # interactive: the next output starts on a line of its own
    proc = qemush("-c", daemon.uri, input="snapshot-list snap-a --json\ndomid snap-a\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("]\n-\n")
    assert [s["name"] for s in json.loads(proc.stdout[:-2])] == ["s1"]


def test_list_with_and_without_snapshot_filter(daemon: DaemonProcess, qemush: Qemush,
                                               two_domains: list[str]) -> None:
    u = daemon.uri
    ok(qemush("-c", u, "snapshot-create-as", "snap-a", "s1"))
    assert ok(qemush("-c", u, "list", "--all", "--with-snapshot", "--name")) == "snap-a\n"
    assert ok(qemush("-c", u, "list", "--all", "--without-snapshot", "--name")) == "snap-b\n"
    # both, like neither, keep every domain (libvirt's rule for a filter group)
    assert ok(qemush("-c", u, "list", "--all", "--with-snapshot", "--without-snapshot",
                     "--name")) == "snap-a\nsnap-b\n"
    # combined with the daemon's filters (nothing is running)
    assert ok(qemush("-c", u, "list", "--with-snapshot", "--name")) == ""
    # the JSON listing filters too, and a read-only connection may ask
    rows = json.loads(ok(qemush("-c", u, "-r", "list", "--all", "--with-snapshot",
                                "--json")))
    assert [r["name"] for r in rows] == ["snap-a"]


def test_snapshot_list_json_on_a_terminal(daemon: DaemonProcess, shell_env: dict[str, str],
                                          qemush: Qemush, two_domains: list[str]) -> None:
    """On a terminal too the JSON ends its line (the prompt must not land on the ']')."""
    ok(qemush("-c", daemon.uri, "snapshot-create-as", "snap-a", "s1"))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "client.shell", "-c", daemon.uri,
                             "snapshot-list", "snap-a", "--json"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=shell_env, cwd=REPO_ROOT)
    os.close(slave)
    out = read_to_eof(master)
    os.close(master)
    assert proc.wait(timeout=60) == 0, out
    assert out.endswith(b"]\r\n"), out
