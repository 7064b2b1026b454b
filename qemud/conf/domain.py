"""``<domain>``: the guest definition, and ``parse_domain_xml``.

The model is a typed view over the lxml tree of a libvirt-compatible definition (see
``xmlmodel``): what it does not model is kept verbatim.  Parsing runs, in order: XML syntax,
our semantic checks (precise messages for the mistakes users make), then libvirt's RelaxNG
schema when installed (everything else libvirt would refuse).  After a successful parse the
values the model owns are canonicalised like libvirt does (memory in KiB, lower-case
uuid/MAC, explicit VNC autoport), so ``to_xml()`` is the form ``dumpxml`` shows.

No host logic here: whether a bus exists on an architecture, whether a file exists, which
ports are free — that is the QEMU layer's job.
"""

from __future__ import annotations

import builtins
import copy
import random
import re
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

from lxml import etree

from . import cputune
from .devices import (
    DEVICE_CLASSES,
    CharDevice,
    Controller,
    Device,
    Disk,
    Graphics,
    Interface,
    Memballoon,
    Panic,
    Watchdog,
)
from .devices.interface import generate_mac
from .errors import DefinitionError, XMLParseError
from .schema import validate_domain
from .units import parse_memory
from .xmlmodel import (
    XMLIntProperty,
    XMLListProperty,
    XMLModel,
    XMLPresenceProperty,
    XMLProperty,
    XMLYesNoProperty,
    element_path,
    first_child,
    insert_ordered,
    local_name,
    parse_document,
    read_only_scope,
    serialize,
)

__all__ = [
    "DEVICE_CHILD_ORDER",
    "DOMAIN_CHILD_ORDER",
    "DOMAIN_TYPES",
    "QEMU_NS",
    "DomainDef",
    "OS_CHILD_ORDER",
    "OSDef",
    "normalise_uuid",
    "parse_domain_xml",
]

_D = TypeVar("_D", bound=Device)

DOMAIN_TYPES: tuple[str, ...] = ("qemu", "kvm")
"""Hypervisor types this daemon runs (TCG and KVM)."""

# libvirt's output order of <domain> children, used to place new elements.
_DOMAIN_ORDER = (
    "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
    "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads",
    "iothreadids", "defaultiothread", "cputune", "numatune", "resource", "sysinfo",
    "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock",
    "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf", "devices",
    "seclabel", "keywrap", "launchSecurity",
)
_OS_ORDER = (
    "type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "shim", "dtb",
    "acpi", "boot", "bootmenu", "smbios", "bios", "init", "initarg", "initenv", "initdir",
    "inituser", "initgroup",
)
_DEVICE_ORDER = (
    "emulator", "disk", "controller", "lease", "filesystem", "interface", "smartcard",
    "serial", "parallel", "console", "channel", "input", "tpm", "graphics", "sound", "audio",
    "video", "hostdev", "redirdev", "redirfilter", "hub", "watchdog", "memballoon", "rng",
    "panic", "shmem", "memory", "iommu", "vsock", "crypto",
)
#: Public names of the child orders above, for code outside qemud.conf that places elements.
DOMAIN_CHILD_ORDER = _DOMAIN_ORDER
OS_CHILD_ORDER = _OS_ORDER
DEVICE_CHILD_ORDER = _DEVICE_ORDER
_DEVICE_RANKS = {tag: i for i, tag in enumerate(_DEVICE_ORDER)}
_DEVICE_CLASSES: dict[Any, builtins.type[Device]] = dict(DEVICE_CLASSES)  # faster than a proxy

_UUID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_BOOT_DEVS = ("fd", "hd", "cdrom", "network")
_FIRMWARES = ("bios", "efi")
_LOADER_TYPES = ("pflash", "rom")
_FIRMWARE_FEATURES = ("enrolled-keys", "secure-boot")
_LIFECYCLE = ("destroy", "restart", "preserve", "rename-restart")
_CRASH = (*_LIFECYCLE, "coredump-destroy", "coredump-restart")

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
"""libvirt's namespace for QEMU pass-through (``<qemu:commandline>``)."""
_QEMU_COMMANDLINE = f"{{{QEMU_NS}}}commandline"
_QEMU_ARG = f"{{{QEMU_NS}}}arg"
_QEMU_ENV = f"{{{QEMU_NS}}}env"
# libvirt's schema for <qemu:env name=...> (an environment variable name)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def normalise_uuid(text: str) -> str:
    """Validate a UUID with or without dashes; return it dashed and lower case.

    Raises ``ValueError``.  Accepts exactly the two spellings libvirt's schema allows.
    """
    value = text.strip()
    if not _UUID.fullmatch(value):
        raise ValueError(f"malformed uuid '{text}' (expected 32 hex digits, optionally"
                         " dashed 8-4-4-4-12)")
    return str(uuidlib.UUID(hex=value))


