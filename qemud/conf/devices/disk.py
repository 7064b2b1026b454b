"""``<disk>``: file- or block-backed disks and cdroms.

Supported subset (others are refused with a clear error rather than half-handled)::

    <disk type='file|block' device='disk|cdrom'>
      <driver name='qemu' type='raw|qcow2'/>
      <source file='/path'/>  or  <source dev='/dev/...'/>   (absent: empty cdrom)
      <target dev='vda' bus='virtio'/>
      <readonly/>
      <boot order='1'/>
      <alias name='ua-disk0'/>
    </disk>

Which buses exist is architecture-specific and checked by the QEMU layer, not here.
"""

from __future__ import annotations

import re
from typing import ClassVar

from ..xmlmodel import XMLIntProperty, XMLPresenceProperty, XMLProperty, first_child
from .base import Device

__all__ = ["Disk"]

# libvirt's diskTargetDev pattern (domaincommon.rng).
_TARGET_DEV = re.compile(r"(ioemu:)?(fd|hd|sd|vd|xvd|ubd)[a-zA-Z0-9_]+")


class Disk(Device):
    """A disk or cdrom; ``source`` is the file or block device behind it (None: no media)."""

    __slots__ = ()

    XML_TAG = "disk"
    XML_TAGS = ("disk",)
    XML_CHILD_ORDER = {
        ".": (
            "driver", "auth", "source", "backingStore", "geometry", "blockio", "target",
            "iotune", "readonly", "shareable", "transient", "serial", "wwn", "vendor",
            "product", "encryption", "boot", "alias", "address",
        ),
    }

    TYPES: ClassVar[tuple[str, ...]] = ("file", "block")
    DEVICES: ClassVar[tuple[str, ...]] = ("disk", "cdrom")
    DRIVER_NAMES: ClassVar[tuple[str, ...]] = ("qemu",)
    DRIVER_TYPES: ClassVar[tuple[str, ...]] = ("raw", "qcow2")

    type = XMLProperty(
        "./@type", default="file", doc="'file' or 'block'; libvirt's default is 'file'."
    )
    device = XMLProperty("./@device", default="disk", doc="'disk' or 'cdrom'.")
    driver_name = XMLProperty("./driver/@name", doc="Always 'qemu' when given.")
    driver_type = XMLProperty("./driver/@type", doc="Image format: 'raw', 'qcow2' or None.")
    _source_file = XMLProperty("./source/@file")
    _source_dev = XMLProperty("./source/@dev")
    target_dev = XMLProperty("./target/@dev", doc="Guest device name ('vda', 'sdb', ...).")
    target_bus = XMLProperty("./target/@bus", doc="'virtio', 'sata', 'scsi', ... (per arch).")
    readonly = XMLPresenceProperty("./readonly", doc="``<readonly/>`` present.")
    boot_order = XMLIntProperty("./boot/@order", doc="Per-device ``<boot order>``.")

    def _source_attr(self) -> str:
        return "dev" if self.type == "block" else "file"

    @property
    def source(self) -> str | None:
        """Path of the image file (type='file') or block device (type='block'); None for
        an empty cdrom drive."""
        return self._source_dev if self.type == "block" else self._source_file

    @source.setter
    def source(self, value: str | None) -> None:
        # Changing media: the attribute depends on the disk type.
        if self.type == "block":
            self._source_dev = value
        else:
            self._source_file = value

    def change_medium(self, source: str | None, kind: str | None = None) -> None:
        """A CD-ROM's new medium (None: the drive is empty), of ``kind`` ('file' or
        'block': the source attribute follows; None keeps the drive's type)."""
        self.source = None
        if kind is not None:
            self.type = kind
        self.source = source

    def describe(self) -> str:
        return f"disk '{self.target_dev}'" if self.target_dev else "disk"

    def check(self) -> None:
        """Type, device, driver and target sanity; media presence for non-cdroms."""
        super().check()
        dtype = self.type
        self._check_choice(dtype, self.TYPES, "disk type")
        device = self.device
        self._check_choice(device, self.DEVICES, "disk device")
        driver = first_child(self.node, "driver")
        if driver is not None:
            name = driver.get("name")
            if name is not None:
                self._check_choice(name, self.DRIVER_NAMES, "driver name", "driver")
            fmt = driver.get("type")
            if fmt is not None:
                self._check_choice(fmt, self.DRIVER_TYPES, "driver type", "driver")
        source = self._source_dev if dtype == "block" else self._source_file
        if source is None and device == "disk":
            raise self._error(
                f"a disk with device='disk' needs <source {self._source_attr()}='...'>"
                " (only a cdrom may be empty)",
                "source",
            )
        if source is not None and not source:
            raise self._error("source path must not be empty", "source")
        target = self.target_dev
        if not target:
            what = "cdrom" if device == "cdrom" else "disk"
            raise self._error(f"{what} needs <target dev='...'>", "target")
        if not _TARGET_DEV.fullmatch(target):
            raise self._error(
                f"invalid target dev '{target}' (expected a guest disk name like 'vda',"
                " 'sdb' or 'hdc')",
                "target",
            )
        self._check_positive(self.boot_order, "boot order", "boot")

    def matches(self, other: Device) -> bool:
        """libvirt's rule: a disk is identified by its target dev (else by its source)."""
        if not super().matches(other):
            return False
        assert isinstance(other, Disk)
        if other.alias is not None:
            return True
        if other.target_dev:
            return other.target_dev == self.target_dev
        return other.source is not None and other.source == self.source
