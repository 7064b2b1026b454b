"""UEFI guests: firmware autoselection at define, the NVRAM file, undefine's NVRAM rule.

libvirt's behaviour (9.x), for qemud's layout:

* ``<os firmware='efi'>`` is resolved **at define** (libvirt >= 9.2, "make firmware
  selection persistent"): the chosen descriptor's image becomes ``<loader>``, its NVRAM
  template ``<nvram template=...>``, and the features it has are written into
  ``<firmware>``, so ``dumpxml`` shows what the guest boots and a later change of the
  installed descriptors cannot switch the guest's firmware (and orphan its variables).
  A definition stored before that (no ``<loader>``) is resolved at each start, in the
  live definition only.
* A read-only pflash loader gets an NVRAM file; without a path it is the per-domain
  default ``<state_dir>/nvram/<name>_VARS.fd`` (libvirt's
  ``/var/lib/libvirt/qemu/nvram/<name>_VARS.fd``).
* Before QEMU starts, a missing NVRAM file is created from the template (the
  ``template`` attribute, else the descriptor of the loader image), mode 0600, written
  atomically and sparsely (its all-zero blocks are holes: aarch64's 64 MiB template is
  all zeros but a few KiB). An existing one is never touched: it is the guest's (one
  that appears while the copy runs wins over the copy). ``start --reset-nvram``
  replaces it with a fresh copy.
* The copy does not hold the loop: the template is opened and checked in the call,
  then a child (``dd ... conv=sparse``) copies it from that descriptor into the temp
  file, and both fsyncs wait off the loop (:func:`.store.land_async`). Reading
  aarch64's template took ~50 ms here and the fsyncs as long as the disk makes them;
  the start waits for it, with the domain busy ("start in progress"), and launches
  QEMU once the file is durable (:meth:`.lifecycle.Lifecycle.start`).
* ``undefine`` of a domain whose NVRAM file exists is refused unless
  ``VIR_DOMAIN_UNDEFINE_NVRAM`` (remove it) or ``VIR_DOMAIN_UNDEFINE_KEEP_NVRAM``
  (keep it) is given, in libvirt's words.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

from protocol.constants import ErrorDomain
from qemud import testhooks
from qemud.conf import DomainDef
from qemud.conf.domain import DOMAIN_CHILD_ORDER
from qemud.conf.xmlmodel import first_child, insert_ordered
from qemud.dispatch import Deferred
from qemud.errors import (
    InvalidArg,
    OperationFailed,
    OperationInvalid,
    QemudError,
    SystemCallFailed,
)
from qemud.fileopen import WrongFileKind, open_for_reading
from qemud.qemu import firmware as fw

from .store import TempFile, land_async, remove_dead_writes, remove_dead_writes_of
from .tools import ChildGroup, ToolRunner, find_tool

if TYPE_CHECKING:
    from .domain import DomainObj
    from .driver import QemuDriver

__all__ = ["Firmware", "START_RESET_NVRAM", "UNDEFINE_KEEP_NVRAM", "UNDEFINE_NVRAM",
           "nvram_default_path"]

log = logging.getLogger(__name__)

#: libvirt's VIR_DOMAIN_UNDEFINE_NVRAM / VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
UNDEFINE_NVRAM, UNDEFINE_KEEP_NVRAM = 4, 8
#: libvirt's VIR_DOMAIN_START_RESET_NVRAM (DOMAIN_CREATE)
START_RESET_NVRAM = 32

_DOMAIN_RANKS = {tag: i for i, tag in enumerate(DOMAIN_CHILD_ORDER)}


def nvram_default_path(nvram_dir: Path, name: str) -> Path:
    """``<state_dir>/nvram/<name>_VARS.fd``: where a domain's variables live by default."""
    return nvram_dir / f"{name}_VARS.fd"


