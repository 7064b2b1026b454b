"""disk_nodes: which block nodes a disk detach closes, from query-named-block-nodes
replies shaped as QEMU 7.2 gives them (no QEMU needed; the real detach is tested in
tests/appliance/test_snapshot_unplug.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from qemud.driver.devices import disk_nodes


def node(name: str, drv: str, *chain: str) -> dict[str, Any]:
    """A query-named-block-nodes entry: ``chain`` is its file, then its backing files."""
    image: dict[str, Any] | None = None
    for filename in reversed(chain):
        image = {"filename": filename, **({"backing-image": image} if image else {})}
    return {"node-name": name, "drv": drv, "file": chain[0], "image": image}


PLAIN = [node("drive-vdb-storage", "file", "/b.qcow2"),
         node("drive-vdb-format", "qcow2", "/b.qcow2")]
#: after two live snapshots: snap-2 -> snap-1 -> drive-vdb-format, the overlays' file
#: children opened inline (QEMU named them)
SNAPPED = [node("snap-vdb-2", "qcow2", "/s2.qcow2", "/s1.qcow2", "/b.qcow2"),
           node("#block101", "file", "/s2.qcow2"),
           node("snap-vdb-1", "qcow2", "/s1.qcow2", "/b.qcow2"),
           node("#block047", "file", "/s1.qcow2"),
           node("drive-vdb-format", "qcow2", "/b.qcow2"),
           node("drive-vdb-storage", "file", "/b.qcow2")]


def test_plain_disk_closes_format_then_storage() -> None:
    assert disk_nodes(PLAIN, "drive-vdb-format", "vdb") == ["drive-vdb-format",
                                                             "drive-vdb-storage"]


def test_snapshotted_disk_closes_its_chain_top_down() -> None:
    others = [node("drive-vda-format", "qcow2", "/a.qcow2"),
              node("drive-vda-storage", "file", "/a.qcow2")]
    assert disk_nodes(others + SNAPPED, "snap-vdb-2", "vdb") == [
        "snap-vdb-2", "snap-vdb-1", "drive-vdb-format", "drive-vdb-storage"]


def test_walk_ends_at_nodes_qemu_opened_itself() -> None:
    # started on an overlay: its backing was opened from the header (#block...), and
    # another disk has an overlay on the same base image
    nodes = [node("drive-vdb-format", "qcow2", "/o.qcow2", "/base.qcow2"),
             node("drive-vdb-storage", "file", "/o.qcow2"),
             node("#block1", "qcow2", "/base.qcow2"), node("#block2", "file", "/base.qcow2"),
             node("#block3", "qcow2", "/base.qcow2"), node("#block4", "file", "/base.qcow2")]
    assert disk_nodes(nodes, "drive-vdb-format", "vdb") == ["drive-vdb-format",
                                                             "drive-vdb-storage"]
    # after a live merge pivoted onto such a node, nothing is the monitor's to close
    assert disk_nodes(nodes, "#block1", "vdb") == []


def test_shared_read_only_image_picks_the_targets_storage_node() -> None:
    nodes = [node("drive-vda-format", "raw", "/ro.img"), node("drive-vda-storage", "file",
                                                               "/ro.img"),
             node("drive-vdb-format", "raw", "/ro.img"), node("drive-vdb-storage", "file",
                                                               "/ro.img")]
    assert disk_nodes(nodes, "drive-vdb-format", "vdb") == ["drive-vdb-format",
                                                             "drive-vdb-storage"]


def test_ambiguous_layer_is_logged_not_guessed(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [node("snap-vdb-1", "qcow2", "/s1.qcow2", "/b.qcow2"),
             node("drive-vdb-format", "qcow2", "/b.qcow2"),
             node("stray", "qcow2", "/b.qcow2")]
    with caplog.at_level(logging.WARNING, "qemud.driver.devices"):
        assert disk_nodes(nodes, "snap-vdb-1", "vdb") == ["snap-vdb-1"]
    assert "2 block nodes opened /b.qcow2 below snap-vdb-1" in caplog.text


def test_unknown_top_closes_nothing() -> None:
    assert disk_nodes(PLAIN, "gone", "vdb") == []
    assert disk_nodes(None, "drive-vdb-format", "vdb") == []
