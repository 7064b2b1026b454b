"""qemush's virsh snapshot commands and options: snapshot-current, snapshot-info,
snapshot-list --current, snapshot-delete --metadata, snapshot-revert --running/--paused,
and virsh's snapshot state words; against a real daemon with shut-off qcow2 domains
(snapshots need qemu-img, not a running QEMU; the running cases are in
tests/appliance/test_snapshot_virsh_flags.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.integration


def _define(daemon: DaemonProcess, qemush: Qemush, tmp_path: Path, name: str) -> Path:
    image = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                   check=True)
    xml = tmp_path / f"{name}.xml"
    xml.write_text(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                   "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
                   "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                   f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
                   "</devices></domain>\n")
    ok(qemush("-c", daemon.uri, "define", str(xml)))
    return image


def _failed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_snapshot_info_and_current(daemon: DaemonProcess, qemush: Qemush,
                                   tmp_path: Path) -> None:
    u = daemon.uri
    _define(daemon, qemush, tmp_path, "vi")
    # no snapshot yet: no current one, in libvirt's words
    assert _failed(qemush("-c", u, "snapshot-current", "vi", "--name")) == (
        "error: Domain snapshot not found: the domain does not have a current snapshot\n")
    assert "does not have a current snapshot" in _failed(
        qemush("-c", u, "snapshot-info", "vi", "--current"))
    assert ok(qemush("-c", u, "snapshot-list", "vi", "--current", "--name")) == ""

    for name in ("s1", "s2", "s3"):
        ok(qemush("-c", u, "snapshot-create-as", "vi", name))
    assert ok(qemush("-c", u, "snapshot-current", "vi", "--name")) == "s3\n"
    assert ok(qemush("-c", u, "snapshot-list", "vi", "--current", "--name")) == "s3\n"
    table = ok(qemush("-c", u, "snapshot-list", "vi", "--current"))
    assert "s3" in table and "s1" not in table and "shutoff" in table, table

    # virsh's fields and layout (%-15s %s): s1 <- s2 <- s3, of a shut-off domain
    assert ok(qemush("-c", u, "snapshot-info", "vi", "s1")) == (
        "Name:           s1\n"
        "Domain:         vi\n"
        "Current:        no\n"
        "State:          shutoff\n"
        "Location:       external\n"
        "Parent:         -\n"
        "Children:       1\n"
        "Descendants:    2\n"
        "Metadata:       yes\n")
    info = ok(qemush("-c", u, "snapshot-info", "vi", "--current"))
    assert info.splitlines()[:3] == ["Name:           s3", "Domain:         vi",
                                     "Current:        yes"]
    assert "Parent:         s2\n" in info and "Children:       0\n" in info
    assert "Descendants:    0\n" in info

    # a revert makes s1 current: s2 and s3 stay its descendants
    ok(qemush("-c", u, "snapshot-revert", "vi", "s1"))
    assert ok(qemush("-c", u, "snapshot-current", "vi", "--name")) == "s1\n"
    assert "Current:        yes\n" in ok(qemush("-c", u, "snapshot-info", "vi", "s1"))

    # virsh's argument rules
    assert "--snapshotname or --current is required" in _failed(
        qemush("-c", u, "snapshot-info", "vi"))
    assert "mutually exclusive" in _failed(
        qemush("-c", u, "snapshot-info", "vi", "s1", "--current"))
    assert _failed(qemush("-c", u, "snapshot-info", "vi", "nope")) == (
        "error: Domain snapshot not found: no domain snapshot with matching name 'nope'\n")
    assert "Options --running and --paused are mutually exclusive" in _failed(
        qemush("-c", u, "snapshot-revert", "vi", "s1", "--running", "--paused"))
    # without --name, virsh prints the current snapshot's XML
    assert "<name>s1</name>" in ok(qemush("-c", u, "snapshot-current", "vi"))


def test_snapshot_delete_metadata_keeps_every_image(daemon: DaemonProcess, qemush: Qemush,
                                                    tmp_path: Path) -> None:
    u = daemon.uri
    image = _define(daemon, qemush, tmp_path, "vm")
    ok(qemush("-c", u, "snapshot-create-as", "vm", "s1"))
    ok(qemush("-c", u, "snapshot-create-as", "vm", "s2"))
    images = daemon.state_dir / "snapshots" / "vm" / "images"
    before = sorted(p.name for p in images.iterdir())
    assert before == ["vda.s1.qcow2", "vda.s2.qcow2"]

    # s2 is the latest: a plain delete would merge vda.s2 into vda.s1; --metadata doesn't
    assert ok(qemush("-c", u, "snapshot-delete", "vm", "s2", "--metadata")) == (
        "Domain snapshot s2 deleted\n")
    assert ok(qemush("-c", u, "snapshot-list", "vm", "--name")) == "s1\n"
    assert ok(qemush("-c", u, "snapshot-current", "vm", "--name")) == "s1\n"
    assert sorted(p.name for p in images.iterdir()) == before
    assert str(images / "vda.s2.qcow2") in ok(qemush("-c", u, "dumpxml", "vm"))

    # a revert to s1 discards the disk's top overlay as before, but never vda.s1.qcow2,
    # the image s2 froze, now the user's
    ok(qemush("-c", u, "snapshot-revert", "vm", "s1"))
    assert sorted(p.name for p in images.iterdir()) == ["vda.s1-revert.qcow2",
                                                         "vda.s1.qcow2"]
    # nor does a delete of s1 merge into it or below it: metadata only
    ok(qemush("-c", u, "snapshot-delete", "vm", "s1"))
    assert ok(qemush("-c", u, "snapshot-list", "vm", "--name")) == ""
    assert (images / "vda.s1.qcow2").is_file() and image.is_file()
    out = subprocess.run(["qemu-img", "info", "-U", str(images / "vda.s1.qcow2")],
                         capture_output=True, text=True, check=True).stdout
    assert str(image) in out  # still reads from the original image


def test_snapshot_list_is_sorted_by_name_as_virsh_sorts_it(
        daemon: DaemonProcess, qemush: Qemush, tmp_path: Path) -> None:
    """virsh sorts the listing by name, ignoring case (virshSnapSorter), not by creation
    time; --tree shows the creation chain."""
    u = daemon.uri
    _define(daemon, qemush, tmp_path, "order")
    for name in ("b-two", "A-one", "c-three"):
        ok(qemush("-c", u, "snapshot-create-as", "order", name))
    assert ok(qemush("-c", u, "snapshot-list", "order", "--name")) == \
        "A-one\nb-two\nc-three\n"
    table = ok(qemush("-c", u, "snapshot-list", "order")).splitlines()
    assert [line.split()[0] for line in table[2:] if line.strip()] == \
        ["A-one", "b-two", "c-three"]