class Firmware:
    """Registers itself with the driver: a definition validator (define and create) and
    a start hook; the driver's undefine asks :meth:`before_undefine`."""

    def __init__(self, driver: QemuDriver, dirs: tuple[Path, ...] = fw.DEFAULT_DIRS) -> None:
        self.driver = driver
        self.dirs = dirs
        self.nvram_dir = driver.config.paths.state_dir / "nvram"
        self.tools = ToolRunner(driver.loop, _copy_failure)
        driver.registry.validators.append(self.fill)
        driver.start_hooks.append(self.before_start)

    # -- define ----------------------------------------------------------------------------

    def fill(self, definition: DomainDef) -> None:
        """Resolve ``firmware='efi'`` and give a read-only pflash loader its NVRAM path
        and template (libvirt's post-parse). Raises OperationFailed when no installed
        firmware fits, in libvirt's words."""
        os_ = definition.os
        if os_.firmware == "efi" and not os_.loader:
            self._select(definition)
        elif os_.loader and os_.loader_type is None and os_.loader_readonly is None:
            # a bare path: what its descriptor says it is (a ROM, or flash with NVRAM);
            # for firmware='efi' flash in any case
            found = fw.find_executable(fw.load_descriptors(self.dirs), os_.loader)
            if found is not None and found.device == "memory":
                os_.loader_type = "rom"
            elif found is not None or os_.firmware == "efi":
                os_.loader_type, os_.loader_readonly = "pflash", True
        elif os_.firmware == "efi" and os_.loader_type == "pflash" and \
                os_.loader_readonly is None:
            os_.loader_readonly = True
        if not os_.loader or os_.loader_type == "rom" or os_.loader_readonly is not True:
            return
        if not os_.nvram:
            os_.nvram = str(nvram_default_path(self.nvram_dir, definition.name))
        if os_.nvram_template is None:
            found = fw.find_executable(fw.load_descriptors(self.dirs), os_.loader)
            if found is not None and found.nvram_template:
                os_.nvram_template = found.nvram_template

    def _select(self, definition: DomainDef) -> None:
        os_ = definition.os
        arch = os_.arch or platform.machine()
        machines = self._machine_names(arch, os_.machine or "")
        wanted = dict(os_.firmware_features)
        if os_.loader_secure is not None and fw.SECURE_BOOT not in wanted:
            wanted[fw.SECURE_BOOT] = os_.loader_secure  # libvirt's compatibility rule
        smm_off = _smm_state(definition) == "off"
        try:
            chosen = fw.select(fw.load_descriptors(self.dirs), arch=arch, machines=machines,
                               features=wanted, smm=False if smm_off else None)
        except fw.FirmwareNotFound as exc:
            raise OperationFailed(str(exc)) from None
        log.info("domain %s: firmware 'efi' is %s (%s)", definition.name, chosen.executable,
                 chosen.name)
        os_.loader = chosen.executable
        if chosen.device == "memory":
            os_.loader_type = "rom"
            return
        os_.loader_readonly = True
        os_.loader_type = "pflash"
        if chosen.requires_smm:
            os_.loader_secure = True
            _set_smm_on(definition)
        os_.set_firmware_features({
            fw.ENROLLED_KEYS: fw.ENROLLED_KEYS in chosen.features,
            fw.SECURE_BOOT: chosen.secure_boot,
        })
        if chosen.nvram_template and os_.nvram_template is None:
            os_.nvram_template = chosen.nvram_template

    def _machine_names(self, arch: str, machine: str) -> list[str]:
        """The machine and what it is an alias of (descriptors name versioned types)."""
        emulator = self.driver.caps.emulator(arch)
        found = emulator.find_machine(machine) if emulator is not None and machine else None
        if found is not None and found.alias_of:
            return [machine, found.alias_of]
        return [machine]

    # -- start -----------------------------------------------------------------------------

    def before_start(self, dom: DomainObj, live: DomainDef) -> None:
        """Resolve a definition stored before define did it (``firmware='efi'`` without
        a loader), in the live definition."""
        os_ = live.os
        if os_.firmware == "efi" and not os_.loader:
            self.fill(live)

    @staticmethod
    def managed_save_refusal(dom: DomainObj) -> OperationInvalid:
        """``start --reset-nvram`` of a domain that a managed save image would be
        restored from: its firmware state is in the image (``--force-boot`` discards it)."""
        return OperationInvalid(
            f"cannot reset the NVRAM of domain '{dom.name}': it has a managed save "
            "image, which a start restores with the firmware state it holds (use "
            "--force-boot to discard the image)")

    def prepare_nvram(self, live: DomainDef, *, reset: bool = False) -> NvramCopy | None:
        """The NVRAM file a start of ``live`` needs: None when there is nothing to do
        (no NVRAM, or its file is there and no ``reset``: ``start --reset-nvram``,
        VIR_DOMAIN_START_RESET_NVRAM), else :meth:`create_nvram`'s Deferred."""
        os_ = live.os
        if not os_.loader or os_.loader_type == "rom" or not os_.nvram:
            return None
        return self.create_nvram(Path(os_.nvram), os_.nvram_template, os_.loader,
                                 replace=reset)

    def create_nvram(self, path: Path, template: str | None, loader: str,
                     replace: bool = False) -> NvramCopy | None:
        """Copy ``template`` to ``path`` (0600, atomically, durably) unless ``path``
        exists (with ``replace``: over it); None when it exists. The template defaults
        to the loader's descriptor's.

        What can be refused at once is raised here (no template, one that is no regular
        file or too big, a temp file that cannot be created); the copy and its fsyncs
        run off the loop, and the Deferred resolves with whether the file was written
        (False: one appeared at ``path`` meanwhile, and is left as it is) or fails with
        the reason the file could not be created. :meth:`NvramCopy.cancel` ends it
        early (a destroy of the domain whose start waits for it)."""
        if not replace and path.exists():
            return None
        if not template:
            found = fw.find_executable(fw.load_descriptors(self.dirs), loader)
            template = found.nvram_template if found is not None else None
        if not template:
            # libvirt's words (qemuPrepareNVRAMFile), then what to do
            raise OperationFailed(f"unable to find any master var store for loader: {loader}"
                                  " (give one with <nvram template='PATH'>)")
        dd = find_tool("dd", "to copy an NVRAM template")
        source, size = _open_template(template)
        try:
            temp = TempFile(path, b"", 0o600, replace=replace)
        except OSError as exc:
            os.close(source)
            raise _create_failed(path, exc) from None
        # blocks of zeros are seeked over, not written (conv=sparse); exactly the size
        # the template had when it was checked is copied (count_bytes)
        child = ChildGroup()
        try:
            copying = self.tools.run([dd, "bs=64K", f"count={size}", "iflag=count_bytes",
                                      "conv=sparse", "status=none"],
                                     f"copying {template}", stdin=source, into=temp.fd,
                                     group=child)
        except OSError as exc:  # (no descriptor left for its stderr file, say)
            os.close(source)
            temp.abandon()
            raise _create_failed(path, exc) from None
        landing = False

        def stop(error: QemudError) -> None:
            # the child is killed; one a hung mount holds in the kernel ends later
            # (copied() then only closes the template), and the start fails now, no
            # longer busy. Once the copy is whole its landing (the fsyncs, the link)
            # goes on: a complete file at the path is as good as none to the next start;
            # ``settled`` says when it is there (the domain stays busy until then)
            if result.done:
                return
            if not landing:
                deadline.cancel()
                child.kill()
                temp.abandon()
                result.settled.resolve(None)
            result.fail(error)
        result = NvramCopy(stop)
        deadline = self.driver.loop.call_later(NVRAM_COPY_TIMEOUT, lambda: stop(
            SystemCallFailed(f"Failed to create NVRAM file '{path}': copying {template} "
                             f"did not complete within {NVRAM_COPY_TIMEOUT:g} s",
                             domain=ErrorDomain.QEMU)))

        def copied(d: Deferred) -> None:
            nonlocal landing
            os.close(source)
            deadline.cancel()
            if result.done:  # (stopped: by its deadline or a destroy)
                return
            try:
                if d.error is not None:
                    raise d.error
                written = os.fstat(temp.fd).st_size
                if written != size:
                    raise OperationFailed(f"copying {template}: {written} bytes copied "
                                          f"of {size} (the template changed meanwhile)")
            except (QemudError, OSError) as exc:
                temp.abandon()
                result.settled.resolve(None)
                reason = exc.detail if isinstance(exc, QemudError) else exc.strerror or exc
                result.fail(SystemCallFailed(f"Failed to create NVRAM file '{path}': "
                                             f"{reason}", domain=ErrorDomain.QEMU))
                return
            landing = True
            land_async(self.driver.fsync, temp, landed)

        def landed(error: BaseException | None) -> None:
            result.settled.resolve(None)
            if error is None:
                log.info("%s NVRAM %s from %s", "reset" if replace else "created", path,
                         template)
                result.resolve(True)
            elif isinstance(error, FileExistsError):
                log.info("NVRAM %s appeared while its template was copied: it is left "
                         "as it is", path)
                result.resolve(False)
            elif isinstance(error, OSError):
                result.fail(_create_failed(path, error))
            else:  # (a bug)
                result.fail(error if isinstance(error, QemudError)
                            else OperationFailed(f"cannot create NVRAM {path}: {error!r}"))
        copying.add_done_callback(copied)
        return result

    def remove_dead_copies(self) -> None:
        """At start-up, before anything is written (see :func:`.store.remove_dead_writes`):
        the temp files of NVRAM copies a killed daemon left, in the default directory
        and next to each defined domain's NVRAM file elsewhere (only that file's)."""
        remove_dead_writes(self.nvram_dir)
        for dom in self.driver.registry:
            path = dom.persistent_definition.os.nvram if dom.persistent else None
            if path and Path(path).parent != self.nvram_dir:
                remove_dead_writes_of(Path(path))

    # -- undefine --------------------------------------------------------------------------

    def nvram_file(self, dom: DomainObj) -> Path | None:
        """The domain's NVRAM file if it exists (its persistent definition's path)."""
        definition = dom.persistent_definition
        path = definition.os.nvram
        if not path and definition.os.firmware == "efi":
            path = str(nvram_default_path(self.nvram_dir, dom.name))
        if path and os.path.exists(path):
            return Path(path)
        return None

    def check_undefine(self, dom: DomainObj, flags: int) -> Path | None:
        """libvirt's rule: refused while the NVRAM file exists, unless ``flags`` says
        what to do with it; the file to remove (UNDEFINE_NVRAM), else None."""
        if flags & UNDEFINE_NVRAM and flags & UNDEFINE_KEEP_NVRAM:
            raise InvalidArg("Flags 'VIR_DOMAIN_UNDEFINE_KEEP_NVRAM' and "
                             "'VIR_DOMAIN_UNDEFINE_NVRAM' are mutually exclusive",
                             domain=ErrorDomain.QEMU)
        if not dom.persistent:
            return None  # (the registry refuses the undefine)
        path = self.nvram_file(dom)
        if path is None:
            return None
        if flags & UNDEFINE_NVRAM:
            return path
        if not flags & UNDEFINE_KEEP_NVRAM:
            # libvirt's words (qemuDomainUndefineFlags), then the way out
            raise OperationInvalid(f"cannot undefine domain with nvram ({path}: use --nvram "
                                   "to remove it or --keep-nvram to keep it)")
        return None

    def before_undefine(self, dom: DomainObj, flags: int) -> None:
        """:meth:`check_undefine`, then remove the file if asked (before the definition,
        as libvirt does)."""
        path = self.check_undefine(dom, flags)
        if path is None:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SystemCallFailed(f"failed to remove nvram: {path}: "
                                   f"{exc.strerror or exc}", domain=ErrorDomain.QEMU) from None
        log.info("domain %s: removed its NVRAM %s", dom.name, path)


