"""udev hotplug: host block devices handed to guests as they come and go.

Rules (a TOML file, ``appliance.hotplug_rules``; ``""`` is ``<config_dir>/hotplug.toml``)
say which host block devices go to which guest, and how::

    [[rule]]
    name = "usb-storage"
    match = { ID_BUS = "usb", DEVTYPE = "disk" }   # udev properties; fnmatch globs
    domain = "appliance1"
    target = "virtio-disk"        # or "cdrom:hdc": mirror the medium into CD-ROM hdc
    readonly = false

The first rule whose every ``match`` entry matches a device's udev property (exactly, or
as an ``fnmatch`` glob; a missing property never matches) wins. A bad rule is a start-up
error naming the rule and the key. The full format is in docs/HOTPLUG.md.

SIGHUP reads the file again (:meth:`HotplugDuty.reload`, one of the daemon's
``reload_hooks``): a bad file is logged and the rules in force stay; good rules replace
them and the devices are enumerated again, as at start-up (the duty starts listening then
if it had no rules before). Rules decide where a device that is not attached goes; an
attached device stays with its guest until it is released (removed, no medium, ``losetup
-d``, the guest stops, or an admin detaches it), even if the rules no longer give it there
("retired"): pulling a disk from a running guest because a file was edited could lose
the guest's data. Once released, a retired device is matched with the rules in force.

How it runs, inside the daemon's one loop:

* a pyudev netlink monitor (source ``udev`` when udevd runs, i.e. ``/run/udev/control``
  exists, else the kernel's own uevents), filtered to subsystem ``block``, is one more
  fd in the loop; its handler drains it with ``poll(timeout=0)``.
* every host device matching a rule is tracked. Whether it is attached is never stored
  separately: it is read from the guest's live definition (a disk whose source is the
  device; for a CD-ROM rule, the CD-ROM whose source it is), which the driver keeps and
  which survives daemon restarts.
* a device with a medium (``size`` in sysfs > 0; for CD-ROMs ``ID_CDROM_MEDIA`` when udev
  provides it) whose guest runs is hot-added as a virtio disk on the first free ``vdX``
  of the live definition (``Devices.attach``, AFFECT_LIVE), or for ``cdrom:`` rules put
  into that CD-ROM (``Devices.change_media``). A device that loses its medium or goes
  away (``remove``) is detached cleanly (device_del, then the block nodes), or ejected.
  A CD-ROM takes one drive at a time: a second drive for a CD-ROM holding another
  tracked drive's medium is a ``hotplug-failed`` event, and goes in once it is emptied.
* an attached device whose size changes (``change`` uevent, e.g. ``losetup -c``) is
  resized in the guest: QMP ``block_resize`` of its format node to the new size (the
  guest's virtio-blk sees a capacity change); a CD-ROM's medium is inserted again. QEMU
  cannot resize a read-only node: that is a ``hotplug-failed`` event.
* loop devices: ``losetup`` raises ``add``/``change`` before and after the backing file
  is attached, so only the size counts. ``losetup -d`` on a device QEMU holds open only
  sets the kernel's auto-clear flag and raises no uevent until the last close, so while
  a loop device is attached the daemon reads its ``loop/autoclear`` every second; the
  flag turning on counts as removal.
* devices present when a guest starts are attached then (LIFECYCLE STARTED, after a fresh
  enumeration with ``Context.list_devices``), and at daemon start for running guests once
  their monitor is back. What the daemon attached is also recorded in
  ``<run_dir>/hotplug.json``, so a device that vanished while the daemon was down is
  detached when it comes back, also from a guest the rules no longer name (with no
  rules at all, the duty starts for that if the file lists devices).
* never attached: a device (or one of its partitions) mounted, used as swap or held by
  another block device (dm, md) on the host: that is a ``hotplug-failed`` event.
* a disk that leaves the guest another way (an admin's detach, the late release of a
  detach that timed out: the driver's ``disk_removed_hooks``) is forgotten as the duty's
  own detach would (``hotplug-detached``, hotplug.json, the save check), then the rules
  in force decide; a detach is not asked again while one is pending in QEMU.

Every attach/detach/resize emits an appliance event ``hotplug-attached`` /
``hotplug-detached`` ("/dev/loop3 as vdb") / ``hotplug-resized`` ("/dev/loop3 as vdb:
8388608 -> 16777216 bytes") and writes an audit line; a failure is logged with its cause and
emitted as ``hotplug-failed`` ("attach /dev/loop3 as vdb: <cause>"), and the same action is
not retried for that device until its next uevent or the guest's next start.
HOTPLUG_LIST lists every matched host device: rule, device, domain, target, attached.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Procedure
from protocol import payloads as pl
from protocol.constants import EventId, LifecycleEvent
from qemud.dispatch import Deferred
from qemud.driver.devices import AFFECT_LIVE, MODIFY_FORCE
from qemud.errors import ConfigError, OperationInvalid, QemudError
from qemud.loop import Timer
from qemud.qemu import naming

if TYPE_CHECKING:
    from qemud.conf import Disk
    from qemud.dispatch import Handler
    from qemud.driver.domain import DomainObj

    from . import ApplianceContext

__all__ = ["Rule", "HostDevice", "HotplugDuty", "parse_rules", "load_rules", "first_match",
           "target_name", "next_target", "install", "DISK_TARGET"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")

DISK_TARGET = "virtio-disk"
RULE_KEYS = ("name", "match", "domain", "target", "readonly")
_CDROM_TARGET = re.compile(r"cdrom:((?:hd|sd|vd|xvd)[a-z]+)")
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]*")
#: seconds between reads of loop/autoclear of attached loop devices
LOOP_POLL = 1.0
#: how long to wait for the monitor of a guest re-attached at daemon start
READY_TIMEOUT = 60.0
READY_RETRY = 0.2
#: seconds between looks at a guest whose job (a snapshot, merge or backup) holds off
#: a hotplug change: the driver refuses live attach/detach while one runs
JOB_RETRY = 1.0
#: uevents handled per wake-up (the rest on the next one: other fds get their turn)
MAX_UEVENTS = 256
STATE_FILE = "hotplug.json"
_EVENT_KINDS = {"attach": "hotplug-attached", "detach": "hotplug-detached",
                "resize": "hotplug-resized"}


# -- rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    match: tuple[tuple[str, str], ...]
    domain: str
    target: str = DISK_TARGET
    readonly: bool = False

    @property
    def cdrom(self) -> str | None:
        """The guest CD-ROM target of a ``cdrom:`` rule, None for a disk rule."""
        m = _CDROM_TARGET.fullmatch(self.target)
        return m.group(1) if m else None

    def matches(self, properties: Mapping[str, str]) -> bool:
        for key, pattern in self.match:
            value = properties.get(key)
            if value is None or not fnmatch.fnmatchcase(str(value), pattern):
                return False
        return True


def parse_rules(text: str, source: str = "hotplug rules") -> list[Rule]:
    """The rules of a TOML text; ConfigError naming the rule and the key if one is bad."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - {"rule"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (rules are [[rule]] tables)")
    entries = data.get("rule", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries, 1):
        rules.append(_parse_rule(entry, index, source, seen))
    return rules


