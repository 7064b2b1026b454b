"""Where the images duty keeps things on disk, and what a killed daemon left there.

The one module of the package a daemon imports at start-up: the duty needs these paths
and names to clean up, to settle the state of a VM whose update or rollback a killed
daemon cut short (:func:`settle_switch`) and to know which guests have an appliance
state, and nothing else until the first image call or the start of such a guest (see
:mod:`.duty`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Container, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemud.driver.store import atomic_write
from qemud.errors import OperationInvalid

if TYPE_CHECKING:
    from qemud.config import Config
    from qemud.driver.domain import DomainObj
    from qemud.driver.filewrites import FileWrites

__all__ = ["STAGING_PREFIX", "STATE_NAME", "SWITCH_KEY", "TARGET_RE", "UNFINISHED_SUFFIX",
           "QCOW2", "DISK_KINDS", "store_root", "vms_root", "remove_unfinished_disks",
           "DEPLOYING_KEY", "RESTART_KEY", "settle_switch", "settle_deploys",
           "require_no_pending_update", "restart_marks", "CHANGED_KEY",
           "require_restorable"]

log = logging.getLogger(__name__)

#: a deployed VM's state record, in its directory under :func:`vms_root`
STATE_NAME = "appliance-state.json"
#: the key of that record under which an update or rollback writes the state it switches
#: to, before it defines the definition that goes with it (see :func:`settle_switch`)
SWITCH_KEY = "switch"
#: the key (true) of that record from a deploy's first write of it until its define is
#: on disk (see :func:`settle_deploys`)
DEPLOYING_KEY = "deploying"
#: the key of that record naming the image operation that stopped the running VM, from
#: before that stop until the operation started it again (see :func:`restart_marks`)
RESTART_KEY = "restart"
#: the key of that record saying when and by what the VM's disks were last replaced (an
#: update, a rollback, a factory reset; see :func:`require_restorable`)
CHANGED_KEY = "changed"
#: an import unpacks into ``<store>/<STAGING_PREFIX>...`` before it is renamed into place
STAGING_PREFIX = ".staging-"
#: a guest disk name as descriptors and VM directories use them (vda, sdb, hdaa...)
TARGET_RE = re.compile(r"^(vd|sd|hd)[a-z]{1,2}$")
#: what ``ImageOps._create`` appends to a disk's name while qemu-img writes it
UNFINISHED_SUFFIX = ".new"
QCOW2 = ".qcow2"
#: what ``disk_file`` puts between the target and ``.qcow2`` (slots, scratch, or none)
DISK_KINDS = ("a", "b", "scratch")


def store_root(config: Config) -> Path:
    """The image store's directory (``appliance.image_store`` or ``<state_dir>/images``)."""
    store = config.appliance.image_store
    return Path(store) if store else config.paths.state_dir / "images"


def vms_root(config: Config) -> Path:
    """Where deployed VMs' disks and states are: ``<state_dir>/vms``."""
    return config.paths.state_dir / "vms"


def _is_unfinished_disk(name: str) -> bool:
    """Whether ``name`` is a name ``disk_file`` gives, plus :data:`UNFINISHED_SUFFIX`."""
    stem = name.removesuffix(QCOW2 + UNFINISHED_SUFFIX)
    if stem == name:
        return False
    target, dot, kind = stem.partition(".")
    return bool(TARGET_RE.match(target)) and (not dot or kind in DISK_KINDS)


def remove_unfinished_disks(vms_dir: Path) -> list[Path]:
    """Delete the disks whose creation a killed daemon never finished; return them.

    ``ImageOps._create`` has ``qemu-img create`` write ``<disk>.new`` and renames it
    over the disk once complete, so the disk itself is never half-made -- but a daemon
    killed in between leaves the ``.new`` file, which nothing would ever remove (the
    next creation of that disk replaces it, a VM that is never updated keeps it).
    Start-up only, under the pidfile lock: then no creation is in flight. Only regular
    files with the names ``_create`` makes, directly in a deployed VM's directory
    (symlinks are not followed), are removed; anything else there stays.
    """
    removed = []
    for vm_dir in _vm_dirs(vms_dir):
        for path in sorted(vm_dir.glob(f"*{QCOW2}{UNFINISHED_SUFFIX}")):
            try:
                if not _is_unfinished_disk(path.name) or \
                        not stat.S_ISREG(path.lstat().st_mode):
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove %s, left by an interrupted disk creation: %s",
                            path, exc.strerror or exc)
                continue
            log.info("removed %s, left by an interrupted disk creation", path)
            removed.append(path)
    return removed


