"""One guest as the driver tracks it: definitions, state, process, monitor, waiters."""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol.constants import DomainState, ShutoffReason
from protocol.fields import Encoded, encoded
from protocol.payloads import DomainRef, DomainSummary
from qemud.conf import DomainDef
from qemud.dispatch import Deferred

from .monitor import Monitor
from .process import QemuProcess

__all__ = ["DomainObj", "StopIntent"]


@dataclass
class StopIntent:
    """Why the driver expects QEMU to exit (set before it does)."""

    shutoff_reason: ShutoffReason
    event_detail: int  # StoppedDetail


#: the fields a listing shows of a domain (DomainSummary's, besides name and uuid)
#: (``managed_save`` is not in DomainSummary, but DOMAIN_LIST filters on it)
_LISTED_FIELDS = frozenset({"state", "reason", "id", "persistent", "autostart",
                            "managed_save"})


@dataclass
class DomainObj:
    #: bumped by every assignment to a listed field of any domain: a listing built at one
    #: generation is still true while it lasts (QemuDriver caches the last one). An
    #: assignment hook rather than invalidation at each place: the driver sets these
    #: fields in many places, and a missed one would serve a stale listing.
    listed_generation: ClassVar[int] = 0

    definition: DomainDef  # the persistent definition (or the transient one)
    persistent: bool
    autostart: bool = False
    state: DomainState = DomainState.SHUTOFF
    reason: int = int(ShutoffReason.UNKNOWN)
    id: int = -1
    live: DomainDef | None = None  # running configuration, with runtime values
    next_definition: DomainDef | None = None  # defined while running: applies at stop
    process: QemuProcess | None = None
    monitor: Monitor | None = None
    job: str | None = None  # an operation that excludes others ("start", "save", ...)
    #: time.monotonic() when ``job`` was last set from None (domjobinfo's elapsed time)
    job_started: float = 0.0
    #: the file the job writes until it is complete (a save's temp file): in the status
    #: file, so that a daemon restarted during the job can undo it
    job_file: str = ""
    #: where ``job_file`` goes: set when a save's migration has completed (the file
    #: holds the whole state; it is renamed there before QEMU is stopped), so that a
    #: daemon restarted before QEMU exited finishes the save rather than undoing it
    job_target: str = ""
    stop_intent: StopIntent | None = None
    guest_shutdown: bool = False  # the guest powered itself off (QMP SHUTDOWN guest=true)
    fake_reboot: bool = False  # reboot requested by ACPI: reset instead of stopping
    #: an admin asked for this ACPI shutdown (DOMAIN_SHUTDOWN): the guest's power-off is
    #: then not the guest's own decision, so appliance power-following does not apply
    shutdown_requested: bool = False
    #: when (time.monotonic) an admin last asked for an ACPI shutdown or reboot
    #: (DOMAIN_SHUTDOWN, DOMAIN_REBOOT): the heartbeat watchdog holds its count from
    #: then on (not kept across a daemon restart: 0)
    power_requested_at: float = 0.0
    started_at: float = 0.0
    stop_waiters: list[Deferred] = field(default_factory=list)
    device_waiters: dict[str, Deferred] = field(default_factory=dict)
    #: the ids of the disks and interfaces QEMU has an unplug request for (``device_del``
    #: answered) whose DEVICE_DELETED has not come: kept in the status file, so that a
    #: restarted daemon waits for them again (QEMU cannot list them), see
    #: ``Devices.remember_unplugs``; emptied when QEMU stops
    unplugs: list[str] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # automatic restarts (budget)
    #: a managed save image exists (DomainStore.managed_save_path; see driver/saving.py)
    managed_save: bool = False
    #: how the running QEMU's PCI devices changed since it started ("hot-plugged
    #: interface 52:54:00:...", "hot-unplugged disk vdb"): while any, a save is refused,
    #: since a restore would place the devices in other slots (Saving.note_pci_change);
    #: emptied when QEMU stops, kept in the status file across daemon restarts
    pci_changes: list[str] = field(default_factory=list)
    #: the running QEMU was started with every PCI device in the slot of its
    #: ``<address type='pci'>`` (qemud.qemu.pci): a device plugged later gets a slot of
    #: its own and a save is restored as it is. False for a QEMU an older qemud started
    #: (found again through its status record) or restored from such a version's save
    #: image: QEMU chose the slots, and ``pci_changes`` guards its saves
    pci_addressed: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "job" and value is not None and getattr(self, "job", None) is None:
            object.__setattr__(self, "job_started", time.monotonic())
        object.__setattr__(self, name, value)
        if name in _LISTED_FIELDS:
            DomainObj.listed_generation += 1

    def __post_init__(self) -> None:
        # A domain object's name and uuid never change (a define under another name is
        # refused; a rename makes a new object, Registry.rename), and reading them from
        # the XML tree on every listing costs an XPath each: keep them.
        self._name = self.definition.name
        self._uuid = self.definition.uuid
        self._uuid_bytes: bytes | None = None  # parsed on first use
        self._summary: Encoded[DomainSummary] | None = None
        self._summary_key: tuple[int, int, int, bool, bool] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def uuid_bytes(self) -> bytes:
        if self._uuid_bytes is None:
            self._uuid_bytes = uuidlib.UUID(self._uuid).bytes
        return self._uuid_bytes

    @property
    def persistent_definition(self) -> DomainDef:
        """What the next start runs from, and what ``--config`` changes: a running
        domain keeps it aside until it stops (libvirt's virDomainObjGetPersistentDef)."""
        return self.next_definition or self.definition

    @property
    def active(self) -> bool:
        return self.id != -1

    def ref(self) -> DomainRef:
        return DomainRef(self.name, self.uuid_bytes, self.id)

    def summary(self) -> Encoded[DomainSummary]:
        """This domain as a listing shows it, encoded; rebuilt only when something shown
        changed.

        A listing of 1,000 domains otherwise built 2,000 payload objects and encoded
        1,000 records per call (~0.5 ms). The attributes are compared rather than
        invalidated at every assignment because they are plain fields the driver sets in
        many places.
        """
        key = (self.state, self.reason, self.id, self.persistent, self.autostart)
        if key != self._summary_key or self._summary is None:
            self._summary = encoded(DomainSummary(self.ref(), int(self.state), self.reason,
                                                  self.persistent, self.autostart))
            self._summary_key = key
        return self._summary

    def current(self) -> DomainDef:
        """The definition that describes the guest now (live when running)."""
        return self.live if self.live is not None else self.definition