def _parse_rule(entry: dict[str, Any], index: int, source: str, seen: set[str]) -> Rule:
    name = entry.get("name")
    label = f"rule #{index}" + (f" ({name!r})" if isinstance(name, str) else "")

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {label}: key {key!r} {why}")

    for key in entry:
        if key not in RULE_KEYS:
            raise bad(key, f"is unknown (known: {', '.join(RULE_KEYS)})")
    for key in ("name", "match", "domain"):
        if key not in entry:
            raise bad(key, "is missing")
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise bad("name", f"must be a non-empty name (letters, digits, '_.:@+-'), got "
                          f"{name!r}")
    if name in seen:
        raise bad("name", "is used by an earlier rule")
    seen.add(name)
    match = entry["match"]
    if not isinstance(match, dict) or not match:
        raise bad("match", "must be a non-empty table of udev properties, e.g. "
                           "{ ID_BUS = \"usb\", DEVTYPE = \"disk\" } (an empty match would "
                           "take every block device of the host)")
    for prop, pattern in match.items():
        if not isinstance(pattern, str) or not pattern:
            raise bad("match", f"entry {prop!r} must be a non-empty string (an exact value "
                               f"or an fnmatch glob), got {pattern!r}")
    domain = entry["domain"]
    if not isinstance(domain, str) or not domain:
        raise bad("domain", f"must be a domain name, got {domain!r}")
    target = entry.get("target", DISK_TARGET)
    if not isinstance(target, str) or not (target == DISK_TARGET or
                                           _CDROM_TARGET.fullmatch(target)):
        raise bad("target", f"must be {DISK_TARGET!r} or 'cdrom:<CD-ROM target dev>' such "
                            f"as 'cdrom:hdc', got {target!r}")
    readonly = entry.get("readonly", False)
    if not isinstance(readonly, bool):
        raise bad("readonly", f"must be true or false, got {readonly!r}")
    return Rule(name=name, match=tuple(sorted(match.items())), domain=domain, target=target,
                readonly=readonly)


def load_rules(path: Path, required: bool = True) -> list[Rule]:
    """Rules of ``path``; a missing file is no rules unless ``required``."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"hotplug rules file {path} does not exist "
                              "(appliance.hotplug_rules)") from None
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read hotplug rules file {path}: "
                          f"{exc.strerror or exc}") from None
    return parse_rules(text, f"hotplug rules {path}")


def first_match(rules: Iterable[Rule], properties: Mapping[str, str]) -> Rule | None:
    for rule in rules:
        if rule.matches(properties):
            return rule
    return None


def target_name(index: int, prefix: str = "vd") -> str:
    """libvirt's disk names: 0 -> vda, 25 -> vdz, 26 -> vdaa, 701 -> vdzz, 702 -> vdaaa."""
    letters = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def next_target(used: Iterable[str], prefix: str = "vd") -> str:
    taken = set(used)
    index = 0
    while target_name(index, prefix) in taken:
        index += 1
    return target_name(index, prefix)


# -- host devices ----------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return None


@dataclass
class HostDevice:
    """A host block device one of the rules matched."""

    devname: str  # /dev/loop3
    sys_path: str  # /sys/devices/virtual/block/loop3
    rule: Rule
    size: int = 0  # 512-byte sectors
    cdrom_media: str | None = None  # udev's ID_CDROM_MEDIA, when udev provides it
    present: bool = True
    released: bool = False  # a loop device detached on the host (auto-clear set)
    autoclear: bool = False  # loop/autoclear when its medium appeared
    baseline_known: bool = False  # autoclear comes from the state file (daemon restart)
    busy: bool = False  # an attach/detach/resize/media change in flight
    failed: str = ""  # the action that failed; not retried before a new uevent
    #: an admin took it out of its guest (forget_released): not attached again before
    #: its next uevent (add, remove, a change: ``losetup -c``), the guest starts again or
    #: a reload changes the rules; a synthetic change uevent that changes nothing (the
    #: one udevd makes when QEMU closes the node, its inotify watch) does not count. In
    #: memory only: a daemon restart applies the rules again
    held_back: bool = False
    #: its attach was refused because another drive of the rules held its CD-ROM: it
    #: goes in when the duty ejects that one (``_cdrom_emptied``)
    waiting_cdrom: bool = False
    #: the duty asked QEMU to unplug it (its own detach, perhaps timed out): its release
    #: is the duty's, not an admin's detach (see forget_released)
    own_detach: bool = False
    #: attached under ``rule``, which the rules in force no longer give it (rules reloaded
    #: or edited while the daemon was down, properties changed): it stays until released,
    #: then the rules in force are matched afresh
    retired: bool = False
    guest_size: int | None = None  # sectors the guest was given; None: not attached/known
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def sys_name(self) -> str:
        return os.path.basename(self.sys_path)

    @property
    def is_loop(self) -> bool:
        return self.sys_name.startswith("loop")

    @property
    def has_medium(self) -> bool:
        if not self.present or self.released:
            return False
        if self.cdrom_media is not None:
            return self.cdrom_media == "1" and self.size > 0
        return self.size > 0

    def refresh_size(self) -> None:
        self.size = _read_int(Path(self.sys_path) / "size") or 0

    def read_autoclear(self) -> bool:
        return bool(_read_int(Path(self.sys_path) / "loop" / "autoclear"))

    def host_use(self) -> str | None:
        """Why the host itself uses this device (mounted, swap, held), or None."""
        sys_path = Path(self.sys_path)
        nodes = {self.devname}
        dirs = [sys_path]
        try:
            for child in sys_path.iterdir():
                if (child / "partition").exists():
                    nodes.add("/dev/" + child.name)
                    dirs.append(child)
        except OSError:
            pass
        for d in dirs:
            try:
                holders = sorted(p.name for p in (d / "holders").iterdir())
            except OSError:
                holders = []
            if holders:
                return f"held by {', '.join(holders)} on the host"
        real = {os.path.realpath(n) for n in nodes}
        for table in ("/proc/self/mounts", "/proc/swaps"):
            try:
                lines = Path(table).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if not fields or not fields[0].startswith("/dev/") or \
                        os.path.realpath(fields[0]) not in real:
                    continue
                if table == "/proc/swaps":
                    return f"{fields[0]} is used as swap on the host"
                return f"{fields[0]} is mounted on {fields[1]} on the host"
        return None


