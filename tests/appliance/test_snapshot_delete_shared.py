"""Deleting a snapshot does not merge into an image another domain reads through a
backing chain the daemon did not make (a VM cloned by hand with ``qemu-img create -b``):
the qcow2 headers are followed, and the delete is then metadata only. Real qemu-img and
a real daemon, as in test_snapshot_delete; the other domains are only defined."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import client
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .snapshot_chains import backing_chain, digest, flat_copy, qemu_io_write_at, same_content
from .snapshot_guests import (
    Guest,
    disk_source,
    disk_xml,
    first_bytes,
    make_image,
    qcow2_guest,
    qemu_io_write,
)
from .snapshot_guests import qemud as qemud  # the module's daemon fixture

pytestmark = pytest.mark.integration


def overlay(path: Path, backing: str, *, cwd: Path | None = None) -> Path:
    """A qcow2 overlay on ``backing`` (a name relative to ``path``'s directory, or
    absolute), as an admin cloning a VM makes it."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                    str(path)], check=True, cwd=cwd)
    return path


def test_clone_on_the_snapshots_image_is_not_merged_into(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """B's disk is an overlay on A's image: committing A's overlay into that image would
    change what B reads."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "shr-a")
    clone = overlay(tmp_path / "shr-b.qcow2", str(data))
    b = Guest(conn, test_guest, "shr-b", tmp_path, disk_xml(clone))
    try:
        qemu_io_write(str(data), "A")
        qemu_io_write_at(str(clone), "b", 65536)  # B's own data, in its overlay
        a.dom.snapshot_create("s")
        top = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")  # A's later data: would land in data.qcow2
        b_view = flat_copy(str(clone), tmp_path / "b.raw")
        a_view = flat_copy(top, tmp_path / "a.raw")
        files = {p: digest(p) for p in (str(data), str(clone), top)}

        a.dom.snapshot_delete("s")
        # what B reads did not change (the old code merged A's data under it)
        assert same_content(b_view, str(clone)) and first_bytes(clone, "qcow2", 1) == b"A"
        assert a.dom.snapshots() == []
        assert {p: digest(p) for p in files} == files  # no image was written
        assert (f"domain shr-a: snapshot s: metadata only, no merge ({data} is in the "
                "backing chain of disk vda of domain shr-b)") in qemud.log_text()
        assert disk_source(a.dom.xml(client.XML_INACTIVE)) == top
        assert backing_chain(top) == [top, str(data)]
        assert same_content(a_view, top) and first_bytes(top, "qcow2", 1) == b"B"
    finally:
        b.close()
        a.close()


def test_clone_two_levels_down_is_not_merged_into(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """B -> mid -> A's image, with relative backing names, and S deeper in A's chain
    (the layer merge): the same."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "shr2-a")
    clones = tmp_path / "clones"
    clones.mkdir()
    mid = overlay(clones / "mid.qcow2", f"../{data.name}", cwd=clones)
    clone = overlay(clones / "shr2-b.qcow2", "mid.qcow2", cwd=clones)
    b = Guest(conn, test_guest, "shr2-b", tmp_path, disk_xml(clone))
    try:
        qemu_io_write(str(data), "A")
        a.dom.snapshot_create("s1")
        layer = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(layer, "B")
        a.dom.snapshot_create("s2")
        top = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "C")
        b_view = flat_copy(str(clone), tmp_path / "b.raw")
        a_view = flat_copy(top, tmp_path / "a.raw")
        files = {p: digest(p) for p in (str(data), str(mid), str(clone), layer, top)}

        a.dom.snapshot_delete("s1")
        # what B reads did not change (the old code merged A's data under it)
        assert same_content(b_view, str(clone)) and first_bytes(clone, "qcow2", 1) == b"A"
        assert [s.name for s in a.dom.snapshots()] == ["s2"]
        assert {p: digest(p) for p in files} == files
        assert (f"domain shr2-a: snapshot s1: metadata only, no merge ({data} is in the "
                "backing chain of disk vda of domain shr2-b)") in qemud.log_text()
        assert backing_chain(top) == [top, layer, str(data)]
        assert same_content(a_view, top) and first_bytes(top, "qcow2", 1) == b"C"
    finally:
        b.close()
        a.close()