class OSDef(XMLModel):
    """``<os>``: guest firmware type, architecture, machine, direct kernel boot, boot order.

    A view over the domain element (paths start at ``./os``), so reading never creates
    ``<os>`` and writing creates it in the right place.
    """

    __slots__ = ()

    XML_CHILD_ORDER = {".": _DOMAIN_ORDER, "os": _OS_ORDER}

    type = XMLProperty("./os/type", default="", doc="'hvm' (full virtualisation).")
    arch = XMLProperty("./os/type/@arch", doc="Guest architecture ('x86_64', 'aarch64'...).")
    machine = XMLProperty("./os/type/@machine", doc="QEMU machine type ('q35', 'virt'...).")
    kernel = XMLProperty("./os/kernel", doc="Direct kernel boot: host path of the kernel.")
    initrd = XMLProperty("./os/initrd", doc="Direct kernel boot: host path of the initrd.")
    cmdline = XMLProperty("./os/cmdline", doc="Direct kernel boot: kernel command line.")
    boot_devs = XMLListProperty(
        "./os/boot/@dev", doc="BIOS boot order: 'hd', 'cdrom', 'network', 'fd'."
    )
    firmware = XMLProperty(
        "./os/@firmware", doc="Firmware autoselection: 'efi' or 'bios' (None: manual)."
    )
    loader = XMLProperty("./os/loader", doc="Host path of the firmware image (<loader>).")
    loader_type = XMLProperty("./os/loader/@type", doc="'pflash' or 'rom'.")
    loader_readonly = XMLYesNoProperty(
        "./os/loader/@readonly", doc="The firmware image is mapped read-only."
    )
    loader_secure = XMLYesNoProperty(
        "./os/loader/@secure", doc="The firmware implements Secure Boot (needs SMM on x86)."
    )
    has_nvram = XMLPresenceProperty(
        "./os/nvram", doc="An <nvram> element, possibly empty (the default path)."
    )
    nvram = XMLProperty("./os/nvram", doc="Host path of the guest's UEFI variable store.")
    nvram_template = XMLProperty(
        "./os/nvram/@template", doc="Host path the variable store is first copied from."
    )
    firmware_feature_names = XMLListProperty(
        "./os/firmware/feature/@name",
        doc="Names of the <firmware><feature> requests (see firmware_features).",
    )

    @property
    def path(self) -> str:
        return "os"

    @property
    def firmware_features(self) -> dict[str, bool]:
        """``<firmware><feature name= enabled=/>`` requests: name -> wanted (yes/no)."""
        return {node.get("name", ""): node.get("enabled") == "yes"
                for node in type(self).firmware_feature_names.nodes(self)}

    def set_firmware_features(self, features: dict[str, bool]) -> None:
        """Replace the ``<firmware>`` feature list (libvirt's order: by name)."""
        names = sorted(features)
        type(self).firmware_feature_names.__set__(self, names)
        for node in type(self).firmware_feature_names.nodes(self):
            name = str(node.attrib.pop("name"))
            node.set("enabled", "yes" if features[name] else "no")
            node.set("name", name)

    def check(self) -> None:
        """hvm only; known boot devices."""
        os_type = type(self).type
        node = os_type.find_node(self)
        if node is None:
            raise DefinitionError("element is required (expected <type>hvm</type>)",
                                  path="os/type")
        if self.type != "hvm":
            raise DefinitionError(f"unsupported os type '{self.type}' (expected 'hvm')",
                                  path="os/type")
        for boot in type(self).boot_devs.nodes(self):
            dev = boot.get("dev")
            if dev not in _BOOT_DEVS:
                choices = ", ".join(f"'{d}'" for d in _BOOT_DEVS)
                raise DefinitionError(
                    f"unsupported boot device '{dev}' (expected one of {choices})",
                    path=element_path(boot),
                )
        self._check_firmware()

    def _check_firmware(self) -> None:
        """libvirt's rules for <os firmware>, <loader>, <nvram> and <firmware> features."""
        cls = type(self)
        firmware = self.firmware
        if firmware is not None and firmware not in _FIRMWARES:
            raise DefinitionError(f"unsupported firmware '{firmware}' (expected 'bios' or"
                                  " 'efi')", path="os")
        loader_node = cls.loader.find_node(self)
        if loader_node is not None:
            ltype = self.loader_type
            if ltype is not None and ltype not in _LOADER_TYPES:
                raise DefinitionError(f"unsupported loader type '{ltype}' (expected 'pflash'"
                                      " or 'rom')", path="os/loader")
            # (decoding raises the yes/no errors with the element's path)
            readonly, secure = self.loader_readonly, self.loader_secure
            path = (self.loader or "").strip()
            if not path and firmware != "efi":
                raise DefinitionError("the firmware image path is missing (or use"
                                      " <os firmware='efi'> to have one selected)",
                                      path="os/loader")
            if path and not path.startswith("/"):
                raise DefinitionError(f"the firmware path must be absolute, got '{path}'",
                                      path="os/loader")
            if ltype == "rom" and secure:
                raise DefinitionError("secure='yes' needs a loader of type 'pflash'",
                                      path="os/loader")
            fmt = loader_node.get("format")
            if fmt is not None and fmt != "raw":
                raise DefinitionError(f"unsupported loader format '{fmt}' (qemud supports"
                                      " 'raw' firmware images)", path="os/loader")
            if loader_node.get("stateless") == "yes":
                raise DefinitionError("stateless firmware (<loader stateless='yes'>) is not"
                                      " supported by qemud", path="os/loader")
        else:
            readonly = secure = None
        if self.has_nvram:
            nvram_node = cls.has_nvram.find_node(self)
            assert nvram_node is not None
            if firmware == "bios":
                raise DefinitionError("<nvram> is for UEFI firmware, not firmware='bios'",
                                      path="os/nvram")
            if firmware != "efi" and (loader_node is None or self.loader_type == "rom"):
                raise DefinitionError("<nvram> needs a <loader type='pflash'> (or"
                                      " <os firmware='efi'>)", path="os/nvram")
            if readonly is False:
                raise DefinitionError("<nvram> needs a read-only loader (readonly='yes'): a"
                                      " writable loader keeps its variables itself",
                                      path="os/nvram")
            if nvram_node.get("type") not in (None, "file") or len(nvram_node):
                raise DefinitionError("only a plain file path is supported as <nvram>",
                                      path="os/nvram")
            for label, value in (("path", self.nvram), ("template", self.nvram_template)):
                if value is not None and value.strip() and not value.startswith("/"):
                    raise DefinitionError(f"the NVRAM {label} must be absolute, got"
                                          f" '{value}'", path="os/nvram")
        names = cls.firmware_feature_names.nodes(self)
        if names and firmware != "efi":
            raise DefinitionError("firmware features need <os firmware='efi'>",
                                  path="os/firmware")
        seen: set[str] = set()
        for node in names:
            name, enabled = node.get("name"), node.get("enabled")
            where = element_path(node)
            if name not in _FIRMWARE_FEATURES:
                raise DefinitionError(f"unsupported firmware feature '{name}' (expected"
                                      " 'secure-boot' or 'enrolled-keys')", path=where)
            if enabled not in ("yes", "no"):
                raise DefinitionError(f"attribute enabled must be 'yes' or 'no', got"
                                      f" '{enabled}'", path=where)
            if name in seen:
                raise DefinitionError(f"duplicate firmware feature '{name}'", path=where)
            seen.add(name)
        wanted = self.firmware_features
        if wanted.get("enrolled-keys") and wanted.get("secure-boot") is False:
            # libvirt's rule (qemuValidateDomainDefBoot)
            raise DefinitionError("firmware feature 'enrolled-keys' cannot be enabled when"
                                  " firmware feature 'secure-boot' is disabled",
                                  path="os/firmware")
        if secure is not None and "secure-boot" in wanted and wanted["secure-boot"] != secure:
            raise DefinitionError("loader secure='{}' contradicts firmware feature"
                                  " 'secure-boot' enabled='{}'".format(
                                      "yes" if secure else "no",
                                      "yes" if wanted["secure-boot"] else "no"),
                                  path="os/loader")