def settle_switch(path: Path, dom: DomainObj,
                  discard: Callable[[list[str]], object] | None = None,
                  write: Callable[[Path, str], object] | None = None
                  ) -> dict[str, Any] | None:
    """Make the state record ``path`` of ``dom`` agree with its definition again, after
    an update or rollback that wrote its :data:`SWITCH_KEY` and was cut short; return
    the settled record (None: nothing to settle).

    An update or rollback writes the state it switches to under that key *before* its
    define (the record's own fields stay those of the definition in place), and the
    record without it once the define is on disk. A daemon killed in between, or a
    write that failed, leaves the key. The definition on disk (the daemon's persistent
    one: what the next start runs) then says which state is true: if its system disks
    are the switch's, the define happened and the switch becomes the state (the scratch
    images the switch had prepared as ``<disk>.new`` are renamed into place, as the
    update would have: they were complete before the switch was written); otherwise it
    did not, and the key is dropped. A switch that happened also leaves system disks
    no state names any more: a rollback's failed overlay, which the rollback deletes
    after its define. Those are handed to ``discard``, for the daemon to remove without
    blocking (``qemud.driver.discard``: an overlay may be large); an update's previous
    overlay is the new state's ``previous`` and stays. Start-up (for every domain with
    a record, before ``remove_unfinished_disks``) and any read of a record with the key
    while no image operation runs on the VM call this. The settled record is written
    by ``write(path, text)`` when given (the running daemon's: off the loop, through
    its file writes, which a later read sees in flight), else in place (start-up); one
    that cannot be written is logged and settled again next time, and the settled
    record is returned all the same.
    """
    data = _read_record(path, f"domain {dom.name}: ")
    if data is None or data.get("uuid") != dom.uuid:
        return None
    switch = data.get(SWITCH_KEY)
    if not isinstance(switch, dict):
        return None
    sources = {d.target_dev: d.source for d in dom.persistent_definition.disks}
    disks = switch.get("disks")
    if not isinstance(disks, dict):
        disks = {}
    system = {t: d.get("path") for t, d in disks.items()
              if isinstance(d, dict) and d.get("class") == "system"}
    landed = bool(system) and all(sources.get(t) == p for t, p in system.items())
    if landed:
        settled = {k: v for k, v in switch.items() if k not in (SWITCH_KEY, RESTART_KEY)}
        settled["vm"] = data.get("vm", dom.name)  # (a rename rewrites the record's own)
        if data.get(RESTART_KEY):  # (the record's own, as the name)
            settled[RESTART_KEY] = data[RESTART_KEY]
        _install_prepared_scratch(dom, disks)
        unused = _unused_system_disks(data, settled)
        if unused and discard is not None:
            log.info("domain %s: removing %s (no longer a disk of the VM)", dom.name,
                     ", ".join(unused))
            discard(unused)
    else:
        settled = {k: v for k, v in data.items() if k != SWITCH_KEY}
    log.warning("domain %s: an appliance image change to %s %s was cut short: its "
                "definition %s, so the VM is on %s", dom.name, switch.get("appliance"),
                switch.get("version"),
                "was saved" if landed else "was not saved (the previous one is in place)",
                settled.get("version"))
    text = json.dumps(settled, indent=1)
    if write is not None:
        write(path, text)
        return settled
    try:
        atomic_write(path, text)
    except OSError as exc:
        log.error("domain %s: cannot write the appliance state %s: %s (settled again "
                  "next time)", dom.name, path, exc.strerror or exc)
    return settled