def test_unrelated_clone_does_not_stop_the_merge(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """Control: B's chain (two levels) reaches another image, not A's: A merges."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "shr3-a")
    other = make_image(tmp_path / "other-base.qcow2")
    mid = overlay(tmp_path / "mid.qcow2", str(other))
    clone = overlay(tmp_path / "shr3-b.qcow2", str(mid))
    b = Guest(conn, test_guest, "shr3-b", tmp_path, disk_xml(clone))
    try:
        qemu_io_write(str(other), "O")
        qemu_io_write(str(data), "A")
        a.dom.snapshot_create("s")
        top = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")
        a.dom.snapshot_delete("s")
        assert a.dom.snapshots() == []
        assert f"snapshot s deleted, merged (vda: {top} -> {data})" in qemud.log_text()
        assert disk_source(a.dom.xml(client.XML_INACTIVE)) == str(data)
        assert not Path(top).exists() and first_bytes(data, "qcow2", 1) == b"B"
        assert first_bytes(clone, "qcow2", 1) == b"O"
    finally:
        b.close()
        a.close()


def test_unreadable_chain_is_not_merged_into(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """B -> mid whose header is damaged: B may read A's image, nobody can tell: no
    merge (fail safe), and the log names the cause. Repaired, A merges."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "shr4-a")
    other = make_image(tmp_path / "other-base.qcow2")  # B's chain does not reach A's
    mid = overlay(tmp_path / "mid.qcow2", str(other))
    clone = overlay(tmp_path / "shr4-b.qcow2", str(mid))
    b = Guest(conn, test_guest, "shr4-b", tmp_path, disk_xml(clone))
    try:
        qemu_io_write(str(data), "A")
        a.dom.snapshot_create("s")
        top = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")
        with open(mid, "r+b") as f:  # mid's qcow2 magic
            magic = f.read(4)
            f.seek(0)
            f.write(b"\0\0\0\0")
        files = {p: digest(p) for p in (str(data), top)}

        a.dom.snapshot_delete("s")
        assert a.dom.snapshots() == []
        assert Path(top).exists()  # not merged (nor removed)
        assert {p: digest(p) for p in files} == files
        assert (f"domain shr4-a: snapshot s: metadata only, no merge (the backing chain "
                f"of disk vda of domain shr4-b cannot be read ({mid}: not a qcow2 image "
                "(no QFI\\xfb magic)): it may reach the merged images)") in qemud.log_text()

        with open(mid, "r+b") as f:
            f.write(magic)
        a.dom.snapshot_create("t")
        top2 = disk_source(a.dom.xml(client.XML_INACTIVE))
        a.dom.snapshot_delete("t")
        assert f"snapshot t deleted, merged (vda: {top2} -> {top})" in qemud.log_text()
    finally:
        b.close()
        a.close()


def test_other_domains_snapshot_on_the_image_is_not_merged_into(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """B's disk no longer reaches A's image, but a snapshot of B froze an overlay on it:
    a revert of B would read it. No merge."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "shr5-a")
    clone = overlay(tmp_path / "shr5-b.qcow2", str(data))
    b = Guest(conn, test_guest, "shr5-b", tmp_path, disk_xml(clone))
    try:
        qemu_io_write(str(data), "A")
        b.dom.snapshot_create("b1")  # freezes clone (-> data)
        # B's disk replaced by an unrelated image; its snapshot b1 still names clone
        b.dom = conn.define_xml(b.dom.xml(client.XML_INACTIVE).replace(
            disk_source(b.dom.xml(client.XML_INACTIVE)),
            str(make_image(tmp_path / "shr5-b-new.qcow2"))))
        a.dom.snapshot_create("s")
        top = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(top, "B")
        files = {p: digest(p) for p in (str(data), str(clone), top)}

        a.dom.snapshot_delete("s")
        assert a.dom.snapshots() == []
        assert first_bytes(clone, "qcow2", 1) == b"A"  # what a revert of B would read
        assert {p: digest(p) for p in files} == files
        assert (f"domain shr5-a: snapshot s: metadata only, no merge ({data} is in the "
                "backing chain of snapshot b1 (disk vda) of domain shr5-b)"
                ) in qemud.log_text()
        b.dom.snapshot_revert("b1")
        assert first_bytes(disk_source(b.dom.xml(client.XML_INACTIVE)), "qcow2",
                           1) == b"A"
    finally:
        b.close()
        a.close()


def test_a_revert_keeps_an_overlay_a_clone_reads(
        conn: client.Connection, qemud: DaemonProcess, test_guest: TestGuest,
        tmp_path: Path) -> None:
    """A's snapshots s1, s2; B is cloned on s2's image (A's overlay of s1); deleting s2
    is metadata only (B reads the image), and a revert of A to s1 then leaves that
    overlay unneeded by A: it stays, since B reads it (the old code discarded it, and
    B's disk lost its backing file)."""
    a, data = qcow2_guest(conn, test_guest, tmp_path, "rvk-a")
    b: Guest | None = None
    try:
        qemu_io_write(str(data), "A")
        a.dom.snapshot_create("s1")
        s1_overlay = disk_source(a.dom.xml(client.XML_INACTIVE))
        qemu_io_write(s1_overlay, "B")
        a.dom.snapshot_create("s2")
        clone = overlay(tmp_path / "rvk-b.qcow2", s1_overlay)
        b = Guest(conn, test_guest, "rvk-b", tmp_path, disk_xml(clone))
        a.dom.snapshot_delete("s2")  # (metadata only: B reads s1's overlay)
        a.dom.snapshot_revert("s1")
        assert Path(s1_overlay).exists()
        assert backing_chain(str(clone)) == [str(clone), s1_overlay, str(data)]
        assert first_bytes(clone, "qcow2", 1) == b"B"
        assert (f"domain rvk-a: {s1_overlay} is kept although no snapshot of it needs it: "
                f"it is in the backing chain of disk vda of domain rvk-b") \
            in qemud.log_text()
        b.close()
        b = None
        # nothing reads it any more: the next clean-up takes it
        a.dom.snapshot_create("s3")
        a.dom.snapshot_delete("s3")
        assert not Path(s1_overlay).exists()
    finally:
        if b is not None:
            b.close()
        a.close()
