"""QEMU firmware descriptors (docs/interop/firmware.json) and UEFI autoselection.

``<os firmware='efi'>`` asks for *a* UEFI firmware, not a file: the distribution says
which builds it installed in JSON descriptors, and libvirt picks one that fits the
guest (architecture, machine type, requested features).  This module is that choice,
pure apart from reading the descriptor directories: the driver calls :func:`select` at
define (libvirt >= 9.2 records the result in the definition, so a later change of the
installed descriptors cannot switch a guest to another firmware and orphan its NVRAM).

Where descriptors live, in QEMU's order of precedence (a file in a later directory
replaces the same file name in an earlier one, so an admin can mask or override a
packaged descriptor): ``/usr/share/qemu/firmware``, then ``/etc/qemu/firmware``.
Candidates are tried in file-name order (the spec's priority: ``40-...`` before
``60-...``).

One deviation from libvirt, chosen for qemud's guests: unless the definition asks for
Secure Boot (``<feature name='secure-boot' enabled='yes'/>`` or ``<loader secure='yes'>``),
descriptors *without* Secure Boot are preferred, since Secure Boot needs SMM emulation,
which is slow under TCG and refuses unsigned kernels with enrolled keys.  A descriptor
that ``requires-smm`` is never picked for a machine without SMM (only x86 ``q35`` has
the SMM-protected flash Secure Boot relies on).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_DIRS",
    "FirmwareDescriptor",
    "FirmwareNotFound",
    "InvalidDescriptor",
    "find_executable",
    "load_descriptors",
    "machine_has_smm",
    "parse_descriptor",
    "select",
]

log = logging.getLogger(__name__)

#: where QEMU's spec (and libvirt) looks for descriptors, lowest precedence first
DEFAULT_DIRS: Final = (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"))

#: the features libvirt's ``<firmware><feature name=...>`` can ask for
SECURE_BOOT, ENROLLED_KEYS, REQUIRES_SMM = "secure-boot", "enrolled-keys", "requires-smm"


class InvalidDescriptor(ValueError):
    """A descriptor file that does not follow the spec (it is skipped, and logged)."""


class FirmwareNotFound(LookupError):
    """No descriptor fits the guest; the message says what was asked for."""


@dataclass(frozen=True)
class FirmwareDescriptor:
    """One descriptor: what is needed to run the firmware and what it can do.

    ``device`` is ``flash`` (pflash: ``executable`` read-only plus a per-guest copy of
    ``nvram_template``) or ``memory`` (a ROM image, ``-bios``; then ``executable`` is
    the image and there is no NVRAM).
    """

    name: str  # the file name (its priority, and what overrides it)
    description: str
    interfaces: tuple[str, ...]
    device: str
    executable: str
    executable_format: str
    nvram_template: str | None
    targets: tuple[tuple[str, tuple[str, ...]], ...]  # (architecture, machine globs)
    features: frozenset[str]

    @property
    def secure_boot(self) -> bool:
        return SECURE_BOOT in self.features

    @property
    def requires_smm(self) -> bool:
        return REQUIRES_SMM in self.features

    def supports(self, arch: str, machines: Sequence[str]) -> bool:
        """Whether it runs on ``arch`` with one of the ``machines`` (a machine's names:
        the one in the definition and what it is an alias of, e.g. ``q35`` and
        ``pc-q35-7.2``; descriptors name versioned machines)."""
        return any(target_arch == arch and any(fnmatch.fnmatchcase(m, glob)
                                               for glob in globs for m in machines)
                   for target_arch, globs in self.targets)


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidDescriptor(f"{where}: '{key}' must be a non-empty string")
    return value


def _str_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDescriptor(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def parse_descriptor(text: str, name: str) -> FirmwareDescriptor | None:
    """Parse one descriptor; None for a kind qemud does not run (a combined or
    stateless flash mapping, a ``kernel`` device).  Raises :class:`InvalidDescriptor`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidDescriptor(f"{name}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidDescriptor(f"{name}: not a JSON object")
    mapping = data.get("mapping")
    if not isinstance(mapping, dict):
        raise InvalidDescriptor(f"{name}: 'mapping' must be an object")
    device = _str(mapping, "device", f"{name}: mapping")
    template: str | None = None
    if device == "flash":
        if mapping.get("mode", "split") != "split":
            return None
        executable = mapping.get("executable")
        if not isinstance(executable, dict):
            raise InvalidDescriptor(f"{name}: mapping: 'executable' must be an object")
        path = _str(executable, "filename", f"{name}: executable")
        fmt = executable.get("format", "raw")
        nvram = mapping.get("nvram-template")
        if nvram is not None:
            if not isinstance(nvram, dict):
                raise InvalidDescriptor(f"{name}: mapping: 'nvram-template' must be an object")
            template = _str(nvram, "filename", f"{name}: nvram-template")
    elif device == "memory":
        path = _str(mapping, "filename", f"{name}: mapping")
        fmt = "raw"
    else:
        return None
    targets = data.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise InvalidDescriptor(f"{name}: 'targets' must be a list of objects")
    return FirmwareDescriptor(
        name=name,
        description=str(data.get("description", "")),
        interfaces=_str_list(data, "interface-types", name),
        device=device,
        executable=path,
        executable_format=str(fmt),
        nvram_template=template,
        targets=tuple((_str(t, "architecture", f"{name}: target"),
                       _str_list(t, "machines", f"{name}: target")) for t in targets),
        features=frozenset(_str_list(data, "features", name)),
    )


def load_descriptors(dirs: Iterable[Path] = DEFAULT_DIRS) -> list[FirmwareDescriptor]:
    """The descriptors of ``dirs`` (later directories override earlier ones by file
    name; an empty file masks one), in priority (file name) order. Unreadable or
    invalid files are logged and skipped: one bad package must not hide the others."""
    files: dict[str, Path] = {}
    for directory in dirs:
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.name.endswith(".json"):
                files[path.name] = path
    found: list[FirmwareDescriptor] = []
    for name in sorted(files):
        path = files[name]
        try:
            text = path.read_text()
            if not text.strip():
                continue  # masked (QEMU's spec: an empty file hides the packaged one)
            descriptor = parse_descriptor(text, name)
        except (OSError, UnicodeDecodeError, InvalidDescriptor) as exc:
            log.warning("skipping firmware descriptor %s: %s", path, exc)
            continue
        if descriptor is not None:
            found.append(descriptor)
    return found


#: per arch, the machines whose flash can be locked to SMM, which Secure Boot needs (an
#: arch fact kept here rather than in the arch table: only firmware asks it). x86 ``q35``
#: only: i440fx's ``pc`` has SMM but cannot protect the flash with it.
SMM_FLASH_MACHINES: Final[Mapping[str, tuple[str, ...]]] = {
    "x86_64": ("q35", "pc-q35-*"),
    "i686": ("q35", "pc-q35-*"),
}


def machine_has_smm(arch: str | None, machines: Sequence[str]) -> bool:
    """Whether the machine (one of its names) can give firmware an SMM-protected flash."""
    globs = SMM_FLASH_MACHINES.get(arch or "", ())
    return any(fnmatch.fnmatchcase(m, glob) for glob in globs for m in machines)


def select(descriptors: Sequence[FirmwareDescriptor], *, arch: str, machines: Sequence[str],
           features: Mapping[str, bool], interface: str = "uefi",
           smm: bool | None = None) -> FirmwareDescriptor:
    """The descriptor for a guest of ``arch`` on ``machines`` (the machine's names),
    with each of ``features`` present (True) or absent (False).

    Without a request about Secure Boot, descriptors without it come first (see the
    module doc); otherwise the spec's priority order decides. ``smm`` False (or None on
    a machine without SMM) excludes descriptors that need it.
    Raises :class:`FirmwareNotFound`.
    """
    smm_ok = machine_has_smm(arch, machines) if smm is None else smm
    fitting = [d for d in descriptors
               if interface in d.interfaces and d.supports(arch, machines)
               and (smm_ok or not d.requires_smm)
               and all((name in d.features) == wanted for name, wanted in features.items())]
    if SECURE_BOOT not in features:
        fitting.sort(key=lambda d: d.secure_boot)  # stable: priority order otherwise
    if not fitting:
        wanted = ", ".join(f"{name} {'on' if on else 'off'}"
                           for name, on in sorted(features.items()))
        machine = machines[-1] if machines else "?"
        kind = "efi" if interface == "uefi" else interface
        raise FirmwareNotFound(  # libvirt's words first (qemuFirmwareFillDomain)
            f"Unable to find any firmware to satisfy '{kind}'"
            f" (no descriptor in {', '.join(str(d) for d in DEFAULT_DIRS)} for {arch}"
            f" machine '{machine}'{f' with {wanted}' if wanted else ''}"
            f"{'' if smm_ok else ' without SMM'})")
    return fitting[0]


def find_executable(descriptors: Sequence[FirmwareDescriptor], path: str
                    ) -> FirmwareDescriptor | None:
    """The descriptor of the firmware image ``path`` (a loader given by hand): where
    its NVRAM template comes from when the definition names none."""
    for descriptor in descriptors:
        if descriptor.executable == path:
            return descriptor
    real = os.path.realpath(path)
    for descriptor in descriptors:
        if os.path.realpath(descriptor.executable) == real:
            return descriptor
    return None
