"""qemush's snapshot XML and tree commands as virsh users know them: snapshot-dumpxml
(--security-info), snapshot-current without --name (the XML), snapshot-list --tree,
snapshot-parent; against a real daemon with shut-off qcow2 domains (``qemu-img`` makes
the overlays; the running case is in tests/appliance/test_snapshot_xml.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.integration

PASSWORD = "s3cret"


def _define(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path, name: str) -> Path:
    image = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                   check=True)
    xml = tmp_path / f"{name}.xml"
    xml.write_text(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                   "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
                   "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                   f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
                   "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' "
                   f"passwd='{PASSWORD}'/></devices></domain>\n")
    ok(qemush("-c", daemon.uri, "define", str(xml)))
    return image


def _failed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_snapshot_dumpxml_and_current(daemon: DaemonProcess, qemush: Qemush,
                                      tmp_path: Path) -> None:
    u = daemon.uri
    image = _define(daemon, qemush, tmp_path, "vx")
    ok(qemush("-c", u, "snapshot-create-as", "vx", "s1", "--description", "first"))
    ok(qemush("-c", u, "snapshot-create-as", "vx", "s2"))

    out = ok(qemush("-c", u, "snapshot-dumpxml", "vx", "s1"))
    assert out.startswith("<domainsnapshot>\n  <name>s1</name>\n"
                          "  <description>first</description>\n"
                          "  <state>shutoff</state>\n"), out
    root = etree.fromstring(out.encode())
    overlay = daemon.state_dir / "snapshots" / "vx" / "images" / "vda.s1.qcow2"
    assert root.find("disks/disk/source").get("file") == str(overlay)
    assert root.find("domain/devices/disk/source").get("file") == str(image)
    assert root.find("domain/devices/graphics").get("passwd") is None
    assert PASSWORD not in out

    # --security-info: the password, as dumpxml --security-info
    secure = ok(qemush("-c", u, "snapshot-dumpxml", "vx", "s1", "--security-info"))
    assert etree.fromstring(secure.encode()).find("domain/devices/graphics").get(
        "passwd") == PASSWORD

    # snapshot-current without --name: the current snapshot's XML (virsh's default)
    current = ok(qemush("-c", u, "snapshot-current", "vx"))
    assert current == ok(qemush("-c", u, "snapshot-dumpxml", "vx", "s2"))
    assert etree.fromstring(current.encode()).findtext("parent/name") == "s1"
    assert PASSWORD in ok(qemush("-c", u, "snapshot-current", "vx", "--security-info"))
    assert ok(qemush("-c", u, "snapshot-current", "vx", "--name")) == "s2\n"

    # a read-only connection reads the XML, never the secrets
    assert ok(qemush("-c", u, "-r", "snapshot-dumpxml", "vx", "s1")) == out
    refused = _failed(qemush("-c", u, "-r", "snapshot-dumpxml", "vx", "s1",
                             "--security-info"))
    assert "operation forbidden: virDomainSnapshotGetXMLDesc with secure flag" in refused
    assert "virDomainSnapshotGetXMLDesc with secure flag" in _failed(
        qemush("-c", u, "-r", "snapshot-current", "vx", "--security-info"))

    # errors, in virsh's words
    assert _failed(qemush("-c", u, "snapshot-dumpxml", "vx", "nope")) == (
        "error: Domain snapshot not found: no domain snapshot with matching name 'nope'\n")
    assert "failed to get domain 'nodom'" in _failed(
        qemush("-c", u, "snapshot-dumpxml", "nodom", "s1"))
    ok(qemush("-c", u, "snapshot-delete", "vx", "s2"))
    ok(qemush("-c", u, "snapshot-delete", "vx", "s1"))
    assert _failed(qemush("-c", u, "snapshot-current", "vx")) == (
        "error: Domain snapshot not found: the domain does not have a current snapshot\n")


def test_snapshot_list_tree_and_parent(daemon: DaemonProcess, qemush: Qemush,
                                       tmp_path: Path) -> None:
    u = daemon.uri
    _define(daemon, qemush, tmp_path, "vt")
    assert ok(qemush("-c", u, "snapshot-list", "vt", "--tree")) == ""
    for name in ("s1", "s2", "s3"):
        ok(qemush("-c", u, "snapshot-create-as", "vt", name))

    # a chain of three, as virsh draws it (vshTreePrint)
    assert ok(qemush("-c", u, "snapshot-list", "vt", "--tree")) == (
        "s1\n"
        "  |\n"
        "  +- s2\n"
        "      |\n"
        "      +- s3\n"
        "        \n")
    # a second branch from s1: siblings by name, '|' down to the last one
    ok(qemush("-c", u, "snapshot-revert", "vt", "s1"))
    ok(qemush("-c", u, "snapshot-create-as", "vt", "b1"))
    assert ok(qemush("-c", u, "snapshot-list", "vt", "--tree")) == (
        "s1\n"
        "  |\n"
        "  +- b1\n"
        "  +- s2\n"
        "      |\n"
        "      +- s3\n"
        "        \n")
    table = ok(qemush("-c", u, "snapshot-list", "vt", "--parent"))
    header = table.splitlines()[0].split()
    assert header == ["Name", "Creation", "Time", "State", "Parent"], table
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:] if line}
    assert rows["s2"] == "s1" and rows["s3"] == "s2" and rows["b1"] == "s1", table

    # snapshot-parent: the parent's name, or virsh's error for a root
    assert ok(qemush("-c", u, "snapshot-parent", "vt", "s3")) == "s2\n"
    assert ok(qemush("-c", u, "snapshot-parent", "vt", "--current")) == "s1\n"
    assert _failed(qemush("-c", u, "snapshot-parent", "vt", "s1")) == (
        "error: snapshot 's1' has no parent\n")
    assert _failed(qemush("-c", u, "snapshot-parent", "vt", "nope")) == (
        "error: Domain snapshot not found: no domain snapshot with matching name 'nope'\n")
    assert "--snapshotname or --current is required" in _failed(
        qemush("-c", u, "snapshot-parent", "vt"))

    # virsh's exclusive options
    assert "Options --parent and --tree are mutually exclusive" in _failed(
        qemush("-c", u, "snapshot-list", "vt", "--tree", "--parent"))
    assert "Options --tree and --name are mutually exclusive" in _failed(
        qemush("-c", u, "snapshot-list", "vt", "--tree", "--name"))
