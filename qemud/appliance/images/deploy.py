"""Deploying a VM from a stored appliance (APPLIANCE_DEPLOY), listing the store
(APPLIANCE_LIST) and a factory reset (APPLIANCE_RESET).

Deploy gives the VM its own qcow2 overlays on the originals (system and data disks) and
fresh scratch disks in ``<state_dir>/vms/<vm>/``, records its :class:`VMState`, then
defines the domain with its origin and disk classes in the metadata. A factory reset
replaces the system overlay by an empty one on the original, keeps the data disks and
recreates the scratch disks.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Empty
from protocol import payloads as pl
from qemud.conf import ConfError, DomainDef, parse_domain_xml
from qemud.dispatch import Deferred
from qemud.driver.discard import discard_tree
from qemud.errors import (
    DomainExists,
    InvalidArg,
    OperationFailed,
    OperationInvalid,
    QemudError,
    XMLError,
)
from qemud.tasks import Task, run_task

from ..metadata import Origin, read_settings, write_settings
from .base import ImageOps, disk_file
from .descriptor import NAME_RE, Descriptor, check_host
from .store import VMState

if TYPE_CHECKING:
    from qemud.config import Config
    from qemud.driver import QemuDriver
    from qemud.driver.domain import DomainObj
    from qemud.driver.tools import ToolRunner

    from .store import ImageStore

__all__ = ["DeployOps", "DEPLOY_START"]


# Our own two lines rather than xml.sax.saxutils (it imports urllib.request, with
# http.client and email, ~1 MiB resident) or html.escape (html imports its entity tables,
# ~0.3 MiB, into every daemon for these two functions).
def escape(text: str) -> str:
    """``text`` for XML character data."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """``text`` as a double-quoted XML attribute value."""
    return '"' + escape(text).replace('"', "&quot;").replace("'", "&#x27;") + '"'


log = logging.getLogger(__name__)


def _start_failed(error: QemudError, what: str) -> QemudError:
    """``error`` of a start, its detail behind ``what``, of the same class (code) as far
    as :mod:`qemud.errors` goes: a class of another module (a QEMU command's
    CommandRejected) may take other arguments."""
    cls: type[QemudError] = QemudError
    for c in type(error).__mro__:
        if issubclass(c, QemudError) and c.__module__ == QemudError.__module__:
            cls = c
            break
    return cls(f"{what}: {error.detail}", domain=error.domain)

#: DeployArgs.flags: start the VM once it is defined
DEPLOY_START = 1
#: what a deploy's name reservation says (``Registry.reserved``)
DEPLOYING = "an appliance is being deployed under it"


class DeployOps(ImageOps):
    """APPLIANCE_DEPLOY, APPLIANCE_LIST and APPLIANCE_RESET."""

    def __init__(self, driver: QemuDriver, config: Config, store: ImageStore,
                 runner: ToolRunner, busy: dict[str, str]) -> None:
        super().__init__(driver, config, store, runner, busy)

    def handle_deploy(self, ctx: Any, args: pl.DeployArgs) -> Deferred:
        vm = args.vm_name
        if not NAME_RE.match(vm or ""):
            raise InvalidArg(f"VM name '{vm}' may only hold letters, digits and . _ + - "
                             "(at most 64, not starting with a punctuation mark)")
        desc, directory = self.store.get(args.name, args.version)
        registry = self.driver.registry
        if registry.has_name(vm):
            raise DomainExists(f"operation failed: domain '{vm}' already exists")
        taken = registry.reserved.get(vm)
        if taken is not None:
            raise DomainExists(f"operation failed: domain '{vm}' already exists: {taken}")
        if self.vm_dir(vm).exists():
            raise OperationInvalid(f"{self.vm_dir(vm)} exists (disks of an earlier VM "
                                   f"'{vm}'?): remove it or deploy under another name")
        check_host(desc, self.driver.caps)
        self.qemu_img()
        registry.reserved[vm] = DEPLOYING
        return run_task(self.loop, self._deploy(desc, directory, vm,
                                                bool(args.flags & DEPLOY_START)),
                        "APPLIANCE_DEPLOY")

    def _deploy(self, desc: Descriptor, directory: Path, vm: str, start: bool) -> Task:
        """The name is reserved until the define has landed (a define, rename or deploy
        of it meanwhile is refused); from the define until the state's last write, the
        new domain is busy (``Registry.operations``): a rename or an undefine meanwhile
        would move or remove what the deploy still writes to, or undoes.

        A ``start`` comes after all that, outside the undo: its failure (too much memory
        for the host, say) is no fault of the deployed VM, whose disks and definition are
        whole, so the VM is kept, as virsh keeps a defined domain whose start failed, and
        the error says it was deployed but did not start (a retry of the same deploy would
        meet "already exists"; a ``start`` after fixing the cause is what is needed)."""
        vmdir = self.vm_dir(vm)
        registry = self.driver.registry
        try:
            vmdir.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            registry.reserved.pop(vm, None)
            raise OperationFailed(f"cannot create {vmdir}: {exc.strerror or exc}") from None
        uuid = str(uuidlib.uuid4())
        try:
            disks: dict[str, dict[str, Any]] = {}
            for disk in desc.disks:
                path = vmdir / disk_file(disk, "a")
                if disk.cls == "scratch":
                    assert disk.size is not None
                    yield from self._create_scratch(path, disk.size)
                    disks[disk.target] = {"class": "scratch", "path": str(path),
                                          "size": disk.size}
                else:
                    assert disk.file is not None
                    yield from self._create_overlay(path, directory / disk.file, disk.format)
                    disks[disk.target] = {"class": disk.cls, "path": str(path)}
            definition = self._build_definition(desc, directory, vm, uuid, disks)
            state = VMState(vm=vm, uuid=uuid, appliance=desc.name, version=desc.version,
                            slot="a", disks=disks, deploying=True)
            yield self.save_state(state)
            self.busy[uuid] = "deploy"
            dom = yield self._define(definition, claimed=True)
            registry.reserved.pop(vm, None)  # (the domain has the name now)
            state.deploying = False
            yield from self._settle_deploy(dom, state)
        except BaseException:
            discard_tree(self.loop, vmdir)
            raise
        finally:
            registry.reserved.pop(vm, None)
            self.busy.pop(uuid, None)
        log.info("domain %s deployed from appliance %s", vm, desc.ref)
        self.events.appliance(dom.ref(), "appliance-deployed",
                              f"deployed from appliance {desc.ref} ({len(disks)} disk(s) in "
                              f"{vmdir})")
        if start:
            try:
                yield self.driver.lifecycle.start(dom)
            except QemudError as exc:
                raise _start_failed(exc, f"appliance '{desc.name}' was deployed as '{vm}', "
                                        "but it did not start") from None
        return pl.DomainReply(dom.ref())

    def _settle_deploy(self, dom: DomainObj, state: VMState) -> Task:
        """The state's final write, without its ``deploying`` mark. Should it fail, the
        deploy is undone (the domain undefined, the directory removed by the caller)
        rather than left marked: the mark of a VM undefined before the next start would
        have its directory, and the data disks in it, removed then (``settle_deploys``)."""
        try:
            yield self.save_state(state)
        except QemudError:
            try:
                self.driver.registry.undefine(dom)
            except QemudError as exc:  # (defined: the next start drops the mark)
                log.error("domain %s: cannot undo its deploy: %s", dom.name, exc.message)
                return
            raise

    def _build_definition(self, desc: Descriptor, directory: Path, vm: str, uuid: str,
                          disks: dict[str, dict[str, Any]]) -> DomainDef:
        caps = self.driver.caps
        domain_type = "kvm" if caps.kvm_usable_for(desc.arch) else "qemu"
        machine = f" machine={quoteattr(desc.machine)}" if desc.machine else ""
        boot = ""
        if desc.boot.kernel is not None:
            boot += f"<kernel>{escape(str(directory / desc.boot.kernel))}</kernel>"
            if desc.boot.initrd is not None:
                boot += f"<initrd>{escape(str(directory / desc.boot.initrd))}</initrd>"
            if desc.boot.cmdline:
                boot += f"<cmdline>{escape(desc.boot.cmdline)}</cmdline>"
        devices = []
        for disk in desc.disks:
            order = "<boot order='1'/>" if desc.boot.disk == disk.target else ""
            devices.append(
                f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file={quoteattr(disks[disk.target]['path'])}/>"
                f"<target dev='{disk.target}' bus='{disk.bus}'/>{order}</disk>")
        # no path: the driver's socket for it, computed from the domain's name at each
        # start (GuestPaths.socket_for). A path of this name written here would stay
        # with the VM through a rename, to be shared with a later VM of the name
        devices.append("<serial type='unix'><target port='0'/></serial>")
        xml = (f"<domain type='{domain_type}'><name>{escape(vm)}</name><uuid>{uuid}</uuid>"
               f"<description>{escape(desc.description or f'appliance {desc.ref}')}"
               f"</description><memory unit='MiB'>{desc.memory_mib}</memory>"
               f"<vcpu>{desc.vcpus}</vcpu><os><type arch={quoteattr(desc.arch)}{machine}>hvm"
               f"</type>{boot}</os><on_poweroff>destroy</on_poweroff>"
               f"<on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
               f"<devices>{''.join(devices)}</devices></domain>")
        try:
            definition = parse_domain_xml(xml)
        except ConfError as exc:
            raise XMLError(f"appliance {desc.ref} does not make a valid domain: {exc}") \
                from None
        settings = read_settings(definition)
        settings.origin = Origin(desc.name, desc.version)
        settings.heartbeat = desc.heartbeat
        settings.disk_classes = {t: d["class"] for t, d in disks.items()}
        write_settings(definition, settings)
        return definition

    # -- list ----------------------------------------------------------------------------

    def handle_list(self, ctx: Any, args: Empty) -> pl.ApplianceListReply:
        vms: dict[tuple[str, str], list[str]] = {}
        for dom in self.driver.registry:
            try:
                origin = read_settings(dom.persistent_definition).origin
            except QemudError:
                continue
            if origin is not None:
                vms.setdefault((origin.appliance, origin.version), []).append(dom.name)
        return pl.ApplianceListReply([
            pl.ApplianceInfo(desc.name, desc.version, desc.arch, str(directory),
                             sorted(vms.get((desc.name, desc.version), [])))
            for desc, directory in self.store.entries()])

    # -- factory reset -------------------------------------------------------------------

    def handle_reset(self, ctx: Any, args: pl.DomainFlagsArgs) -> Deferred:
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        state = self.state_for_change(dom, "reset")
        desc, directory = self.store.get(state.appliance, state.version)
        self.qemu_img()
        self.busy[dom.uuid] = "factory reset"
        return run_task(self.loop, self._reset(dom, state, desc, directory),
                        "APPLIANCE_RESET")

    def _reset(self, dom: DomainObj, state: VMState, desc: Descriptor, directory: Path
               ) -> Task:
        was_running = dom.active
        try:
            yield from self._stop_to_restart(dom, state, "factory reset")
            # (durably before the first disk is replaced: a memory state saved before
            # must no longer be restored, layout.require_restorable)
            state.disks_changed(f"factory reset to {desc.ref}")
            yield self.save_state(state)
            for target in state.targets("system"):
                disk = desc.disk(target)
                if disk is None or disk.file is None:
                    raise OperationFailed(f"appliance {desc.ref} has no system disk {target}")
                yield from self._create_overlay(Path(state.disks[target]["path"]),
                                                directory / disk.file, disk.format)
            for target in state.targets("scratch"):
                yield from self._create_scratch(Path(state.disks[target]["path"]),
                                                int(state.disks[target]["size"]))
            log.info("domain %s: factory reset to %s", dom.name, desc.ref)
            self.events.appliance(dom.ref(), "factory-reset",
                                  f"system disk(s) {', '.join(state.targets('system'))} back "
                                  f"to {desc.ref}; data disks kept, scratch disks emptied")
            if was_running:
                yield self.driver.lifecycle.start(dom, busy_ok=True)
        finally:
            if was_running:
                self._restart_handled(dom)
            self.busy.pop(dom.uuid, None)
        return Empty()
