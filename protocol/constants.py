"""Numbers that are part of the wire format.

Everything here is fixed by docs/PROTOCOL.md; changing a value breaks every peer.
State, reason, event and error numbers deliberately equal libvirt's (``libvirt.VIR_*``)
so scripts written against libvirt read naturally and a test can compare them.
"""

from __future__ import annotations

import enum

#: Identifies a qemud frame ("QEMD"); anything else is not ours.
PROGRAM = 0x51454D44

#: Protocol versions this implementation speaks, oldest first.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
CURRENT_VERSION = SUPPORTED_VERSIONS[-1]

#: Bytes in the fixed frame header (length field included).
HEADER_SIZE = 20

#: Default and absolute ceilings. The daemon may configure a lower frame limit.
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
ABSOLUTE_MAX_FRAME = 64 * 1024 * 1024
MAX_STRING = 4 * 1024 * 1024
#: libvirt's cap on domain lists (REMOTE_DOMAIN_LIST_MAX): also bounds how long decoding one
#: hostile-but-valid frame can hold the single-threaded daemon (docs/HARDENING.md)
MAX_LIST = 16384


class MessageType(enum.IntEnum):
    """Header ``type``: who speaks and whether an answer is owed."""

    CALL = 0  # client -> server, one REPLY owed
    REPLY = 1  # server -> client, answers the CALL with the same serial
    EVENT = 2  # server -> client, unsolicited, no answer
    STREAM = 3  # either way, data of a stream opened by the CALL with the same serial
    KEEPALIVE = 4  # either way, procedure PING or PONG, no payload, no reply


class Status(enum.IntEnum):
    """Header ``status``."""

    OK = 0
    ERROR = 1  # payload is an ErrorPayload
    CONTINUE = 2  # stream data follows; more to come


class KeepaliveProc(enum.IntEnum):
    """Procedure numbers used with MessageType.KEEPALIVE."""

    PING = 1
    PONG = 2


class HelloFlags(enum.IntFlag):
    """HELLO flags."""

    #: the client wants a read-only session even where its identity allows more
    #: (e.g. ``qemush -r`` with a full-role TLS certificate)
    READONLY = 1


class ErrorCode(enum.IntEnum):
    """Error codes; values are libvirt's ``VIR_ERR_*`` where one exists."""

    INTERNAL_ERROR = 1
    NO_SUPPORT = 3
    NO_CONNECT = 5
    INVALID_ARG = 8
    OPERATION_FAILED = 9
    XML_ERROR = 27
    DOM_EXIST = 28
    OPERATION_DENIED = 29
    XML_DETAIL = 35
    SYSTEM_ERROR = 38
    RPC = 39
    NO_DOMAIN = 42
    AUTH_FAILED = 45
    OPERATION_INVALID = 55
    CONFIG_UNSUPPORTED = 67
    OPERATION_TIMEOUT = 68
    NO_DOMAIN_SNAPSHOT = 72
    NO_DOMAIN_METADATA = 80
    OVERFLOW = 82
    ARGUMENT_UNSUPPORTED = 74
    OPERATION_UNSUPPORTED = 84
    RESOURCE_BUSY = 87
    ACCESS_DENIED = 88
    # qemud's own, above libvirt's range
    UNSUPPORTED_VERSION = 1001
    HELLO_REQUIRED = 1002
    LIMIT_EXCEEDED = 1003


class ErrorDomain(enum.IntEnum):
    """Which subsystem raised an error; values are libvirt's ``VIR_FROM_*``."""

    NONE = 0
    RPC = 7
    CONF = 9
    QEMU = 10
    REMOTE = 13
    DOMAIN = 20
    SECURITY = 24
    STREAMS = 38
    DOMAIN_SNAPSHOT = 35
    ADMIN = 62
    APPLIANCE = 1000


class ErrorLevel(enum.IntEnum):
    """libvirt's ``VIR_ERR_WARNING`` / ``VIR_ERR_ERROR``."""

    WARNING = 1
    ERROR = 2


