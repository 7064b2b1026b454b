"""Importing an appliance (APPLIANCE_IMPORT): unpack, check, store read-only.

:mod:`.unpack` unpacks the tarball (a child the loop reaps, never in the loop: the
daemon's Python running that file) into a staging directory ``<store>/.staging-*``,
at most ``appliance.import_max_bytes`` of it (the declared sizes are checked before
anything is written, or for a compressed tarball, read in one pass, before each member
is; the bytes counted while writing); the descriptor is checked
(every field, every file, only regular files, images without backing or data files, by
``qemu-img info``) and so is the host (an emulator for the arch, every required
feature); the checked descriptor is written next to the files as
``.qemud-appliance.json``, every file made mode 0444, and the directory renamed to
``<store>/<name>/<version>/``, then flushed to disk (``sync -f``, a child: the
unpacked files, the rename) before the call is answered: VMs deployed from it build
their overlays on those files, and a rename a power loss undid would leave a staging
directory the next start removes. A version is never replaced. Whatever is refused, the
staging directory is discarded; one a killed daemon left is removed at start-up.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import payloads as pl
from qemud.dispatch import Deferred
from qemud.driver.discard import discard_tree
from qemud.driver.tools import ToolFailed
from qemud.errors import InvalidArg, OperationFailed, OperationInvalid
from qemud.tasks import Task, run_task

from .base import ImageOps
from .descriptor import DescriptorError, DiskSpec, check_host, load_descriptor_text
from .layout import STAGING_PREFIX
from .store import INDEX_NAME
from .unpack import EXIT_BAD_MEMBER, EXIT_TOO_BIG

if TYPE_CHECKING:
    from qemud.config import Config
    from qemud.driver import QemuDriver
    from qemud.driver.tools import ToolRunner

    from .store import ImageStore

__all__ = ["ImportOps", "DESCRIPTOR_NAMES", "MAX_DESCRIPTOR_BYTES"]

log = logging.getLogger(__name__)

DESCRIPTOR_NAMES = ("appliance.json", "appliance.toml")
MAX_DESCRIPTOR_BYTES = 1024 * 1024
#: an import in progress unpacks into ``<store>/.staging-XXXXXXXX``


class ImportOps(ImageOps):
    """APPLIANCE_IMPORT."""

    def __init__(self, driver: QemuDriver, config: Config, store: ImageStore,
                 runner: ToolRunner, busy: dict[str, str]) -> None:
        super().__init__(driver, config, store, runner, busy)
        self.importing: set[str] = set()  # "name:version"

    def handle_import(self, ctx: Any, args: pl.ImportArgs) -> Deferred:
        path = args.path
        if not path or not os.path.isabs(path):
            raise InvalidArg(f"appliance tarball path must be absolute (a file on the "
                             f"daemon's host), got '{path}'")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidArg(f"cannot read appliance tarball {path}: "
                             f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArg(f"appliance tarball {path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise InvalidArg(f"cannot read appliance tarball {path}: permission denied")
        return run_task(self.loop, self._import(path), "APPLIANCE_IMPORT")

    def _import(self, path: str) -> Task:
        try:
            self.store.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.store.root))
        except OSError as exc:
            raise OperationFailed(f"cannot unpack into the image store {self.store.root}: "
                                  f"{exc.strerror or exc}") from None
        key = ""
        try:
            limit = self.config.appliance.import_max_bytes
            try:
                yield self.runner.run(_unpack_argv(path, staging, limit))
            except ToolFailed as exc:
                raise DescriptorError(_unpack_refusal(path, exc, limit)) from None
            root = _find_root(staging, path)
            odd = yield self.runner.run(_odd_member_argv(root),
                                        f"cannot check the members of {path}", stdout=True)
            _refuse_odd_member(odd, path)
            names = [n for n in DESCRIPTOR_NAMES if (root / n).is_file()]
            descriptor_file = root / names[0]
            if descriptor_file.stat().st_size > MAX_DESCRIPTOR_BYTES:
                raise DescriptorError(f"{path}: {names[0]} is larger than "
                                      f"{MAX_DESCRIPTOR_BYTES} bytes")
            try:
                desc = load_descriptor_text(descriptor_file.read_text(), names[0])
            except UnicodeDecodeError:
                raise DescriptorError(f"{path}: {names[0]} is not UTF-8 text") from None
            except DescriptorError as exc:
                raise DescriptorError(f"{path}: {exc.detail}") from None
            for where, rel in desc.files():
                member = root / rel
                if not member.is_file() or member.is_symlink():
                    raise DescriptorError(f"{path}: {names[0]}: {where}: file '{rel}' is not "
                                          "in the tarball")
            check_host(desc, self.driver.caps)
            key = desc.ref
            dest = self.store.dir(desc.name, desc.version)
            if key in self.importing or dest.exists():
                key = ""
                raise OperationInvalid(f"appliance {desc.ref} is already imported ({dest}); "
                                       "versions are never replaced: give the new one "
                                       "another version")
            self.importing.add(key)
            images: dict[str, Any] = {}
            for i, disk in enumerate(desc.disks):
                if disk.file is None:
                    continue
                text = yield self.runner.run(
                    [self.qemu_img(), "info", "--output=json", str(root / disk.file)],
                    f"{path}: disks[{i}] '{disk.file}' is not a readable disk image",
                    stdout=True)
                images[disk.file] = _check_image(text, disk, f"{path}: disks[{i}] "
                                                             f"'{disk.file}'")
            yield self.driver.files.write(root / INDEX_NAME, json.dumps({
                "descriptor": desc.to_json(), "imported_at": int(time.time()),
                "source": path, "images": images}, indent=1), "the appliance index", 0o444)
            yield self.runner.run(_read_only_argv(root),
                                  f"cannot make the files of {path} read-only")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(root, dest)
            try:  # (the unpacked files, the rename and the new directories, off the loop)
                yield self.runner.run(["sync", "-f", str(dest)])
            except ToolFailed as exc:  # (in place and usable: a power loss may lose it)
                log.error("appliance %s imported into %s, but not flushed to disk: %s",
                          desc.ref, dest, exc.message)
            log.info("appliance %s imported from %s into %s", desc.ref, path, dest)
            return pl.StringReply(desc.ref)
        finally:
            if key:
                self.importing.discard(key)
            discard_tree(self.loop, staging)


def _find_root(staging: Path, source: str) -> Path:
    """Where the descriptor is: the top of the tarball, or its one top directory. (At
    most 9 entries of the top are read: it may hold any number, and this is the loop.)"""
    with os.scandir(staging) as listing:
        entries = [Path(e.path) for e in itertools.islice(listing, 9)]
    candidates = [staging]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        candidates.append(entries[0])
    for candidate in candidates:
        found = [n for n in DESCRIPTOR_NAMES
                 if (candidate / n).is_file() and not (candidate / n).is_symlink()]
        if len(found) > 1:
            raise DescriptorError(f"{source}: holds both appliance.json and appliance.toml: "
                                  "keep one")
        if found:
            return candidate
    top = sorted(p.name for p in entries)[:8]
    raise DescriptorError(f"{source}: no appliance.json (or appliance.toml) at the top of the "
                          f"tarball (it holds: {', '.join(top) or 'nothing'})")


def _unpack_argv(path: str, staging: Path, limit: int) -> list[str]:
    """The child that unpacks ``path`` into ``staging``, at most ``limit`` bytes: the
    daemon's own Python (isolated: no environment, no user site) running
    :mod:`.unpack`, which imports nothing but the standard library."""
    script = Path(__file__).with_name("unpack.py")
    return [sys.executable, "-I", str(script), str(limit), path, str(staging)]


def _unpack_refusal(path: str, exc: ToolFailed, limit: int) -> str:
    """What a failed :func:`_unpack_argv` child means, for the user. A declared size
    past the limit is refused at that member before it is written, but the members
    before it may have been (a compressed tarball is read in one pass): they are removed
    with the staging directory, so nothing is kept either way."""
    lines = [line for line in exc.stderr.splitlines() if line.strip()]
    reason = " / ".join(lines) or exc.message
    if exc.exit_code == EXIT_TOO_BIG and lines:  # "declared|written BYTES MEMBER"
        how, _, rest = lines[-1].partition(" ")
        count, _, member = rest.partition(" ")
        bound = f"appliance.import_max_bytes = {limit} ({_size(limit)})"
        if how == "declared" and count.isdigit():
            return (f"appliance tarball {path} unpacks to more than {bound}: its files "
                    f"declare at least {count} bytes ({_size(int(count))}), the limit "
                    f"passed at member '{member}'; refused at that member, before "
                    "writing it; nothing was kept")
        return (f"appliance tarball {path}: member '{member}' unpacked past {bound}, "
                "more than the tarball declared; unpacking stopped, nothing was kept")
    if exc.exit_code == EXIT_BAD_MEMBER:
        return f"{path}: {reason}"
    return f"cannot unpack appliance tarball {path}: {reason}"


def _size(n: int) -> str:
    """``n`` bytes for a reader: ``64 GiB``, ``1.5 MiB``, ``512 bytes``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                        ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def _odd_member_argv(root: Path) -> list[str]:
    """``find`` printing the first member below ``root`` that is neither a directory nor
    a regular file, as ``TYPE PATH`` (``l`` a symlink): the tree may be large, so it is
    walked by a child, not on the loop."""
    return ["find", str(root), "-mindepth", "1", "!", "-type", "d", "!", "-type", "f",
            "-printf", "%y %P\\n", "-quit"]