def _device_properties(device: Any) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in device.properties.items()}
    except Exception:  # a device removed while being read
        return {}


# -- the duty --------------------------------------------------------------------------


class HotplugDuty:
    def __init__(self, ctx: ApplianceContext, rules: list[Rule], rules_file: Path,
                 rules_required: bool = True) -> None:
        self.driver = ctx.driver
        self.loop = ctx.driver.loop
        self.events = ctx.driver.events
        self.config = ctx.daemon.config
        self.rules = rules
        self.rules_file, self.rules_required = rules_file, rules_required
        self.started = False  # install() ran: listening to uevents (SIGHUP may start it)
        self.devices: dict[str, HostDevice] = {}  # by devname
        self.context: Any = None  # pyudev.Context
        self.monitor: Any = None  # pyudev.Monitor
        self.source = ""
        self._reserved: dict[str, set[str]] = {}  # domain uuid -> targets being attached
        self._poll_timer: Timer | None = None
        self._job_waiting: set[str] = set()  # devnames held off by their guest's job
        self._job_timer: Timer | None = None
        self.state_path = self.config.paths.run_dir / STATE_FILE
        #: devices the daemon attached: devname -> (rule, domain uuid, target)
        self._ours: dict[str, tuple[str, str, str]] = {}

    # -- set-up --------------------------------------------------------------------------

    def install(self) -> None:
        try:
            import pyudev
        except ImportError as exc:
            raise ConfigError(f"hotplug rules are configured but pyudev cannot be imported: "
                              f"{exc}") from None
        self.context = pyudev.Context()
        self.started = True
        self.events.add_listener(self.on_event)
        self.driver.disk_removed_hooks.append(self.disk_removed)
        self._open_monitor(pyudev)
        self._load_state()
        self.scan()
        # guests re-attached after a daemon restart: those the rules name, and those
        # holding devices the last daemon attached (hotplug.json), which the rules may
        # no longer name: a device of theirs that went meanwhile is detached then
        named = {r.domain for r in self.rules}
        held = {uuid for _, uuid, _ in self._ours.values()}
        for dom in list(self.driver.registry):
            if dom.active and (dom.name in named or dom.uuid in held):
                self._when_ready(dom, lambda d: self.reconcile_domain(d, fresh=True))
        log.info("hotplug: %d rule(s), %s uevents, %d matching device(s) now", len(self.rules),
                 self.source or "no", len(self.devices))

    def _open_monitor(self, pyudev: Any) -> None:
        sources = ["udev", "kernel"] if Path("/run/udev/control").exists() else ["kernel"]
        errors = []
        for source in sources:
            try:
                monitor = pyudev.Monitor.from_netlink(self.context, source=source)
                monitor.filter_by("block")
                try:
                    monitor.set_receive_buffer_size(4 * 1024 * 1024)
                except Exception:  # needs CAP_NET_ADMIN; the default still works
                    pass
                monitor.start()
            except Exception as exc:
                errors.append(f"{source}: {exc}")
                continue
            self.monitor, self.source = monitor, source
            self.loop.add_reader(monitor.fileno(), self._on_uevents)
            log.debug("hotplug: listening to %s uevents of subsystem block", source)
            return
        log.error("hotplug: cannot listen to uevents (%s): devices are attached only when "
                  "their guest starts", "; ".join(errors))

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.HOTPLUG_LIST: self._list}

    def saving(self, inner: Handler, ctx: Any, args: Any) -> Any:
        """DOMAIN_SAVE, DOMAIN_MANAGED_SAVE: refused while the guest holds host devices
        the rules attached. A restore reopens a device by its /dev name, without the
        rules (nor the checks that it is not mounted or in use): whatever device has
        the name by then, another stick or a host disk, would go to the guest."""
        dom = self.driver.registry.find(args.dom.name, args.dom.uuid)
        self.forget_released(dom)  # (e.g. a CD-ROM an admin emptied: no hook says so)
        held = sorted(f"{dev} as {target}" for dev, (_, uuid, target) in self._ours.items()
                      if uuid == dom.uuid)
        if held:
            raise OperationInvalid(
                f"cannot save the memory state of domain '{dom.name}': it holds host "
                f"devices the hotplug rules attached ({', '.join(held)}), which a restore "
                "would open again by name, whatever device has the name then; remove "
                "them from the host (or detach them) first")
        return inner(ctx, args)

    def reload(self) -> None:
        """SIGHUP: read the rules file again; a bad one is logged and changes nothing.

        New rules apply to every device as at start-up (a fresh enumeration: what matches
        now is attached). A device attached under a rule that no longer gives it to its
        guest stays attached (retired) until it is released: see :meth:`on_device`.
        """
        try:
            rules = load_rules(self.rules_file, self.rules_required)
        except ConfigError as exc:
            log.error("SIGHUP: hotplug rules not reloaded (the %d rule(s) in force are "
                      "kept): %s", len(self.rules), exc)
            return
        if rules == self.rules:
            log.info("SIGHUP: hotplug rules %s unchanged", self.rules_file)
            return
        self.rules = rules
        log.info("SIGHUP: hotplug rules reloaded from %s: %d rule(s)", self.rules_file,
                 len(rules))
        if not self.started:
            if rules:
                try:
                    self.install()
                except ConfigError as exc:  # pyudev missing
                    log.error("SIGHUP: hotplug not started: %s", exc)
            return
        for known in self.devices.values():
            known.failed = ""  # tried again under the new rules, as at start-up
            known.held_back = False
        self.scan()

    # -- state file (what we attached, for daemon restarts) ------------------------------

    def _load_state(self) -> None:
        try:
            entries = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("hotplug: ignoring %s: %s", self.state_path, exc)
            return
        dropped = False
        for entry in entries if isinstance(entries, list) else []:
            try:
                devname, rule_name = str(entry["device"]), str(entry["rule"])
                uuid, target = str(entry["uuid"]), str(entry["target"])
            except (KeyError, TypeError):
                dropped = True
                continue
            dom = self._active_by_uuid(uuid)
            if dom is None:  # (stopped, or gone, while no daemon ran)
                dropped = True
                continue
            self._ours[devname] = (rule_name, uuid, target)
            # where it is attached; the enumeration then matches it with the rules in
            # force (on_device), or it stays there retired if they no longer give it there
            rule = Rule(rule_name, (), dom.name, _attached_kind(dom, target))
            size = entry.get("size")
            # present=False until the enumeration finds it: gone while we were down; the
            # auto-clear flag as it was at attach time tells a `losetup -d` meanwhile
            self.devices[devname] = HostDevice(
                devname, f"/sys/class/block/{os.path.basename(devname)}", rule,
                present=False, autoclear=bool(entry.get("autoclear", False)),
                baseline_known=True, guest_size=size if isinstance(size, int) else None)
        if dropped:  # (else the next daemon start reads them again, for nothing)
            self._save_state()

    def _active_by_uuid(self, uuid: str) -> DomainObj | None:
        try:
            dom = self.driver.registry.by_uuid(uuid)
        except (QemudError, ValueError):
            return None
        return dom if dom.active else None

    def recorded(self) -> bool:
        """Whether the state file lists devices a daemon attached to guests running now
        (it is kept in the run directory: none after a host reboot)."""
        try:
            entries = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(entries, list) and any(
            isinstance(e, dict) and self._active_by_uuid(str(e.get("uuid", ""))) is not None
            for e in entries)

    def _save_state(self) -> None:
        entries = []
        for dev, (rule, uuid, target) in sorted(self._ours.items()):
            known = self.devices.get(dev)
            entries.append({"device": dev, "rule": rule, "uuid": uuid, "target": target,
                            "autoclear": bool(known is not None and known.autoclear),
                            "size": known.guest_size if known is not None else None})
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(entries, indent=1) + "\n")
            tmp.replace(self.state_path)
        except OSError as exc:
            log.error("hotplug: cannot write %s: %s", self.state_path, exc)

    # -- uevents -------------------------------------------------------------------------

    def _on_uevents(self) -> None:
        for _ in range(MAX_UEVENTS):
            try:
                device = self.monitor.poll(timeout=0)
            except OSError as exc:  # ENOBUFS: uevents were lost; look at sysfs again
                log.warning("hotplug: uevent receive failed (%s): rescanning", exc)
                self.scan()
                self.reconcile_all()
                return
            if device is None:
                return
            self.on_device(device.action or "change", device)

    def on_device(self, action: str, device: Any) -> None:
        """One uevent (or one device of an enumeration, ``action`` "scan")."""
        properties = _device_properties(device)
        devname = properties.get("DEVNAME") or (device.device_node or "")
        if not devname:
            return
        known = self.devices.get(devname)
        if action == "remove":
            if known is not None:
                log.info("hotplug: %s removed", devname)
                known.present = False
                known.failed = ""
                known.held_back = False
                self.reconcile(known)
            return
        rule = first_match(self.rules, properties)
        if known is not None and (known.busy or self._attached(known)):
            if rule is not None and _same_place(rule, known.rule):
                known.rule, known.retired = rule, False  # e.g. a renamed or edited rule
            else:
                if not known.retired:
                    log.info("hotplug: %s is attached to %s under rule %s, which no longer "
                             "gives it there: it stays until it is released", devname,
                             known.rule.domain, known.rule.name)
                known.retired = True
                rule = known.rule
        elif rule is None:
            if known is not None:  # it no longer matches: gone for us
                known.present = False
                self.reconcile(known)
            elif action != "scan":
                log.debug("hotplug: %s %s matches no rule: ignored", action, devname)
            return
        if known is None:
            known = self.devices[devname] = HostDevice(devname, str(device.sys_path), rule)
        known.rule = rule
        had_medium = known.has_medium
        before = (known.present, known.size, known.cdrom_media)
        known.present = True
        known.properties = properties
        known.sys_path = str(device.sys_path)
        known.cdrom_media = properties.get("ID_CDROM_MEDIA")
        known.refresh_size()
        if known.size == 0:
            known.released = False
        if known.has_medium and not had_medium and known.is_loop:
            if known.baseline_known:
                known.baseline_known = False
            else:
                known.autoclear = known.read_autoclear()
        if action != "scan":
            known.failed = ""
            # (a synthetic change, "change" written to its uevent file, as udevd's watch
            # does when a writer closes the node, QEMU's at a detach: no change)
            if action != "change" or "SYNTH_UUID" not in properties or \
                    before != (True, known.size, known.cdrom_media):
                known.held_back = False
            log.info("hotplug: %s %s (rule %s, %d sectors)", action, devname, rule.name,
                     known.size)
        self.reconcile(known)

    def scan(self) -> None:
        """Enumerate the block devices of the host now (sysfs, no uevent needed)."""
        seen: set[str] = set()
        try:
            devices = list(self.context.list_devices(subsystem="block"))
        except Exception as exc:
            log.error("hotplug: cannot enumerate block devices: %s", exc)
            return
        for device in devices:
            self.on_device("scan", device)
            seen.add(_device_properties(device).get("DEVNAME") or device.device_node or "")
        for devname, known in list(self.devices.items()):
            if devname not in seen and known.present:
                known.present = False
                self.reconcile(known)

    # -- guests --------------------------------------------------------------------------

    def on_event(self, event_id: EventId, ref: pl.DomainRef, data: tuple[object, ...]) -> None:
        if event_id != EventId.LIFECYCLE or not data:
            return
        if data[0] == LifecycleEvent.STARTED:
            dom = self._find(ref.name)
            if dom is not None and dom.name in {r.domain for r in self.rules}:
                self.reconcile_domain(dom, fresh=True)
        elif data[0] == LifecycleEvent.STOPPED:
            self._reserved.pop(_uuid_str(ref.uuid), None)
            changed = False
            for devname, (_, uuid, _) in list(self._ours.items()):
                if uuid == _uuid_str(ref.uuid):
                    del self._ours[devname]
                    changed = True
            if changed:
                self._save_state()
            for known in list(self.devices.values()):
                if known.rule.domain == ref.name:
                    known.own_detach = False  # (QEMU's unplug requests went with it)
                    self.reconcile(known)  # forgotten if gone; retired: matched afresh

    def reconcile_domain(self, dom: DomainObj, fresh: bool) -> None:
        if fresh:
            for known in self.devices.values():
                if known.rule.domain == dom.name:
                    known.failed = ""
                    known.held_back = False
            self.scan()
        for known in list(self.devices.values()):
            if known.rule.domain == dom.name:
                self.reconcile(known)

    def reconcile_all(self) -> None:
        for known in list(self.devices.values()):
            self.reconcile(known)

    def _find(self, name: str) -> DomainObj | None:
        try:
            return self.driver.registry.by_name(name)
        except QemudError:
            return None

    @staticmethod
    def _ready(dom: DomainObj | None) -> bool:
        monitor = dom.monitor if dom is not None else None
        if dom is None or not dom.active or dom.live is None or monitor is None or \
                monitor.closed or monitor.sock is None:
            return False
        ready = monitor.negotiated  # QMP negotiated (see _when_ready)
        return ready.done and ready.error is None

    def _when_ready(self, dom: DomainObj, then: Callable[[DomainObj], None],
                    waited: float = 0.0) -> None:
        """Run ``then`` once the QMP monitor of a re-attached guest is negotiated."""
        if self._ready(dom):
            then(dom)
            return
        if not dom.active or waited >= READY_TIMEOUT:
            if dom.active:
                log.warning("hotplug: monitor of %s not ready after %g s: its devices are "
                            "handled from its next uevent", dom.name, waited)
            return
        self.loop.call_later(READY_RETRY, lambda: self._when_ready(dom, then,
                                                                   waited + READY_RETRY))

    def attached_target(self, dom: DomainObj | None, known: HostDevice) -> str | None:
        """The guest target the device is attached as (from the live definition)."""
        disk = self._live_disk(dom, known)
        return None if disk is None else str(disk.target_dev)

    def _attached(self, known: HostDevice) -> bool:
        return self.attached_target(self._find(known.rule.domain), known) is not None

    @staticmethod
    def _live_disk(dom: DomainObj | None, known: HostDevice) -> Disk | None:
        """The disk (or the rule's CD-ROM) of the live definition holding the device."""
        if dom is None or not dom.active or dom.live is None:
            return None
        cdrom = known.rule.cdrom
        for disk in dom.live.disks:
            if cdrom is not None:
                if disk.target_dev == cdrom and disk.device == "cdrom" and \
                        disk.source == known.devname:
                    return disk
            elif disk.device == "disk" and disk.source == known.devname:
                return disk
        return None

    # -- reconciling: what should be vs what is ------------------------------------------

    def reconcile(self, known: HostDevice) -> None:
        if known.busy:
            return
        entry = self._ours.get(known.devname)
        if entry is not None:
            held_by = self._active_by_uuid(entry[1])
            if held_by is not None and not _holds(held_by, known.devname, entry[2]):
                # it left the guest without a hook saying so (an admin's change-media
                # eject): followed up first, so that it is not put back behind the
                # admin's back (forget_released reconciles it again, held back)
                self.forget_released(held_by)
                return
        dom = self._find(known.rule.domain)
        target = self.attached_target(dom, known)
        if known.retired and target is None:
            self._rematch(known)
            return
        if dom is not None and self._ready(dom):
            due = self._due(known, target)
            if due is not None and dom.job is not None:
                self._wait_for_job(dom, known)
            elif due == "attach":
                self._attach(dom, known)
            elif due == "detach":
                assert target is not None
                if target in self.driver.devices.unplugging(dom):
                    # a detach (ours that timed out, or an admin's) already asked the
                    # guest: a second device_del would fail or take over its wait; the
                    # release removes the disk and disk_removed follows it up
                    log.info("hotplug: %s as %s of %s is being unplugged already: it "
                             "goes when the guest releases it", known.devname, target,
                             dom.name)
                else:
                    self._detach(dom, known, target)
            elif due == "resize":
                assert target is not None
                self._follow_size(dom, known, target)
            elif target is not None and known.has_medium and known.guest_size is None:
                known.guest_size = known.size  # attached before the daemon knew sizes
        self._forget_if_done(known)
        self._arm_poll()

    @staticmethod
    def _due(known: HostDevice, target: str | None) -> str | None:
        """The change the guest's side needs: ``attach``, ``detach``, ``resize`` (an
        attached device whose size changed on the host), or None; an action that failed
        is not due again until something resets ``known.failed``."""
        if known.has_medium and target is None:
            due = "attach"
        elif target is not None and not known.has_medium:
            due = "detach"
        elif target is not None and known.guest_size is not None and \
                known.guest_size != known.size:
            due = "resize"
        else:
            return None
        if due == "attach" and known.held_back:
            return None
        return None if known.failed == due else due

    def _wait_for_job(self, dom: DomainObj, known: HostDevice) -> None:
        """Look again once the guest's job is over, instead of failing the change.

        The driver refuses a live attach or detach while a snapshot, merge or backup
        runs (it works on the disks' block graphs); a device that comes or goes
        meanwhile is not an error, its change only waits. Jobs end without an event, so
        the waiting devices are looked at every :data:`JOB_RETRY` seconds.
        """
        if known.devname not in self._job_waiting:
            log.info("hotplug: %s waits for the %s of %s to end", known.devname, dom.job,
                     dom.name)
            self._job_waiting.add(known.devname)
        if self._job_timer is None:
            self._job_timer = self.loop.call_later(JOB_RETRY, self._after_jobs)

    def _after_jobs(self) -> None:
        self._job_timer = None
        waiting, self._job_waiting = self._job_waiting, set()
        for devname in sorted(waiting, key=_natural):
            known = self.devices.get(devname)
            if known is not None:
                self.reconcile(known)

    def _rematch(self, known: HostDevice) -> None:
        """A retired device is no longer attached: the rules in force say where it goes."""
        rule = first_match(self.rules, known.properties) if known.present else None
        if rule is None:
            if self.devices.get(known.devname) is known:
                del self.devices[known.devname]
            return
        log.info("hotplug: %s released by %s: rule %s applies now", known.devname,
                 known.rule.domain, rule.name)
        known.rule, known.retired, known.failed = rule, False, ""
        known.held_back = False
        self.reconcile(known)

    def _forget_if_done(self, known: HostDevice) -> None:
        if known.present or known.busy:
            return
        if self.attached_target(self._find(known.rule.domain), known) is None and \
                self.devices.get(known.devname) is known:  # (not a newer one of the name)
            self.devices.pop(known.devname, None)

    def _attach(self, dom: DomainObj, known: HostDevice) -> None:
        cdrom = known.rule.cdrom
        reserved = self._reserved.setdefault(dom.uuid, set())
        assert dom.live is not None
        if cdrom is not None:
            target = cdrom
            holder = self._cdrom_holder(dom, cdrom, known)
            known.waiting_cdrom = holder is not None
            if holder is not None:
                self._failed(dom, known, "attach", target, f"CD-ROM {cdrom} holds the medium "
                             f"of {holder}, another drive of the rules: a CD-ROM takes one "
                             "drive at a time (this one goes in when it is emptied)")
                return
        else:
            target = next_target([str(d.target_dev) for d in dom.live.disks] + list(reserved))
        why = known.host_use()
        if why is not None:
            self._failed(dom, known, "attach", target, why)
            return
        known.guest_size = known.size  # what QEMU opens; a change meanwhile follows after
        if cdrom is not None:
            self._run(dom, known, "attach", target, lambda: self.driver.devices.change_media(
                dom, cdrom, known.devname, AFFECT_LIVE | MODIFY_FORCE))
            return
        readonly = "<readonly/>" if known.rule.readonly else ""
        xml = (f"<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
               f"<source dev='{_xml_attr(known.devname)}'/>"
               f"<target dev='{target}' bus='virtio'/>{readonly}</disk>")
        reserved.add(target)
        self._run(dom, known, "attach", target, lambda: self.driver.devices.attach(
            dom, xml, AFFECT_LIVE), release=lambda: reserved.discard(target))

    def _cdrom_holder(self, dom: DomainObj, cdrom: str, known: HostDevice) -> str | None:
        """Another drive of the rules whose medium the CD-ROM ``cdrom`` holds, or is
        being given; None if it is free for ``known``.

        A CD-ROM has one medium: putting a second drive's in would silently replace the
        first's (whose drive is still there, and still recorded as attached), and
        ejecting it when the second drive goes would leave the CD-ROM empty. A medium
        that is not a tracked drive's (an admin's ISO) is replaced, as before."""
        for disk in dom.live.disks if dom.live is not None else []:
            if disk.target_dev == cdrom and disk.device == "cdrom":
                source = disk.source
                holder = self.devices.get(source or "")
                if holder is not None and holder.busy and not holder.has_medium:
                    continue  # (being ejected: this one waits for that job, not fails)
                if source and source != known.devname and \
                        (source in self.devices or source in self._ours):
                    return str(source)
        for other in self.devices.values():
            if other is not known and other.busy and other.has_medium and \
                    other.rule.domain == dom.name and other.rule.cdrom == cdrom:
                return other.devname  # (its medium is going in)
        return None

    def _cdrom_emptied(self, dom: DomainObj, cdrom: str, devname: str) -> None:
        """The drive ``devname`` left the CD-ROM ``cdrom``: the next present drive the
        rules give to it goes in (one refused while ``devname`` held it failed, and
        would otherwise wait for its own next uevent). Not if it holds another medium
        now (an admin's)."""
        if any(disk.target_dev == cdrom and disk.source for disk in
               (dom.live.disks if dom.active and dom.live is not None else [])):
            return
        for devname_other in sorted(self.devices, key=_natural):
            other = self.devices[devname_other]
            if devname_other == devname or other.rule.domain != dom.name or \
                    other.rule.cdrom != cdrom or not other.has_medium:
                continue
            if not other.waiting_cdrom:
                continue  # (refused for another reason: not before its next uevent)
            other.waiting_cdrom = False
            if other.failed == "attach":
                other.failed = ""
            self.reconcile(other)
            if other.busy or self._attached(other):
                return

    def _detach(self, dom: DomainObj, known: HostDevice, target: str) -> None:
        known.own_detach = True
        if known.rule.cdrom is not None:
            self._run(dom, known, "detach", target, lambda: self.driver.devices.change_media(
                dom, target, "", AFFECT_LIVE | MODIFY_FORCE))  # (the host's medium went)
            return
        xml = (f"<disk type='block' device='disk'><source dev='{_xml_attr(known.devname)}'/>"
               f"<target dev='{target}' bus='virtio'/></disk>")
        self._run(dom, known, "detach", target, lambda: self.driver.devices.detach(
            dom, xml, AFFECT_LIVE))

    def _follow_size(self, dom: DomainObj, known: HostDevice, target: str) -> None:
        """An attached device whose size changed on the host: the guest gets the new one
        (:meth:`_due` said the size differs)."""
        assert known.guest_size is not None
        size = known.size
        detail = (f"{known.devname} as {target}: {known.guest_size * 512} -> {size * 512} "
                  "bytes")
        cdrom = known.rule.cdrom
        if cdrom is None:
            disk = self._live_disk(dom, known)
            if disk is not None and disk.readonly:
                self._failed(dom, known, "resize", target, "QEMU cannot resize a read-only "
                             "disk: the guest sees the new size once the device is attached "
                             "again")
                return
        monitor = dom.monitor
        assert monitor is not None  # _ready

        def start() -> Deferred | None:
            if cdrom is not None:  # a CD-ROM has no resize: the medium is inserted again
                return self.driver.devices.change_media(dom, cdrom, known.devname,
                                                        AFFECT_LIVE | MODIFY_FORCE)
            node = naming.disk_node_names(target)[1]  # the format node, as libvirt does
            return monitor.execute("block_resize", {"node-name": node, "size": size * 512})

        def resized() -> None:
            known.guest_size = size
        self._run(dom, known, "resize", target, start, ok=resized, detail=detail)

    def _run(self, dom: DomainObj, known: HostDevice, action: str, target: str,
             start: Callable[[], Deferred | None],
             release: Callable[[], None] | None = None,
             ok: Callable[[], None] | None = None, detail: str = "") -> None:
        log.info("hotplug: %s %s as %s of %s (rule %s)", action, known.devname, target,
                 dom.name, known.rule.name)
        known.busy = True

        def done(error: QemudError | None) -> None:
            known.busy = False
            if release is not None:
                release()
            if error is None:
                if ok is not None:
                    ok()
                self._succeeded(dom, known, action, target, detail)
            elif not dom.active:
                log.debug("hotplug: %s %s: %s stopped meanwhile (%s)", action, known.devname,
                          dom.name, error.message)
            elif action == "detach" and not _holds(dom, known.devname, target):
                # the guest released it meanwhile (a detach of ours that timed out, whose
                # release came while this one was asked): the disk is gone, as wanted
                log.info("hotplug: detach %s as %s of %s: released meanwhile (%s)",
                         known.devname, target, dom.name, error.message)
                self._succeeded(dom, known, action, target, detail)
            else:
                self._failed(dom, known, action, target, error.message)
            self.forget_released(dom)  # (a release while it was busy: skipped there)
            self.reconcile(known)

        try:
            deferred = start()
        except QemudError as exc:
            done(exc)
            return
        if deferred is None:
            done(None)
        else:
            deferred.add_done_callback(lambda d: done(d.error))

    def _succeeded(self, dom: DomainObj, known: HostDevice, action: str, target: str,
                   detail: str = "") -> None:
        if action == "attach":
            self._ours[known.devname] = (known.rule.name, dom.uuid, target)
        elif action == "detach":
            self._ours.pop(known.devname, None)
            known.guest_size = None
            known.own_detach = False
        self._save_state()
        self.events.appliance(dom.ref(), _EVENT_KINDS[action],
                              detail or f"{known.devname} as {target}")
        audit_log.info("appliance hotplug domain=%r uuid=%s rule=%r device=%s target=%s "
                       "action=%s result=ok", dom.name, dom.uuid, known.rule.name,
                       known.devname, target, action)
        if action == "detach" and _attached_kind(dom, target) != DISK_TARGET:
            self._cdrom_emptied(dom, target, known.devname)

    def _failed(self, dom: DomainObj, known: HostDevice, action: str, target: str,
                why: str) -> None:
        known.failed = action
        if action == "detach" and target not in self.driver.devices.unplugging(dom):
            known.own_detach = False  # (refused: no release of ours will come)
        log.error("hotplug: cannot %s %s as %s of %s (rule %s): %s", action, known.devname,
                  target, dom.name, known.rule.name, why)
        self.events.appliance(dom.ref(), "hotplug-failed",
                              f"{action} {known.devname} as {target}: {why}")
        audit_log.info("appliance hotplug domain=%r uuid=%s rule=%r device=%s target=%s "
                       "action=%s result=error %r", dom.name, dom.uuid, known.rule.name,
                       known.devname, target, action, why)

    # -- disks that left the guest another way ------------------------------------------

    def disk_removed(self, dom: DomainObj) -> None:
        """One of the driver's ``disk_removed_hooks``: a disk left a definition of
        ``dom`` (a live detach once the guest released it, a ``--config`` detach, a
        define without it). See :meth:`forget_released`."""
        self.forget_released(dom)

    def forget_released(self, dom: DomainObj) -> None:
        """Forget what the rules attached to ``dom`` that its live definition no longer
        holds, and say so (``hotplug-detached``, the audit log, ``hotplug.json``).

        The duty's own detach forgets its device when it ends (:meth:`_succeeded`);
        this covers a disk that left any other way: an admin's ``detach-disk``, or the
        late release of a detach that timed out (the driver still closes the disk and
        takes it out of the live XML then). Without it the entry would stay, refusing
        saves of the guest (:meth:`saving`) until it stops, and ``hotplug.json`` and
        ``hotplug-list`` would keep the device under its old rule and guest. A device
        whose action is in flight is left to that action's end, which calls this again.

        The device is then reconciled, on the next loop turn (this runs inside a save's
        check too, which must not start an action on the guest): a retired one is
        matched with the rules in force (it may go to another guest); one the rules
        still give to this guest is *not* attached again, which would undo the admin's
        detach, before the device really changes (``HostDevice.held_back``), the guest
        starts again or a reload changes the rules. Nor is another drive of the rules put
        into a CD-ROM an admin emptied. The late release of the duty's own detach that
        timed out holds nothing back.
        """
        if not dom.active or dom.live is None:
            return  # (a stopped guest's entries go with its STOPPED event: on_event)
        gone: list[tuple[str, str, str]] = []
        for devname, (rule_name, uuid, target) in sorted(self._ours.items()):
            known = self.devices.get(devname)
            if uuid != dom.uuid or (known is not None and known.busy) or \
                    _holds(dom, devname, target):
                continue
            gone.append((devname, rule_name, target))
        if not gone:
            return
        for devname, _, _ in gone:
            del self._ours[devname]
        self._save_state()
        for devname, rule_name, target in gone:
            log.info("hotplug: %s as %s left %s without the rules' detach (an admin's "
                     "detach, or a late release)", devname, target, dom.name)
            self.events.appliance(dom.ref(), _EVENT_KINDS["detach"], f"{devname} as {target}")
            audit_log.info("appliance hotplug domain=%r uuid=%s rule=%r device=%s "
                           "target=%s action=detach result=ok", dom.name, dom.uuid,
                           rule_name, devname, target)
            known = self.devices.get(devname)
            if known is None:
                continue
            known.guest_size = None
            if known.own_detach:  # (the duty's own, timed out: released now)
                known.own_detach = False
                if known.failed == "detach":
                    known.failed = ""
            elif known.has_medium and not known.retired:
                known.held_back = True  # (see above: the admin's detach stands)
            self.loop.call_soon(functools.partial(self._reconcile_if_current, known))

    def _reconcile_if_current(self, known: HostDevice) -> None:
        """:meth:`reconcile` ``known`` unless a newer device of its name replaced it
        meanwhile (a remove and an add in one batch of uevents)."""
        if self.devices.get(known.devname) is known:
            self.reconcile(known)

    # -- loop devices released on the host -----------------------------------------------

    def _watched_loops(self) -> list[HostDevice]:
        out = []
        for known in self.devices.values():
            if known.is_loop and known.has_medium and not known.autoclear and \
                    self.attached_target(self._find(known.rule.domain), known) is not None:
                out.append(known)
        return out

    def _arm_poll(self) -> None:
        if self._poll_timer is None and self._watched_loops():
            self._poll_timer = self.loop.call_later(LOOP_POLL, self._poll_loops)

    def _poll_loops(self) -> None:
        self._poll_timer = None
        for known in self._watched_loops():
            if known.read_autoclear():
                log.info("hotplug: %s was detached on the host (loop auto-clear set): "
                         "detaching it from the guest", known.devname)
                known.released = True
                known.failed = ""
                self.reconcile(known)
        self._arm_poll()

    # -- HOTPLUG_LIST --------------------------------------------------------------------

    def rows(self) -> list[pl.HotplugInfo]:
        out = []
        for devname in sorted(self.devices, key=_natural):
            known = self.devices[devname]
            target = self.attached_target(self._find(known.rule.domain), known)
            if target is None and not (known.present and
                                       (known.has_medium or known.rule.cdrom is not None)):
                continue
            out.append(pl.HotplugInfo(rule=known.rule.name, device=devname,
                                      domain=known.rule.domain, target=target or "",
                                      attached=target is not None))
        return out

    def _list(self, ctx: Any, args: Any) -> pl.HotplugListReply:
        return pl.HotplugListReply(self.rows())