def settle_deploys(vms_dir: Path, uuids: Container[str], names: Container[str],
                   remove: Callable[[Path], object]) -> None:
    """Finish or undo the deploys a killed daemon cut short; start-up only.

    A deploy makes the VM's directory and disks, writes its state record with
    :data:`DEPLOYING_KEY`, defines the domain, then writes the record without the key.
    A record that still has it names a domain that was defined (``uuids``: the key is
    dropped) or one that never was: then no one was told of the VM, nothing but the
    deploy made the directory, and it is handed to ``remove`` (for the daemon's
    ``discard_tree``), so that a deploy under that name works again. A directory whose
    name a domain of another uuid has (``names``) is left alone, and logged.
    """
    for vm_dir in _vm_dirs(vms_dir):
        path = vm_dir / STATE_NAME
        data = _read_record(path)
        if data is None or data.get(DEPLOYING_KEY) is not True:
            continue
        if data.get("uuid") in uuids:
            try:
                atomic_write(path, json.dumps(
                    {k: v for k, v in data.items() if k != DEPLOYING_KEY}, indent=1))
            except OSError as exc:
                log.error("cannot write the appliance state %s: %s (settled again next "
                          "time)", path, exc.strerror or exc)
        elif vm_dir.name in names:
            log.error("%s: a deploy cut short, but a domain of another uuid is named "
                      "'%s': left as it is", vm_dir, vm_dir.name)
        else:
            log.warning("a deploy of '%s' was cut short before its domain was defined: "
                        "removing %s", vm_dir.name, vm_dir)
            remove(vm_dir)


