"""Exceptions raised by the client library.

::

    QemudClientError                 root
     +-- InvalidURI                  the URI is malformed (names the part)
     +-- ConnectFailed               could not reach the daemon (names socket/host)
     +-- ConnectionLost              the daemon went away or stopped answering keepalives
     +-- ProtocolVersionError        no protocol version in common
     +-- InvalidCall                 the protocol cannot carry the call's arguments (a
                                     string or message over its size limits): nothing
                                     was sent and the connection stays usable
     +-- RemoteError                 the daemon answered with an error (.code, .domain)
          +-- NoDomainError            VIR_ERR_NO_DOMAIN
          +-- DomainExistsError        VIR_ERR_DOM_EXIST
          +-- OperationInvalid         VIR_ERR_OPERATION_INVALID
          +-- ReadOnlyError            VIR_ERR_OPERATION_DENIED (read-only connection/role)
          +-- InvalidArgError          VIR_ERR_INVALID_ARG
          +-- XMLError                 VIR_ERR_XML_ERROR / XML_DETAIL
          +-- OperationFailed          VIR_ERR_OPERATION_FAILED
          +-- OperationTimeout         VIR_ERR_OPERATION_TIMEOUT
          +-- NoSnapshotError          VIR_ERR_NO_DOMAIN_SNAPSHOT
          +-- NoMetadataError          VIR_ERR_NO_DOMAIN_METADATA
          +-- NotSupportedError        VIR_ERR_NO_SUPPORT / OPERATION_UNSUPPORTED /
                                       ARGUMENT_UNSUPPORTED
          +-- AuthError                VIR_ERR_AUTH_FAILED / ACCESS_DENIED
          +-- ConfigUnsupportedError   VIR_ERR_CONFIG_UNSUPPORTED
          +-- LimitExceeded            a daemon limit (clients, frame size) was hit

Codes are libvirt's ``VIR_ERR_*`` numbers, so ``exc.code == libvirt.VIR_ERR_NO_DOMAIN``.
A RemoteError's message is the daemon's, which words it as libvirt does for the code
(``Requested operation is not valid: domain 'web' is already running``; see
qemud/errors.py): ``str(exc)`` is what virsh prints after ``error:``. Codes without a
class of their own (SYSTEM_ERROR: ``Failed to terminate process 4242 with SIGTERM:
Device or resource busy``) are plain RemoteErrors.
"""

from __future__ import annotations

from protocol.constants import ErrorCode
from protocol.payloads import ErrorPayload


class QemudClientError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidURI(QemudClientError):
    pass


class ConnectFailed(QemudClientError):
    pass


class ConnectionLost(QemudClientError):
    pass


class ProtocolVersionError(QemudClientError):
    pass


class InvalidCall(QemudClientError):
    """A call this side may not send: the protocol layer refused to encode it.

    Raised before a byte goes out, so unlike ConnectionLost the connection is still good:
    an interactive shell reports it and carries on. ``procedure`` names the call.
    """

    def __init__(self, message: str, procedure: str = "") -> None:
        super().__init__(message)
        self.procedure = procedure


class RemoteError(QemudClientError):
    """An error reply; carries the daemon's code, domain (subsystem) and level."""

    def __init__(self, message: str, code: int = 0, domain: int = 0, level: int = 2) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.level = level


class NoDomainError(RemoteError):
    pass


class DomainExistsError(RemoteError):
    pass


class OperationInvalid(RemoteError):
    pass


class ReadOnlyError(RemoteError):
    pass


class InvalidArgError(RemoteError):
    pass


class XMLError(RemoteError):
    pass


class OperationFailed(RemoteError):
    pass


class OperationTimeout(RemoteError):
    pass


class NoSnapshotError(RemoteError):
    pass


class NoMetadataError(RemoteError):
    pass


class NotSupportedError(RemoteError):
    pass


class AuthError(RemoteError):
    pass


class ConfigUnsupportedError(RemoteError):
    pass


class LimitExceeded(RemoteError):
    pass


_BY_CODE: dict[int, type[RemoteError]] = {
    ErrorCode.NO_DOMAIN: NoDomainError,
    ErrorCode.DOM_EXIST: DomainExistsError,
    ErrorCode.OPERATION_INVALID: OperationInvalid,
    ErrorCode.OPERATION_DENIED: ReadOnlyError,
    ErrorCode.INVALID_ARG: InvalidArgError,
    ErrorCode.OVERFLOW: InvalidArgError,  # (a number too large is an invalid argument)
    ErrorCode.XML_ERROR: XMLError,
    ErrorCode.XML_DETAIL: XMLError,
    ErrorCode.OPERATION_FAILED: OperationFailed,
    ErrorCode.OPERATION_TIMEOUT: OperationTimeout,
    ErrorCode.NO_DOMAIN_SNAPSHOT: NoSnapshotError,
    ErrorCode.NO_DOMAIN_METADATA: NoMetadataError,
    ErrorCode.NO_SUPPORT: NotSupportedError,
    ErrorCode.OPERATION_UNSUPPORTED: NotSupportedError,
    ErrorCode.ARGUMENT_UNSUPPORTED: NotSupportedError,
    ErrorCode.AUTH_FAILED: AuthError,
    ErrorCode.ACCESS_DENIED: AuthError,
    ErrorCode.CONFIG_UNSUPPORTED: ConfigUnsupportedError,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
}


def from_payload(error: ErrorPayload) -> QemudClientError:
    """The exception for an error reply."""
    if error.code == ErrorCode.UNSUPPORTED_VERSION:
        return ProtocolVersionError(error.message)
    cls = _BY_CODE.get(error.code, RemoteError)
    return cls(error.message, error.code, error.domain, error.level)