def _same_place(rule: Rule, other: Rule) -> bool:
    """Both rules put a device in the same guest the same way (a disk, or that CD-ROM)."""
    return rule.domain == other.domain and rule.cdrom == other.cdrom


def _holds(dom: DomainObj, devname: str, target: str) -> bool:
    """Whether the live definition of ``dom`` has ``devname`` as the source of
    ``target`` (a disk, or a CD-ROM holding its medium)."""
    if not dom.active or dom.live is None:
        return False
    return any(disk.target_dev == target and disk.source == devname
               for disk in dom.live.disks)


def _attached_kind(dom: DomainObj, target: str) -> str:
    """The rule target (``virtio-disk`` or ``cdrom:<dev>``) of what ``target`` is."""
    for disk in dom.live.disks if dom.live is not None else []:
        if disk.target_dev == target and disk.device == "cdrom":
            return f"cdrom:{target}"
    return DISK_TARGET


def _uuid_str(raw: bytes) -> str:
    import uuid
    return str(uuid.UUID(bytes=bytes(raw)))


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _xml_attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def rules_path(config: Any) -> tuple[Path, bool]:
    """The rules file and whether it must exist (it must when configured explicitly)."""
    configured = config.appliance.hotplug_rules
    if configured:
        return Path(os.path.expanduser(configured)), True
    return config.paths.config_dir / "hotplug.toml", False


def install(ctx: ApplianceContext) -> dict[Procedure, Handler]:
    path, required = rules_path(ctx.daemon.config)
    duty = HotplugDuty(ctx, load_rules(path, required), path, required)
    if duty.rules:
        duty.install()
    elif duty.recorded():
        # without rules: to detach what went of what the last daemon attached, which
        # stays with its guest until released as after a reload
        try:
            duty.install()
        except ConfigError as exc:  # (pyudev gone with the rules: the daemon starts)
            log.error("hotplug: devices the last daemon attached are not followed: %s",
                      exc.message)
    else:
        log.debug("hotplug: no rules (%s): not listening to uevents (until a SIGHUP finds "
                  "some)", path)
    ctx.daemon.reload_hooks.append(duty.reload)
    # the driver's handlers are registered before the appliance's: checked first
    for procedure in (Procedure.DOMAIN_SAVE, Procedure.DOMAIN_MANAGED_SAVE):
        ctx.daemon.dispatcher.wrap(procedure, duty.saving)
    return duty.handlers()
