"""The restart mark of a deployed VM's state record (``VMState.restart``) across the
``switch`` an update or rollback writes ahead of its define: the mark is the record's
own, so dropping it from the record drops it whichever state the switch settles on
(``layout.settle_switch``), and a record that still has it keeps it. In process: real
files, a domain reduced to the disks its persistent definition names."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qemud.appliance.images.layout import settle_switch
from qemud.appliance.images.store import VMState

UUID = "6a0d2c3e-1111-4c5b-9c1d-0123456789ab"


def domain(vda: str) -> Any:
    return SimpleNamespace(name="vm", uuid=UUID, persistent_definition=SimpleNamespace(
        disks=[SimpleNamespace(target_dev="vda", source=vda)]))


def states() -> tuple[VMState, VMState]:
    before = VMState(vm="vm", uuid=UUID, appliance="demo", version="1.0", slot="a",
                     disks={"vda": {"class": "system", "path": "/vms/vm/vda.a.qcow2"}},
                     restart="update")
    after = before.copy()
    after.version, after.slot = "2.0", "b"
    after.disks["vda"]["path"] = "/vms/vm/vda.b.qcow2"
    return before, after


def test_the_switch_record_does_not_carry_the_mark() -> None:
    before, after = states()
    record = before.switching_to(after)
    assert record.restart == "update"
    assert record.switch is not None and "restart" not in record.switch
    assert record.switch["version"] == "2.0"


@pytest.mark.parametrize("landed", [False, True], ids=["not-defined", "defined"])
@pytest.mark.parametrize("marked", [False, True], ids=["mark-dropped", "mark-kept"])
def test_settling_keeps_the_records_own_mark(tmp_path: Path, landed: bool,
                                             marked: bool) -> None:
    before, after = states()
    record = before.switching_to(after)
    if not marked:
        record.restart = None  # (the operation dropped it; the final write failed)
    path = tmp_path / "appliance-state.json"
    path.write_text(record.to_json())
    written: list[str] = []
    dom = domain(after.disks["vda"]["path"] if landed else before.disks["vda"]["path"])
    settled = settle_switch(path, dom, write=lambda _, text: written.append(text))
    assert settled is not None and "switch" not in settled
    assert settled["version"] == ("2.0" if landed else "1.0")
    assert settled.get("restart") == ("update" if marked else None)
    assert json.loads(written[0]) == settled
