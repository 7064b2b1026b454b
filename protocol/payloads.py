"""Payload dataclasses: the typed body of each procedure's call, reply or event.

One class per distinct shape; procedures share shapes where the data is the same
(e.g. every "act on one domain" call takes :class:`DomainFlagsArgs`). Field order is
wire order; new fields are only ever appended (docs/PROTOCOL.md, "Evolution").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .fields import F64, S32, S64, U8, U16, U32, U64, Blob, Bool, Empty, Payload, Str, UUIDBytes

__all__ = [
    "Empty", "ErrorPayload", "HelloArgs", "HelloReply", "VersionReply", "StringReply",
    "NodeInfoReply", "DomainRef", "DomainArgs", "DomainFlagsArgs", "NameArgs", "UUIDArgs",
    "IdArgs", "XMLArgs", "XMLFlagsArgs", "DomainReply", "ListDomainsArgs", "DomainSummary",
    "ListDomainsReply", "ShutdownArgs", "DomainInfoReply", "DomainStateReply",
    "AutostartArgs", "BoolReply", "DeviceArgs", "ChangeMediaArgs", "SaveArgs", "RestoreArgs",
    "SnapshotCreateArgs", "SnapshotArgs", "SnapshotInfo", "SnapshotListReply", "ConsoleArgs",
    "TypedParam", "StatsRecord", "StatsArgs", "StatsReply", "NodeStatsReply", "EventRegisterArgs",
    "CallbackReply", "CallbackArgs", "LifecycleEventMsg", "RebootEventMsg",
    "WatchdogEventMsg", "ApplianceEventMsg", "MetadataChangeEventMsg", "ClientInfo",
    "ClientListReply", "ClientIdArgs",
    "StreamChunk", "RenderArgs", "BackupArgs", "ImportArgs", "DeployArgs", "UpdateArgs",
    "ApplianceInfo", "ApplianceListReply", "HotplugInfo", "HotplugListReply",
    "MemoryArgs", "MemoryStat", "MemoryStatsReply", "VcpusArgs",
    "VcpuInfo", "VcpuInfoReply", "BlockInfoArgs", "BlockInfoReply",
    "JobInfoReply", "ControlInfoReply", "SetMetadataArgs", "GetMetadataArgs",
    "RenameArgs", "MonitorCommandArgs", "BlockResizeArgs", "ScreenshotArgs",
    "PinVcpuArgs", "VcpuPinInfo", "VcpuPinInfoReply", "PinEmulatorArgs",
    "EmulatorPinInfoReply",
    "NodeGetStatsArgs", "XMLToNativeArgs",
]


@dataclass(frozen=True, slots=True)
class ErrorPayload(Payload):
    """The body of every reply (or stream frame) whose status is ERROR."""

    code: U32
    domain: U32
    level: U16
    message: Str


# --- connection -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HelloArgs(Payload):
    """Versions the client speaks, and who it is (free text, for logs)."""

    versions: list[U16]
    client_name: Str = ""
    flags: U32 = 0  # HelloFlags: READONLY = 1 asks for a read-only session on any socket


@dataclass(frozen=True, slots=True)
class HelloReply(Payload):
    version: U16
    server_name: Str
    readonly: Bool
    keepalive_interval: U32  # seconds; 0 = the server never pings


@dataclass(frozen=True, slots=True)
class VersionReply(Payload):
    """Daemon and hypervisor versions, libvirt-encoded (major*1e6 + minor*1e3 + micro)."""

    daemon_version: U64
    hypervisor_version: U64
    daemon_version_string: Str
    hypervisor: Str


@dataclass(frozen=True, slots=True)
class StringReply(Payload):
    value: Str


@dataclass(frozen=True, slots=True)
class NodeInfoReply(Payload):
    """libvirt's virNodeInfo, with fixed widths."""

    model: Str
    memory_kib: U64
    cpus: U32
    mhz: U32
    nodes: U32
    sockets: U32
    cores: U32
    threads: U32


# --- domains ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DomainRef(Payload):
    """How a domain travels: name, uuid, and id (-1 when not running)."""

    name: Str
    uuid: UUIDBytes
    id: S32


