"""Attach and detach of ``<interface>`` devices: live over QMP, config in the definition.

A NIC plugged into a running guest gets what one present at start gets: its MAC (given,
or generated in 52:54:00 and unique in the domain, the same for the live and the
persistent definition), the arch's default model, the ids named after its MAC and the
``-netdev``/``-device`` of the argv builder (:mod:`qemud.qemu.nicplug`), in a PCI slot
chosen before anything changes and kept in the live XML (its own address, else a free
slot: :meth:`Devices.choose_slot`; the persistent copy of ``--live --config`` takes the
same slot when it is free there). A live detach
asks the guest to release the device (``device_del``) and waits for DEVICE_DELETED
without blocking the loop, as a disk's does (:meth:`Devices._unplug`), then removes the
backend (``netdev_del``) and the interface from the live XML.

Which interface a detach means follows libvirt's virDomainNetFindIdx: the MAC when the
request has one (its type is then not compared), else the alias, else the one interface
of the request's type; none or several is an error worded as libvirt's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from qemud.conf import ConfError, DomainDef, Interface, generate_mac
from qemud.dispatch import Deferred
from qemud.errors import (
    ConfigUnsupported,
    InvalidArg,
    OperationFailed,
    OperationInvalid,
    OperationTimeout,
    QemudError,
    XMLError,
)
from qemud.qemu import naming
from qemud.qemu.arch import strategy_for
from qemud.qemu.errors import QemuError
from qemud.qemu.nicplug import nic_plug_args

from .domain import DomainObj

if TYPE_CHECKING:
    from .devices import Devices, PciSlot
    from .driver import QemuDriver

__all__ = ["Nics", "find_interface"]

log = logging.getLogger(__name__)


def find_interface(definition: DomainDef, wanted: Interface) -> Interface:
    """The interface of ``definition`` a detach request ``wanted`` designates.

    libvirt's rules (virDomainNetFindIdx) and wording: by MAC if the request has one,
    else by alias, else the only interface of the request's type.
    """
    nics = definition.interfaces
    mac = wanted.mac
    if mac is not None:
        matching = [n for n in nics if n.mac == mac]
    elif wanted.alias is not None:
        matching = [n for n in nics if n.alias == wanted.alias]
    else:
        matching = [n for n in nics if n.type == wanted.type]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise OperationFailed(f"no device matching MAC address {mac} found" if mac
                              else "no matching device found")
    raise OperationFailed(f"multiple devices matching MAC address {mac} found" if mac
                          else "multiple matching devices found")


class Nics:
    """The ``<interface>`` half of :class:`Devices` (which parses and dispatches)."""

    def __init__(self, driver: QemuDriver, devices: Devices) -> None:
        self.driver = driver
        self.devices = devices

    # -- attach --------------------------------------------------------------------------

    def attach(self, dom: DomainObj, iface: Interface, live: bool, config: bool
               ) -> Deferred | None:
        """Plug ``iface`` in (live) and/or add it to the persistent definition (config).

        Everything is checked before anything changes: the live and the config copy each
        take the interface (no MAC twice, its PCI slot free: see
        :meth:`Devices.choose_slot`), the arch has its model. The config is saved once
        the guest has the NIC (libvirt's order), so a refused hotplug changes nothing.
        """
        if iface.mac is None:
            iface.mac = generate_mac(taken=self._macs(dom))
        plugged: Interface | None = None
        slot: PciSlot | None = None
        if live:
            self.devices._require_live_change(dom)
            assert dom.live is not None
            what = f"interface {iface.mac}"
            plugged = self._with_defaults(dom.live, iface, dom.name)
            self.devices.require_pci_hotplug(dom.live, what, addressed=dom.pci_addressed)
            slot = self.devices.choose_slot(dom, iface, what)
            self.devices.place(plugged, slot)
        definition: DomainDef | None = None
        if config:
            definition = dom.persistent_definition.copy()
            self._add_to_config(definition, iface, slot, dom.name)
        if plugged is None:
            assert definition is not None
            self.driver.registry.save_persistent(dom, definition)
            return None
        done = self._hotplug(dom, plugged, slot)
        self.devices.plugging(dom, plugged, done)
        if not config:
            return done
        # the persistent definition once the guest has the NIC, added to it as it is
        # then (a refused hotplug changes neither)
        return self.driver.registry.after_live(
            dom, done, lambda d: self._add_to_config(d, iface, slot, dom.name),
            self.driver.config_change_guards)

    def _macs(self, dom: DomainObj) -> list[str]:
        """MACs of every definition of ``dom``: a generated one is new to all of them."""
        defs = [dom.definition, dom.next_definition, dom.live]
        return [str(n.mac) for d in defs if d is not None for n in d.interfaces if n.mac]

    @staticmethod
    def _insert(definition: DomainDef, iface: Interface, name: str) -> Interface:
        if any(n.mac == iface.mac for n in definition.interfaces):
            raise InvalidArg(f"domain '{name}' already has an interface with MAC address "
                             f"{iface.mac}")
        try:
            added = definition.add_device(iface.copy())
        except ConfError as exc:
            raise XMLError(str(exc)) from None
        assert isinstance(added, Interface)
        return added

    def _with_defaults(self, live: DomainDef, iface: Interface, name: str) -> Interface:
        """``iface`` as the running guest would get it at start (the arch's default model
        filled in), checked against the arch; the live definition is not changed."""
        copy = live.copy()
        added = self._insert(copy, iface, name)
        try:
            strategy = strategy_for(copy)
            strategy.fill_defaults(copy)
            strategy.validate(copy)
            nic_plug_args(added, strategy)
        except QemuError as exc:
            raise ConfigUnsupported(str(exc)) from None
        return added

    def _add_to_config(self, definition: DomainDef, iface: Interface, slot: PciSlot | None,
                       name: str) -> None:
        """``iface`` added to ``definition`` (a copy of the persistent one), checked for
        the host as a define is (the arch's default model filled in, a PCI address:
        ``slot``, the live one, when it is free there, see :func:`prefer_slot`)."""
        self.devices.prefer_slot(definition, self._insert(definition, iface, name), slot)
        self.driver.registry.check_for_host(definition)

    def _hotplug(self, dom: DomainObj, iface: Interface, slot: PciSlot | None
                 ) -> Deferred:
        """``netdev_add`` then ``device_add`` (into ``slot``; None: where QEMU chooses);
        the netdev is removed again if the device is refused. Then the live XML has the
        NIC."""
        assert dom.monitor is not None and dom.live is not None
        strategy = strategy_for(dom.live)
        netdev, device = nic_plug_args(iface, strategy, slot=slot)
        monitor, live_def = dom.monitor, dom.live
        result = Deferred()

        def added_netdev(d: Deferred) -> None:
            if d.error is not None:
                result.fail(d.error)
                return
            monitor.execute("device_add", device).add_done_callback(added_device)

        def added_device(d: Deferred) -> None:
            if d.error is not None:
                monitor.execute("netdev_del", {"id": netdev["id"]})
                result.fail(d.error)
                return
            if iface.link_down:  # the cable out from the start, as at the guest's start
                monitor.execute("set_link", {"name": device["id"], "up": False}
                                ).add_done_callback(plugged)
            else:
                plugged(d)

        def plugged(d: Deferred) -> None:
            if d.error is not None:  # (the NIC is in, its link up: the XML says so)
                iface.link_state = None
                log.warning("domain %s: interface %s plugged in with its link up: %s",
                            dom.name, iface.mac, d.error.message)
            if dom.live is live_def:
                live_def.add_device(iface.copy())
                self.driver.saving.note_pci_change(dom, f"hot-plugged interface {iface.mac}")
                self.driver.lifecycle.save_status(dom)
            result.resolve(None)

        monitor.execute("netdev_add", netdev).add_done_callback(added_netdev)
        return result

    # -- detach --------------------------------------------------------------------------

    @staticmethod
    def unplugging(dom: DomainObj) -> list[str]:
        """The MACs of the interfaces a live detach is unplugging: from the call until
        the guest released the device (DEVICE_DELETED) or the domain stopped, also after
        the detach call timed out or the daemon restarted (see
        :meth:`Devices.require_no_unplug`, :meth:`Devices.remember_unplugs`)."""
        if dom.live is None or not dom.device_waiters:
            return []
        return [str(n.mac) for n in dom.live.interfaces if n.mac
                and naming.nic_ids(str(n.mac))[0] in dom.device_waiters]

    def detach(self, dom: DomainObj, wanted: Interface, live: bool, config: bool
               ) -> Deferred | None:
        """Unplug the interface ``wanted`` designates (live) and/or remove it from the
        persistent definition (config). Both are looked up before anything changes."""
        found: Interface | None = None
        if live:
            self.devices._require_live_change(dom)
            assert dom.live is not None
            found = find_interface(dom.live, wanted)
            device_id = naming.nic_ids(str(found.mac))[0]
            if device_id in dom.device_waiters:
                raise OperationInvalid(
                    f"interface {found.mac} of domain '{dom.name}' is already being "
                    "detached: the guest has not released it yet")
            self.devices.require_pci_hotplug(dom.live, f"interface {found.mac}",
                                             addressed=dom.pci_addressed, unplugged=found)
        def remove_from_config(definition: DomainDef) -> None:
            definition.remove_device(find_interface(definition, wanted))
        if config:
            definition = dom.persistent_definition.copy()
            remove_from_config(definition)  # (the checks, before QEMU)
            if found is None:
                self.driver.registry.save_persistent(dom, definition)
                return None
        if found is None:
            return None
        if not config:
            return self._unplug(dom, found)
        requested = Deferred()
        released = self._unplug(dom, found, requested)
        return self.devices.detach_live_and_config(dom, requested, released,
                                                   remove_from_config)

    def _unplug(self, dom: DomainObj, iface: Interface,
                requested: Deferred | None = None) -> Deferred:
        """``device_del``, DEVICE_DELETED, then ``netdev_del`` and out of the live XML;
        ``requested`` (if given) resolves once QEMU has the unplug request, or fails as
        the call does before.

        The same shape as a disk's unplug (see :meth:`Devices._unplug`): the wait is in
        ``dom.device_waiters`` from the start, the call fails after UNPLUG_TIMEOUT but the
        request stays (in the status file too, once QEMU has it: a restarted daemon
        waits for it again), and a late release still removes the backend and the
        interface.
        """
        from .devices import UNPLUG_TIMEOUT  # (devices imports this module)

        self.driver.lifecycle.require_active(dom)
        assert dom.monitor is not None and dom.live is not None
        mac = str(iface.mac)
        device_id = naming.nic_ids(mac)[0]
        monitor, live_def = dom.monitor, dom.live
        result = Deferred()
        gone = Deferred()

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
            self.devices.unplug_requested(dom, device_id, gone)
            if requested is not None:
                requested.resolve(None)

        def timed_out() -> None:
            log.warning("domain %s: the guest did not release interface %s within %g s: "
                        "it is removed when the guest does", dom.name, mac, UNPLUG_TIMEOUT)
            result.fail(OperationTimeout(
                f"the guest did not release interface {mac} within {UNPLUG_TIMEOUT:g} s "
                "(the unplug request stays: the interface is removed when the guest "
                "releases it)"))

        def released(d: Deferred) -> None:
            if d.error is not None:
                result.fail(d.error)
                return
            self._remove_unplugged(dom, live_def, mac).add_done_callback(
                lambda c: result.resolve(None))

        dom.device_waiters[device_id] = gone
        timer = self.driver.loop.call_later(UNPLUG_TIMEOUT, timed_out)
        gone.add_done_callback(lambda d: timer.cancel())
        gone.add_done_callback(released)
        monitor.execute("device_del", {"id": device_id}).add_done_callback(taken)
        return result

    def _remove_unplugged(self, dom: DomainObj, live_def: DomainDef, mac: str) -> Deferred:
        """The guest released the NIC ``mac``: delete its netdev (an error is logged, not
        failed: the device is gone) and take it out of ``live_def`` if the domain still
        runs on it."""
        netdev_id = naming.nic_ids(mac)[1]
        monitor = dom.monitor
        finished = Deferred()

        def done(d: Deferred | None = None) -> None:
            if d is not None and d.error is not None and monitor is not None \
                    and not monitor.closed:
                log.warning("domain %s: interface %s was unplugged but QEMU keeps its "
                            "netdev %s: %s", dom.name, mac, netdev_id, d.error.message)
            if dom.live is live_def:
                for nic in live_def.interfaces:
                    if nic.mac == mac:
                        self.driver.saving.note_pci_change(
                            dom, f"hot-unplugged interface {mac}",
                            unplugged=naming.nic_ids(mac)[0])
                        live_def.remove_device(nic)
                        self.driver.lifecycle.save_status(dom)
                        break
            finished.resolve(None)

        if monitor is None or monitor.closed:
            done()
        else:
            monitor.execute("netdev_del", {"id": netdev_id}).add_done_callback(done)
        return finished

    def released_unawaited(self, dom: DomainObj, device_id: str) -> bool:
        """DEVICE_DELETED for a NIC no detach call waits for (one sent before the daemon
        restarted): remove it as the detach would have. False if ``device_id`` is not a
        NIC of the live XML."""
        live = dom.live
        if live is None:
            return False
        for nic in live.interfaces:
            if nic.mac and naming.nic_ids(nic.mac)[0] == device_id:
                log.info("domain %s: the guest released interface %s (a detach sent "
                         "before the daemon restarted): removing it", dom.name, nic.mac)
                self._remove_unplugged(dom, live, str(nic.mac))
                return True
        return False
