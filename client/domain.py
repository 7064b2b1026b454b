"""The Domain object: a handle on one guest, by name and uuid, like libvirt's virDomain."""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import protocol as P
from protocol import payloads as pl
from protocol.constants import DomainState, RebootFlags, ShutdownFlags
from protocol.fields import S32, U8, Bool, Payload, Str, UUIDBytes

if TYPE_CHECKING:
    from .connection import Connection, Stream

__all__ = ["Domain", "DomainInfo", "XML_INACTIVE", "XML_SECURE", "AFFECT_LIVE",
           "AFFECT_CONFIG", "START_PAUSED", "RebootFlags", "ShutdownFlags", "MEM_MAXIMUM",
           "VCPU_MAXIMUM", "SNAPSHOT_DELETE_METADATA_ONLY", "SNAPSHOT_REVERT_RUNNING",
           "SNAPSHOT_REVERT_PAUSED", "SNAPSHOT_XML_SECURE", "DESTROY_GRACEFUL",
           "JobInfo", "ControlInfo"]

#: libvirt's VIR_DOMAIN_XML_INACTIVE
XML_INACTIVE = 2
#: libvirt's VIR_DOMAIN_XML_SECURE: include secrets (the VNC password); refused on a
#: read-only connection
XML_SECURE = 1
#: libvirt's VIR_DOMAIN_AFFECT_LIVE / _CONFIG
AFFECT_LIVE = 1
AFFECT_CONFIG = 2
#: libvirt's VIR_DOMAIN_MEM_MAXIMUM (set_memory): change the maximum, <memory>
MEM_MAXIMUM = 4
#: libvirt's VIR_DOMAIN_VCPU_MAXIMUM (set_vcpus, with AFFECT_CONFIG): change the maximum
VCPU_MAXIMUM = 4
#: libvirt's VIR_DOMAIN_START_PAUSED (create / create_xml): QEMU starts with its vCPUs
#: stopped, so the guest runs no instruction until ``resume``
START_PAUSED = 1
#: libvirt's VIR_DOMAIN_DESTROY_GRACEFUL (destroy): SIGTERM only, never SIGKILL; QEMU
#: still there after the daemon's grace period fails the call and the domain runs on
DESTROY_GRACEFUL = 1
#: libvirt's VIR_DOMAIN_CONSOLE_FORCE / _SAFE (open_console): take the console over from
#: the session holding it / only with safe handling of concurrent sessions (always so)
CONSOLE_FORCE = 1
CONSOLE_SAFE = 2
__all__ += ["CONSOLE_FORCE", "CONSOLE_SAFE"]
#: libvirt's VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY (snapshot_delete): forget the
#: snapshot, merge or remove no image
SNAPSHOT_DELETE_METADATA_ONLY = 2
#: libvirt's VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING / _PAUSED (snapshot_revert): the guest
#: runs / is paused after the revert, whatever it was before
SNAPSHOT_REVERT_RUNNING = 1
SNAPSHOT_REVERT_PAUSED = 2
#: libvirt's VIR_DOMAIN_SNAPSHOT_XML_SECURE (snapshot_xml): keep the secrets (the VNC
#: password) of the snapshot's <domain>; refused on a read-only connection
SNAPSHOT_XML_SECURE = 1
#: libvirt's VIR_DOMAIN_START_FORCE_BOOT (create): discard a managed save image and boot
START_FORCE_BOOT = 8
#: libvirt's VIR_DOMAIN_START_RESET_NVRAM (create): a UEFI domain's NVRAM file recreated
#: from its template before the start
START_RESET_NVRAM = 32
#: libvirt's VIR_DOMAIN_SAVE_BYPASS_CACHE (save, restore, managed_save): a caching hint,
#: accepted by the daemon and not needed there
SAVE_BYPASS_CACHE = 1
#: libvirt's VIR_DOMAIN_SAVE_RUNNING / _PAUSED: the state the guest comes back in at its
#: restore (save, managed_save: recorded in the image; restore: whatever it records);
#: without either, the state it had at the save
SAVE_RUNNING = 2
SAVE_PAUSED = 4
#: libvirt's VIR_DOMAIN_UNDEFINE_MANAGED_SAVE (undefine): remove a managed save image too
UNDEFINE_MANAGED_SAVE = 1
#: libvirt's VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP: the command is for the human monitor
MONITOR_COMMAND_HMP = 1
#: libvirt's VIR_DOMAIN_BLOCK_RESIZE_BYTES: block_resize's size is in bytes (else KiB)
BLOCK_RESIZE_BYTES = 1
#: libvirt's VIR_DOMAIN_DEVICE_MODIFY_FORCE (update_device)
MODIFY_FORCE = 4
__all__ += ["START_FORCE_BOOT", "START_RESET_NVRAM", "SAVE_BYPASS_CACHE", "SAVE_RUNNING",
            "SAVE_PAUSED",
            "UNDEFINE_MANAGED_SAVE",
            "MONITOR_COMMAND_HMP", "BLOCK_RESIZE_BYTES", "MODIFY_FORCE"]