class DomainDef(XMLModel):
    """A guest definition.  See docs/internal/domain-model-api.md for the contract.

    Setting a property writes the tree; ``to_xml()`` gives the canonical text.  Instances
    are not validated on every change: call :meth:`validate` (or :meth:`check`) after
    building or editing one programmatically.
    """

    __slots__ = ()

    XML_TAG = "domain"
    XML_CHILD_ORDER = {".": _DOMAIN_ORDER, "os": _OS_ORDER, "devices": _DEVICE_ORDER}

    TYPES: ClassVar[tuple[str, ...]] = DOMAIN_TYPES

    type = XMLProperty("./@type", default="", doc="'qemu' (TCG) or 'kvm'.")
    id = XMLIntProperty("./@id", doc="Live only: the running domain's id (None when off).")
    name = XMLProperty("./name", default="", doc="Unique name; no '/', not empty.")
    _uuid = XMLProperty("./uuid")
    title = XMLProperty("./title", doc="One-line title.")
    description = XMLProperty("./description", doc="Free-form description.")
    _memory = XMLProperty("./memory")
    _memory_unit = XMLProperty("./memory/@unit")
    _current_memory = XMLProperty("./currentMemory")
    _current_memory_unit = XMLProperty("./currentMemory/@unit")
    max_vcpus = XMLIntProperty(
        "./vcpu", default=1, doc="Maximum number of vCPUs, <vcpu> (libvirt default 1)."
    )
    _current_vcpus = XMLIntProperty("./vcpu/@current")
    on_poweroff = XMLProperty(
        "./on_poweroff", default="destroy", doc="Action on guest power-off."
    )
    on_reboot = XMLProperty("./on_reboot", default="restart", doc="Action on guest reboot.")
    on_crash = XMLProperty("./on_crash", default="destroy", doc="Action on guest crash.")
    emulator = XMLProperty("./devices/emulator", doc="QEMU binary; None: the arch default.")

    # ------------------------------------------------------------------ construction

    @classmethod
    def new(
        cls,
        name: str,
        *,
        domain_type: str = "kvm",
        memory_kib: int = 1048576,
        vcpus: int = 1,
        arch: str | None = None,
        machine: str | None = None,
    ) -> DomainDef:
        """A minimal valid definition to build on (no uuid yet: see assign_missing_ids)."""
        dom = cls()
        dom.type = domain_type
        dom.name = name
        dom.memory_kib = memory_kib
        dom.vcpus = vcpus
        dom.os.type = "hvm"
        dom.os.arch = arch
        dom.os.machine = machine
        return dom

    def copy(self) -> DomainDef:
        """Deep copy (e.g. the live definition started from the persistent one)."""
        node = copy.deepcopy(self.node)
        for sibling in self.node.itersiblings(preceding=True):
            node.addprevious(copy.deepcopy(sibling))
        last = node
        for sibling in self.node.itersiblings():
            dup = copy.deepcopy(sibling)
            last.addnext(dup)
            last = dup
        return DomainDef(node)

    # ------------------------------------------------------------------ scalar values

    @property
    def path(self) -> str:
        return "domain"

    @property
    def uuid(self) -> str:
        """Canonical lower-case dashed UUID; "" until :meth:`assign_missing_ids`."""
        raw = self._uuid
        if raw is None:
            return ""
        try:
            return normalise_uuid(raw)
        except ValueError:
            return raw.strip()

    @uuid.setter
    def uuid(self, value: str) -> None:
        try:
            self._uuid = normalise_uuid(value)
        except ValueError as exc:
            raise DefinitionError(str(exc), path="uuid") from None

    @property
    def memory_kib(self) -> int:
        """Maximum memory in KiB, whatever unit the XML used (0 when absent)."""
        return self._memory_in_kib(self._memory, self._memory_unit, "memory")

    @memory_kib.setter
    def memory_kib(self, kib: int) -> None:
        self._set_memory("memory", kib)

    @property
    def current_memory_kib(self) -> int:
        """Memory at boot (balloon target) in KiB; defaults to :attr:`memory_kib`."""
        if self._current_memory is None:
            return self.memory_kib
        return self._memory_in_kib(
            self._current_memory, self._current_memory_unit, "currentMemory"
        )

    @current_memory_kib.setter
    def current_memory_kib(self, kib: int) -> None:
        self._set_memory("currentMemory", kib)

    @staticmethod
    def _memory_in_kib(text: str | None, unit: str | None, path: str) -> int:
        if text is None:
            return 0
        try:
            return parse_memory(text, unit)
        except ValueError as exc:
            raise DefinitionError(str(exc), path=path) from None

    def _set_memory(self, tag: str, kib: int) -> None:
        if isinstance(kib, bool) or not isinstance(kib, int) or kib <= 0:
            raise DefinitionError(f"must be a positive integer, got '{kib}'", path=tag)
        if tag == "memory":
            self._memory, self._memory_unit = str(kib), "KiB"
        else:
            self._current_memory, self._current_memory_unit = str(kib), "KiB"

    @property
    def vcpus(self) -> int:
        """vCPUs the guest starts with: ``<vcpu current=N>``, else the maximum.

        This is libvirt's ``virDomainDefGetVcpus`` (``nrVirtCpu`` of ``virDomainGetInfo``).
        Setting it gives the guest a fixed count: ``<vcpu>N</vcpu>`` without ``current``.
        """
        current = self._current_vcpus
        return self.max_vcpus if current is None else current

    @vcpus.setter
    def vcpus(self, count: int) -> None:
        self.max_vcpus = count
        self._current_vcpus = None
        cputune.prune_vcpupins(self.node, count)

    def set_vcpus(self, current: int, maximum: int) -> None:
        """``<vcpu current=CURRENT>MAXIMUM</vcpu>`` (no ``current`` when they are equal);
        the caller has checked ``current <= maximum``."""
        self.vcpus = maximum
        if current < maximum:
            self._current_vcpus = current

    # -- CPU pinning (<vcpu cpuset>, <cputune>): see .cputune

    @property
    def cpuset(self) -> frozenset[int] | None:
        """``<vcpu cpuset>``: the host CPUs vCPUs without a ``<vcpupin>`` and the emulator
        threads without ``<emulatorpin>`` may use; None: no restriction."""
        return cputune.vcpu_cpuset(self.node)

    @cpuset.setter
    def cpuset(self, cpus: frozenset[int] | None) -> None:
        cputune.set_vcpu_cpuset(self.node, cpus)

    @property
    def vcpupins(self) -> dict[int, frozenset[int]]:
        """``<cputune><vcpupin vcpu= cpuset=>``: vCPU number -> its host CPUs."""
        return cputune.vcpupins(self.node)

    def set_vcpupin(self, vcpu: int, cpus: frozenset[int] | None) -> None:
        """Pin vCPU ``vcpu`` to ``cpus`` (None: remove its pin); the caller checked
        ``vcpu`` against the maximum."""
        cputune.set_vcpupin(self.node, vcpu, cpus, self._ranks["."])

    @property
    def emulatorpin(self) -> frozenset[int] | None:
        """``<cputune><emulatorpin cpuset=>``: the host CPUs of QEMU's other threads."""
        return cputune.emulatorpin(self.node)

    @emulatorpin.setter
    def emulatorpin(self, cpus: frozenset[int] | None) -> None:
        cputune.set_emulatorpin(self.node, cpus, self._ranks["."])

    @property
    def qemu_args(self) -> list[str]:
        """``<qemu:commandline><qemu:arg value=.../>`` values, in order (pass-through)."""
        return [arg.get("value", "") for cmd in self.node.iterchildren(_QEMU_COMMANDLINE)
                for arg in cmd.iterchildren(_QEMU_ARG)]

    @property
    def qemu_env(self) -> list[tuple[str, str]]:
        """``<qemu:commandline><qemu:env name= value=/>`` pairs, in order (pass-through)."""
        return [(env.get("name", ""), env.get("value", ""))
                for cmd in self.node.iterchildren(_QEMU_COMMANDLINE)
                for env in cmd.iterchildren(_QEMU_ENV)]

    @property
    def os(self) -> OSDef:
        """The ``<os>`` section (a view; nothing is created until something is set)."""
        return OSDef(self.node)

    # ------------------------------------------------------------------ devices

    def _devices_node(self, create: bool = False) -> etree._Element | None:
        node = first_child(self.node, "devices")
        if node is None and create:
            node = self._ensure(("devices",))
        return node

    def _wrap_all(self, cls: builtins.type[_D], tag: str) -> list[_D]:
        devices = self._devices_node()
        if devices is None:
            return []
        return [cls(node) for node in devices.iterchildren(tag)]

    @property
    def devices(self) -> list[Device]:
        """Every modelled device in document order (unmodelled ones are left out)."""
        devices = self._devices_node()
        if devices is None:
            return []
        classes = _DEVICE_CLASSES
        result: list[Device] = []
        for node in devices.iterchildren():
            cls = classes.get(node.tag)
            if cls is not None:
                result.append(cls(node))
        return result

    @property
    def disks(self) -> list[Disk]:
        """``<disk>`` devices in document order."""
        return self._wrap_all(Disk, "disk")

    @property
    def interfaces(self) -> list[Interface]:
        """``<interface>`` devices in document order."""
        return self._wrap_all(Interface, "interface")

    @property
    def graphics(self) -> list[Graphics]:
        """``<graphics>`` devices in document order."""
        return self._wrap_all(Graphics, "graphics")

    @property
    def serials(self) -> list[CharDevice]:
        """``<serial>`` devices in document order."""
        return self._wrap_all(CharDevice, "serial")

    @property
    def consoles(self) -> list[CharDevice]:
        """``<console>`` devices in document order."""
        return self._wrap_all(CharDevice, "console")

    @property
    def channels(self) -> list[CharDevice]:
        """``<channel>`` devices in document order."""
        return self._wrap_all(CharDevice, "channel")

    @property
    def watchdog(self) -> Watchdog | None:
        """The watchdog, if any (at most one)."""
        found = self._wrap_all(Watchdog, "watchdog")
        return found[0] if found else None

    @property
    def memballoon(self) -> Memballoon | None:
        """The ``<memballoon>``, if any (at most one); ``model='none'`` says "no balloon"."""
        found = self._wrap_all(Memballoon, "memballoon")
        return found[0] if found else None

    @property
    def panics(self) -> list[Panic]:
        """``<panic>`` devices in document order (at most one per model)."""
        return self._wrap_all(Panic, "panic")

    @property
    def pci_controllers(self) -> list[Controller]:
        """The ``<controller type='pci'>`` elements (root bus, root ports, bridges)."""
        return [c for c in self._wrap_all(Controller, "controller") if c.is_pci]

    def add_pcie_root_port(self, index: int) -> Controller:
        """A new ``<controller type='pci' index=INDEX model='pcie-root-port'>`` with
        ``<model name='pcie-root-port'/>`` as libvirt writes it, after the other
        controllers; its target and address are the QEMU layer's to fill in."""
        port = Controller()
        port.type = "pci"
        port.assign_index(index)
        port.model = "pcie-root-port"
        port.model_name = "pcie-root-port"
        devices = self._devices_node(create=True)
        assert devices is not None
        insert_ordered(devices, port.node, _DEVICE_RANKS)
        return port

    def set_default_memballoon(self, model: str = "virtio") -> Memballoon:
        """``<memballoon model=MODEL/>`` unless the definition has a ``<memballoon>``
        (any model, ``none`` included); returns the domain's balloon element.

        For the QEMU layer's define-time defaults (libvirt's
        qemuDomainDefAddDefaultDevices adds a virtio balloon on some architectures).
        """
        existing = self.memballoon
        if existing is not None:
            return existing
        balloon = Memballoon()
        balloon.model = model
        devices = self._devices_node(create=True)
        assert devices is not None
        insert_ordered(devices, balloon.node, _DEVICE_RANKS)
        return balloon

    def find_device(self, dev: Device) -> Device | None:
        """The device of this domain that ``dev`` designates (libvirt's matching rules).

        ``dev`` may be a view of this domain's own element, or a device parsed from a
        detach request: disks match by target dev, NICs by MAC, channels by name, serials
        and consoles by port, anything by alias.  Raises :class:`DefinitionError` when
        the request is ambiguous.
        """
        candidates = [d for d in self.devices if d.tag == dev.tag]
        for cand in candidates:
            if cand.node is dev.node:
                return cand
        matching = [c for c in candidates if c.matches(dev)]
        if len(matching) > 1:
            raise DefinitionError(
                f"{dev.describe()} matches {len(matching)} devices; be more specific"
                " (target, MAC or alias)",
                path=f"devices/{dev.tag}",
            )
        return matching[0] if matching else None

    def add_device(self, dev: Device) -> Device:
        """Insert a copy of ``dev`` (hotplug / attach --config) and return the inserted view.

        A NIC without MAC gets one generated, written to ``dev`` too, so adding the same
        parsed device to the live and the persistent definition gives one MAC.  The device
        is checked on its own and against the others (duplicate target, alias, boot order,
        second watchdog); on error nothing changes.
        """
        if not isinstance(dev, Device):
            raise TypeError(f"not a device: {dev!r}")
        if isinstance(dev, Interface) and dev.mac is None:
            dev.mac = generate_mac(taken=self._macs())
        dup = dev.copy()
        devices = self._devices_node(create=True)
        assert devices is not None
        insert_ordered(devices, dup.node, _DEVICE_RANKS)
        try:
            dup.check()
            self._check_devices_together()
        except DefinitionError:
            devices.remove(dup.node)
            raise
        return dup

    def remove_device(self, dev: Device) -> Device:
        """Remove the device ``dev`` designates (see :meth:`find_device`) and return it.

        The returned view keeps the removed element (e.g. to read its alias for
        ``device_del``).  Raises :class:`DefinitionError` if nothing matches.
        """
        found = self.find_device(dev)
        if found is None:
            raise DefinitionError(f"no matching {dev.describe()} in this domain",
                                  path=f"devices/{dev.tag}")
        parent = found.node.getparent()
        assert parent is not None
        parent.remove(found.node)
        found.node.tail = None
        return found

    def _macs(self) -> list[str]:
        return [m for m in (i.mac for i in self.interfaces) if m is not None]

    # ------------------------------------------------------------------ ids & metadata

    def assign_missing_ids(self, rng: random.Random | None = None) -> None:
        """Generate the uuid if absent and a 52:54:00 MAC for every NIC without one.

        Called when a domain is defined or created; ``rng`` makes it reproducible (tests).
        """
        if self._uuid is None:
            if rng is None:
                self._uuid = str(uuidlib.uuid4())
            else:
                self._uuid = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
        taken = self._macs()
        for nic in self.interfaces:
            if nic.mac is None:
                nic.mac = generate_mac(rng, taken)
                taken.append(nic.mac)

    def _metadata_node(self) -> etree._Element | None:
        return first_child(self.node, "metadata")

    def get_metadata(self, ns_uri: str) -> etree._Element | None:
        """The ``<metadata>`` child in namespace ``ns_uri`` (the element in the tree itself,
        so edits to it edit the domain), or None.  Appliance settings live there."""
        meta = self._metadata_node()
        if meta is None:
            return None
        for child in meta.iterchildren():
            if isinstance(child.tag, str) and etree.QName(child).namespace == ns_uri:
                return child
        return None

    def set_metadata(self, ns_uri: str, element: etree._Element | str | None) -> None:
        """Replace (or with None, remove) the ``<metadata>`` child in namespace ``ns_uri``.

        ``element`` (or XML text) must be in that namespace; a copy is stored, verbatim.
        Other namespaces' metadata is untouched.
        """
        if not ns_uri:
            raise DefinitionError("metadata namespace URI must not be empty", path="metadata")
        old = self.get_metadata(ns_uri)
        if element is None:
            if old is not None:
                meta = old.getparent()
                assert meta is not None
                meta.remove(old)
                if len(meta) == 0 and not (meta.text and meta.text.strip()):
                    self.node.remove(meta)
            return
        source = parse_document(element) if isinstance(element, str) else element
        found_ns = etree.QName(source).namespace
        if found_ns != ns_uri:
            raise DefinitionError(
                f"element <{local_name(source)}> is in namespace '{found_ns or ''}',"
                f" not '{ns_uri}'",
                path="metadata",
            )
        new = copy.deepcopy(source)
        new.tail = None
        if old is not None:
            old.addnext(new)
            parent = old.getparent()
            assert parent is not None
            parent.remove(old)
        else:
            self._ensure(("metadata",)).append(new)

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """All semantic checks; raise the first :class:`DefinitionError` found.

        Does not touch the tree.  Runs in well under a millisecond for typical domains.
        """
        with read_only_scope():
            self._check_all()

    def _check_all(self) -> None:
        self._check_header()
        self._check_memory()
        self._check_vcpus()
        self._check_qemu_commandline()
        self.os.check()
        for tag, allowed in (
            ("on_poweroff", _LIFECYCLE), ("on_reboot", _LIFECYCLE), ("on_crash", _CRASH)
        ):
            value = getattr(self, tag)
            if value not in allowed:
                choices = ", ".join(f"'{a}'" for a in allowed)
                raise DefinitionError(
                    f"unsupported action '{value}' (expected one of {choices})", path=tag
                )
        emulator = self.emulator
        if emulator is not None and not emulator.strip():
            raise DefinitionError("must not be empty", path="devices/emulator")
        devices = self.devices
        for dev in devices:
            dev.check()
        self._check_devices_together(devices)

    def _check_header(self) -> None:
        dtype = self.type
        if not dtype:
            raise DefinitionError("missing type attribute (expected 'qemu' or 'kvm')",
                                  path="domain")
        if dtype not in DOMAIN_TYPES:
            raise DefinitionError(
                f"unsupported domain type '{dtype}' (only 'qemu' and 'kvm' are supported)",
                path="domain",
            )
        name = type(self).name
        if name.find_node(self) is None:
            raise DefinitionError("element is required", path="name")
        value = self.name
        if not value.strip():
            raise DefinitionError("must not be empty", path="name")
        if "/" in value:
            raise DefinitionError(f"must not contain '/', got '{value}'", path="name")
        if "\n" in value:
            raise DefinitionError("must not contain a newline", path="name")
        raw_uuid = self._uuid
        if raw_uuid is not None:
            try:
                normalise_uuid(raw_uuid)
            except ValueError as exc:
                raise DefinitionError(str(exc), path="uuid") from None
        title = self.title
        if title is not None and "\n" in title:
            raise DefinitionError("must not contain a newline", path="title")

    def _check_memory(self) -> None:
        text = self._memory
        if text is None:
            raise DefinitionError("element is required", path="memory")
        self._memory_in_kib(text, self._memory_unit, "memory")
        current_text = self._current_memory
        if current_text is not None:
            # more than <memory> is fine: normalise() clamps it, as libvirt's post-parse does
            self._memory_in_kib(current_text, self._current_memory_unit, "currentMemory")

    def _check_vcpus(self) -> None:
        maximum = self.max_vcpus
        if maximum < 1:
            raise DefinitionError(f"must be at least 1, got '{maximum}'", path="vcpu")
        current = self._current_vcpus
        cputune.check_cputune(self.node, maximum)
        if current is None:
            return
        if current < 1:
            raise DefinitionError(f"attribute current must be at least 1, got '{current}'",
                                  path="vcpu")
        if current > maximum:
            # libvirt's words (virDomainDefSetVcpus), numbers in the order they read
            raise DefinitionError(
                f"maxvcpus must not be less than current vcpus ({maximum} < {current})",
                path="vcpu",
            )

    def _check_qemu_commandline(self) -> None:
        for cmd in self.node.iterchildren(_QEMU_COMMANDLINE):
            for arg in cmd.iterchildren(_QEMU_ARG):
                if arg.get("value") is None:
                    raise DefinitionError("missing value attribute (the argument)",
                                          path=element_path(arg))
            for env in cmd.iterchildren(_QEMU_ENV):
                name = env.get("name")
                if name is None:
                    raise DefinitionError("missing name attribute (the variable's name)",
                                          path=element_path(env))
                if not _ENV_NAME.fullmatch(name):
                    raise DefinitionError(
                        f"invalid environment name '{name}' (a letter or underscore, then"
                        " letters, digits and underscores)",
                        path=element_path(env),
                    )

    def _check_devices_together(self, devices: list[Device] | None = None) -> None:
        """Checks across devices: duplicates and boot order consistency."""
        if devices is None:
            devices = self.devices
        targets: set[str] = set()
        aliases: set[str] = set()
        boot_orders: dict[int, Device] = {}
        per_device_boot: Device | None = None
        watchdogs: list[Device] = []
        balloons: list[Device] = []
        serial_ports: set[int] = set()
        channel_names: set[str] = set()
        panic_models: set[str] = set()
        controllers: set[tuple[str | None, str]] = set()
        for device in devices:
            if isinstance(device, Disk):
                target = device.target_dev
                if target is not None:
                    if target in targets:
                        raise DefinitionError(f"duplicate target dev '{target}'",
                                              path=f"{device.path}/target")
                    targets.add(target)
            elif isinstance(device, Watchdog):
                watchdogs.append(device)
                if len(watchdogs) > 1:
                    raise DefinitionError("only one watchdog is supported", path=device.path)
            elif isinstance(device, Memballoon):
                balloons.append(device)
                if len(balloons) > 1:
                    raise DefinitionError("only one memballoon is supported", path=device.path)
            elif isinstance(device, Panic):
                model = device.model
                if model is not None:
                    if model in panic_models:
                        # libvirt's words (virDomainDefRejectDuplicatePanics)
                        raise DefinitionError(f"Multiple panic devices with model '{model}'",
                                              path=device.path)
                    panic_models.add(model)
            elif isinstance(device, Controller):
                index = device.raw_index
                if index is not None and device.is_pci:  # (USB companions share one)
                    key = (device.type, str(device.index))
                    if key in controllers:
                        # libvirt's words (virDomainDefRejectDuplicateControllers)
                        raise DefinitionError(f"Multiple '{device.type}' controllers with "
                                              f"index '{index}'", path=device.path)
                    controllers.add(key)
            elif isinstance(device, CharDevice):
                tag = device.tag
                if tag == "serial":
                    port = device.target_port
                    if port is not None:
                        if port in serial_ports:
                            raise DefinitionError(f"duplicate serial port '{port}'",
                                                  path=f"{device.path}/target")
                        serial_ports.add(port)
                elif tag == "channel":
                    cname = device.target_name
                    if cname is not None:
                        if cname in channel_names:
                            raise DefinitionError(f"duplicate channel name '{cname}'",
                                                  path=f"{device.path}/target")
                        channel_names.add(cname)
            alias = device.alias
            if alias is not None and not _console_alias_of_serial(device):
                if alias in aliases:
                    raise DefinitionError(f"duplicate alias '{alias}'",
                                          path=f"{device.path}/alias")
                aliases.add(alias)
            if isinstance(device, (Disk, Interface)):
                order = device.boot_order
                if order is not None:
                    per_device_boot = per_device_boot or device
                    if order in boot_orders:
                        raise DefinitionError(
                            f"boot order {order} is already used by"
                            f" {boot_orders[order].path}",
                            path=f"{device.path}/boot",
                        )
                    boot_orders[order] = device
        if per_device_boot is not None:
            os_boots = type(self.os).boot_devs.nodes(self.os)
            if os_boots:
                raise DefinitionError(
                    "<os><boot dev> cannot be combined with per-device <boot order>"
                    f" (see {per_device_boot.path}/boot)",
                    path=element_path(os_boots[0]),
                )

    def validate(self, *, schema: bool = True) -> None:
        """Semantic checks, then libvirt's schema (if installed and ``schema``).

        For definitions built or edited in code; parse_domain_xml already did this.
        """
        self.check()
        if schema:
            validate_domain(self.node)

    def normalise(self) -> None:
        """Canonical spelling of the values we own (as libvirt's dumpxml shows them)."""
        raw_uuid = self._uuid
        if raw_uuid is not None:
            self._uuid = normalise_uuid(raw_uuid)
        if self._memory is not None and self._memory_unit != "KiB":
            self.memory_kib = self.memory_kib
        if self._current_memory is not None:
            current, memory = self.current_memory_kib, self.memory_kib
            if current > memory:
                # libvirt's post-parse: the balloon target cannot exceed the memory
                self.current_memory_kib = memory
            elif self._current_memory_unit != "KiB":
                self.current_memory_kib = current
        cputune.canonicalise(self.node)
        for dev in self.devices:
            dev.normalise()

    # ------------------------------------------------------------------ output

    def iter_models(self) -> Iterator[XMLModel]:
        """The domain, its ``os`` view and every modelled device (for generic walkers)."""
        yield self
        yield self.os
        yield from self.devices

    def to_xml(self, live: bool = False) -> str:
        """Canonical text: 2-space indentation, unknown XML and comments preserved.

        ``live=False`` (the persistent form, what ``dumpxml --inactive`` shows) drops
        runtime state: the domain id, runtime aliases, automatic VNC ports, pty paths,
        automatic tap names.  ``live=True`` keeps everything.
        """
        node = copy.deepcopy(self.node)
        if not live:
            if "id" in node.attrib:
                del node.attrib["id"]
            devices = first_child(node, "devices")
            if devices is not None:
                for child in devices.iterchildren():
                    cls = DEVICE_CLASSES.get(child.tag) if isinstance(child.tag, str) else None
                    if cls is not None:
                        cls(child).strip_runtime()
        before = "".join(
            _sibling_text(s) for s in reversed(list(self.node.itersiblings(preceding=True)))
        )
        after = "".join(_sibling_text(s) for s in self.node.itersiblings())
        return before + serialize(node) + after


def _console_alias_of_serial(device: Device) -> bool:
    # A serial-type console is the same device as the first serial port, and libvirt's
    # live XML gives both the same alias.
    return (
        isinstance(device, CharDevice)
        and device.tag == "console"
        and device.target_type in (None, "serial")
    )


def _sibling_text(node: etree._Element) -> str:
    text: str = etree.tostring(node, encoding="unicode", with_tail=False)
    return text + "\n"


def parse_domain_xml(text: str | bytes, *, validate_schema: bool = True) -> DomainDef:
    """Parse and check a domain definition; the entry point for define/create.

    Syntax (:class:`XMLParseError`), then semantic checks (:class:`DefinitionError`), then
    libvirt's RelaxNG schema if installed and ``validate_schema`` (:class:`SchemaError`),
    then canonicalisation.  ``validate_schema=False`` is for the daemon's own stored
    definitions, which were validated when defined.
    """
    root = parse_document(text, source="(domain_definition)")
    if root.tag != "domain":
        raise XMLParseError(
            f"expected a <domain> document, got <{local_name(root)}>", path=local_name(root)
        )
    dom = DomainDef(root)
    dom.check()
    if validate_schema:
        validate_domain(root)
    dom.normalise()
    return dom
