"""Error hierarchy of the QEMU driver.

Every error the driver raises on purpose derives from :class:`QemuError`, so
the daemon can turn any of them into a protocol error with one ``except``
while still being able to tell the families apart::

    QemuError
    ├── QMPError                  the monitor conversation went wrong
    │   ├── QMPProtocolError      peer sent something that is not QMP
    │   │   └── QMPBufferOverflow a line grew past the buffer cap
    │   ├── StateError            command issued in the wrong run state
    │   └── QMPCommandFailed      QEMU answered a command with an error
    ├── CapabilitiesError         probing an emulator binary failed
    ├── ArchTableError            devices.toml is malformed (packaging bug)
    ├── UnknownArchError          no strategy is registered for an arch
    └── GuestConfigError          a domain cannot be run by this driver
        ├── UnsupportedForArch    ...because the guest arch lacks a feature
        └── AccelUnavailable      ...because the accelerator is not usable

Exceptions carry their facts as attributes (never only inside the message)
so callers can react without parsing strings.  ``GuestConfigError`` mirrors
the conf layer's ``DefinitionError``: it names the offending element by its
path relative to ``<domain>`` ("devices/disk[1]/target: ...").
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AccelUnavailable",
    "ArchTableError",
    "CapabilitiesError",
    "GuestConfigError",
    "QMPBufferOverflow",
    "QMPCommandFailed",
    "QMPError",
    "QMPProtocolError",
    "QemuError",
    "StateError",
    "UnknownArchError",
    "UnsupportedForArch",
]


class QemuError(Exception):
    """Root of every error raised deliberately by ``qemud.qemu``."""


class QMPError(QemuError):
    """Something went wrong talking QMP."""


class QMPProtocolError(QMPError):
    """The peer violated the QMP wire protocol; the connection is unusable."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"QMP protocol error: {detail}")
        self.detail = detail


class QMPBufferOverflow(QMPProtocolError):
    """A single QMP line exceeded the receive buffer cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than the {limit}-byte buffer cap")
        self.limit = limit


class StateError(QMPError):
    """A command was issued while the protocol state does not allow it."""

    def __init__(self, command: str, state: str, detail: str) -> None:
        super().__init__(f"cannot send {command!r} in state {state}: {detail}")
        self.command = command
        self.state = state
        self.detail = detail


class QMPCommandFailed(QMPError):
    """QEMU rejected a command (raised by callers from a ``QMPErrorReply``)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class CapabilitiesError(QemuError):
    """An emulator binary could not be probed."""

    def __init__(self, binary: str, detail: str) -> None:
        super().__init__(f"{binary}: {detail}")
        self.binary = binary
        self.detail = detail


class ArchTableError(QemuError):
    """The shipped device table is malformed; raised at import, never per guest."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"devices.toml: {detail}")
        self.detail = detail


class UnknownArchError(QemuError):
    """No :class:`~qemud.qemu.arch.ArchStrategy` is registered for ``arch``."""

    def __init__(self, arch: str, known: Sequence[str]) -> None:
        super().__init__(
            f"unsupported guest architecture {arch!r} (supported: {', '.join(sorted(known))})"
        )
        self.arch = arch
        self.known = tuple(sorted(known))


class GuestConfigError(QemuError):
    """The domain definition cannot be turned into a QEMU process.

    ``path`` names the element relative to ``<domain>`` like the conf layer's
    errors do, so users see one style of message for both layers.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class UnsupportedForArch(GuestConfigError):
    """The guest architecture (or machine type) has no such device or bus."""

    def __init__(
        self, path: str, what: str, value: str, arch: str, supported: Sequence[str]
    ) -> None:
        choices = ", ".join(sorted(supported)) if supported else "none"
        super().__init__(
            path, f"{what} {value!r} is not supported on {arch} (supported: {choices})"
        )
        self.what = what
        self.value = value
        self.arch = arch
        self.supported = tuple(sorted(supported))


class AccelUnavailable(GuestConfigError):
    """``<domain type='kvm'>`` was requested but KVM cannot run this guest."""

    def __init__(self, accel: str, reason: str) -> None:
        super().__init__("type", f"accelerator {accel!r} is not usable: {reason}")
        self.accel = accel
        self.reason = reason