@dataclass(frozen=True, slots=True)
class DomainArgs(Payload):
    dom: DomainRef


@dataclass(frozen=True, slots=True)
class DomainFlagsArgs(Payload):
    dom: DomainRef
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class NameArgs(Payload):
    name: Str


@dataclass(frozen=True, slots=True)
class UUIDArgs(Payload):
    uuid: UUIDBytes


@dataclass(frozen=True, slots=True)
class IdArgs(Payload):
    id: S32


@dataclass(frozen=True, slots=True)
class XMLArgs(Payload):
    xml: Str


@dataclass(frozen=True, slots=True)
class XMLFlagsArgs(Payload):
    xml: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class DomainReply(Payload):
    dom: DomainRef


@dataclass(frozen=True, slots=True)
class ListDomainsArgs(Payload):
    flags: U32 = 0  # ListFlags; 0 = all


@dataclass(frozen=True, slots=True)
class DomainSummary(Payload):
    dom: DomainRef
    state: U8
    reason: U8
    persistent: Bool
    autostart: Bool


@dataclass(frozen=True, slots=True)
class ListDomainsReply(Payload):
    domains: list[DomainSummary]


@dataclass(frozen=True, slots=True)
class ShutdownArgs(Payload):
    dom: DomainRef
    flags: U32 = 0
    timeout_ms: U32 = 0  # with ShutdownFlags.DESTROY_ON_TIMEOUT


@dataclass(frozen=True, slots=True)
class DomainInfoReply(Payload):
    """libvirt's virDomainInfo."""

    state: U8
    max_mem_kib: U64
    memory_kib: U64
    vcpus: U16
    cpu_time_ns: U64


@dataclass(frozen=True, slots=True)
class DomainStateReply(Payload):
    state: U8
    reason: U8


@dataclass(frozen=True, slots=True)
class AutostartArgs(Payload):
    dom: DomainRef
    autostart: Bool


@dataclass(frozen=True, slots=True)
class BoolReply(Payload):
    value: Bool


@dataclass(frozen=True, slots=True)
class DeviceArgs(Payload):
    dom: DomainRef
    xml: Str
    flags: U32 = 0  # libvirt's VIR_DOMAIN_AFFECT_* (LIVE=1, CONFIG=2); 0 = current


@dataclass(frozen=True, slots=True)
class ChangeMediaArgs(Payload):
    dom: DomainRef
    target: Str  # disk target dev, e.g. "sda"
    source: Str  # new medium path; "" ejects
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class SaveArgs(Payload):
    dom: DomainRef
    path: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class RestoreArgs(Payload):
    path: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class SnapshotCreateArgs(Payload):
    dom: DomainRef
    name: Str
    description: Str = ""
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class SnapshotArgs(Payload):
    dom: DomainRef
    name: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class SnapshotInfo(Payload):
    name: Str
    description: Str
    creation_time: U64  # unix seconds
    state: U8  # DomainState at creation
    parent: Str  # "" when none
    current: Bool


@dataclass(frozen=True, slots=True)
class SnapshotListReply(Payload):
    snapshots: list[SnapshotInfo]


@dataclass(frozen=True, slots=True)
class ConsoleArgs(Payload):
    dom: DomainRef
    device: Str = ""  # "" = first serial/console
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class TypedParam(Payload):
    """One stats field. ``kind`` (TypedParamKind) says which value member is meaningful."""

    name: Str
    kind: U8
    int_value: S64 = 0
    float_value: F64 = 0.0
    str_value: Str = ""


@dataclass(frozen=True, slots=True)
class StatsRecord(Payload):
    dom: DomainRef
    params: list[TypedParam]


@dataclass(frozen=True, slots=True)
class StatsArgs(Payload):
    domains: list[DomainRef] = field(default_factory=list)  # empty = all
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class StatsReply(Payload):
    records: list[StatsRecord]


@dataclass(frozen=True, slots=True)
class NodeStatsReply(Payload):
    params: list[TypedParam]


# --- events -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EventRegisterArgs(Payload):
    event_id: U32  # EventId
    uuid: Blob = b""  # 16 bytes to follow one domain, empty for all


@dataclass(frozen=True, slots=True)
class CallbackReply(Payload):
    callback_id: U32