class NvramCopy(Deferred):
    """:meth:`Firmware.create_nvram`'s Deferred, which its caller can end early;
    ``settled`` resolves once nothing of the copy is under way any more (after a
    :meth:`cancel` that came while a whole copy was landing: once it has landed)."""

    __slots__ = ("_stop", "settled")

    def __init__(self, stop: Callable[[QemudError], None]) -> None:
        super().__init__()
        self._stop = stop
        self.settled = Deferred()

    def cancel(self, error: QemudError) -> None:
        """Fail with ``error`` now: a copy still running is killed and its temp file
        removed (a copy already whole lands all the same: see ``settled``); nothing if
        done."""
        self._stop(error)


def _smm_state(definition: DomainDef) -> str | None:
    """``<features><smm state=...>`` (qemud keeps ``<features>`` verbatim)."""
    features = first_child(definition.node, "features")
    smm = first_child(features, "smm") if features is not None else None
    return smm.get("state") if smm is not None else None


def _set_smm_on(definition: DomainDef) -> None:
    """``<features><smm state='on'/>``, as libvirt adds for firmware that needs SMM."""
    features = first_child(definition.node, "features")
    if features is None:
        features = etree.Element("features")
        insert_ordered(definition.node, features, _DOMAIN_RANKS)
    smm = first_child(features, "smm")
    if smm is None:
        smm = etree.SubElement(features, "smm")
    smm.set("state", "on")


