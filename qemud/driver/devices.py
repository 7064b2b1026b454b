"""Device attach/detach (live over QMP, and in the persistent definition) and CD-ROM
media: disks here, ``<interface>`` devices in :mod:`.nics`; other devices are refused,
naming the element.

Block nodes and device ids come from :mod:`qemud.qemu.naming`, the same names the argv
builder used at start, so a disk added at start and one hot-added later look alike.
On a machine whose root bus is PCIe (q35) a live attach or detach of a PCI device is
refused before anything changes (:func:`require_pci_hotplug`).

A device plugged in keeps its PCI slot, as under libvirt: the slot is chosen before
anything changes (its own ``<address type='pci'>``, checked against the live definition,
else a free one: :func:`plug_slot`), QEMU is told it, and the live XML keeps it, so a
save is restored with every device where the running guest has it. The persistent copy
of a ``--config`` attach gets an address too (the live slot when it is free there:
:func:`prefer_slot`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qemud import testhooks
from qemud.conf import (
    ConfError,
    Controller,
    Device,
    Disk,
    DomainDef,
    Interface,
    parse_device_xml,
)
from qemud.conf.xmlmodel import not_xml_text
from qemud.dispatch import Deferred
from qemud.errors import (
    ConfigUnsupported,
    InvalidArg,
    OperationFailed,
    OperationInvalid,
    OperationTimeout,
    OperationUnsupported,
    QemudError,
    XMLError,
)
from qemud.qemu import naming, pci
from qemud.qemu.arch import strategy_for
from qemud.qemu.command import DISK_FORMATS, STORAGE_DRIVERS, blockdev_nodes
from qemud.qemu.errors import QemuError
from qemud.qemu.nicplug import slot_props
from qemud.tasks import Task, run_task

from .controllers import attach_controller, detach_controller
from .domain import DomainObj
from .nics import Nics

if TYPE_CHECKING:
    from .driver import QemuDriver
    from .monitor import Monitor
    from .store import StatusRecord

__all__ = ["Devices", "AFFECT_LIVE", "AFFECT_CONFIG", "PciSlot",
           "disk_nodes", "place", "plug_slot", "prefer_slot", "require_pci_hotplug"]

log = logging.getLogger(__name__)

AFFECT_LIVE = 1
AFFECT_CONFIG = 2

#: Test hook for a daemon run as a subprocess: ``QEMUD_UNPLUG_TIMEOUT=<seconds>`` in its
#: environment (read once, at import) replaces the unplug timeout below, so that a test
#: sees a detach time out and the guest release the disk afterwards. For tests only.
UNPLUG_TIMEOUT_ENV = "QEMUD_UNPLUG_TIMEOUT"
#: Seconds a live detach waits for the guest to release the disk before the call fails
#: (the unplug itself goes on: a late release still closes the disk, see ``_unplug``).
UNPLUG_TIMEOUT = testhooks.seconds(UNPLUG_TIMEOUT_ENV, 15.0)
#: the protocol drivers of the daemon's storage nodes ("file" also opens an overlay)
_PROTOCOLS = frozenset(STORAGE_DRIVERS.values())
def require_pci_hotplug(live: DomainDef, what: str, *, addressed: bool,
                        unplugged: Device | None = None) -> None:
    """Refuse a live attach (or the detach of ``unplugged``) of the PCI device ``what``
    ("interface 52:54:00:...", "disk vdb") on a machine whose root bus is PCI Express
    (:func:`pci.express`: QEMU's "Bus 'pcie.0' does not support hotplugging") when no
    root port can take it, before QEMU or a
    definition is touched: QEMU's own error would come only after the netdev or block
    nodes were added (and a --config half already saved), and it names neither the
    cause nor a way out.

    A device comes out of such a guest only from behind a pcie-root-port (not one with
    ``hotplug='off'``); one goes in only into a free port, which :func:`plug_slot`
    chooses (libvirt's "No more available PCI slots" when none is), and only for a
    guest whose ports qemud started (``addressed``: not one an older qemud started,
    which built none).
    """
    strategy = strategy_for(live)
    if not pci.express(live, strategy):
        return
    machine = strategy.machine_type(live)
    if unplugged is None:
        if addressed:
            return
        raise ConfigUnsupported(
            f"No more available PCI slots: cannot hot-plug {what}: domain was started by "
            f"an older qemud, which built no pcie-root-port for machine '{machine}' (its "
            "root bus pcie.0 takes no hot-plugged device); start the domain again first, "
            "or attach it with --config to have it at the next start")
    address = unplugged.pci_address
    port = _root_port(live, 0 if address is None else address.bus)
    if port is not None and port.hotplug != "off":
        return
    where = ("behind a pcie-root-port with hotplug='off'" if port is not None else
             "on the PCIe root bus pcie.0, which takes no device out while the guest runs")
    raise ConfigUnsupported(
        f"cannot hot-unplug {what}: on machine '{machine}' it sits {where}; detach it with "
        "--config to have it gone at the next start (a device behind a pcie-root-port of "
        "its own can be unplugged live)")


#: where a live attach has QEMU put a PCI device: (QEMU's id of its bus, its slot)
PciSlot = tuple[str, pci.Slot]


def plug_slot(dom: DomainObj, device: Device, what: str, plugging: Sequence[Device] = ()
              ) -> PciSlot | None:
    """The slot a live attach puts the PCI device ``device`` ("disk vdb", "interface
    52:54:00:...": ``what``) in, chosen before anything changes; ``device`` is not yet in
    the live definition, and is not changed here. ``plugging``: the devices other live
    attaches are plugging in meanwhile (slots chosen, not yet in the live XML), whose
    slots are taken as well.

    Its own ``<address type='pci'>``, checked against the live definition as a define
    checks it (a slot another device holds is libvirt's "Attempted double use of PCI
    Address"; on a PCI Express machine, only a free pcie-root-port's takes a device
    while the guest runs), else a free slot (:func:`pci.free_slot`: a free root port's
    on a PCI Express machine, the lowest root-bus slot on another, libvirt's "No more
    available PCI slots" when none is). QEMU is told the slot (``bus``/``addr`` of
    ``device_add``), and the live XML keeps it (:func:`place`).

    None for a guest whose QEMU placed its PCI devices itself (``dom.pci_addressed``
    false: started by an older qemud, or restored from its save image): QEMU picks the
    first free slot, as it did for the others, and the save guard
    (``Saving.note_pci_change``) applies. An address asked for is then refused: the
    live XML of such a guest does not say which slots its QEMU has free.
    """
    live = dom.live
    assert live is not None
    wanted = device.pci_address
    if not dom.pci_addressed:
        if wanted is not None or device.address_type not in (None, "pci"):
            raise ConfigUnsupported(
                f"cannot put {what} at the <address> it asks for: domain '{dom.name}' "
                "was started by an older qemud, which let QEMU place its PCI devices; "
                "attach it without <address>, or start the domain again first")
        return None
    strategy = strategy_for(live)
    base = live.copy()
    try:
        for other in plugging:
            base.add_device(other)
        with_device = base.copy()
        with_device.add_device(device)
        chosen = pci.plan(with_device, strategy)  # (checks the device's own address)
        if wanted is not None and chosen is not None:
            if pci.express(live, strategy):
                _require_hotplug_bus(live, strategy.machine_type(live), what, wanted.bus)
            return chosen.bus_id(wanted.bus), pci.Slot(wanted.bus, wanted.slot)
        return pci.free_slot(base, strategy, what)
    except ConfError as exc:
        raise XMLError(str(exc)) from None
    except QemuError as exc:
        raise ConfigUnsupported(str(exc)) from None


def _require_hotplug_bus(live: DomainDef, machine: str, what: str, bus: int) -> None:
    """On a PCI Express machine, an address asked for must be a root port's that takes
    devices while the guest runs (QEMU's "Bus 'pcie.0' does not support hotplugging")."""
    port = _root_port(live, bus)
    if port is None or port.hotplug == "off":
        where = ("a pcie-root-port with hotplug='off'" if port is not None else
                 "the PCIe root bus pcie.0")
        raise ConfigUnsupported(
            f"cannot hot-plug {what} at the <address> it asks for: on machine '{machine}' "
            f"that is on {where}, which takes no device while the guest runs; give it a "
            "free pcie-root-port's bus, or no <address>")


def _root_port(live: DomainDef, bus: int) -> Controller | None:
    """The pcie-root-port that makes PCI bus ``bus`` (None for the root bus, 0)."""
    return next((c for c in live.pci_controllers if bus and c.is_root_port
                 and c.index == bus), None)


def place(device: Device, slot: PciSlot | None) -> None:
    """Write the slot :func:`plug_slot` chose into ``device``, the copy the live XML
    gets; with None (QEMU picks) any ``<address>`` goes: the live XML names no slot it
    cannot vouch for."""
    if slot is None:
        device.pci_address = None
    else:
        device.assign_pci_slot(slot[1].slot, slot[1].bus)


def prefer_slot(definition: DomainDef, added: Device, slot: PciSlot | None) -> None:
    """For an attach with ``--live --config``: give ``added`` (just put into a copy of
    the persistent definition, without an address of its own) the slot the live attach
    chose, when that slot is free in ``definition``, so both XMLs show the device in the
    same place; else the arch defaults (``Registry.check_for_host``) give it the lowest
    free slot there, as for a ``--config`` attach alone. An address of its own is kept
    (and checked there)."""
    if slot is None or added.pci_address is not None or \
            added.address_type not in (None, "pci"):
        return
    added.assign_pci_slot(slot[1].slot, slot[1].bus)
    try:
        pci.plan(definition, strategy_for(definition))
    except QemuError:  # taken there (or refused for a reason of its own, said later)
        added.pci_address = None


def _target_of(disk: Disk) -> str:
    if not disk.target_dev:
        raise InvalidArg("the <disk> needs <target dev='...'/> to be attached or detached")
    return disk.target_dev


def _storage_driver(disk: Disk) -> str:
    return STORAGE_DRIVERS[disk.type or "file"]


#: ``dom.job`` while a CD-ROM's medium changes: "busy: media change in progress"
MEDIA_JOB = "media change"
#: test hook (:mod:`qemud.testhooks`): seconds instead of :data:`MEDIA_QMP_TIMEOUT`
MEDIA_QMP_TIMEOUT_ENV = "QEMUD_MEDIA_QMP_TIMEOUT"
#: seconds each QMP step of a media change may take: a medium on a hung mount blocks
#: QEMU's ``blockdev-add``, and the job (which holds off saves, snapshots and the
#: heartbeat duty) must end, with the step's timeout error
MEDIA_QMP_TIMEOUT = testhooks.seconds(MEDIA_QMP_TIMEOUT_ENV, 30.0)
#: libvirt's VIR_DOMAIN_DEVICE_MODIFY_FORCE: the tray opens also when the guest locked it
MODIFY_FORCE = 4


def _medium_kind(source: str) -> str | None:
    """'block' for a block device (a host's CD-ROM drive, a loop device: the appliance
    hotplug's media), 'file' otherwise; None for no medium, or one that cannot be
    looked at (QEMU then says what is wrong with it)."""
    if not source:
        return None
    try:
        return "block" if stat.S_ISBLK(os.stat(source).st_mode) else "file"
    except OSError:
        return None


def _change_medium(monitor: Monitor, disk: Disk, source: str, kind: str | None,
                   force: bool) -> Task:
    """``source`` (of ``kind``: see :func:`_medium_kind`) into the CD-ROM drive ``disk``
    ("": none), as libvirt changes a medium on a ``-blockdev`` drive
    (qemuDomainChangeMediaBlockdev): the new medium's nodes are opened first, under the
    drive's other pair of node names (a medium QEMU cannot open changes nothing, the
    guest sees no tray move); then tray open (``force``: also when the guest locked
    it), medium out, the new one in, tray closed; then the old medium's nodes are
    closed (they are the monitor's: QEMU would keep the file open, and its lock, until
    the guest stops). Should the new medium not go in, the old one, still open, is put
    back. Each step may take :data:`MEDIA_QMP_TIMEOUT`."""
    target = str(disk.target_dev)
    device_id = naming.disk_device_id(target)

    def qmp(command: str, arguments: dict[str, Any] | None = None) -> Deferred:
        return monitor.execute(command, arguments, timeout=MEDIA_QMP_TIMEOUT)
    pairs = [naming.disk_node_names(target, medium) for medium in (0, 1)]
    inserted = _inserted_node((yield qmp("query-block")), device_id)
    named = {str(n.get("node-name")) for n in
             (yield qmp("query-named-block-nodes", {"flat": True})) if isinstance(n, dict)}
    old = next((pair for pair in pairs if pair[1] == inserted), None)
    # the other pair (the start's, unless it holds the medium); nodes of ours that no
    # medium in the drive uses go first (left by a failure, a daemon killed mid-change,
    # or an older daemon's blockdev-change-medium)
    new = pairs[1] if old is pairs[0] else pairs[0]
    for pair in pairs:
        if pair is not old:
            for name in (pair[1], pair[0]):
                if name in named:
                    yield from _close_node(monitor, name, target)
    if source:
        driver = STORAGE_DRIVERS[kind] if kind is not None else _storage_driver(disk)
        opened: list[str] = []
        try:
            for props in blockdev_nodes(driver, source, disk.driver_type or "raw", *new,
                                        readonly=True):
                yield qmp("blockdev-add", props)
                opened.append(str(props["node-name"]))
        except QemudError:
            for name in reversed(opened):
                yield from _close_node(monitor, name, target)
            raise  # (nothing changed: the old medium stays in, the tray shut)
    yield qmp("blockdev-open-tray", {"id": device_id, "force": force})
    try:
        try:
            yield qmp("blockdev-remove-medium", {"id": device_id})
        except QemudError as exc:
            if "is not open" in exc.message:  # (a tray the guest locked, no force)
                raise OperationFailed(f"the guest has locked the tray of CD-ROM {target}: "
                                      "the medium was not changed (--force opens it "
                                      "anyway)") from None
            raise
        if source:
            yield qmp("blockdev-insert-medium", {"id": device_id, "node-name": new[1]})
    except QemudError:
        if old is not None:  # (still open: back in, if it went out)
            try:
                yield qmp("blockdev-insert-medium", {"id": device_id, "node-name": old[1]})
            except QemudError as exc:
                if "already has" not in exc.message:  # (it went out, and stays out)
                    log.warning("media change of %s: the medium could not be put back: "
                                "%s (the drive is empty)", target, exc.message)
                    disk.change_medium(None)
        try:
            yield qmp("blockdev-close-tray", {"id": device_id})
        except QemudError:
            pass
        if source:
            for name in (new[1], new[0]):
                yield from _close_node(monitor, name, target)
        raise
    try:
        yield qmp("blockdev-close-tray", {"id": device_id})
    except QemudError as exc:  # (the medium is in: the change happened)
        log.warning("media change of %s: the tray did not close: %s", target, exc.message)
    if old is not None:
        for name in (old[1], old[0]):
            yield from _close_node(monitor, name, target)


def _inserted_node(answer: Any, device_id: str) -> str | None:
    """The node ``query-block`` says is in the drive ``device_id`` (None: empty)."""
    for entry in answer if isinstance(answer, list) else []:
        if isinstance(entry, dict) and device_id in str(entry.get("qdev") or "").split("/"):
            inserted = entry.get("inserted")
            return str(inserted.get("node-name")) if isinstance(inserted, dict) else None
    return None


def _close_node(monitor: Monitor, name: str, target: str) -> Task:
    """``blockdev-del`` of a medium's node; a failure is logged (the node stays open
    until the guest stops), never the media change's."""
    try:
        yield monitor.execute("blockdev-del", {"node-name": name}, timeout=MEDIA_QMP_TIMEOUT)
    except QemudError as exc:
        log.warning("media change of %s: cannot close block node %s: %s", target, name,
                    exc.message)


def _chain(node: dict[str, Any]) -> list[str]:
    """The files of a node's backing chain, itself first (its ``image`` info)."""
    files = []
    image = node.get("image")
    while isinstance(image, dict):
        files.append(str(image.get("filename", "")))
        image = image.get("backing-image")
    return files


def disk_nodes(named: Any, top: str, target: str) -> list[str]:
    """``query-named-block-nodes`` (not flat) -> the nodes to close for the disk
    ``target`` whose top node is ``top``, in an order QEMU accepts: each layer's format
    node, then its protocol node, then the layer below.

    QEMU names neither a node's backing nor its file child there, only the files they
    opened: a layer is the format node that opened the next file of ``top``'s chain and
    whose own chain is the rest of it; a protocol node is the one on its format node's
    file. Two fit only if two read-only disks share an image: the target's storage node
    name decides, else that node is left out (and logged) rather than a guess closing
    another disk's. Nodes QEMU named itself (``#block...``: an overlay's inline file
    child, backing files opened from an image header) are not the monitor's to close:
    they go with their parent, and so does everything below them (QEMU opened it from
    their headers), so the walk ends at the first one.
    """
    nodes = [n for n in named or [] if isinstance(n, dict) and n.get("node-name")]
    storage = naming.disk_node_names(target)[0]
    order: list[str] = []
    node = next((n for n in nodes if n["node-name"] == top), None)
    rest = _chain(node) if node is not None else []
    while node is not None and not str(node["node-name"]).startswith("#"):
        order.append(str(node["node-name"]))
        protocols = [str(n["node-name"]) for n in nodes if n.get("drv") in _PROTOCOLS
                     and n.get("file") == node.get("file") and n["node-name"] not in order]
        if len(protocols) > 1:
            protocols = [p for p in protocols if p == storage]
            if not protocols:
                log.warning("disk %s: several protocol nodes opened %s: none is closed",
                            target, node.get("file"))
        order += [p for p in protocols[:1] if not p.startswith("#")]
        rest = rest[1:]
        if not rest:
            break
        layers = [n for n in nodes if n.get("drv") not in _PROTOCOLS
                  and n.get("file") == rest[0] and _chain(n) == rest
                  and n["node-name"] not in order]
        if layers and all(str(n["node-name"]).startswith("#") for n in layers):
            break  # opened by QEMU: whichever it is, it goes with its parent
        if len(layers) != 1:
            log.warning("disk %s: %d block nodes opened %s below %s: none is closed",
                        target, len(layers), rest[0], node["node-name"])
        node = layers[0] if len(layers) == 1 else None
    return order


def _unpluggable_ids(live: DomainDef) -> list[str]:
    """The QEMU ids of the devices of ``live`` a live detach unplugs (``device_del``):
    its virtio disks and its interfaces."""
    strategy = strategy_for(live)
    ids = [naming.disk_device_id(d.target_dev) for d in live.disks
           if d.target_dev and strategy.disk_bus(live, d) == "virtio"]
    return ids + [naming.nic_ids(str(n.mac))[0] for n in live.interfaces if n.mac]


def _top_of(named: Any, source: str) -> str | None:
    """The format node that opened ``source`` (a disk's current image), if exactly one
    node of the monitor's did; the top node of that disk's graph."""
    tops = [str(n["node-name"]) for n in named or [] if isinstance(n, dict)
            and n.get("node-name") and not str(n["node-name"]).startswith("#")
            and n.get("drv") not in _PROTOCOLS and n.get("file") == source]
    return tops[0] if len(tops) == 1 else None


class Devices:
    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        self.nics = Nics(driver, self)
        #: per domain (uuid): the PCI devices live attaches are plugging in, their slots
        #: chosen, not yet in the live XML (see :meth:`choose_slot`)
        self._plugging: dict[str, list[Device]] = {}
        driver.lifecycle.reattach_hooks.append(self._reattached)

    #: (for :mod:`.nics`, which this module imports)
    require_pci_hotplug = staticmethod(require_pci_hotplug)
    place = staticmethod(place)
    prefer_slot = staticmethod(prefer_slot)

    def choose_slot(self, dom: DomainObj, device: Device, what: str) -> PciSlot | None:
        """:func:`plug_slot` for a live attach of ``device`` to ``dom``, keeping off the
        slots of the devices other attaches are plugging in meanwhile (two attaches
        pipelined by clients would otherwise choose the same free slot)."""
        return plug_slot(dom, device, what, self._plugging.get(dom.uuid, ()))

    def plugging(self, dom: DomainObj, device: Device, done: Deferred) -> None:
        """``device`` (with its slot) is being plugged into ``dom`` until ``done``: its
        slot is not free for :meth:`choose_slot` meanwhile."""
        pending = self._plugging.setdefault(dom.uuid, [])
        pending.append(device)

        def finished(_: Deferred) -> None:
            pending.remove(device)
            if not pending and self._plugging.get(dom.uuid) is pending:
                del self._plugging[dom.uuid]

        done.add_done_callback(finished)

    @staticmethod
    def _parse(xml: str) -> Device:
        try:
            return parse_device_xml(xml)
        except ConfError as exc:
            raise XMLError(str(exc)) from None

    @staticmethod
    def _disk_only(dev: Device, action: str, live: bool) -> Disk:
        """``dev`` if it is a disk; else libvirt's refusal, naming the element."""
        if not isinstance(dev, Disk):
            raise OperationUnsupported(f"{'live' if live else 'persistent'} {action} of "
                                       f"device '{dev.tag}' is not supported")
        return dev

    def _targets(self, dom: DomainObj, flags: int) -> tuple[bool, bool]:
        """(live, config) as libvirt's VIR_DOMAIN_AFFECT_* flags say (0 = current)."""
        live = bool(flags & AFFECT_LIVE) or (flags & (AFFECT_LIVE | AFFECT_CONFIG) == 0
                                             and dom.active)
        config = bool(flags & AFFECT_CONFIG) or (flags & (AFFECT_LIVE | AFFECT_CONFIG) == 0
                                                 and not dom.active)
        if live and not dom.active:
            raise OperationInvalid(f"domain '{dom.name}' is not running: cannot change its "
                                   "live devices (use --config)")
        if config and not dom.persistent:
            raise OperationInvalid(f"cannot change the persistent config of transient domain "
                                   f"'{dom.name}'")
        if config:  # (refused before a live half is made: save_persistent would refuse)
            self.driver.registry.require_no_operation(dom)
            for guard in self.driver.config_change_guards:
                guard(dom)
        return live, config

    # -- attach --------------------------------------------------------------------------

    def attach(self, dom: DomainObj, xml: str, flags: int) -> Deferred | None:
        dev = self._parse(xml)
        live, config = self._targets(dom, flags)
        if isinstance(dev, Interface):
            return self.nics.attach(dom, dev, live, config)
        if isinstance(dev, Controller):
            attach_controller(self.driver, dom, dev, live, config)
            return None
        disk = self._disk_only(dev, "attach", live)
        if disk.target_bus is None:
            # the bus its name implies (sdX: scsi, hdX: ide), else the arch's default,
            # for the live attach as for the definition (which the define path fills)
            on = dom.live if live and dom.live is not None else dom.persistent_definition
            try:
                disk.target_bus = strategy_for(on).disk_bus(
                    on, disk)
            except QemuError as exc:
                raise ConfigUnsupported(str(exc)) from None
        slot: PciSlot | None = None
        if live:  # checked before the config changes: a refused call changes nothing
            self._require_live_change(dom)
            assert dom.live is not None
            self._check_hotplug(dom.live, disk, dom.pci_addressed)
            self._add(dom.live.copy(), disk)  # checks the target is free before QEMU
            slot = self.choose_slot(dom, disk, f"disk {_target_of(disk)}")
        add_to_config: Callable[[DomainDef], None] | None = None
        if config:
            unplaced = disk.copy()

            def add_to_config(definition: DomainDef) -> None:
                prefer_slot(definition, self._add(definition, unplaced), slot)
                self.driver.registry.check_for_host(definition)  # (assigns its address)
            definition = dom.persistent_definition.copy()
            add_to_config(definition)  # (the checks, before QEMU)
            if not live:
                self.driver.registry.save_persistent(dom, definition)
                return None
        place(disk, slot)
        plugged = self._hotplug(dom, disk, slot)
        self.plugging(dom, disk, plugged)
        if add_to_config is None:
            return plugged
        # as libvirt: the persistent definition once QEMU has the disk (a refused
        # hotplug changes neither), made to that definition as it is then
        return self.driver.registry.after_live(dom, plugged, add_to_config,
                                               self.driver.config_change_guards)

    def _require_live_change(self, dom: DomainObj) -> None:
        """Refuse a live attach/detach while a job runs on the domain.

        A snapshot, a merge (snapshot delete) or a backup works on the disks' block
        graphs through QEMU block jobs and its own node names; plugging a disk in or out
        under it would leave the job on nodes that are being closed (a merge or a backup
        losing data) or miss the new disk. libvirt has device attach/detach take the
        domain's modify job for the same reason. The config-only change of a shut-off
        domain does not come here: it touches no QEMU.
        """
        self.driver.lifecycle.require_active(dom)
        self.driver.lifecycle.require_no_job(dom)

    @staticmethod
    def unplugging(dom: DomainObj) -> list[str]:
        """The targets of the disks a live detach is unplugging: from the call until the
        guest released the disk (DEVICE_DELETED) or the domain stopped, also after the
        detach call timed out or the daemon restarted (:meth:`remember_unplugs`). (The
        interfaces: :meth:`Nics.unplugging`.)"""
        if dom.live is None or not dom.device_waiters:
            return []
        return [str(d.target_dev) for d in dom.live.disks if d.target_dev
                and naming.disk_device_id(d.target_dev) in dom.device_waiters]

    def require_no_unplug(self, dom: DomainObj, *, disks_only: bool = False) -> None:
        """Refuse a save, snapshot, merge, revert or backup while a device is being
        unplugged; with ``disks_only``, only while a disk is.

        A disk: the converse of :meth:`_require_live_change`, as a job would be refused
        while libvirt's detach holds the domain's job: once the guest releases the disk
        its whole block graph is closed, overlays included, from the top node asked
        before the unplug, so a job started meanwhile would see its nodes go (or put a
        layer over them that stays open).

        An interface: a save (or managed save) would write a migration stream and a live
        XML that still have the NIC, half released, and the restored guest would get it
        back on its command line with the unplug request lost (no daemon waits for it,
        and the user's detach then never happens); refused as a disk's. The operations
        that only work on the disks' block graphs (snapshot create and delete, backup:
        qemud's snapshots are disk-only, their recorded ``<domain>`` is what the guest
        had at that instant, and a revert restarts the guest from the persistent
        definition) pass ``disks_only``: a NIC's unplug changes nothing they touch.

        Not a ``dom.job``: the wait for the guest lasts seconds to forever (a guest that
        ignores the unplug), and a ``dom.job`` would also hold off state changes and the
        appliance's duties meanwhile.
        """
        busy = []
        disks = self.unplugging(dom)
        if disks:
            busy.append(f"disk {', '.join(disks)}")
        nics = [] if disks_only else self.nics.unplugging(dom)
        if nics:
            busy.append(f"interface {', '.join(nics)}")
        if busy:
            raise OperationInvalid(
                f"domain '{dom.name}' is busy: detach of {' and '.join(busy)} in "
                "progress (waiting for the guest to release it)")

    @staticmethod
    def _add(definition: DomainDef, disk: Disk) -> Device:
        """Put a copy of ``disk`` into ``definition``; the copy in it."""
        try:
            return definition.add_device(disk.copy())
        except ConfError as exc:
            raise XMLError(str(exc)) from None

    @staticmethod
    def _check_hotplug(live: DomainDef, disk: Disk, addressed: bool) -> None:
        """What a live attach of ``disk`` needs, checked before anything changes: a
        virtio disk with a source in a format the daemon opens, on a machine that takes
        hot-plugged PCI devices."""
        if disk.device != "disk" or (disk.target_bus or "virtio") != "virtio":
            raise ConfigUnsupported("only virtio disks can be "
                                    f"hot-plugged (got device={disk.device} bus="
                                    f"{disk.target_bus})")
        if not disk.source:
            raise InvalidArg("a hot-plugged disk needs a source")
        fmt = disk.driver_type or "raw"
        if fmt not in DISK_FORMATS:
            raise ConfigUnsupported(f"unsupported disk format '{fmt}'")
        require_pci_hotplug(live, f"disk {_target_of(disk)}", addressed=addressed)

    def _hotplug(self, dom: DomainObj, disk: Disk, slot: PciSlot | None) -> Deferred:
        """Open the disk's block nodes and plug it in (into ``slot``, or where QEMU
        chooses for None); then the live XML has it (with its slot). The nodes are
        closed again if a step fails."""
        self.driver.lifecycle.require_active(dom)
        assert dom.monitor is not None and dom.live is not None
        self._check_hotplug(dom.live, disk, dom.pci_addressed)
        fmt = disk.driver_type or "raw"
        disk.target_bus = "virtio"
        target = _target_of(disk)
        storage, node = naming.disk_node_names(target)
        device_id = naming.disk_device_id(target)
        monitor = dom.monitor
        result = Deferred()
        nodes = blockdev_nodes(_storage_driver(disk), disk.source or "", fmt, storage, node,
                               readonly=bool(disk.readonly))
        steps: list[tuple[str, dict[str, Any]]] = [
            *(("blockdev-add", props) for props in nodes),
            ("device_add", {"driver": "virtio-blk-pci", "drive": node, "id": device_id,
                            **slot_props(slot),
                            # (as at start: a reboot in place boots by it)
                            **({} if disk.boot_order is None
                               else {"bootindex": disk.boot_order})}),
        ]
        rollback = [("blockdev-del", {"node-name": node}),
                    ("blockdev-del", {"node-name": storage})]

        def run(index: int) -> None:
            if index == len(steps):
                live = dom.live
                if live is not None:
                    self._add(live, disk)
                    self.driver.saving.note_pci_change(dom, f"hot-plugged disk {target}")
                    self.driver.lifecycle.save_status(dom)
                result.resolve(None)
                return
            command, args = steps[index]
            step = monitor.execute(command, args)
            step.add_done_callback(lambda d: run(index + 1) if d.error is None
                                   else undo(index, d.error))

        def undo(failed_at: int, error: QemudError) -> None:
            for command, args in rollback[2 - min(failed_at, 2):]:
                monitor.execute(command, args)
            result.fail(error)

        run(0)
        return result

    # -- detach --------------------------------------------------------------------------

    def detach(self, dom: DomainObj, xml: str, flags: int) -> Deferred | None:
        """Unplug a disk (live) and/or remove it from the persistent definition (config);
        an ``<interface>`` goes to :meth:`Nics.detach`.

        A live detach is refused while a job runs on the domain (see
        :meth:`_require_live_change`) and while the same disk is already being unplugged:
        the guest has one unplug request per device, and a second call would take over
        the first's wait for DEVICE_DELETED (the first then timing out although the
        guest released the disk). Both are checked before the config is changed, so a
        refused call changes nothing.
        """
        dev = self._parse(xml)
        live, config = self._targets(dom, flags)
        if isinstance(dev, Interface):
            return self.nics.detach(dom, dev, live, config)
        if isinstance(dev, Controller):
            detach_controller(self.driver, dom, dev, live, config)
            return None
        wanted = self._disk_only(dev, "detach", live)
        target = _target_of(wanted)
        disk: Disk | None = None
        if live:
            self._require_live_change(dom)
            assert dom.live is not None
            disk = self._find(dom.live, target, dom.name)
            if naming.disk_device_id(target) in dom.device_waiters:
                raise OperationInvalid(
                    f"disk {target} of domain '{dom.name}' is already being detached: "
                    "the guest has not released it yet")
            strategy = strategy_for(dom.live)
            if strategy.disk_bus(dom.live, disk) == "virtio":  # (a PCI device)
                require_pci_hotplug(dom.live, f"disk {target}", addressed=dom.pci_addressed,
                                    unplugged=disk)
        def remove_from_config(definition: DomainDef) -> None:
            definition.remove_device(self._find(definition, target, dom.name))
        if config:
            definition = dom.persistent_definition.copy()
            remove_from_config(definition)  # (the checks, before QEMU)
            if disk is None:
                self.driver.registry.save_persistent(dom, definition)
                self.disk_removed(dom)
                return None
        if disk is None:
            return None
        if not config:
            return self._unplug(dom, disk)
        requested = Deferred()
        released = self._unplug(dom, disk, requested)
        return self.detach_live_and_config(dom, requested, released, remove_from_config,
                                           then=lambda: self.disk_removed(dom))

    def detach_live_and_config(self, dom: DomainObj, requested: Deferred,
                               released: Deferred, change: Callable[[DomainDef], None],
                               then: Callable[[], None] | None = None) -> Deferred:
        """The two halves of a ``--live --config`` detach (a disk's or a NIC's), in
        libvirt's order: the persistent definition loses the device once QEMU has the
        unplug request (``requested``; a refused unplug changes neither), made to that
        definition as it is then (``Registry.after_live``), and ``then`` runs once it is
        saved. The call answers when the guest has released the device (``released``)
        and the definition is saved.

        A guest that does not release the device in time fails the call as a live
        detach does, and the error then says the persistent definition changed (QEMU
        keeps the request: the device goes when the guest releases it). A call answered
        before QEMU took the request (it timed out waiting for QEMU) leaves the
        persistent definition alone, as a failed call should."""
        out = Deferred()

        def change_unless_answered(definition: DomainDef) -> None:
            if out.done:
                raise OperationInvalid("the detach was answered before QEMU took its "
                                       "unplug request")
            change(definition)
        saved = self.driver.registry.after_live(dom, requested, change_unless_answered,
                                                self.driver.config_change_guards)
        if then is not None:
            saved.add_done_callback(lambda d: then() if d.error is None else None)

        def settle(_: Deferred) -> None:
            if not released.done or (requested.done and not saved.done):
                return
            error = released.error
            if error is not None:
                if saved.done and saved.error is None:
                    error = type(error)(f"{error.detail}; the persistent definition no "
                                        "longer has it")
                out.fail(error)
            elif saved.error is not None:
                out.fail(saved.error)
            else:
                out.resolve(None)
        released.add_done_callback(settle)
        saved.add_done_callback(settle)
        return out

    def disk_removed(self, dom: DomainObj) -> None:
        """A disk left a definition of ``dom`` (a detach, or a define without it): tell
        the hooks (an error there is logged, the change has happened)."""
        for hook in self.driver.disk_removed_hooks:
            try:
                hook(dom)
            except QemudError as exc:
                log.warning("domain %s: after a disk was removed: %s", dom.name,
                            exc.message)

    def _unplug(self, dom: DomainObj, disk: Disk, requested: Deferred | None = None
                ) -> Deferred:
        """``device_del``, DEVICE_DELETED, then close the disk's block graph;
        ``requested`` (if given) resolves once QEMU has the unplug request, or fails as
        the call does before.

        The graph is whatever QEMU holds for the disk at that moment, not the two nodes
        it got at attach/start: a live snapshot puts overlay nodes on top, and leaving
        them (they are the backing's parents, so nothing below closes either) would keep
        the files open and the target's node names taken for the next attach. The top
        node is asked from ``query-block`` before the unplug (afterwards QEMU no longer
        says which device it served), the layers below from ``query-named-block-nodes``
        once the guest released the device. The call resolves when the guest released
        it; a node QEMU refuses to close is logged, it does not fail the call. The reply
        waits for the closing (a few monitor round trips) so that an attach under the
        same target sent after it finds the names free.

        The wait for DEVICE_DELETED (``dom.device_waiters``) is registered at once, so
        that a second detach of the disk or a job sent before the ``device_del`` is
        refused too. It outlives the call's UNPLUG_TIMEOUT: the call then fails, but the
        guest may still release the disk (QEMU keeps the unplug request pending), and
        when it does the graph is closed and the disk leaves the live definition as on
        time, as libvirt does on a late DEVICE_DELETED; otherwise the nodes would stay
        open and the disk stay listed until the guest stops. The waiter leaves the dict
        where it is resolved or failed (the DEVICE_DELETED branch of the lifecycle, its
        stop, the failures here), never from its callbacks: the stop fails every waiter
        while iterating over them. Once QEMU has the request, the status file says so
        (:meth:`unplug_requested`): a restarted daemon waits for the guest again.
        """
        self.driver.lifecycle.require_active(dom)
        assert dom.live is not None and dom.monitor is not None
        target = _target_of(disk)
        device_id = naming.disk_device_id(target)
        monitor = dom.monitor
        live_def = dom.live
        result = Deferred()
        gone = Deferred()
        top = [naming.disk_node_names(target)[1]]  # until query-block says otherwise

        def give_up(error: QemudError) -> None:
            if dom.device_waiters.get(device_id) is gone:
                del dom.device_waiters[device_id]
            if requested is not None:
                requested.fail(error)
            gone.fail(error)

        def taken(d: Deferred) -> None:
            if d.error is not None:
                give_up(d.error)
                return
            self.unplug_requested(dom, device_id, gone)
            if requested is not None:
                requested.resolve(None)

        def queried(d: Deferred) -> None:
            if d.error is not None:
                give_up(d.error)
                return
            for entry in d.result or []:
                inserted = entry.get("inserted") or {}
                qdev = str(entry.get("qdev") or entry.get("device") or "")
                if device_id in qdev.split("/") and inserted.get("node-name"):
                    top[0] = str(inserted["node-name"])
            unplug()

        def unplug() -> None:
            timer = self.driver.loop.call_later(UNPLUG_TIMEOUT, timed_out)
            gone.add_done_callback(lambda d: timer.cancel())
            monitor.execute("device_del", {"id": device_id}).add_done_callback(taken)

        def timed_out() -> None:
            log.warning("domain %s: the guest did not release disk %s within %g s: it is "
                        "closed and removed when the guest does", dom.name, target,
                        UNPLUG_TIMEOUT)
            result.fail(OperationTimeout(
                f"the guest did not release disk {target} within {UNPLUG_TIMEOUT:g} s "
                "(the unplug request stays: the disk is removed when the guest releases "
                "it)"))

        def released(d: Deferred) -> None:
            if d.error is not None:
                result.fail(d.error)
                return
            if result.done:
                log.info("domain %s: the guest released disk %s after the detach timed "
                         "out: closing its block nodes", dom.name, target)
            # after a time-out the call already failed: nothing more to answer
            self._close_unplugged(dom, live_def, disk, top[0]).add_done_callback(
                lambda c: result.resolve(None))

        dom.device_waiters[device_id] = gone
        gone.add_done_callback(released)
        monitor.execute("query-block").add_done_callback(queried)
        return result

    def _close_unplugged(self, dom: DomainObj, live_def: Any, disk: Disk,
                         top: str | None) -> Deferred:
        """Close the block graph of ``disk``, which the guest released, top-down, and take
        it out of the live definition ``live_def`` (if the domain still runs on it).

        ``top`` is the top node ``query-block`` named before the unplug; None when
        nobody asked (a release no detach of this daemon waits for): then it is the
        format node that opened the disk's current source, as the live XML says.
        Resolves when done; a node QEMU refuses to close is logged, not failed.
        """
        target = _target_of(disk)
        monitor = dom.monitor
        finished = Deferred()

        def named(d: Deferred) -> None:
            if d.error is None:
                first = top if top is not None else _top_of(d.result, str(disk.source or ""))
                if first is None:
                    log.warning("domain %s: no single block node opened %s, the image of "
                                "unplugged disk %s: none is closed", dom.name, disk.source,
                                target)
                close(disk_nodes(d.result, first, target) if first else [])
                return
            nodes = list(dict.fromkeys([*([top] if top else []),
                                        *reversed(naming.disk_node_names(target))]))
            log.warning("domain %s: cannot query the block nodes of unplugged disk %s (%s): "
                        "closing %s only", dom.name, target, d.error.message,
                        ", ".join(nodes))
            close(nodes)

        def close(nodes: list[str]) -> None:
            if not nodes or monitor is None or monitor.closed:
                done()
                return
            node = nodes[0]

            def deleted(d: Deferred) -> None:
                if d.error is not None and not monitor.closed:
                    log.warning("domain %s: disk %s was unplugged but QEMU keeps its block "
                                "node %s open: %s", dom.name, target, node, d.error.message)
                close(nodes[1:])
            monitor.execute("blockdev-del", {"node-name": node}).add_done_callback(deleted)

        def done() -> None:
            # not stopped (and started again), nor detached by another call, meanwhile
            if dom.live is live_def and live_def is not None and \
                    live_def.find_device(disk) is not None:
                self.driver.saving.note_pci_change(dom, f"hot-unplugged disk {target}",
                                                   unplugged=naming.disk_device_id(target))
                live_def.remove_device(disk)
                self.driver.lifecycle.save_status(dom)
                self.disk_removed(dom)
            finished.resolve(None)

        if monitor is None or monitor.closed:
            done()
        else:
            monitor.execute("query-named-block-nodes").add_done_callback(named)
        return finished

    def unplug_requested(self, dom: DomainObj, device_id: str, gone: Deferred) -> None:
        """QEMU took the unplug request (``device_del`` answered) of the disk or NIC
        ``device_id`` that ``gone`` waits for: recorded in ``dom.unplugs`` and the
        status file (a restarted daemon waits for it again: :meth:`remember_unplugs`),
        unless the guest released it already.

        Only now, not when the wait starts: a status file that named an unplug QEMU
        never got would have the next daemon refuse saves and detaches of that device
        for as long as the guest runs."""
        if dom.device_waiters.get(device_id) is not gone or device_id in dom.unplugs:
            return
        dom.unplugs.append(device_id)
        self.driver.lifecycle.save_status(dom)

    def remember_unplugs(self, dom: DomainObj, device_ids: list[str]) -> None:
        """The daemon re-attaches to ``dom``, whose status record names ``device_ids``:
        unplugs the last daemon requested, which the guest had not finished (QEMU 7.2
        has no command that lists them). Each gets its wait again in
        ``dom.device_waiters``, before QMP is up, so that it is as before the restart:
        a save, a snapshot and a second detach of the device are refused (see
        :meth:`require_no_unplug`), and the DEVICE_DELETED that comes later closes the
        device and takes it out of the live XML (:meth:`released_unawaited`, the
        detach call being gone). One the guest released while no daemon ran ends when
        the daemon finds it gone from QEMU (:meth:`_reattached`). An id that is not a
        device of the live XML is dropped."""
        live = dom.live
        if live is None or not device_ids:
            return
        try:
            known = set(_unpluggable_ids(live))
        except (QemuError, ValueError) as exc:  # (never fails the re-attach itself)
            log.warning("domain %s: cannot tell its devices: unplugs %s not waited for "
                        "(%s)", dom.name, ", ".join(device_ids), exc)
            return
        for device_id in dict.fromkeys(device_ids):
            if device_id not in known or device_id in dom.device_waiters:
                continue
            log.info("domain %s: device %s is still being unplugged (a detach sent "
                     "before the daemon restarted): waiting for the guest to release it",
                     dom.name, device_id)
            dom.unplugs.append(device_id)
            waiter = Deferred()
            dom.device_waiters[device_id] = waiter
            waiter.add_done_callback(self._released_after_restart(dom, device_id))

    def _released_after_restart(self, dom: DomainObj, device_id: str
                                ) -> Callable[[Deferred], None]:
        """The callback of a wait :meth:`remember_unplugs` made again: the guest released
        the device (not: the domain stopped)."""
        def released(d: Deferred) -> None:
            if d.error is None:
                self.released_unawaited(dom, device_id)
        return released

    def released_unawaited(self, dom: DomainObj, device_id: str) -> None:
        """DEVICE_DELETED that no detach call waits for: a detach sent by the daemon
        before it restarted, released by the guest now (its wait kept across the
        restart, :meth:`remember_unplugs`, or not: a status file of an older version, a
        daemon killed before QEMU answered the ``device_del``), or found released when
        the daemon re-attached (:meth:`_reattached`).
        The disk is closed and leaves the live XML, as a detach waiting for it would
        have done (libvirt also removes a device on a DEVICE_DELETED it did not expect).
        The same for a NIC (see :meth:`Nics.released_unawaited`).
        """
        if self.nics.released_unawaited(dom, device_id):
            return
        live = dom.live
        disk = next((d for d in live.disks if d.target_dev and
                     naming.disk_device_id(d.target_dev) == device_id), None) \
            if live is not None else None
        if disk is None:
            return
        log.info("domain %s: the guest released disk %s (a detach sent before the daemon "
                 "restarted): closing its block nodes", dom.name, disk.target_dev)
        self._close_unplugged(dom, live, disk, None)

    def _reattached(self, dom: DomainObj, record: StatusRecord, jobs: list[Any]) -> None:
        """A guest the last daemon left running is attached again: a device the guest
        released while no daemon listened (a detach sent before, its DEVICE_DELETED
        lost) is gone from QEMU but still in the live XML; it is closed and removed as
        on the event (``Lifecycle.device_deleted``: a wait kept across the restart,
        :meth:`remember_unplugs`, ends too). Only the devices a detach can unplug are
        compared (virtio disks, interfaces): each has its id in QEMU's
        ``/machine/peripheral`` while plugged in. One released later sends the event."""
        monitor, live = dom.monitor, dom.live
        if monitor is None or live is None:
            return
        ids = _unpluggable_ids(live)
        if not ids:
            return

        def listed(d: Deferred) -> None:
            if dom.monitor is not monitor or dom.live is not live:
                return  # stopped meanwhile
            if d.error is not None or not isinstance(d.result, list):
                log.warning("domain %s: cannot list its devices after the re-attach: %s",
                            dom.name, d.error.message if d.error else d.result)
                return
            present = {str(p.get("name")) for p in d.result if isinstance(p, dict)
                       and str(p.get("type", "")).startswith("child<")}
            for device_id in ids:
                if device_id not in present:
                    log.info("domain %s: device %s was released while no daemon listened",
                             dom.name, device_id)
                    self.driver.lifecycle.device_deleted(dom, device_id)
        monitor.execute("qom-list", {"path": "/machine/peripheral"}).add_done_callback(
            listed)

    @staticmethod
    def _find(definition: Any, target: str, name: str) -> Disk:
        for disk in definition.disks:
            if disk.target_dev == target:
                return disk  # type: ignore[no-any-return]
        raise InvalidArg(f"no disk with target '{target}' in domain '{name}'")

    # -- media ---------------------------------------------------------------------------

    def change_media(self, dom: DomainObj, target: str, source: str, flags: int
                     ) -> Deferred | None:
        """``source`` in the CD-ROM drive ``target`` ("": eject). As libvirt, the live
        drive first; the persistent definition changes once QEMU has done it (a refused
        medium changes neither), made to that definition as it is then. The live change
        is refused while a job runs (a save would restore the medium its image
        recorded at its start) and is one itself (``dom.job``: a second change, a save
        or a snapshot meanwhile is refused as busy). Without ``MODIFY_FORCE`` a tray the
        guest locked stays shut and the change fails."""
        live, config = self._targets(dom, flags)
        if live:
            self._require_live_change(dom)
        if source and not os.path.isabs(source):  # (a define refuses it: the schema)
            raise InvalidArg(f"the media source must be an absolute path, got '{source}'")
        bad = not_xml_text(source)
        if bad:
            raise InvalidArg(f"the media source cannot hold {bad}")

        kind = _medium_kind(source)

        def insert(definition: DomainDef) -> None:
            self._cdrom(definition, target, dom.name).change_medium(source or None, kind)
        if config:
            definition = dom.persistent_definition.copy()
            insert(definition)  # (the checks, before QEMU)
            if not live:
                self.driver.registry.save_persistent(dom, definition)
                return None
        assert dom.live is not None and dom.monitor is not None
        disk = self._cdrom(dom.live, target, dom.name)
        monitor, live_def = dom.monitor, dom.live
        dom.job = MEDIA_JOB  # (one change at a time, and no save or snapshot meanwhile)

        def changed(d: Deferred) -> None:
            if dom.live is live_def:  # (not stopped meanwhile)
                if dom.job == MEDIA_JOB:
                    dom.job = None
                if d.error is None:
                    disk.change_medium(source or None, kind)
                self.driver.lifecycle.save_status(dom)  # (a failure may have emptied it)
        result = run_task(self.driver.loop,
                          _change_medium(monitor, disk, source, kind,
                                         force=bool(flags & MODIFY_FORCE)),
                          f"the media change of {target} in '{dom.name}'")
        result.add_done_callback(changed)
        return (self.driver.registry.after_live(dom, result, insert,
                                                self.driver.config_change_guards)
                if config else result)

    @staticmethod
    def _cdrom(definition: Any, target: str, name: str) -> Disk:
        for disk in definition.disks:
            if disk.target_dev == target:
                if disk.device != "cdrom":
                    raise OperationInvalid(f"disk '{target}' of '{name}' is not a CD-ROM")
                return disk  # type: ignore[no-any-return]
        raise InvalidArg(f"no CD-ROM with target '{target}' in domain '{name}'")
