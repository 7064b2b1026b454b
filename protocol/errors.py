"""Errors raised by the sans-IO protocol layer.

::

    ProtocolError                      root; .fatal says whether the stream can go on
     +-- LocalProtocolError            we were asked to send something the format forbids
     +-- RemoteProtocolError           the peer sent something the format forbids
          +-- FrameTooLarge            length field over the limit (fatal: cannot resync)
          +-- BadFrame                 length field below the header size (fatal)
          +-- TruncatedFrame           EOF inside a frame (fatal)
          +-- UnknownProgram           header program is not ours
          +-- UnknownMessageType       header type/status is not in the table
          +-- UnknownProcedure         procedure number is not in the table
          +-- VersionMismatch          header version differs from the negotiated one
          +-- HelloRequired            a call other than HELLO before the hello
          +-- BadPayload               payload bytes do not parse for the procedure

Non-fatal remote errors still know the frame's serial and procedure, so a server can
answer them with an error reply and keep the connection.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of the protocol's errors."""

    fatal: bool = False

    def __init__(self, message: str, *, serial: int | None = None,
                 procedure: int | None = None, msg_type: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.serial = serial
        self.procedure = procedure
        self.msg_type = msg_type


class LocalProtocolError(ProtocolError):
    """The caller tried to send something the format forbids (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the format forbids."""


class FrameTooLarge(RemoteProtocolError):
    fatal = True


class BadFrame(RemoteProtocolError):
    fatal = True


class TruncatedFrame(RemoteProtocolError):
    fatal = True


class UnknownProgram(RemoteProtocolError):
    pass


class UnknownMessageType(RemoteProtocolError):
    pass


class UnknownProcedure(RemoteProtocolError):
    pass


class VersionMismatch(RemoteProtocolError):
    pass


class HelloRequired(RemoteProtocolError):
    pass


class BadPayload(RemoteProtocolError):
    pass


class UnsupportedVersion(RemoteProtocolError):
    """The client's hello names no version this side speaks."""

    def __init__(self, message: str, *, offered: tuple[int, ...], supported: tuple[int, ...],
                 serial: int | None = None) -> None:
        super().__init__(message, serial=serial, procedure=1)
        self.offered = offered
        self.supported = supported