class DomainState(enum.IntEnum):
    """libvirt's ``VIR_DOMAIN_*`` states."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class RunningReason(enum.IntEnum):
    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5
    WAKEUP = 8
    CRASHED = 9


class PausedReason(enum.IntEnum):
    UNKNOWN = 0
    USER = 1
    MIGRATION = 2
    SAVE = 3
    DUMP = 4
    IOERROR = 5
    WATCHDOG = 6
    FROM_SNAPSHOT = 7
    SHUTTING_DOWN = 8
    SNAPSHOT = 9
    CRASHED = 10
    STARTING_UP = 11


class ShutdownReason(enum.IntEnum):
    UNKNOWN = 0
    USER = 1


class ShutoffReason(enum.IntEnum):
    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class CrashedReason(enum.IntEnum):
    UNKNOWN = 0
    PANICKED = 1


class EventId(enum.IntEnum):
    """What a client registers for; values are libvirt's ``VIR_DOMAIN_EVENT_ID_*``."""

    LIFECYCLE = 0
    REBOOT = 1
    WATCHDOG = 3
    METADATA_CHANGE = 23  # a DOMAIN_SET_METADATA succeeded: its type and namespace uri
    APPLIANCE = 1000  # qemud: power-cycle, hotplug, heartbeat, update actions


class LifecycleEvent(enum.IntEnum):
    """libvirt's ``VIR_DOMAIN_EVENT_*`` lifecycle kinds."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class DefinedDetail(enum.IntEnum):
    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class UndefinedDetail(enum.IntEnum):
    REMOVED = 0
    RENAMED = 1  # DOMAIN_RENAME: the old name went (DEFINED RENAMED follows for the new)


class StartedDetail(enum.IntEnum):
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class SuspendedDetail(enum.IntEnum):
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6


class ResumedDetail(enum.IntEnum):
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2


class StoppedDetail(enum.IntEnum):
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


class ShutdownDetail(enum.IntEnum):
    FINISHED = 0
    GUEST = 1
    HOST = 2


class CrashedDetail(enum.IntEnum):
    PANICKED = 0


class ListFlags(enum.IntFlag):
    """Filters for DOMAIN_LIST; values are libvirt's ``VIR_CONNECT_LIST_DOMAINS_*``."""

    ACTIVE = 1
    INACTIVE = 2
    PERSISTENT = 4
    TRANSIENT = 8
    RUNNING = 16
    PAUSED = 32
    SHUTOFF = 64
    OTHER = 128
    MANAGEDSAVE = 256
    NO_MANAGEDSAVE = 512
    AUTOSTART = 1024
    NO_AUTOSTART = 2048


class ShutdownFlags(enum.IntFlag):
    """DOMAIN_SHUTDOWN flags: libvirt's shutdown modes, and qemud's DESTROY_ON_TIMEOUT.

    0 lets the daemon choose. The modes are libvirt's ``VIR_DOMAIN_SHUTDOWN_*`` bits so a
    libvirt caller's flags mean the same here; which ones qemud can honour is up to the
    daemon (docs/CONFORMANCE.md).
    """

    ACPI_POWER_BTN = 1
    GUEST_AGENT = 2
    INITCTL = 4
    SIGNAL = 8
    PARAVIRT = 16
    #: with a non-zero timeout: destroy the guest if it has not stopped by then
    DESTROY_ON_TIMEOUT = 1 << 16


class RebootFlags(enum.IntFlag):
    """DOMAIN_REBOOT flags: libvirt's reboot modes (the same bits as ShutdownFlags').

    0 lets the daemon choose; see ShutdownFlags for why these are libvirt's numbers.
    """

    ACPI_POWER_BTN = 1
    GUEST_AGENT = 2
    INITCTL = 4
    SIGNAL = 8
    PARAVIRT = 16


class UndefineFlags(enum.IntFlag):
    """DOMAIN_UNDEFINE flags: libvirt's ``VIR_DOMAIN_UNDEFINE_*``."""

    MANAGED_SAVE = 1
    SNAPSHOTS_METADATA = 2
    NVRAM = 4
    KEEP_NVRAM = 8


class TypedParamKind(enum.IntEnum):
    """Type tag of a stats field."""

    INT = 1
    FLOAT = 2
    STRING = 3


class MetadataType(enum.IntEnum):
    """DOMAIN_SET_METADATA / DOMAIN_GET_METADATA ``type``: libvirt's
    ``VIR_DOMAIN_METADATA_*`` (ELEMENT: the ``<metadata>`` child of one namespace uri)."""

    DESCRIPTION = 0
    TITLE = 1
    ELEMENT = 2