@dataclass(frozen=True, slots=True)
class CallbackArgs(Payload):
    callback_id: U32


@dataclass(frozen=True, slots=True)
class LifecycleEventMsg(Payload):
    callback_id: U32
    dom: DomainRef
    event: U32  # LifecycleEvent
    detail: U32  # the matching *Detail enum


@dataclass(frozen=True, slots=True)
class RebootEventMsg(Payload):
    callback_id: U32
    dom: DomainRef


@dataclass(frozen=True, slots=True)
class WatchdogEventMsg(Payload):
    callback_id: U32
    dom: DomainRef
    action: U32  # libvirt's VIR_DOMAIN_EVENT_WATCHDOG_*


@dataclass(frozen=True, slots=True)
class MetadataChangeEventMsg(Payload):
    """libvirt's METADATA_CHANGE event: a DOMAIN_SET_METADATA of ``type``
    (:class:`~protocol.constants.MetadataType`) succeeded; ``nsuri`` is the namespace of
    an ELEMENT change, "" (libvirt's NULL) for the title and the description."""

    callback_id: U32
    dom: DomainRef
    type: U32
    nsuri: Str


@dataclass(frozen=True, slots=True)
class ApplianceEventMsg(Payload):
    """qemud's appliance duties (power-cycle, hotplug, heartbeat, update) report here."""

    callback_id: U32
    dom: DomainRef
    kind: Str  # e.g. "heartbeat-missed", "power-action", "hotplug-attached"
    detail: Str  # human-readable detail


# --- admin ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClientInfo(Payload):
    id: U64
    transport: Str  # "unix", "unix-ro", "tls"
    identity: Str  # "pid=123 uid=0" or the certificate DN
    readonly: Bool
    connected_since: U64  # unix seconds
    calls: U64


@dataclass(frozen=True, slots=True)
class ClientListReply(Payload):
    clients: list[ClientInfo]


@dataclass(frozen=True, slots=True)
class ClientIdArgs(Payload):
    id: U64


# --- appliance layer ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RenderArgs(Payload):
    """An appliance template (domain XML with a qemud formula section) to render."""

    template: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class BackupArgs(Payload):
    dom: DomainRef
    target: Str  # file (one disk) or directory (several) the backup is written to
    disk: Str = ""  # target dev; "" = every disk
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class ImportArgs(Payload):
    path: Str  # appliance tarball on the daemon's host
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class DeployArgs(Payload):
    name: Str
    version: Str  # "" = newest
    vm_name: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class UpdateArgs(Payload):
    dom: DomainRef
    version: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class ApplianceInfo(Payload):
    name: Str
    version: Str
    arch: Str
    path: Str
    vms: list[Str]


@dataclass(frozen=True, slots=True)
class ApplianceListReply(Payload):
    appliances: list[ApplianceInfo]


@dataclass(frozen=True, slots=True)
class HotplugInfo(Payload):
    """A host device a udev rule attached (or will attach) to a guest."""

    rule: Str
    device: Str  # host node, e.g. /dev/loop3
    domain: Str
    target: Str  # guest target dev, "" when not attached
    attached: Bool


@dataclass(frozen=True, slots=True)
class HotplugListReply(Payload):
    devices: list[HotplugInfo]


@dataclass(frozen=True, slots=True)
class StreamChunk(Payload):
    """Not encoded with construct: STREAM frames carry raw bytes (documented here for the table)."""

    data: Blob


# --- domains: memory and vCPUs (setmem, setmaxmem, dommemstat, setvcpus, vcpuinfo) --------

@dataclass(frozen=True, slots=True)
class MemoryArgs(Payload):
    """libvirt's virDomainSetMemoryFlags: a size in KiB and flags (VIR_DOMAIN_AFFECT_LIVE 1,
    VIR_DOMAIN_AFFECT_CONFIG 2, VIR_DOMAIN_MEM_MAXIMUM 4; 0 = the current state)."""

    dom: DomainRef
    memory_kib: U64
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class MemoryStat(Payload):
    """One of libvirt's virDomainMemoryStatStruct: a tag (:data:`MEMORY_STAT_TAGS`) and its
    value (KiB for sizes, a count for faults, seconds since the epoch for last_update)."""

    tag: U32
    value: U64


