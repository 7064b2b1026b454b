"""qemud's client library: connect to a daemon and manage its guests.

    >>> import client
    >>> with client.connect("qemud:///session") as conn:
    ...     for dom in conn.list_domains():
    ...         print(dom.name, dom.state())

A :class:`Connection` may be shared between threads: calls are serialised (the protocol
carries one call at a time per connection). States, reasons, event kinds and error codes
use libvirt's numbers (see :mod:`protocol.constants`).
"""

from protocol.constants import (
    DomainState,
    EventId,
    LifecycleEvent,
    ListFlags,
    RebootFlags,
    ShutdownFlags,
)

from .connection import ClientInfo, Connection, EventRecord, NodeInfo, Stream, connect
from .domain import (
    AFFECT_CONFIG,
    AFFECT_LIVE,
    MEM_MAXIMUM,
    START_PAUSED,
    VCPU_MAXIMUM,
    XML_INACTIVE,
    XML_SECURE,
    Domain,
    DomainInfo,
)
from .errors import (
    AuthError,
    ConfigUnsupportedError,
    ConnectFailed,
    ConnectionLost,
    DomainExistsError,
    InvalidArgError,
    InvalidCall,
    InvalidURI,
    LimitExceeded,
    NoDomainError,
    NoMetadataError,
    NoSnapshotError,
    NotSupportedError,
    OperationFailed,
    OperationInvalid,
    OperationTimeout,
    ProtocolVersionError,
    QemudClientError,
    ReadOnlyError,
    RemoteError,
    XMLError,
)
from .uri import default_uri, parse_uri

__all__ = [
    "DomainState", "EventId", "LifecycleEvent", "ListFlags", "ClientInfo", "Connection",
    "EventRecord", "NodeInfo", "Stream", "connect", "AFFECT_CONFIG", "AFFECT_LIVE",
    "START_PAUSED", "XML_INACTIVE", "XML_SECURE", "Domain", "DomainInfo", "RebootFlags",
    "ShutdownFlags", "MEM_MAXIMUM", "VCPU_MAXIMUM",
    "AuthError", "ConfigUnsupportedError", "ConnectFailed", "ConnectionLost",
    "DomainExistsError", "InvalidArgError", "InvalidCall", "InvalidURI", "LimitExceeded",
    "NoDomainError", "NoMetadataError", "NoSnapshotError", "NotSupportedError",
    "OperationFailed", "OperationInvalid", "OperationTimeout", "ProtocolVersionError",
    "QemudClientError", "ReadOnlyError", "RemoteError", "XMLError", "default_uri", "parse_uri",
]
