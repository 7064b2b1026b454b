"""DOMAIN_UPDATE_DEVICE (``virsh update-device``, ``domif-setlink``): change a device in
place, and an interface's link state (``<link state='down'/>``) at start.

What can change in place is what QEMU can change on a running device: a CD-ROM's or
floppy's medium (the same path as ``change-media``) and a NIC's link, the virtual cable
(QMP ``set_link``). Anything else in the new XML differing from the device as it is, is
refused in libvirt's words and changes nothing: the device would have to be unplugged
and plugged in again, which is attach/detach's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import Procedure
from protocol import payloads as pl
from qemud.conf import Disk, DomainDef, Interface
from qemud.dispatch import Deferred, Handler
from qemud.errors import OperationInvalid, OperationUnsupported
from qemud.qemu import naming

from .devices import MODIFY_FORCE
from .flags import check_flags
from .nics import find_interface
from .resources import AFFECT_CONFIG, AFFECT_LIVE

if TYPE_CHECKING:
    from .domain import DomainObj
    from .driver import QemuDriver
    from .monitor import Monitor

__all__ = ["DeviceUpdate", "set_link_states"]


#: (attribute, libvirt's name for it) of what an interface update may not change
_FIXED = (("type", "type"), ("model", "model"), ("source_bridge", "source bridge"),
          ("boot_order", "boot index setting"))


def set_link_states(monitor: Monitor, definition: DomainDef) -> Deferred | None:
    """At start, before the vCPUs run: ``set_link`` down for each NIC defined with its
    cable out (QEMU's command line cannot say so; libvirt's qemuProcessSetLinkStates).
    None when every link is up. Commands go out in order; the last one's answer says
    all are done, and the first failure fails the start."""
    down = [n for n in definition.interfaces if n.link_down and n.mac]
    if not down:
        return None
    out = Deferred()
    steps = [monitor.execute("set_link", {"name": naming.nic_ids(str(n.mac))[0],
                                          "up": False}) for n in down]

    def done(d: Deferred) -> None:
        if out.done:
            return
        if d.error is not None:
            out.fail(d.error)
        elif all(s.done for s in steps):
            out.resolve(None)

    for step in steps:
        step.add_done_callback(done)
    return out


class DeviceUpdate:
    """The handler of DOMAIN_UPDATE_DEVICE."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_UPDATE_DEVICE: self.update_device}

    def update_device(self, ctx: Any, args: pl.DeviceArgs) -> Any:
        check_flags(args.flags, AFFECT_LIVE | AFFECT_CONFIG | MODIFY_FORCE,
                    "qemuDomainUpdateDeviceFlags")
        dom = self.driver._dom(args)
        devices = self.driver.devices
        dev = devices._parse(args.xml)
        live, config = devices._targets(dom, args.flags & (AFFECT_LIVE | AFFECT_CONFIG))
        if isinstance(dev, Disk) and dev.device in ("cdrom", "floppy"):
            if not dev.target_dev:
                raise OperationUnsupported("update of a disk needs its <target dev>")
            return self.driver._empty_or(devices.change_media(
                dom, dev.target_dev, dev.source or "", args.flags))
        if isinstance(dev, Disk):
            raise OperationUnsupported(f"update of a disk with device='{dev.device}' is "
                                       "not supported (a cdrom's or floppy's medium is)")
        if not isinstance(dev, Interface):
            raise OperationUnsupported(f"{'live' if live else 'persistent'} update of "
                                       f"device '{dev.tag}' is not supported")
        return self.driver._empty_or(self._interface(dom, dev, live, config))

    def _interface(self, dom: DomainObj, new: Interface, live: bool, config: bool
                   ) -> Deferred | None:
        """Only the link state may change; each definition is checked before any of them
        changes. As libvirt (qemuDomainUpdateDeviceLiveAndConfig), the live link first
        (the live XML records it once QEMU has), then the persistent definition as it
        is then: a ``set_link`` QEMU refuses changes neither."""
        state = new.link_state or "up"
        link = None if state == "up" else state
        live_nic: Interface | None = None
        if live:
            self.driver.lifecycle.require_active(dom)
            self.driver.lifecycle.require_no_job(dom)
            assert dom.live is not None
            live_nic = _unchanged_but_link(dom.live, new)
            if str(live_nic.mac) in self.driver.devices.nics.unplugging(dom):
                raise OperationInvalid(
                    f"domain '{dom.name}' is busy: detach of interface {live_nic.mac} in "
                    "progress (waiting for the guest to release it)")

        def change_config(definition: DomainDef) -> None:
            _unchanged_but_link(definition, new).link_state = link
        if config:
            definition = dom.persistent_definition.copy()
            change_config(definition)  # (the checks, before QEMU)
            if live_nic is None:
                self.driver.registry.save_persistent(dom, definition)
                return None
        if live_nic is None:
            return None
        assert dom.monitor is not None and dom.live is not None
        live_def, mac = dom.live, str(live_nic.mac)
        out = Deferred()

        def done(d: Deferred) -> None:
            if d.error is not None:
                out.fail(d.error)
                return
            if dom.live is live_def:
                find_interface(live_def, new).link_state = link
                self.driver.lifecycle.save_status(dom)
            out.resolve(None)

        dom.monitor.execute("set_link", {"name": naming.nic_ids(mac)[0],
                                         "up": state == "up"}).add_done_callback(done)
        return (self.driver.registry.after_live(dom, out, change_config,
                                                self.driver.config_change_guards)
                if config else out)


def _unchanged_but_link(definition: DomainDef, new: Interface) -> Interface:
    """The interface of ``definition`` that ``new`` designates (by MAC, as libvirt's
    virDomainNetFindIdx), refused if ``new`` changes anything but its link state."""
    old = find_interface(definition, new)
    for attr, what in _FIXED:
        value = getattr(new, attr)
        if value is not None and value != "" and value != getattr(old, attr):
            raise OperationUnsupported(f"cannot modify network device {what} from "
                                       f"'{getattr(old, attr)}' to '{value}'")
    if new.address_type is not None and (new.address_type != old.address_type
                                         or new.pci_address != old.pci_address):
        # (libvirt's qemuDomainChangeNet: an update without <address> keeps the old one)
        raise OperationUnsupported("cannot modify network device guest address")
    if new.link_state is not None and new.link_state not in Interface.LINK_STATES:
        raise OperationUnsupported(f"unknown interface link state '{new.link_state}'")
    return old