@dataclass(frozen=True, slots=True)
class MemoryStatsReply(Payload):
    """In the order the daemon collected them, as virsh prints them."""

    stats: list[MemoryStat]


#: libvirt's VIR_DOMAIN_MEMORY_STAT_* tags (MemoryStat.tag), with virsh dommemstat's
#: names for them. Receivers tolerate tags they do not know. (Not in ``__all__``, which
#: lists the payload classes.)
MEMORY_STAT_TAGS: dict[int, str] = {
    0: "swap_in", 1: "swap_out", 2: "major_fault", 3: "minor_fault", 4: "unused",
    5: "available", 6: "actual", 7: "rss", 8: "usable", 9: "last_update",
    10: "disk_caches", 11: "hugetlb_pgalloc", 12: "hugetlb_pgfail",
}


@dataclass(frozen=True, slots=True)
class VcpusArgs(Payload):
    """libvirt's virDomainSetVcpusFlags: a vCPU count and flags (VIR_DOMAIN_AFFECT_LIVE 1,
    VIR_DOMAIN_AFFECT_CONFIG 2, VIR_DOMAIN_VCPU_MAXIMUM 4, VIR_DOMAIN_VCPU_GUEST 8;
    0 = the current state)."""

    dom: DomainRef
    count: U32
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class VcpuInfo(Payload):
    """libvirt's virVcpuInfo plus that vCPU's cpumap.

    ``state`` is libvirt's virVcpuState (0 offline, 1 running, 2 blocked); ``cpu`` the
    host CPU the vCPU thread ran on last (-1 unknown); ``cpumap`` the host CPUs it may
    run on, libvirt's layout (bit ``n % 8`` of byte ``n // 8`` is host CPU ``n``).
    """

    number: U32
    state: S32
    cpu_time_ns: U64
    cpu: S32
    cpumap: Blob


@dataclass(frozen=True, slots=True)
class VcpuInfoReply(Payload):
    vcpus: list[VcpuInfo]


# --- domains: block devices (domblkinfo) ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class BlockInfoArgs(Payload):
    """libvirt's virDomainGetBlockInfo: the disk by target dev ("vda") or source path."""

    dom: DomainRef
    disk: Str
    flags: U32 = 0  # none defined (libvirt's neither)


@dataclass(frozen=True, slots=True)
class BlockInfoReply(Payload):
    """libvirt's virDomainBlockInfo, in bytes: ``capacity`` the size the guest sees,
    ``allocation`` the host storage the image occupies, ``physical`` the size of its
    container (the file's size)."""

    capacity: U64
    allocation: U64
    physical: U64


# --- jobs --- (domjobinfo, domjobabort, domcontrol) -----------------------------------------

@dataclass(frozen=True, slots=True)
class JobInfoReply(Payload):
    """libvirt's virDomainJobInfo (times in ms, data in bytes; 0 = not known) and the
    job's virDomainJobOperation, which libvirt returns among virDomainGetJobStats'
    typed parameters: ``type`` is :class:`JobType`, ``operation`` :class:`JobOperation`."""

    type: S32
    operation: S32
    time_elapsed_ms: U64
    time_remaining_ms: U64
    data_total: U64
    data_processed: U64
    data_remaining: U64


@dataclass(frozen=True, slots=True)
class ControlInfoReply(Payload):
    """libvirt's virDomainControlInfo: ``state`` :class:`ControlState`, ``details`` a
    :class:`ControlErrorReason` when the state is ERROR, ``state_time_ms`` how long the
    domain has been in a JOB or OCCUPIED state."""

    state: U32
    details: U32
    state_time_ms: U64


class JobType(enum.IntEnum):
    """libvirt's virDomainJobType (JobInfoReply.type)."""

    NONE = 0
    BOUNDED = 1
    UNBOUNDED = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


class JobOperation(enum.IntEnum):
    """libvirt's virDomainJobOperation (JobInfoReply.operation)."""

    UNKNOWN = 0
    START = 1
    SAVE = 2
    RESTORE = 3
    MIGRATION_IN = 4
    MIGRATION_OUT = 5
    SNAPSHOT = 6
    SNAPSHOT_REVERT = 7
    DUMP = 8
    BACKUP = 9
    SNAPSHOT_DELETE = 10


