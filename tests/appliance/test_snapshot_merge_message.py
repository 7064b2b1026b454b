"""What a failed snapshot merge says and records, by whether it wrote anything.

A live merge that fails before QEMU accepted a commit job (e.g. QEMU refuses the
``block-commit``) changed no image: it must not claim the snapshot's image now holds
part of the later data, nor mark the snapshot as a failed merge; a snapshot an earlier
merge left failed keeps that mark and its reason. No daemon, no QEMU.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from qemud.appliance.snapshots.delete import DeleteOps
from qemud.appliance.snapshots.records import DiskRecord, DomainSnapshots, SnapshotRecord
from qemud.dispatch import Deferred
from qemud.errors import OperationFailed


class _Store:
    def __init__(self) -> None:
        self.saved: list[str] = []

    def save(self, meta: DomainSnapshots) -> Deferred:
        self.saved.append(meta.to_json())
        return Deferred.resolved(None)


class _Dom:
    name = "web"
    uuid = "00000000-0000-0000-0000-000000000001"
    active = True
    job: str | None = "snapshot-delete"


def _settle(snap: SnapshotRecord, *, started: bool) -> tuple[Deferred, _Store, Any]:
    ops = DeleteOps.__new__(DeleteOps)  # only the store is used on this path
    store = _Store()
    ops.store = store  # type: ignore[assignment]
    meta = DomainSnapshots("web", _Dom.uuid, current="s1", snapshots={"s1": snap})
    out = Deferred()
    dom = _Dom()
    ops._settle(dom, meta, snap, {},  # type: ignore[arg-type]
                OperationFailed("cannot start the merge: QEMU: Need a root block node"),
                out, started=started)
    return out, store, dom


def _snap(merge_failed: str = "") -> SnapshotRecord:
    disk = DiskRecord("vda", "/srv/data.qcow2", "qcow2", "/srv/vda.s1.qcow2")
    return SnapshotRecord("s1", "", 0, 1, "", {"vda": disk}, "<domain/>",
                          merging="123@1.0", merge_failed=merge_failed)


def test_merge_refused_before_any_job_wrote_nothing(caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    snap = _snap()
    with caplog.at_level(logging.WARNING, "qemud.appliance.snapshots.delete"):
        out, store, dom = _settle(snap, started=False)
    assert out.error is not None and "Need a root block node" in out.error.message
    text = caplog.text
    assert "part of the later data" not in text, text
    assert "the snapshot is kept; nothing was merged" in text, text
    assert snap.merge_failed == "" and snap.merging == ""  # a revert to it stays allowed
    assert store.saved and dom.job is None


def test_merge_refused_after_an_earlier_failed_merge_keeps_its_mark(
        caplog: pytest.LogCaptureFixture) -> None:
    earlier = "the merge of its deletion was interrupted (the daemon run 1@2 stopped)"
    snap = _snap(earlier)
    with caplog.at_level(logging.WARNING, "qemud.appliance.snapshots.delete"):
        _settle(snap, started=False)
    assert "nothing was merged now" in caplog.text and "earlier merge" in caplog.text
    assert snap.merge_failed == earlier


def test_merge_failed_after_its_job_started_marks_the_snapshot(
        caplog: pytest.LogCaptureFixture) -> None:
    snap = _snap()
    with caplog.at_level(logging.WARNING, "qemud.appliance.snapshots.delete"):
        _settle(snap, started=True)
    assert "its image holds part of the later data" in caplog.text
    assert "Need a root block node" in snap.merge_failed
