"""Which vCPU slots a live setvcpus plugs or unplugs (qemud.driver.vcpu_hotplug.plan),
from QEMU 7.2's own ``query-hotpluggable-cpus`` answers (the real daemon and QEMU:
tests/integration/test_vcpu_hotplug.py)."""

from __future__ import annotations

from typing import Any

import pytest

from qemud.driver.vcpu_hotplug import NO_ENTITIES, plan, slots
from qemud.errors import ConfigUnsupported

CPU = "qemu64-x86_64-cpu"


def answer(present: dict[int, str], maximum: int) -> list[dict[str, Any]]:
    """QEMU's answer for ``-smp N,maxcpus=MAX,sockets=MAX``: the last socket first, a
    QOM path on the CPUs present."""
    entries = []
    for socket in reversed(range(maximum)):
        entry: dict[str, Any] = {"props": {"core-id": 0, "thread-id": 0,
                                           "socket-id": socket},
                                 "vcpus-count": 1, "type": CPU}
        if socket in present:
            entry["qom-path"] = present[socket]
        entries.append(entry)
    return entries


BOOT = {0: "/machine/unattached/device[0]", 1: "/machine/unattached/device[1]"}


def test_vcpu_numbers_follow_the_sockets() -> None:
    listed = slots(answer(BOOT, 4))
    assert [(s.number, s.props["socket-id"], s.alias) for s in listed] == \
        [(0, 0, "vcpu0"), (1, 1, "vcpu1"), (2, 2, "vcpu2"), (3, 3, "vcpu3")]
    assert [s.driver for s in listed] == [CPU] * 4
    assert not any(s.hotplugged for s in listed)


def test_plugging_takes_the_next_sockets_in_order() -> None:
    plugging, chosen = plan(slots(answer(BOOT, 4)), 4)
    assert plugging and [s.alias for s in chosen] == ["vcpu2", "vcpu3"]
    plugging, chosen = plan(slots(answer(BOOT, 4)), 2)
    assert chosen == []  # what QEMU has: nothing to do


def test_unplugging_takes_the_last_plugged_first() -> None:
    present = {**BOOT, 2: "/machine/peripheral/vcpu2", 3: "/machine/peripheral/vcpu3"}
    plugging, chosen = plan(slots(answer(present, 4)), 2)
    assert not plugging and [s.alias for s in chosen] == ["vcpu3", "vcpu2"]


@pytest.mark.parametrize("count", [1, 0])
def test_a_vcpu_qemu_started_with_is_not_unplugged(count: int) -> None:
    present = {**BOOT, 2: "/machine/peripheral/vcpu2"}
    with pytest.raises(ConfigUnsupported) as info:
        plan(slots(answer(present, 4)), count)
    assert info.value.detail.startswith(f"{NO_ENTITIES}: vCPU 1 was not hot-plugged")


def test_a_restored_guests_vcpus_were_not_plugged_into_its_qemu() -> None:
    # a restore starts QEMU with -smp 3: socket 2 is a CPU it started with
    present = {**BOOT, 2: "/machine/unattached/device[2]"}
    with pytest.raises(ConfigUnsupported, match="vCPU 2 was not hot-plugged"):
        plan(slots(answer(present, 4)), 2)


def test_nothing_listed() -> None:
    assert slots({"error": "x"}) == [] and slots([]) == []
