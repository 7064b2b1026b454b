"""The daemon's errors: what a call can fail with, mapped to wire error codes.

::

    QemudError                   root; .code (ErrorCode), .domain (ErrorDomain), .message
     +-- ConfigError             bad config file or flag (start-up only)
     +-- AlreadyRunning          another daemon holds the run directory lock
     +-- InvalidArg              a call's argument is malformed
     +-- OperationDenied         read-only connection / role
     +-- NoDomain                no domain matches the name/uuid/id
     +-- DomainExists            define/create clashes with an existing domain
     +-- OperationInvalid        not valid in the domain's current state
     +-- XMLError                the domain/device XML is rejected (names the element)
     +-- ConfigUnsupported       valid XML the host/arch cannot do
     +-- OperationFailed         the host or QEMU failed (carries QEMU's own text)
     +-- OperationTimeout        a deadline passed
     +-- NoSnapshot              no snapshot by that name
     +-- NoSupport               not implemented here
     +-- ArgumentUnsupported     a valid argument this host or guest cannot honour
     +-- OperationUnsupported    an operation the driver cannot do at all
     +-- InternalError           a bug; the message says where
     +-- AuthFailed              a TLS client certificate or DN was refused
     +-- LimitExceeded           a per-client limit of the config was hit

Handlers raise these; the dispatcher turns them into error replies. Anything else that
escapes a handler is logged with its traceback and sent as INTERNAL_ERROR.
"""

from __future__ import annotations

from protocol.constants import ErrorCode, ErrorDomain


class QemudError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    domain: ErrorDomain = ErrorDomain.NONE

    def __init__(self, message: str, *, domain: ErrorDomain | None = None) -> None:
        super().__init__(message)
        self.message = message
        if domain is not None:
            self.domain = domain


class ConfigError(QemudError):
    code = ErrorCode.CONFIG_UNSUPPORTED


class AlreadyRunning(QemudError):
    code = ErrorCode.RESOURCE_BUSY


class InvalidArg(QemudError):
    code = ErrorCode.INVALID_ARG


class OperationDenied(QemudError):
    code = ErrorCode.OPERATION_DENIED
    domain = ErrorDomain.REMOTE


class NoDomain(QemudError):
    code = ErrorCode.NO_DOMAIN
    domain = ErrorDomain.QEMU


class DomainExists(QemudError):
    code = ErrorCode.DOM_EXIST
    domain = ErrorDomain.QEMU


class OperationInvalid(QemudError):
    code = ErrorCode.OPERATION_INVALID
    domain = ErrorDomain.QEMU


class XMLError(QemudError):
    code = ErrorCode.XML_ERROR
    domain = ErrorDomain.DOMAIN


class ConfigUnsupported(QemudError):
    code = ErrorCode.CONFIG_UNSUPPORTED
    domain = ErrorDomain.QEMU


class OperationFailed(QemudError):
    code = ErrorCode.OPERATION_FAILED
    domain = ErrorDomain.QEMU


class OperationTimeout(QemudError):
    code = ErrorCode.OPERATION_TIMEOUT
    domain = ErrorDomain.QEMU


class NoSnapshot(QemudError):
    code = ErrorCode.NO_DOMAIN_SNAPSHOT
    domain = ErrorDomain.DOMAIN_SNAPSHOT


class NoSupport(QemudError):
    code = ErrorCode.NO_SUPPORT


class ArgumentUnsupported(QemudError):
    """A valid argument this host or guest cannot honour (libvirt's code for, e.g., the
    guest agent mode of a guest without an agent)."""

    code = ErrorCode.ARGUMENT_UNSUPPORTED


class OperationUnsupported(QemudError):
    """libvirt's VIR_ERR_OPERATION_UNSUPPORTED: the driver cannot do that at all (a live
    change of the vCPU count)."""

    code = ErrorCode.OPERATION_UNSUPPORTED
    domain = ErrorDomain.QEMU


class InternalError(QemudError):
    code = ErrorCode.INTERNAL_ERROR


class LimitExceeded(QemudError):
    code = ErrorCode.LIMIT_EXCEEDED
    domain = ErrorDomain.RPC


class AuthFailed(QemudError):
    code = ErrorCode.AUTH_FAILED
    domain = ErrorDomain.REMOTE
