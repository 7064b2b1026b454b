"""The procedure table: number, payload types and access class of every procedure.

This table is the single source of truth for what a read-only connection may call:
the daemon refuses any procedure whose entry says ``mutates`` or ``admin`` on a read-only
connection, and nothing else in the daemon decides that. docs/PROTOCOL.md is generated
from the same information (``python -m protocol.doc``) and a test keeps them in step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import payloads as p
from .fields import Empty, Payload

__all__ = ["Procedure", "ProcedureSpec", "PROCEDURES", "spec_for"]


class Procedure(enum.IntEnum):
    """Procedure numbers. Numbers are never reused; new ones are appended."""

    # connection
    HELLO = 1
    CLOSE = 2
    GET_VERSION = 3
    GET_HOSTNAME = 4
    GET_URI = 5
    NODE_INFO = 6
    CAPABILITIES = 7
    # domains: lookup and listing
    DOMAIN_LOOKUP_BY_NAME = 20
    DOMAIN_LOOKUP_BY_UUID = 21
    DOMAIN_LOOKUP_BY_ID = 22
    DOMAIN_LIST = 23
    # domains: definition
    DOMAIN_DEFINE_XML = 30
    DOMAIN_UNDEFINE = 31
    DOMAIN_CREATE_XML = 32
    DOMAIN_GET_XML = 33
    DOMAIN_SET_AUTOSTART = 34
    DOMAIN_GET_AUTOSTART = 35
    # domains: lifecycle
    DOMAIN_CREATE = 40
    DOMAIN_SHUTDOWN = 41
    DOMAIN_REBOOT = 42
    DOMAIN_DESTROY = 43
    DOMAIN_SUSPEND = 44
    DOMAIN_RESUME = 45
    DOMAIN_GET_INFO = 46
    DOMAIN_GET_STATE = 47
    DOMAIN_SAVE = 48
    DOMAIN_RESTORE = 49
    # domains: devices
    DOMAIN_ATTACH_DEVICE = 60
    DOMAIN_DETACH_DEVICE = 61
    DOMAIN_CHANGE_MEDIA = 62
    DOMAIN_OPEN_CONSOLE = 63
    # snapshots
    DOMAIN_SNAPSHOT_CREATE = 70
    DOMAIN_SNAPSHOT_LIST = 71
    DOMAIN_SNAPSHOT_REVERT = 72
    DOMAIN_SNAPSHOT_DELETE = 73
    # stats
    DOMAIN_STATS = 80
    NODE_STATS = 81
    # events
    EVENT_REGISTER = 90
    EVENT_DEREGISTER = 91
    EVENT_LIFECYCLE = 100
    EVENT_REBOOT = 101
    EVENT_WATCHDOG = 102
    EVENT_APPLIANCE = 103
    EVENT_METADATA_CHANGE = 104
    # admin
    ADMIN_CLIENT_LIST = 120
    ADMIN_CLIENT_DISCONNECT = 121
    # appliance layer
    HOST_INSPECT = 130
    APPLIANCE_RENDER = 131
    DOMAIN_BACKUP = 132
    APPLIANCE_IMPORT = 133
    APPLIANCE_DEPLOY = 134
    APPLIANCE_UPDATE = 135
    APPLIANCE_RESET = 136
    APPLIANCE_LIST = 137
    HOTPLUG_LIST = 138
    SUPPORT_BUNDLE = 139
    # domains: memory and vCPUs
    DOMAIN_SET_MEMORY = 140
    DOMAIN_MEMORY_STATS = 141
    DOMAIN_SET_VCPUS = 142
    DOMAIN_GET_VCPUS = 143
    # domains: block devices
    DOMAIN_GET_BLOCK_INFO = 144
    # snapshots (continued)
    DOMAIN_SNAPSHOT_GET_XML = 145
    # domains: jobs (domjobinfo, domjobabort, domcontrol)
    DOMAIN_GET_JOB_INFO = 146
    DOMAIN_ABORT_JOB = 147
    DOMAIN_GET_CONTROL_INFO = 148
    # domains: managed save (managedsave, managedsave-remove, managedsave-dumpxml)
    DOMAIN_MANAGED_SAVE = 149
    DOMAIN_HAS_MANAGED_SAVE = 150
    DOMAIN_MANAGED_SAVE_REMOVE = 151
    DOMAIN_MANAGED_SAVE_GET_XML = 152
    # domains: title and description (desc)
    DOMAIN_SET_METADATA = 153
    DOMAIN_GET_METADATA = 154
    # domains: rename (domrename)
    DOMAIN_RENAME = 155
    # domains: the reset button, NMI, QEMU monitor pass-through, block resize
    DOMAIN_RESET = 156
    DOMAIN_INJECT_NMI = 157
    DOMAIN_QEMU_MONITOR_COMMAND = 158
    DOMAIN_BLOCK_RESIZE = 159
    # domains: change a device in place (update-device, domif-setlink)
    DOMAIN_UPDATE_DEVICE = 160
    # domains: what the guest's screen shows (screenshot)
    DOMAIN_SCREENSHOT = 161
    # domains: CPU pinning (vcpupin, emulatorpin)
    DOMAIN_PIN_VCPU = 170
    DOMAIN_GET_VCPU_PIN_INFO = 171
    DOMAIN_PIN_EMULATOR = 172
    DOMAIN_GET_EMULATOR_PIN_INFO = 173
    # host: per-CPU and per-cell stats (nodecpustats --cpu, nodememstats --cell)
    NODE_GET_CPU_STATS = 180
    NODE_GET_MEMORY_STATS = 181
    # connection: the QEMU command line of domain XML (domxml-to-native)
    CONNECT_DOMAIN_XML_TO_NATIVE = 182


class Kind(enum.Enum):
    CALL = "call"  # client calls, server replies
    EVENT = "event"  # server sends, nobody replies


@dataclass(frozen=True, slots=True)
class ProcedureSpec:
    """One row of the table."""

    procedure: Procedure
    args: type[Payload]
    reply: type[Payload]
    mutates: bool
    admin: bool = False
    kind: Kind = Kind.CALL
    since: int = 1  # protocol version that introduced it
    doc: str = ""

    @property
    def readonly_ok(self) -> bool:
        """May a read-only connection call this?"""
        return not (self.mutates or self.admin)


def _call(proc: Procedure, args: type[Payload], reply: type[Payload], *, mutates: bool,
          admin: bool = False, doc: str = "") -> ProcedureSpec:
    return ProcedureSpec(proc, args, reply, mutates, admin, Kind.CALL, 1, doc)


def _event(proc: Procedure, body: type[Payload], doc: str) -> ProcedureSpec:
    return ProcedureSpec(proc, body, Empty, False, False, Kind.EVENT, 1, doc)


P = Procedure
_TABLE = [
    _call(P.HELLO, p.HelloArgs, p.HelloReply, mutates=False,
          doc="Version negotiation; must be the first call on a connection."),
    _call(P.CLOSE, Empty, Empty, mutates=False,
          doc="Polite goodbye; the server replies then closes."),
    _call(P.GET_VERSION, Empty, p.VersionReply, mutates=False, doc="Daemon and QEMU versions."),
    _call(P.GET_HOSTNAME, Empty, p.StringReply, mutates=False, doc="The host's name."),
    _call(P.GET_URI, Empty, p.StringReply, mutates=False,
          doc="The canonical URI of this daemon."),
    _call(P.NODE_INFO, Empty, p.NodeInfoReply, mutates=False, doc="Host CPU and memory."),
    _call(P.CAPABILITIES, Empty, p.StringReply, mutates=False,
          doc="Capabilities XML in libvirt's shape."),
    _call(P.DOMAIN_LOOKUP_BY_NAME, p.NameArgs, p.DomainReply, mutates=False, doc=""),
    _call(P.DOMAIN_LOOKUP_BY_UUID, p.UUIDArgs, p.DomainReply, mutates=False, doc=""),
    _call(P.DOMAIN_LOOKUP_BY_ID, p.IdArgs, p.DomainReply, mutates=False, doc=""),
    _call(P.DOMAIN_LIST, p.ListDomainsArgs, p.ListDomainsReply, mutates=False,
          doc="All domains matching ListFlags (0 = all; MANAGEDSAVE / NO_MANAGEDSAVE "
              "filter on a managed save image), with state and reason."),
    _call(P.DOMAIN_DEFINE_XML, p.XMLFlagsArgs, p.DomainReply, mutates=True,
          doc="Define (or update) a persistent domain; flags: 1 (VIR_DOMAIN_DEFINE_"
              "VALIDATE) is what every define does, other bits are INVALID_ARG."),
    _call(P.DOMAIN_UNDEFINE, p.DomainFlagsArgs, p.Empty, mutates=True,
          doc="Remove a persistent definition; a running domain becomes transient. "
              "UndefineFlags: MANAGED_SAVE (1) removes a managed save image too (without "
              "it an image makes the call OPERATION_INVALID), SNAPSHOTS_METADATA (2) the "
              "snapshots' metadata (without it an inactive domain's snapshots make the "
              "call OPERATION_INVALID), NVRAM (4) removes a UEFI domain's NVRAM file, "
              "KEEP_NVRAM (8) keeps it (with neither, an existing NVRAM file makes the call "
              "OPERATION_INVALID)."),
    _call(P.DOMAIN_CREATE_XML, p.XMLFlagsArgs, p.DomainReply, mutates=True,
          doc="Create and start a transient domain; flags: 1 (START_PAUSED), 16 "
              "(VIR_DOMAIN_START_VALIDATE, what every create does); other bits INVALID_ARG."),
    _call(P.DOMAIN_GET_XML, p.DomainFlagsArgs, p.StringReply, mutates=False,
          doc="Domain XML; flags bit 2 (VIR_DOMAIN_XML_INACTIVE) asks for the persistent one, "
              "bit 1 (VIR_DOMAIN_XML_SECURE) for secrets (the VNC password), refused on a "
              "read-only connection; bit 8 (VIR_DOMAIN_XML_MIGRATABLE) leaves out a lone "
              "default USB controller and pci-root, as libvirt's migratable XML does. "
              "Other bits: INVALID_ARG."),
    _call(P.DOMAIN_SET_AUTOSTART, p.AutostartArgs, Empty, mutates=True, doc=""),
    _call(P.DOMAIN_GET_AUTOSTART, p.DomainArgs, p.BoolReply, mutates=False, doc=""),
    _call(P.DOMAIN_CREATE, p.DomainFlagsArgs, p.DomainReply, mutates=True,
          doc="Start a defined domain; the reply carries its new id. Flags: 1 "
              "(START_PAUSED); 8 (VIR_DOMAIN_START_FORCE_BOOT) discards a managed save "
              "image, which the start otherwise restores (and then removes); 32 "
              "(VIR_DOMAIN_START_RESET_NVRAM) recreates a UEFI domain's NVRAM file from its "
              "template first. Other bits (AUTODESTROY 2, BYPASS_CACHE 4: not offered): "
              "INVALID_ARG."),
    _call(P.DOMAIN_SHUTDOWN, p.ShutdownArgs, Empty, mutates=True,
          doc="ACPI power button (ShutdownFlags: the ACPI mode; AGENT alone is "
              "ARGUMENT_UNSUPPORTED, other modes INVALID_ARG); optional destroy after "
              "timeout_ms."),
    _call(P.DOMAIN_REBOOT, p.DomainFlagsArgs, Empty, mutates=True,
          doc="ACPI power button, then a reset instead of the power-off (RebootFlags: "
              "as for DOMAIN_SHUTDOWN)."),
    _call(P.DOMAIN_DESTROY, p.DomainFlagsArgs, Empty, mutates=True, doc="Hard stop."),
    _call(P.DOMAIN_SUSPEND, p.DomainArgs, Empty, mutates=True, doc="Pause vCPUs."),
    _call(P.DOMAIN_RESUME, p.DomainArgs, Empty, mutates=True, doc="Resume vCPUs."),
    _call(P.DOMAIN_GET_INFO, p.DomainArgs, p.DomainInfoReply, mutates=False, doc=""),
    _call(P.DOMAIN_GET_STATE, p.DomainFlagsArgs, p.DomainStateReply, mutates=False, doc=""),
    _call(P.DOMAIN_SAVE, p.SaveArgs, Empty, mutates=True,
          doc="virDomainSaveFlags: save a running or paused domain's memory state to a "
              "file and stop it (reason saved). The file records whether the guest ran, "
              "so a restore brings a paused one back paused. Flags: 2 "
              "(VIR_DOMAIN_SAVE_RUNNING) / 4 (_PAUSED) pick the state it comes back in "
              "(recorded in the file), 1 (_BYPASS_CACHE) is accepted; 2 with 4, other "
              "bits: INVALID_ARG. A file another save in progress writes: "
              "OPERATION_INVALID."),
    _call(P.DOMAIN_RESTORE, p.RestoreArgs, p.DomainReply, mutates=True,
          doc="virDomainRestoreFlags: start a domain from a saved state file, running or "
              "paused as the file records (a file of a qemud that did not record it: "
              "running). Flags: 2 (VIR_DOMAIN_SAVE_RUNNING) / 4 (_PAUSED) override it, 1 "
              "(_BYPASS_CACHE) is accepted; 2 with 4, other bits: INVALID_ARG."),
    _call(P.DOMAIN_ATTACH_DEVICE, p.DeviceArgs, Empty, mutates=True,
          doc="virDomainAttachDeviceFlags. Flags: 1 (VIR_DOMAIN_AFFECT_LIVE), 2 (_CONFIG), "
              "neither: the domain's current state; other bits: INVALID_ARG."),
    _call(P.DOMAIN_DETACH_DEVICE, p.DeviceArgs, Empty, mutates=True,
          doc="virDomainDetachDeviceFlags. Flags as DOMAIN_ATTACH_DEVICE."),
    _call(P.DOMAIN_CHANGE_MEDIA, p.ChangeMediaArgs, Empty, mutates=True,
          doc="Insert (source set) or eject (source empty) CD-ROM media. Flags as "
              "DOMAIN_ATTACH_DEVICE, and 4 (VIR_DOMAIN_DEVICE_MODIFY_FORCE: the tray is "
              "opened also when the guest locked it; without it such a change fails)."),
    _call(P.DOMAIN_OPEN_CONSOLE, p.ConsoleArgs, Empty, mutates=True,
          doc="Open the serial console as a stream (STREAM frames with this call's serial)."),
    _call(P.DOMAIN_SNAPSHOT_CREATE, p.SnapshotCreateArgs, p.StringReply, mutates=True, doc=""),
    _call(P.DOMAIN_SNAPSHOT_LIST, p.DomainArgs, p.SnapshotListReply, mutates=False, doc=""),
    _call(P.DOMAIN_SNAPSHOT_REVERT, p.SnapshotArgs, Empty, mutates=True,
          doc="Flags bit 1 (VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING) / bit 2 (_PAUSED): the "
              "guest runs / is paused afterwards (both: INVALID_ARG); none: as it was "
              "before. Other bits: INVALID_ARG."),
    _call(P.DOMAIN_SNAPSHOT_DELETE, p.SnapshotArgs, Empty, mutates=True,
          doc="Flags bit 2 (VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY): forget the "
              "snapshot, merge or remove no image. Other bits: INVALID_ARG."),
    _call(P.DOMAIN_STATS, p.StatsArgs, p.StatsReply, mutates=False,
          doc="Per-domain stats (cpu, memory, block, net) as typed params."),
    _call(P.NODE_STATS, Empty, p.NodeStatsReply, mutates=False, doc="Host CPU and memory stats."),
    _call(P.EVENT_REGISTER, p.EventRegisterArgs, p.CallbackReply, mutates=False,
          doc="Subscribe to an EventId, for one domain or all."),
    _call(P.EVENT_DEREGISTER, p.CallbackArgs, Empty, mutates=False, doc=""),
    _event(P.EVENT_LIFECYCLE, p.LifecycleEventMsg, "Lifecycle change (libvirt kinds/details)."),
    _event(P.EVENT_REBOOT, p.RebootEventMsg, "The guest rebooted."),
    _event(P.EVENT_WATCHDOG, p.WatchdogEventMsg, "A watchdog device fired."),
    _event(P.EVENT_APPLIANCE, p.ApplianceEventMsg, "An appliance duty acted."),
    _event(P.EVENT_METADATA_CHANGE, p.MetadataChangeEventMsg,
           "A DOMAIN_SET_METADATA succeeded (libvirt's METADATA_CHANGE): its type and "
           "namespace uri (\"\" for the title and the description)."),
    _call(P.ADMIN_CLIENT_LIST, Empty, p.ClientListReply, mutates=False, admin=True,
          doc="Connected clients (privileged connections only)."),
    _call(P.ADMIN_CLIENT_DISCONNECT, p.ClientIdArgs, Empty, mutates=True, admin=True, doc=""),
    _call(P.HOST_INSPECT, Empty, p.StringReply, mutates=False,
          doc="What the appliance layer sees of the host (JSON: memory, cores, NICs, DMI)."),
    _call(P.APPLIANCE_RENDER, p.RenderArgs, p.StringReply, mutates=False,
          doc="Render an appliance template against the host; returns domain XML."),
    _call(P.DOMAIN_BACKUP, p.BackupArgs, Empty, mutates=True,
          doc="Copy a consistent point-in-time image of the disk(s); progress as events."),
    _call(P.APPLIANCE_IMPORT, p.ImportArgs, p.StringReply, mutates=True,
          doc="Check an appliance tarball against the host and store it; returns NAME:VERSION."),
    _call(P.APPLIANCE_DEPLOY, p.DeployArgs, p.DomainReply, mutates=True,
          doc="Create a VM from a stored appliance (overlays on read-only originals)."),
    _call(P.APPLIANCE_UPDATE, p.UpdateArgs, Empty, mutates=True,
          doc="A/B update of a VM's system disk to another appliance version."),
    _call(P.APPLIANCE_RESET, p.DomainFlagsArgs, Empty, mutates=True,
          doc="Factory reset: discard the system overlay, keep data disks."),
    _call(P.APPLIANCE_LIST, Empty, p.ApplianceListReply, mutates=False,
          doc="Stored appliances and the VMs deployed from them."),
    _call(P.HOTPLUG_LIST, Empty, p.HotplugListReply, mutates=False,
          doc="Host devices matched by udev hotplug rules and where they are attached."),
    _call(P.SUPPORT_BUNDLE, Empty, Empty, mutates=False, admin=True,
          doc="A tar.gz of logs, XML, capabilities and versions, sent as STREAM frames."),
    _call(P.DOMAIN_SET_MEMORY, p.MemoryArgs, Empty, mutates=True,
          doc="virDomainSetMemoryFlags: the balloon target (live, through a virtio balloon) "
              "and/or <currentMemory> (config); with MEM_MAXIMUM (4) <memory> (config only)."),
    _call(P.DOMAIN_MEMORY_STATS, p.DomainFlagsArgs, p.MemoryStatsReply, mutates=False,
          doc="virDomainMemoryStats of a running domain: balloon stats (when it has a "
              "balloon) and the QEMU process's RSS, libvirt's tags."),
    _call(P.DOMAIN_SET_VCPUS, p.VcpusArgs, Empty, mutates=True,
          doc="virDomainSetVcpusFlags: <vcpu current> (config), with VCPU_MAXIMUM (4) "
              "<vcpu> (config only); live: vCPUs plugged (device_add of the next sockets) "
              "or unplugged (only those plugged live; refused under TCG)."),
    _call(P.DOMAIN_GET_VCPUS, p.DomainFlagsArgs, p.VcpuInfoReply, mutates=False,
          doc="virDomainGetVcpus of a running domain: per vCPU its state, CPU time, host "
              "CPU and affinity."),
    _call(P.DOMAIN_GET_BLOCK_INFO, p.BlockInfoArgs, p.BlockInfoReply, mutates=False,
          doc="virDomainGetBlockInfo: capacity (what the guest sees), allocation (host "
              "bytes in use) and physical size (the file's size) of one disk, named by "
              "target dev or source path (else INVALID_ARG 'invalid path ... not "
              "assigned to domain'; an empty cdrom: INVALID_ARG). Shut off: read from "
              "the image (the qcow2 header's virtual size, stat). Running: QEMU's "
              "virtual-size; allocation as libvirt's, QEMU's actual-size for a qcow2 file, "
              "else its highest written offset. Flags must be 0."),
    _call(P.DOMAIN_SNAPSHOT_GET_XML, p.SnapshotArgs, p.StringReply, mutates=False,
          doc="virDomainSnapshotGetXMLDesc: libvirt's <domainsnapshot> XML of one snapshot; "
              "flags bit 1 (VIR_DOMAIN_SNAPSHOT_XML_SECURE) keeps secrets (the VNC "
              "password) in its <domain>, refused on a read-only connection. Other bits: "
              "INVALID_ARG."),
    _call(P.DOMAIN_GET_JOB_INFO, p.DomainFlagsArgs, p.JobInfoReply, mutates=False,
          doc="virDomainGetJobInfo plus the job's virDomainJobOperation: the domain's "
              "background job (backup, save, snapshot...), UNBOUNDED with its elapsed "
              "time and, where QEMU reports it, data processed/remaining/total; type "
              "NONE when there is none. Shut off with no job: OPERATION_INVALID. Flags "
              "must be 0."),
    _call(P.DOMAIN_ABORT_JOB, p.DomainFlagsArgs, Empty, mutates=True,
          doc="virDomainAbortJob: cancel the domain's backup (live or offline) or save; "
              "the job's own call then fails as cancelled. No job, or one that cannot be "
              "aborted (start, restore, snapshot operations): OPERATION_INVALID. Flags "
              "must be 0."),
    _call(P.DOMAIN_GET_CONTROL_INFO, p.DomainFlagsArgs, p.ControlInfoReply, mutates=False,
          doc="virDomainGetControlInfo: ok, job (a background job, with its time), "
              "occupied (a monitor command in flight, with its time) or error (details: "
              "monitor failure) of a running domain. Flags must be 0."),
    _call(P.DOMAIN_MANAGED_SAVE, p.DomainFlagsArgs, Empty, mutates=True,
          doc="virDomainManagedSave: save a running or paused persistent domain's memory "
              "state to the daemon's image for it (<state_dir>/save/NAME.save) and shut "
              "it off (reason saved); DOMAIN_CREATE then restores it. Flags: 2 "
              "(VIR_DOMAIN_SAVE_RUNNING) / 4 (_PAUSED) pick the state it comes back in "
              "(else the state it had), 1 (_BYPASS_CACHE) is accepted. A transient "
              "domain: OPERATION_INVALID."),
    _call(P.DOMAIN_HAS_MANAGED_SAVE, p.DomainFlagsArgs, p.BoolReply, mutates=False,
          doc="virDomainHasManagedSaveImage: whether the domain has a managed save image. "
              "Flags must be 0."),
    _call(P.DOMAIN_MANAGED_SAVE_REMOVE, p.DomainFlagsArgs, Empty, mutates=True,
          doc="virDomainManagedSaveRemove: delete the domain's managed save image (none: "
              "SYSTEM_ERROR, as libvirt's unlink fails). Flags must be 0."),
    _call(P.DOMAIN_MANAGED_SAVE_GET_XML, p.DomainFlagsArgs, p.StringReply, mutates=False,
          doc="virDomainManagedSaveGetXMLDesc: the domain XML stored in the managed save "
              "image (none: OPERATION_INVALID); flags bit 1 (VIR_DOMAIN_SAVE_IMAGE_XML_"
              "SECURE) keeps secrets (the VNC password), refused on a read-only "
              "connection."),
    _call(P.DOMAIN_SET_METADATA, p.SetMetadataArgs, Empty, mutates=True,
          doc="virDomainSetMetadata: sets the live and/or persistent <description> "
              "(DESCRIPTION, 0), <title> (TITLE, 1), or the <metadata> child in "
              "namespace uri (ELEMENT, 2: the XML given, its elements without a "
              "namespace put in uri with prefix key); AFFECT flags as setmem's (0: live "
              "if running, else config); an empty text removes it. A title with a "
              "newline, a uri (or key) with TITLE/DESCRIPTION, ELEMENT without uri, or "
              "without key when setting: INVALID_ARG; bad XML: XML_ERROR. qemud's "
              "appliance namespace changes only in the persistent definition, checked "
              "as at define. Emits METADATA_CHANGE."),
    _call(P.DOMAIN_GET_METADATA, p.GetMetadataArgs, p.StringReply, mutates=False,
          doc="virDomainGetMetadata: DESCRIPTION, TITLE, or the ELEMENT in namespace "
              "uri (its XML, without that namespace, as libvirt gives it) of the live "
              "(AFFECT_LIVE) or persistent (AFFECT_CONFIG) definition; not set: "
              "NO_DOMAIN_METADATA ('Requested metadata element is not present')."),
    _call(P.DOMAIN_RENAME, p.RenameArgs, p.DomainReply, mutates=True,
          doc="virDomainRename: give a persistent, shut-off domain a new name (same "
              "uuid); replies with its new reference. Its definition, autostart flag, "
              "guest log and appliance state follow the name; lifecycle events UNDEFINED "
              "(RENAMED) for the old name, DEFINED (RENAMED) for the new. Running or "
              "transient, a managed save image, snapshots, or a name taken: "
              "OPERATION_INVALID; a name with '/': XML_ERROR. Flags must be 0."),
    _call(P.DOMAIN_RESET, p.DomainFlagsArgs, Empty, mutates=True,
          doc="virDomainReset: QEMU's system_reset (the reset button), without asking "
              "the guest; emits REBOOT. A guest with on_reboot 'destroy' or 'preserve' "
              "is shut down instead (QEMU turns the reset into a shutdown), as in "
              "libvirt. A crashed guest kept by on_crash 'preserve' "
              "becomes paused (crashed). Not running or busy with a job: "
              "OPERATION_INVALID. Flags must be 0."),
    _call(P.DOMAIN_INJECT_NMI, p.DomainFlagsArgs, Empty, mutates=True,
          doc="virDomainInjectNMI: a non-maskable interrupt to the guest (QMP "
              "inject-nmi). Not running or busy with a job: OPERATION_INVALID. Flags "
              "must be 0."),
    _call(P.DOMAIN_QEMU_MONITOR_COMMAND, p.MonitorCommandArgs, p.StringReply, mutates=True,
          doc="virDomainQemuMonitorCommand: a QMP command (JSON text: execute and "
              "arguments) passed to the guest's QEMU; the reply is QEMU's reply as JSON "
              "text, an error reply included ({\"return\": ...} or {\"error\": {\"class\", "
              "\"desc\"}}). Flags: 1 (VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) sends cmd to "
              "the human monitor and replies with its text (its failure is the call's "
              "error). Text that is not JSON: INTERNAL_ERROR; not running: "
              "OPERATION_INVALID. The domain is logged as tainted (custom-monitor)."),
    _call(P.DOMAIN_BLOCK_RESIZE, p.BlockResizeArgs, Empty, mutates=True,
          doc="virDomainBlockResize: the new size of a running domain's disk (by target "
              "or source path), in KiB, or bytes with flags 1 (VIR_DOMAIN_BLOCK_RESIZE_"
              "BYTES); a qcow2 size is rounded up to 512 bytes. QEMU's block_resize on "
              "the disk's top layer. Unknown disk: INVALID_ARG; not running or busy: "
              "OPERATION_INVALID."),
    _call(P.DOMAIN_UPDATE_DEVICE, p.DeviceArgs, Empty, mutates=True,
          doc="virDomainUpdateDeviceFlags: change a device in place, live and/or in the "
              "persistent definition (AFFECT flags as attach's; 4, VIR_DOMAIN_DEVICE_"
              "MODIFY_FORCE, accepted): a cdrom or floppy <disk> gets the medium of the "
              "XML (as DOMAIN_CHANGE_MEDIA), an <interface> (found by MAC) its <link "
              "state> (QMP set_link). Any other difference, or another device: "
              "OPERATION_UNSUPPORTED; no such interface: OPERATION_FAILED."),
    _call(P.DOMAIN_SCREENSHOT, p.ScreenshotArgs, p.StringReply, mutates=True,
          doc="virDomainScreenshot: the running guest's screen as an image; the reply is "
              "its MIME type (image/x-portable-pixmap: QEMU's screendump, PPM), then the "
              "image comes as STREAM frames with this call's serial, ended by STREAM_END. "
              "Screen 0 only; a guest without graphics: OPERATION_INVALID. Refused on a "
              "read-only connection, as libvirt's. Flags must be 0."),
    _call(P.DOMAIN_PIN_VCPU, p.PinVcpuArgs, Empty, mutates=True,
          doc="virDomainPinVcpuFlags: the host CPUs (cpumap) vCPU vcpu may run on; "
              "AFFECT flags as setmem's (0: live if running, else config). Live: the vCPU "
              "thread's affinity now (an offline vCPU's when plugged) and <vcpupin> in the "
              "live XML; config: <vcpupin> of the persistent definition. An empty cpumap, "
              "or a vcpu at or above the maximum: INVALID_ARG; live, a CPU the host does "
              "not have: SYSTEM_ERROR (\"Invalid value '7' for 'cpuset.cpus'\")."),
    _call(P.DOMAIN_GET_VCPU_PIN_INFO, p.DomainFlagsArgs, p.VcpuPinInfoReply, mutates=False,
          doc="virDomainGetVcpuPinInfo: per vCPU up to the maximum, the host CPUs the live "
              "(AFFECT_LIVE) or persistent (AFFECT_CONFIG; 0: the current state) "
              "definition gives it: its <vcpupin>, else <vcpu cpuset>, else every host "
              "CPU. Both flags: INVALID_ARG."),
    _call(P.DOMAIN_PIN_EMULATOR, p.PinEmulatorArgs, Empty, mutates=True,
          doc="virDomainPinEmulator: the host CPUs of QEMU's threads that are not vCPUs "
              "(<emulatorpin>), live and/or config as DOMAIN_PIN_VCPU; the same errors."),
    _call(P.DOMAIN_GET_EMULATOR_PIN_INFO, p.DomainFlagsArgs, p.EmulatorPinInfoReply,
          mutates=False,
          doc="virDomainGetEmulatorPinInfo: the emulator threads' host CPUs in the live or "
              "persistent definition: <emulatorpin>, else <vcpu cpuset>, else every host "
              "CPU."),
    _call(P.NODE_GET_CPU_STATS, p.NodeGetStatsArgs, p.NodeStatsReply, mutates=False,
          doc="virNodeGetCPUStats: libvirt's fields (kernel, user, idle, iowait; ns, from "
              "/proc/stat) of host CPU number, or of all CPUs summed (-1). A CPU the host "
              "does not have: INVALID_ARG 'Invalid cpuNum in virHostCPUGetStatsLinux'; "
              "another negative number: INVALID_ARG. Flags must be 0."),
    _call(P.NODE_GET_MEMORY_STATS, p.NodeGetStatsArgs, p.NodeStatsReply, mutates=False,
          doc="virNodeGetMemoryStats: libvirt's fields in KiB: total, free, buffers and "
              "cached of the host (-1, /proc/meminfo), or total and free of NUMA cell "
              "number (its node meminfo; cell 0 of a host without NUMA: the host's). A "
              "cell the host does not have: INVALID_ARG 'cellNum in virHostMemGetStats "
              "must be less than or equal to N'. Flags must be 0."),
    # (changes nothing, but libvirt's ACL is connect:write: refused read-only, as there)
    _call(P.CONNECT_DOMAIN_XML_TO_NATIVE, p.XMLToNativeArgs, p.StringReply, mutates=True,
          doc="virConnectDomainXMLToNative: the QEMU command line a start of the domain "
              "XML would run, on one line (shell-quoted words; with <qemu:env>, env(1) and "
              "the assignments first), checked as DOMAIN_DEFINE_XML checks it. A dry "
              "run: nothing is defined, started or created (no NVRAM file, directory or "
              "VNC port; an autoport display is shown as :0, as libvirt does). Format "
              "other than 'qemu-argv': INVALID_ARG 'unsupported config type FORMAT'; "
              "bad XML: XML_ERROR; flags must be 0. Refused on a read-only connection, "
              "as libvirt's."),
]

PROCEDURES: dict[int, ProcedureSpec] = {spec.procedure.value: spec for spec in _TABLE}
assert len(PROCEDURES) == len(Procedure), "every Procedure needs exactly one table entry"


def spec_for(number: int) -> ProcedureSpec | None:
    """The table entry for a procedure number, or None if unknown."""
    return PROCEDURES.get(number)
