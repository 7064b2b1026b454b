"""QMP arguments for plugging a NIC into a running guest.

A NIC hot-added later must be the same QEMU device as one present at start: same ids
(:func:`naming.nic_ids`, from its MAC), same backend and the same ``-device`` the arch
strategy gives it (model per arch). So the arguments are not built a second way here: the
argv builder's own ``-netdev`` / ``-device`` values are taken apart into the dictionaries
``netdev_add`` and ``device_add`` take (QemuOpts ``key=value`` pairs, ``,,`` for a comma
inside a value). The PCI slot is the caller's choice (:mod:`qemud.qemu.pci`: the NIC's
own address or a free slot), given as ``bus``/``addr`` as the argv builder gives a NIC
present at start its slot; without one QEMU picks the first free slot (a guest whose QEMU
placed its devices itself).
"""

from __future__ import annotations

from typing import Any

from qemud.qemu import naming
from qemud.qemu.arch import ArchStrategy
from qemud.qemu.command import netdev_arg
from qemud.qemu.domain import InterfaceView
from qemud.qemu.errors import GuestConfigError
from qemud.qemu.pci import Slot

__all__ = ["nic_plug_args", "slot_props", "split_qemu_opts"]


def split_qemu_opts(text: str) -> list[str]:
    """``"a=1,b=x,,y"`` -> ``["a=1", "b=x,y"]``: QemuOpts' comma split (``,,`` is a
    literal comma)."""
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text[index + 1:index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _props(parts: list[str], where: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise GuestConfigError(where, f"cannot pass QEMU option {part!r} over QMP")
        props[key] = value
    return props


def nic_plug_args(iface: InterfaceView, strategy: ArchStrategy, where: str = "interface",
                  slot: tuple[str, Slot] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(netdev_add arguments, device_add arguments)`` for ``iface``, which has its MAC;
    with ``slot`` (QEMU's id of the bus, the slot) the device goes into that slot.

    Raises :class:`GuestConfigError` (a QemuError) for what the argv builder refuses too
    (an interface type without backend, a model the arch does not have).
    """
    if not iface.mac:
        raise GuestConfigError(f"{where}/mac", "no MAC address assigned")
    try:
        device_id, netdev_id = naming.nic_ids(iface.mac)
    except ValueError as exc:
        raise GuestConfigError(f"{where}/mac", str(exc)) from None
    if strategy.nic_model(iface) not in strategy.table.nic_models:
        raise GuestConfigError(
            f"{where}/model", f"NIC model {strategy.nic_model(iface)!r} is not supported on "
            f"{strategy.name} (supported: {', '.join(strategy.table.nic_models)})")
    backend = split_qemu_opts(netdev_arg(iface, netdev_id, where))
    netdev = {"type": backend[0], **_props(backend[1:], where)}
    device = split_qemu_opts(strategy.nic_device(iface, iface.mac, device_id, netdev_id))
    return netdev, {"driver": device[0], **_props(device[1:], where), **slot_props(slot)}


def slot_props(slot: tuple[str, Slot] | None) -> dict[str, str]:
    """The ``device_add`` arguments that put a PCI device in ``slot`` (QEMU's id of the
    bus, the slot): ``bus`` and ``addr`` as the argv builder writes them; none for None
    (QEMU picks the first free slot)."""
    if slot is None:
        return {}
    return {"bus": slot[0], "addr": slot[1].addr}