#: the largest NVRAM template read (aarch64's AAVMF_VARS.fd is 64 MiB, x86's 128 KiB-4 MiB)
MAX_NVRAM_TEMPLATE = 256 * 1024 * 1024
#: test hook (:mod:`qemud.testhooks`): seconds instead of :data:`NVRAM_COPY_TIMEOUT`
NVRAM_COPY_TIMEOUT_ENV = "QEMUD_NVRAM_COPY_TIMEOUT"
#: how long the template's copy may take (a template on a hung network mount): past it
#: the child is killed and the start fails, no longer busy. The copy reads at most 256
#: MiB; its fsyncs are not counted (they wait for the disk as a define's do)
NVRAM_COPY_TIMEOUT = testhooks.seconds(NVRAM_COPY_TIMEOUT_ENV, 60.0)


def _open_template(template: str) -> tuple[int, int]:
    """The NVRAM template, open for reading, and its size. The path is the
    definition's, so it is opened without blocking (a FIFO there would stall the
    daemon), and only a regular file of at most :data:`MAX_NVRAM_TEMPLATE` bytes is
    taken; the copy reads this descriptor, never the path again."""
    def failed(reason: str) -> SystemCallFailed:
        return SystemCallFailed(f"Failed to open file '{template}': {reason}",
                                domain=ErrorDomain.QEMU)
    try:
        fd, st = open_for_reading(template)
    except WrongFileKind as exc:
        raise failed(f"it is {exc.kind}, not a regular file (an NVRAM template)") from None
    except OSError as exc:
        raise failed(str(exc.strerror or exc)) from None
    if st.st_size > MAX_NVRAM_TEMPLATE:
        os.close(fd)
        raise failed(f"{st.st_size} bytes, more than an NVRAM template's "
                     f"{MAX_NVRAM_TEMPLATE}")
    return fd, st.st_size


def _create_failed(path: Path, exc: OSError) -> SystemCallFailed:
    return SystemCallFailed(f"Failed to create NVRAM file '{path}': {exc.strerror or exc}",
                            domain=ErrorDomain.QEMU)


def _copy_failure(argv: list[str], code: int, stderr: str) -> str:
    return f"{os.path.basename(argv[0])} exited with status {code}" + (
        f": {stderr}" if stderr else "")