@dataclass(frozen=True)
class DomainInfo:
    """libvirt's virDomainInfo: state, max memory, memory (KiB), vCPUs, CPU time (ns)."""

    state: DomainState
    max_mem_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


@dataclass(frozen=True)
class JobInfo:
    """libvirt's virDomainJobInfo and the job's operation: ``type`` a
    :class:`protocol.payloads.JobType` (NONE: no job), ``operation`` a
    :class:`protocol.payloads.JobOperation`; times in ms, data in bytes (0: not known)."""

    type: int
    operation: int
    time_elapsed_ms: int
    time_remaining_ms: int
    data_total: int
    data_processed: int
    data_remaining: int


@dataclass(frozen=True)
class ControlInfo:
    """libvirt's virDomainControlInfo: ``state`` a :class:`protocol.payloads.ControlState`,
    ``details`` a :class:`protocol.payloads.ControlErrorReason` (state ERROR), and how long
    the domain has been in a JOB or OCCUPIED state (ms)."""

    state: int
    details: int
    state_time_ms: int


class Domain:
    """A handle on one guest: its name, uuid and the id it had when the handle was made.

    Listings build thousands of these, so the fields are slots of the handle itself (no
    separate ``DomainRef``): a listing's records are decoded straight into
    :class:`ListedDomain` objects, one allocation per domain.
    """

    __slots__ = ("_conn", "name", "uuid_bytes", "id")

    name: str
    uuid_bytes: bytes
    #: the id when this handle was obtained (-1 if it was not running then)
    id: int

    def __init__(self, conn: Connection, ref: pl.DomainRef) -> None:
        self._conn = conn
        self.name = ref.name
        self.uuid_bytes = ref.uuid
        self.id = ref.id

    @property
    def ref(self) -> pl.DomainRef:
        """How this domain travels in a call."""
        return pl.DomainRef(self.name, self.uuid_bytes, self.id)

    @property
    def summary(self) -> pl.DomainSummary | None:
        """State, reason, persistence and autostart as a listing reported them (None for
        a handle from a lookup or a define)."""
        return None

    def __repr__(self) -> str:
        return f"<Domain {self.name} {self.uuid}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other.uuid_bytes == self.uuid_bytes

    def __hash__(self) -> int:
        return hash(self.uuid_bytes)

    @property
    def uuid(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid_bytes))

    def refresh(self) -> Domain:
        """A fresh handle (current id)."""
        return self._conn.lookup_by_uuid(self.uuid_bytes)

    # -- information ---------------------------------------------------------------------

    def info(self) -> DomainInfo:
        r = self._conn._call(P.Procedure.DOMAIN_GET_INFO, pl.DomainArgs(self.ref),
                             pl.DomainInfoReply)
        return DomainInfo(DomainState(r.state), r.max_mem_kib, r.memory_kib, r.vcpus,
                          r.cpu_time_ns)

    def state(self) -> tuple[DomainState, int]:
        """(state, reason) with libvirt's numbers."""
        r = self._conn._call(P.Procedure.DOMAIN_GET_STATE, pl.DomainFlagsArgs(self.ref),
                             pl.DomainStateReply)
        return DomainState(r.state), r.reason

    def is_active(self) -> bool:
        return self.state()[0] not in (DomainState.SHUTOFF, DomainState.NOSTATE)

    def xml(self, flags: int = 0) -> str:
        return self._conn._call(P.Procedure.DOMAIN_GET_XML, pl.DomainFlagsArgs(self.ref, flags),
                                pl.StringReply).value

    def autostart(self) -> bool:
        return self._conn._call(P.Procedure.DOMAIN_GET_AUTOSTART, pl.DomainArgs(self.ref),
                                pl.BoolReply).value

    def set_autostart(self, enabled: bool) -> None:
        self._conn._call(P.Procedure.DOMAIN_SET_AUTOSTART,
                         pl.AutostartArgs(self.ref, enabled), P.Empty)

    # -- lifecycle -----------------------------------------------------------------------

    def create(self, flags: int = 0) -> Domain:
        """Start the domain (``START_PAUSED``: with its vCPUs stopped); returns a handle
        with its new id."""
        self.id = self._conn._call(P.Procedure.DOMAIN_CREATE,
                                   pl.DomainFlagsArgs(self.ref, flags), pl.DomainReply).dom.id
        return self

    start = create

    def shutdown(self, timeout: float | None = None, flags: int = 0) -> None:
        """Ask the guest to power off; with ``timeout``, destroy it if it is not off by
        then (the call waits for that).

        ``flags`` picks how, as libvirt's ``virDomainShutdownFlags`` does (ShutdownFlags:
        0 or ACPI_POWER_BTN press the ACPI power button; GUEST_AGENT alone fails, as qemud
        has no guest agent; other modes are refused, see docs/CONFORMANCE.md).
        """
        ms = 0
        if timeout is not None:
            flags |= ShutdownFlags.DESTROY_ON_TIMEOUT
            ms = int(timeout * 1000)
        self._conn._call(P.Procedure.DOMAIN_SHUTDOWN, pl.ShutdownArgs(self.ref, flags, ms),
                         P.Empty, timeout=None)

    def reboot(self, flags: int = 0) -> None:
        """Reboot the guest; ``flags`` (RebootFlags) picks how, as for :meth:`shutdown`."""
        self._conn._call(P.Procedure.DOMAIN_REBOOT, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def destroy(self, flags: int = 0) -> None:
        """Stop the domain now: SIGTERM, then SIGKILL if QEMU has not exited within the
        daemon's grace period; with DESTROY_GRACEFUL, SIGTERM only (a QEMU that does not
        exit fails the call with libvirt's "Failed to terminate process PID with SIGTERM:
        Device or resource busy", and the domain stays running)."""
        self._conn._call(P.Procedure.DOMAIN_DESTROY, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def suspend(self) -> None:
        self._conn._call(P.Procedure.DOMAIN_SUSPEND, pl.DomainArgs(self.ref), P.Empty)

    def resume(self) -> None:
        self._conn._call(P.Procedure.DOMAIN_RESUME, pl.DomainArgs(self.ref), P.Empty)

    def undefine(self, flags: int = 0) -> None:
        self._conn._call(P.Procedure.DOMAIN_UNDEFINE, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def rename(self, new_name: str, flags: int = 0) -> None:
        """libvirt's ``rename``: a shut-off persistent domain gets ``new_name`` (same
        uuid); this handle takes the new name, as libvirt's virDomain does."""
        reply = self._conn._call(P.Procedure.DOMAIN_RENAME,
                                 pl.RenameArgs(self.ref, new_name, flags), pl.DomainReply)
        self.name = reply.dom.name

    def save(self, path: str, flags: int = 0) -> None:
        """Save the guest's state to ``path`` and stop it; a restore brings it back
        running or paused as it was (SAVE_RUNNING / SAVE_PAUSED: as they say). A
        relative ``path`` is made absolute here, against this process's working
        directory, as libvirt's virDomainSave does: the daemon, which writes the file,
        has another one."""
        self._conn._call(P.Procedure.DOMAIN_SAVE,
                         pl.SaveArgs(self.ref, os.path.abspath(path), flags), P.Empty)

    # -- managed save --------------------------------------------------------------------

    def managed_save(self, flags: int = 0) -> None:
        """libvirt's ``managedSave``: save the state to the daemon's image for this domain
        and stop it; the next :meth:`create` resumes it (SAVE_RUNNING / SAVE_PAUSED pick
        the state it comes back in)."""
        self._conn._call(P.Procedure.DOMAIN_MANAGED_SAVE, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def has_managed_save(self) -> bool:
        return self._conn._call(P.Procedure.DOMAIN_HAS_MANAGED_SAVE,
                                pl.DomainFlagsArgs(self.ref), pl.BoolReply).value

    def managed_save_remove(self) -> None:
        self._conn._call(P.Procedure.DOMAIN_MANAGED_SAVE_REMOVE, pl.DomainFlagsArgs(self.ref),
                         P.Empty)

    def managed_save_xml(self, flags: int = 0) -> str:
        """The domain XML in the managed save image (XML_SECURE: with the VNC password)."""
        return self._conn._call(P.Procedure.DOMAIN_MANAGED_SAVE_GET_XML,
                                pl.DomainFlagsArgs(self.ref, flags), pl.StringReply).value

    # -- devices -------------------------------------------------------------------------

    def attach_device(self, xml: str, flags: int = 0) -> None:
        self._conn._call(P.Procedure.DOMAIN_ATTACH_DEVICE, pl.DeviceArgs(self.ref, xml, flags),
                         P.Empty)

    def detach_device(self, xml: str, flags: int = 0) -> None:
        self._conn._call(P.Procedure.DOMAIN_DETACH_DEVICE, pl.DeviceArgs(self.ref, xml, flags),
                         P.Empty)

    def update_device(self, xml: str, flags: int = 0) -> None:
        """libvirt's ``updateDeviceFlags``: change a device in place: a CD-ROM's or
        floppy's medium, an interface's ``<link state>`` (found by its MAC)."""
        self._conn._call(P.Procedure.DOMAIN_UPDATE_DEVICE, pl.DeviceArgs(self.ref, xml, flags),
                         P.Empty)

    def change_media(self, target: str, source: str | None, flags: int = 0) -> None:
        """Insert ``source`` into CD-ROM ``target``; None or "" ejects."""
        self._conn._call(P.Procedure.DOMAIN_CHANGE_MEDIA,
                         pl.ChangeMediaArgs(self.ref, target, source or "", flags), P.Empty)

    def set_metadata(self, kind: int, text: str, flags: int = 0, key: str = "",
                     uri: str = "") -> None:
        """virDomainSetMetadata: ``kind`` is a MetadataType; "" removes it; ``flags``
        AFFECT_LIVE / AFFECT_CONFIG (0: live if running, else config). ELEMENT sets the
        ``<metadata>`` child of namespace ``uri`` from the XML ``text``, whose elements
        go into ``uri`` under the prefix ``key``."""
        self._conn._call(P.Procedure.DOMAIN_SET_METADATA,
                         pl.SetMetadataArgs(self.ref, kind, text, key, uri, flags), P.Empty)

    def metadata(self, kind: int, flags: int = 0, uri: str = "") -> str:
        """virDomainGetMetadata: the domain's description, title, or (ELEMENT) the XML
        of its ``<metadata>`` child of namespace ``uri``; NoMetadataError when it has
        none."""
        return self._conn._call(P.Procedure.DOMAIN_GET_METADATA,
                                pl.GetMetadataArgs(self.ref, kind, uri, flags),
                                pl.StringReply).value

    def open_console(self, device: str = "", flags: int = 0) -> Stream:
        """The serial console ``device`` ("" = the first) as a stream; one session per
        domain: CONSOLE_FORCE takes it over from the session holding it."""
        return self._conn.open_stream(P.Procedure.DOMAIN_OPEN_CONSOLE,
                                      pl.ConsoleArgs(self.ref, device, flags))

    # -- snapshots -----------------------------------------------------------------------

    def snapshot_create(self, name: str = "", description: str = "", flags: int = 0) -> str:
        return self._conn._call(P.Procedure.DOMAIN_SNAPSHOT_CREATE, pl.SnapshotCreateArgs(
            self.ref, name, description, flags), pl.StringReply).value

    def snapshots(self) -> list[pl.SnapshotInfo]:
        return self._conn._call(P.Procedure.DOMAIN_SNAPSHOT_LIST, pl.DomainArgs(self.ref),
                                pl.SnapshotListReply).snapshots

    def snapshot_revert(self, name: str, flags: int = 0) -> None:
        """Go back to snapshot ``name``; ``flags`` SNAPSHOT_REVERT_RUNNING or _PAUSED set
        the guest's state afterwards (0: the state it had before)."""
        self._conn._call(P.Procedure.DOMAIN_SNAPSHOT_REVERT,
                         pl.SnapshotArgs(self.ref, name, flags), P.Empty)

    def snapshot_xml(self, name: str, flags: int = 0) -> str:
        """libvirt's ``<domainsnapshot>`` XML of snapshot ``name`` (virDomainSnapshotGetXMLDesc);
        ``flags`` SNAPSHOT_XML_SECURE keeps the VNC password in its ``<domain>``."""
        return self._conn._call(P.Procedure.DOMAIN_SNAPSHOT_GET_XML,
                                pl.SnapshotArgs(self.ref, name, flags), pl.StringReply).value

    def snapshot_delete(self, name: str, flags: int = 0) -> None:
        """Delete snapshot ``name`` (merging its data as libvirt does); with
        SNAPSHOT_DELETE_METADATA_ONLY only its metadata goes, every image stays."""
        self._conn._call(P.Procedure.DOMAIN_SNAPSHOT_DELETE,
                         pl.SnapshotArgs(self.ref, name, flags), P.Empty)

    def backup(self, target: str, disk: str = "", flags: int = 0) -> None:
        """Copy a point-in-time image of ``disk`` (every disk if "") to ``target`` (a file,
        or a directory for several disks); returns when done, progress comes as
        ``backup-progress`` appliance events."""
        self._conn._call(P.Procedure.DOMAIN_BACKUP,
                         pl.BackupArgs(self.ref, target, disk, flags), P.Empty)

    # -- memory and vCPUs ----------------------------------------------------------------

    def set_memory(self, kib: int, flags: int = AFFECT_LIVE) -> None:
        """libvirt's ``setMemoryFlags``: the balloon target (AFFECT_LIVE: needs a virtio
        balloon in the guest) and/or ``<currentMemory>`` (AFFECT_CONFIG), in KiB; 0 is
        the current state. The default is ``setMemory``'s (live). With ``MEM_MAXIMUM``
        it changes ``<memory>``, of the persistent definition only."""
        self._conn._call(P.Procedure.DOMAIN_SET_MEMORY,
                         pl.MemoryArgs(self.ref, kib, flags), P.Empty)

    def set_max_memory(self, kib: int) -> None:
        """libvirt's ``setMaxMemory``: ``<memory>`` of the current state's definition
        (refused for a running domain: use ``set_memory(kib, AFFECT_CONFIG | MEM_MAXIMUM)``)."""
        self.set_memory(kib, MEM_MAXIMUM)

    def memory_stats(self) -> dict[str, int]:
        """libvirt's ``memoryStats`` of a running domain: {"actual": KiB, "rss": KiB, ...}
        with virsh's names, in the daemon's order; tags this client does not know are
        left out."""
        r = self._conn._call(P.Procedure.DOMAIN_MEMORY_STATS, pl.DomainFlagsArgs(self.ref),
                             pl.MemoryStatsReply)
        return {pl.MEMORY_STAT_TAGS[s.tag]: s.value for s in r.stats
                if s.tag in pl.MEMORY_STAT_TAGS}

    def set_vcpus(self, count: int, flags: int = AFFECT_LIVE) -> None:
        """libvirt's ``setVcpusFlags``: the vCPU count (AFFECT_CONFIG: ``<vcpu current>``;
        AFFECT_LIVE: vCPUs plugged into or out of the running guest); with
        ``VCPU_MAXIMUM`` and AFFECT_CONFIG the maximum. The default is ``setVcpus``'s
        (live)."""
        self._conn._call(P.Procedure.DOMAIN_SET_VCPUS, pl.VcpusArgs(self.ref, count, flags),
                         P.Empty)

    def vcpus(self) -> list[pl.VcpuInfo]:
        """libvirt's ``vcpus`` of a running domain: per vCPU its number, state, CPU time
        (ns), the host CPU it ran on last and its affinity (libvirt's cpumap bytes)."""
        return self._conn._call(P.Procedure.DOMAIN_GET_VCPUS, pl.DomainFlagsArgs(self.ref),
                                pl.VcpuInfoReply).vcpus

    # -- CPU pinning ---------------------------------------------------------------------

    def pin_vcpu(self, vcpu: int, cpumap: bytes, flags: int = AFFECT_LIVE) -> None:
        """libvirt's ``pinVcpuFlags``: vCPU ``vcpu`` may run on the host CPUs of
        ``cpumap`` (libvirt's layout: bit ``n % 8`` of byte ``n // 8`` is CPU ``n``);
        AFFECT_LIVE sets the running thread, AFFECT_CONFIG the persistent definition's
        ``<vcpupin>``; 0 is the current state. The default is ``pinVcpu``'s (live)."""
        self._conn._call(P.Procedure.DOMAIN_PIN_VCPU,
                         pl.PinVcpuArgs(self.ref, vcpu, cpumap, flags), P.Empty)

    def vcpu_pin_info(self, flags: int = 0) -> list[bytes]:
        """libvirt's ``vcpuPinInfo``: per vCPU up to the maximum, the cpumap the live
        (AFFECT_LIVE) or persistent (AFFECT_CONFIG) definition gives it; 0 is the
        current state."""
        reply = self._conn._call(P.Procedure.DOMAIN_GET_VCPU_PIN_INFO,
                                 pl.DomainFlagsArgs(self.ref, flags), pl.VcpuPinInfoReply)
        return [v.cpumap for v in sorted(reply.vcpus, key=lambda v: v.number)]

    def pin_emulator(self, cpumap: bytes, flags: int = 0) -> None:
        """libvirt's ``pinEmulator``: the host CPUs of QEMU's threads that are not vCPUs
        (``<emulatorpin>``); flags as :meth:`pin_vcpu`'s, 0 the current state."""
        self._conn._call(P.Procedure.DOMAIN_PIN_EMULATOR,
                         pl.PinEmulatorArgs(self.ref, cpumap, flags), P.Empty)

    def emulator_pin_info(self, flags: int = 0) -> bytes:
        """libvirt's ``emulatorPinInfo``: the emulator threads' cpumap in the live
        (AFFECT_LIVE) or persistent (AFFECT_CONFIG) definition; 0 the current state."""
        return self._conn._call(P.Procedure.DOMAIN_GET_EMULATOR_PIN_INFO,
                                pl.DomainFlagsArgs(self.ref, flags),
                                pl.EmulatorPinInfoReply).cpumap

    # -- block devices -------------------------------------------------------------------

    def block_info(self, disk: str) -> pl.BlockInfoReply:
        """libvirt's ``blockInfo``: capacity, allocation and physical size (bytes) of the
        disk whose target dev (``"vda"``) or source path is ``disk``."""
        return self._conn._call(P.Procedure.DOMAIN_GET_BLOCK_INFO,
                                pl.BlockInfoArgs(self.ref, disk), pl.BlockInfoReply)

    def block_resize(self, disk: str, size: int, flags: int = 0) -> None:
        """libvirt's ``blockResize``: the running domain's disk ``disk`` (target dev or
        source path) gets the new size ``size``, in KiB, or bytes with
        BLOCK_RESIZE_BYTES."""
        self._conn._call(P.Procedure.DOMAIN_BLOCK_RESIZE,
                         pl.BlockResizeArgs(self.ref, disk, size, flags), P.Empty)

    def screenshot(self, out: BinaryIO, screen: int = 0, flags: int = 0,
                   idle_timeout: float = 60.0) -> str:
        """libvirt's ``screenshot``: what the running guest's screen ``screen`` shows,
        written to ``out`` as an image; returns its MIME type (QEMU's PPM,
        ``image/x-portable-pixmap``)."""
        stream = self._conn.open_stream(P.Procedure.DOMAIN_SCREENSHOT,
                                        pl.ScreenshotArgs(self.ref, screen, flags))
        mime = stream.reply.value if isinstance(stream.reply, pl.StringReply) else ""
        stream.read_into(out, idle_timeout, "screenshot")
        return mime

    # -- the reset button, NMI, QEMU monitor ---------------------------------------------

    def reset(self, flags: int = 0) -> None:
        """libvirt's ``reset``: reset the guest at once (the reset button), without
        asking it."""
        self._conn._call(P.Procedure.DOMAIN_RESET, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def inject_nmi(self, flags: int = 0) -> None:
        """libvirt's ``injectNMI``: send the guest a non-maskable interrupt."""
        self._conn._call(P.Procedure.DOMAIN_INJECT_NMI, pl.DomainFlagsArgs(self.ref, flags),
                         P.Empty)

    def qemu_monitor_command(self, cmd: str, flags: int = 0) -> str:
        """libvirt_qemu's ``qemuMonitorCommand``: ``cmd`` (QMP JSON, or HMP text with
        MONITOR_COMMAND_HMP) passed to the guest's QEMU; QEMU's reply as JSON text (its
        error replies too), or the human monitor's output."""
        return self._conn._call(P.Procedure.DOMAIN_QEMU_MONITOR_COMMAND,
                                pl.MonitorCommandArgs(self.ref, cmd, flags),
                                pl.StringReply).value

    # -- jobs ----------------------------------------------------------------------------

    def job_info(self) -> JobInfo:
        """libvirt's ``jobInfo``: the domain's background job (backup, save, snapshot...),
        its operation, elapsed time and the data it has processed where that is known."""
        r = self._conn._call(P.Procedure.DOMAIN_GET_JOB_INFO, pl.DomainFlagsArgs(self.ref),
                             pl.JobInfoReply)
        return JobInfo(r.type, r.operation, r.time_elapsed_ms, r.time_remaining_ms,
                       r.data_total, r.data_processed, r.data_remaining)

    def abort_job(self) -> None:
        """libvirt's ``abortJob``: cancel the domain's backup or save (the call that started
        it then fails as cancelled); no job, or one that cannot be aborted, raises
        OperationInvalid. Refused on a read-only connection."""
        self._conn._call(P.Procedure.DOMAIN_ABORT_JOB, pl.DomainFlagsArgs(self.ref), P.Empty)

    def control_info(self) -> ControlInfo:
        """libvirt's ``controlInfo``: whether the daemon can control the domain now (ok,
        busy with a job, or its QEMU monitor failed)."""
        r = self._conn._call(P.Procedure.DOMAIN_GET_CONTROL_INFO,
                             pl.DomainFlagsArgs(self.ref), pl.ControlInfoReply)
        return ControlInfo(r.state, r.details, r.state_time_ms)

    # -- stats ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int | float | str]:
        return self._conn.domain_stats([self])[0][1]


@dataclass(eq=False, repr=False)
class ListedDomain(Domain):
    """A handle from a listing, carrying what the listing said about the domain.

    The fields are DomainSummary's wire layout flattened (DomainRef's name, uuid and id,
    then state, reason, persistent, autostart), so the connection decodes DOMAIN_LIST
    replies straight into these objects (``reply_types`` of protocol.Connection, see
    :class:`DomainListing`): one object per domain instead of a DomainRef, a
    DomainSummary and a handle, about half of a listing's decoding time in the client.
    """

    __slots__ = ("listed_state", "listed_reason", "listed_persistent", "listed_autostart")

    name: Str
    uuid_bytes: UUIDBytes
    id: S32
    listed_state: U8
    listed_reason: U8
    listed_persistent: Bool
    listed_autostart: Bool

    @property
    def summary(self) -> pl.DomainSummary:
        return pl.DomainSummary(self.ref, self.listed_state, self.listed_reason,
                                self.listed_persistent, self.listed_autostart)

    @staticmethod
    def bind(domains: list[ListedDomain], conn: Connection) -> list[Domain]:
        """The decoded handles, tied to ``conn`` (decoding cannot set ``_conn``)."""
        for dom in domains:
            dom._conn = conn
        return list[Domain](domains)


@dataclass(frozen=True, slots=True)
class DomainListing(Payload):
    """pl.ListDomainsReply as this client decodes it: the same bytes (a test compares
    the layouts), into :class:`ListedDomain` handles."""

    domains: list[ListedDomain]
