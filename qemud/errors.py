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
     |    +-- StartInterrupted   a client's destroy ended a start in progress
     +-- OperationTimeout        a deadline passed
     +-- NoSnapshot              no snapshot by that name
     +-- NoMetadata              no <title>/<description> to get
     +-- NoSupport               not implemented here
     +-- ArgumentUnsupported     a valid argument this host or guest cannot honour
     +-- OperationUnsupported    an operation the driver cannot do at all
     +-- InternalError           a bug; the message says where
     +-- SystemCallFailed        the OS refused (the message ends with its strerror text)
     +-- AuthFailed              a TLS client certificate or DN was refused
     +-- LimitExceeded           a per-client limit of the config was hit

Handlers raise these; the dispatcher turns them into error replies. Anything else that
escapes a handler is logged with its traceback and sent as INTERNAL_ERROR.

A raiser writes only the detail (``OperationInvalid("domain 'web' is already running")``);
``.message`` is that detail in libvirt's format for the code (virErrorMsg in libvirt's
src/util/virerror.c), ``Requested operation is not valid: domain 'web' is already
running``, which is what goes on the wire, into the audit log, and so what ``qemush``
prints after ``error:``, as virsh does. Build a new error's text from another error's
``.detail``: its ``.message`` already carries that error's prefix.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.constants import ErrorCode, ErrorDomain

#: libvirt's virErrorMsg format of each code whose format is the detail behind a fixed
#: prefix. Codes whose format is not (DOM_EXIST: ``domain %s exists already``;
#: SYSTEM_ERROR and RPC: the detail alone), and qemud's own codes, keep the detail as
#: it is.
LIBVIRT_PREFIXES: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL_ERROR: "internal error: ",
    ErrorCode.INVALID_ARG: "invalid argument: ",
    ErrorCode.OPERATION_FAILED: "operation failed: ",
    ErrorCode.XML_ERROR: "XML error: ",
    ErrorCode.OPERATION_DENIED: "operation forbidden: ",
    ErrorCode.NO_DOMAIN: "Domain not found: ",
    ErrorCode.OPERATION_INVALID: "Requested operation is not valid: ",
    ErrorCode.CONFIG_UNSUPPORTED: "unsupported configuration: ",
    ErrorCode.OPERATION_TIMEOUT: "Timed out during operation: ",
    ErrorCode.NO_DOMAIN_SNAPSHOT: "Domain snapshot not found: ",
    ErrorCode.NO_DOMAIN_METADATA: "metadata not found: ",
    ErrorCode.OVERFLOW: "value too large: ",
    ErrorCode.ARGUMENT_UNSUPPORTED: "argument unsupported: ",
    ErrorCode.OPERATION_UNSUPPORTED: "Operation not supported: ",
}


def libvirt_message(code: ErrorCode, detail: str) -> str:
    """``detail`` as libvirt words an error of ``code``: behind the code's prefix.

    A detail that already starts with the prefix's words (whatever their case) is left as
    it is, so the words never stand twice: an error of the same code passed on whole
    (``OperationFailed(f"{error.message}; ...")``), or a detail that says them itself
    (``internal error in DOMAIN_CREATE: ...``).
    """
    prefix = LIBVIRT_PREFIXES.get(code, "")
    words = prefix.rstrip(": ")
    if detail[:len(words)].lower() == words.lower():
        return detail
    return prefix + detail


class QemudError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    domain: ErrorDomain = ErrorDomain.NONE
    #: whether ``message`` is in libvirt's format for ``code`` (see the module docstring).
    #: Not for the daemon's own failures, printed as ``qemud: error: <detail>``: a
    #: ConfigError, or a bare QemudError (start-up: the lock file, a listener)
    libvirt_format: ClassVar[bool] = True

    def __init__(self, detail: str, *, domain: ErrorDomain | None = None) -> None:
        own = type(self) is QemudError or not self.libvirt_format
        message = detail if own else libvirt_message(self.code, detail)
        super().__init__(message)
        #: what the raiser wrote; ``message`` is what a user reads
        self.detail = detail
        self.message = message
        if domain is not None:
            self.domain = domain


class ConfigError(QemudError):
    """The daemon's own configuration is wrong: said as it is (``qemud: error: ...``), not
    as libvirt's "unsupported configuration" of a guest."""

    code = ErrorCode.CONFIG_UNSUPPORTED
    libvirt_format = False


class AlreadyRunning(QemudError):
    code = ErrorCode.RESOURCE_BUSY


class InvalidArg(QemudError):
    code = ErrorCode.INVALID_ARG


class InputTooLarge(InvalidArg):
    """A number past what the call takes (libvirt's VIR_ERR_OVERFLOW, "input too large")."""

    code = ErrorCode.OVERFLOW


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


class StartInterrupted(OperationFailed):
    """A start that a client's destroy ended: not the guest's or QEMU's failure (an
    image update's restart does not roll back for it)."""


class OperationTimeout(QemudError):
    code = ErrorCode.OPERATION_TIMEOUT
    domain = ErrorDomain.QEMU


class NoSnapshot(QemudError):
    code = ErrorCode.NO_DOMAIN_SNAPSHOT
    domain = ErrorDomain.DOMAIN_SNAPSHOT


class NoMetadata(QemudError):
    code = ErrorCode.NO_DOMAIN_METADATA
    domain = ErrorDomain.DOMAIN


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


class SystemCallFailed(QemudError):
    """libvirt's virReportSystemError: the OS refused; the message is the detail and the
    errno's text (``Failed to terminate process 4242 with SIGTERM: Device or resource
    busy``), with no prefix, as libvirt's VIR_ERR_SYSTEM_ERROR format is the text alone."""

    code = ErrorCode.SYSTEM_ERROR


class LimitExceeded(QemudError):
    code = ErrorCode.LIMIT_EXCEEDED
    domain = ErrorDomain.RPC


class AuthFailed(QemudError):
    code = ErrorCode.AUTH_FAILED
    domain = ErrorDomain.REMOTE