def _read_only_argv(root: Path) -> list[str]:
    """A child that makes every directory below ``root`` 0755 and every file 0444
    (``chmod -R`` fixes a directory the tarball made unreadable before reading it)."""
    return ["sh", "-c", 'chmod -R a=rX,u+w -- "$1" && exec find "$1" -type f -exec chmod '
            '0444 {} +', "qemud-import", str(root)]


def _refuse_odd_member(found: str, source: str) -> None:
    """Only regular files and directories: a symlink or device could reach host files.
    ``found`` is what :func:`_odd_member_argv` printed."""
    if not found:
        return
    kind, _, name = found.rstrip("\n").partition(" ")
    what = "a symlink" if kind == "l" else "not a regular file"
    raise DescriptorError(f"{source}: member '{name}' is {what}: an appliance tarball may "
                          "hold only regular files and directories")


def _check_image(text: str, disk: DiskSpec, where: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        raise DescriptorError(f"{where}: qemu-img info gave no JSON") from None
    fmt = info.get("format")
    if fmt != disk.format:
        raise DescriptorError(f"{where}: the descriptor says format {disk.format} but the "
                              f"image is {fmt}")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        raise DescriptorError(f"{where}: has a backing file ('{backing}'): appliance images "
                              "must be self-contained")
    data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if data_file:
        raise DescriptorError(f"{where}: has an external data file ('{data_file}'): "
                              "appliance images must be self-contained")
    return {"format": fmt, "virtual_size": int(info.get("virtual-size", 0))}