class ControlState(enum.IntEnum):
    """libvirt's virDomainControlState (ControlInfoReply.state)."""

    OK = 0
    JOB = 1
    OCCUPIED = 2
    ERROR = 3


class ControlErrorReason(enum.IntEnum):
    """libvirt's virDomainControlErrorReason (ControlInfoReply.details)."""

    NONE = 0
    UNKNOWN = 1
    MONITOR = 2
    INTERNAL = 3


# --- metadata --- (desc) ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SetMetadataArgs(Payload):
    """virDomainSetMetadata: ``type`` is :class:`~protocol.constants.MetadataType`;
    ``metadata`` "" removes it; ``key`` (the namespace prefix) and ``uri`` are for
    ELEMENT, "" (libvirt's NULL) otherwise."""

    dom: DomainRef
    type: U32
    metadata: Str = ""
    key: Str = ""
    uri: Str = ""
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class GetMetadataArgs(Payload):
    """virDomainGetMetadata: ``type`` is :class:`~protocol.constants.MetadataType`;
    ``uri`` names the namespace of ELEMENT, "" otherwise."""

    dom: DomainRef
    type: U32
    uri: Str = ""
    flags: U32 = 0


# --- rename --- (domrename) -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RenameArgs(Payload):
    """virDomainRename: the domain's new name (its uuid stays)."""

    dom: DomainRef
    new_name: Str
    flags: U32 = 0


# --- reset, NMI, QEMU monitor, block resize ---------------------------------------------

@dataclass(frozen=True, slots=True)
class MonitorCommandArgs(Payload):
    """virDomainQemuMonitorCommand: ``cmd`` is QMP JSON, or HMP text with flags bit 1."""

    dom: DomainRef
    cmd: Str
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class BlockResizeArgs(Payload):
    """virDomainBlockResize: the disk by target dev ("vda") or source path; ``size`` in
    KiB, or bytes with VIR_DOMAIN_BLOCK_RESIZE_BYTES (1)."""

    dom: DomainRef
    disk: Str
    size: U64
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class ScreenshotArgs(Payload):
    """virDomainScreenshot: ``screen`` is the head (0: the first)."""

    dom: DomainRef
    screen: U32 = 0
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class NodeGetStatsArgs(Payload):
    """virNodeGetCPUStats / virNodeGetMemoryStats: which host CPU or NUMA cell (``number``;
    -1, VIR_NODE_CPU_STATS_ALL_CPUS / VIR_NODE_MEMORY_STATS_ALL_CELLS, for the whole
    host)."""

    number: S32 = -1
    flags: U32 = 0


# --- domxml-to-native -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class XMLToNativeArgs(Payload):
    """virConnectDomainXMLToNative: ``format`` names the native format ("qemu-argv", the
    only one); ``xml`` is domain XML, defined or not."""

    format: Str
    xml: Str
    flags: U32 = 0


# --- CPU pinning (vcpupin, emulatorpin) -------------------------------------------------
# A cpumap is libvirt's: bit ``n % 8`` of byte ``n // 8`` is host CPU ``n``.

@dataclass(frozen=True, slots=True)
class PinVcpuArgs(Payload):
    """virDomainPinVcpuFlags: vCPU ``vcpu`` may run on the host CPUs of ``cpumap``."""

    dom: DomainRef
    vcpu: U32
    cpumap: Blob
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class VcpuPinInfo(Payload):
    """One vCPU's pinning (virDomainGetVcpuPinInfo's cpumaps, one per vCPU)."""

    number: U32
    cpumap: Blob


@dataclass(frozen=True, slots=True)
class VcpuPinInfoReply(Payload):
    vcpus: list[VcpuPinInfo]


@dataclass(frozen=True, slots=True)
class PinEmulatorArgs(Payload):
    """virDomainPinEmulator: QEMU's non-vCPU threads may run on the CPUs of ``cpumap``."""

    dom: DomainRef
    cpumap: Blob
    flags: U32 = 0


@dataclass(frozen=True, slots=True)
class EmulatorPinInfoReply(Payload):
    cpumap: Blob