def _vm_dirs(vms_dir: Path) -> list[Path]:
    """The VM directories below ``vms_dir`` (symlinks are not followed; none if it
    cannot be read)."""
    try:
        return sorted(p for p in vms_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def restart_marks(vms_dir: Path, domains: Iterable[DomainObj]
                  ) -> list[tuple[DomainObj, str, Path]]:
    """The VMs an image operation stopped and a killed daemon never started again:
    (domain, the operation, its state record) for each record of ``domains`` (after
    :func:`settle_switch`) whose :data:`RESTART_KEY` is set; start-up only."""
    marked = []
    for dom in domains:
        path = vms_dir / dom.name / STATE_NAME
        data = _read_record(path, f"domain {dom.name}: ") if path.exists() else None
        if data is not None and data.get("uuid") == dom.uuid and data.get(RESTART_KEY):
            marked.append((dom, str(data[RESTART_KEY]), path))
    return marked


def _read_record(path: Path, who: str = "") -> dict[str, Any] | None:
    """The state record ``path``; None if there is none, or none that is readable
    (logged, after ``who``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("%sunreadable appliance state %s: %s", who, path, exc)
        return None
    return data if isinstance(data, dict) else None


def _system_paths(record: dict[str, Any]) -> set[str]:
    disks = record.get("disks")
    if not isinstance(disks, dict):
        return set()
    return {str(d.get("path")) for d in disks.values()
            if isinstance(d, dict) and d.get("class") == "system"}


def _unused_system_disks(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The system disks of the record ``before`` that the state ``after`` neither uses
    nor keeps as its ``previous`` slot."""
    previous = after.get("previous")
    kept = _system_paths(after)
    if isinstance(previous, dict) and isinstance(previous.get("system"), dict):
        kept |= {str(p) for p in previous["system"].values()}
    return sorted(_system_paths(before) - kept)


def _install_prepared_scratch(dom: DomainObj, disks: dict[str, Any]) -> None:
    """The scratch images a switch that happened prepared (``<disk>.new``, complete):
    renamed over the scratch disks, as the operation would have after its define."""
    for target, disk in sorted(disks.items()):
        if not isinstance(disk, dict) or disk.get("class") != "scratch":
            continue
        path = Path(str(disk.get("path")))
        prepared = path.with_name(path.name + UNFINISHED_SUFFIX)
        try:
            if not stat.S_ISREG(prepared.lstat().st_mode):
                continue
            os.replace(prepared, path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("domain %s: cannot put the new scratch image %s in place: %s",
                      dom.name, prepared, exc.strerror or exc)
            continue
        log.info("domain %s: scratch disk %s recreated (%s)", dom.name, target, path)


def require_no_pending_update(config: Config, dom: DomainObj, what: str,
                              files: FileWrites, *, why: str = "",
                              remedy: str = "a shut-off VM waits for its next start") -> None:
    """Refuse ``what`` while an A/B appliance update of ``dom`` waits for its
    confirmation (``pending`` in the VM's appliance state, or in the :data:`SWITCH_KEY`
    state of an update being defined, or cut short and not settled yet).

    The update's rollback puts the system disks back on the previous slot, deletes the
    new slot's overlay and recreates the scratch disks: whatever was built on them
    meanwhile (a snapshot, a saved memory state) would then belong to disks that are
    gone; and it defines the previous version's definition, which an undefine of the
    running guest would have taken away. Nothing changes when this raises. A state
    write in flight (``files``, the daemon's: a confirmation just made) is read rather
    than the file. ``why`` follows the pending update in the message (what the refused
    call would break), ``remedy`` ends it (what the user can do meanwhile).
    """
    path = vms_root(config) / dom.name / STATE_NAME
    try:
        state = json.loads(files.read_text(path))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.warning("domain %s: cannot read the appliance state %s (%s): taken as no "
                    "update pending", dom.name, path, exc)
        return
    if not isinstance(state, dict) or state.get("uuid") != dom.uuid:
        return
    pending = state.get("pending")
    switch = state.get(SWITCH_KEY)
    if not isinstance(pending, dict) and isinstance(switch, dict):
        pending = switch.get("pending")  # an update being defined, or not yet settled
    if not isinstance(pending, dict):
        return
    deadline = config.appliance.update_deadline
    raise OperationInvalid(
        f"cannot {what} of domain '{dom.name}': its appliance update from "
        f"{pending.get('from', '?')} to {pending.get('to', '?')} is pending (waiting "
        f"for the guest's heartbeat){why}. It ends when the heartbeat confirms it, or with "
        f"its rollback {deadline:g} s after the start (appliance.update_deadline); "
        + remedy)


def require_restorable(config: Config, files: FileWrites, image: Path, vm: str, uuid: str,
                       sources: Mapping[str, str | None]) -> None:
    """Refuse the restore of the save file ``image`` of the deployed VM ``vm`` (``uuid``;
    ``sources``: the disk sources of the definition inside the image, by target) when
    the VM's disks were replaced since the image was saved.

    An update switches the system disks to the other slot's overlay and recreates the
    scratch disks, a rollback does so back, a factory reset recreates the system
    overlay and the scratch disks in place. The memory state in an older image belongs
    to the disks as they were: restored, the guest would run the definition in the
    image (the old slot, the old kernel) over the recreated scratch disks, or with its
    page cache of a system disk that was replaced under it (file-system corruption),
    and its heartbeat would confirm an update it does not run. Known when the image's
    system disks are another slot of the VM's (an update or rollback since), or the
    file is older than the state's :data:`CHANGED_KEY` (any of the three; a copy of an image made
    since, its modification time new, is not recognised that way). Nothing changes when
    this raises; a VM without a readable state of this uuid is not checked.
    """
    path = vms_root(config) / vm / STATE_NAME
    try:
        state = json.loads(files.read_text(path))
        saved = os.stat(image).st_mtime
    except (OSError, ValueError):  # (no state: not a deployed VM; no file: the restore says so)
        return
    if not isinstance(state, dict) or state.get("uuid") != uuid:
        return
    why = ""
    disks = state.get("disks")
    own = vms_root(config) / vm
    for target, disk in sorted(disks.items() if isinstance(disks, dict) else ()):
        source = sources.get(target)
        # (another slot of the VM's own: an update or rollback since; a source elsewhere,
        # a snapshot's overlay on the slot, is left to the time check below)
        if isinstance(disk, dict) and disk.get("class") == "system" and source \
                and source != disk.get("path") and Path(source).parent == own:
            why = (f"its system disk {target} is {disk.get('path')} now, the image's "
                   f"{source} (an appliance update or rollback since the image was saved)")
            break
    switch = state.get(SWITCH_KEY)
    for record in (state, switch if isinstance(switch, dict) else {}):
        changed = record.get(CHANGED_KEY)
        if not why and isinstance(changed, dict) and isinstance(changed.get("at"), (int, float)) \
                and saved < changed["at"]:
            why = (f"its disks were replaced by the appliance {changed.get('by', 'change')} "
                   f"at {_when(changed['at'])}, after the image was saved ({_when(saved)})")
    if why:
        raise OperationInvalid(
            f"cannot restore domain '{vm}' from the save file {image}: {why}. The memory "
            "state in it belongs to the disks as they were before: boot the domain "
            f"afresh (start {vm}), or restore an image saved since")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
