"""``attach-device`` / ``detach-device`` of a ``<controller>``: the persistent definition
only.

Why: on q35 and aarch64 ``virt`` a device can be plugged into a running guest only
behind a free pcie-root-port (:mod:`qemud.qemu.pci`), and a port cannot itself be
plugged in while the guest runs. So a user adds spare ports to the definition, for the
next start, as libvirt lets them: ``attach-device --config`` with ``<controller
type='pci' model='pcie-root-port'/>`` (its index, address and target are assigned as
at define). ``detach-device --config`` takes a controller out again, refused while a
device of the definition sits on the bus it makes (libvirt's "device is busy").

A live attach or detach is refused in libvirt's words ("'pci' controller cannot be hot
plugged."): QEMU takes no root port in or out while the guest runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qemud.conf import ConfError, Controller
from qemud.errors import OperationFailed, OperationUnsupported, XMLError

from .domain import DomainObj

if TYPE_CHECKING:
    from .driver import QemuDriver

__all__ = ["attach_controller", "detach_controller"]


def attach_controller(driver: QemuDriver, dom: DomainObj, controller: Controller,
                      live: bool, config: bool) -> None:
    """Add ``controller`` to ``dom``'s persistent definition (``config``)."""
    _refuse_live(controller, live)
    assert config
    definition = dom.persistent_definition.copy()
    try:
        definition.add_device(controller.copy())
    except ConfError as exc:
        raise XMLError(str(exc)) from None
    driver.registry.check_for_host(definition)  # (assigns the index, address, target)
    driver.registry.save_persistent(dom, definition)


def detach_controller(driver: QemuDriver, dom: DomainObj, wanted: Controller,
                      live: bool, config: bool) -> None:
    """Take the controller ``wanted`` designates (type and index, or alias) out of
    ``dom``'s persistent definition (``config``); refused while a device sits on the
    PCI bus it makes."""
    _refuse_live(wanted, live)
    assert config
    definition = dom.persistent_definition.copy()
    try:
        found = definition.find_device(wanted)
    except ConfError as exc:
        raise XMLError(str(exc)) from None
    if not isinstance(found, Controller):
        raise XMLError(f"no matching {wanted.describe()} in domain '{dom.name}'")
    if found.is_pci and found.index:
        users = [d.describe() for d in definition.devices
                 if d.pci_address is not None and d.pci_address.bus == found.index]
        if users:
            raise OperationFailed(
                f"device cannot be detached: {found.describe()} is busy: "
                f"{', '.join(users)} sit{'s' if len(users) == 1 else ''} on its bus "
                f"{found.index:#04x}")
    definition.remove_device(found)
    driver.registry.save_persistent(dom, definition)


def _refuse_live(controller: Controller, live: bool) -> None:
    if live:
        # libvirt's words (qemuDomainAttachControllerLive, for a PCI controller)
        raise OperationUnsupported(f"'{controller.type}' controller cannot be hot plugged.")
