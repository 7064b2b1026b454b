"""Handlers for the connection, event and admin procedures (domains live in the driver)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol import Empty, Procedure
from protocol.payloads import (
    CallbackArgs,
    ClientIdArgs,
    ClientInfo,
    ClientListReply,
    EventRegisterArgs,
    StringReply,
    VersionReply,
)

from .errors import InvalidArg

if TYPE_CHECKING:
    from .daemon import Daemon
    from .dispatch import Handler

__all__ = ["core_handlers", "encode_version"]


def encode_version(text: str) -> int:
    """libvirt's encoding: major * 1,000,000 + minor * 1,000 + micro."""
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in text.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


def core_handlers(daemon: Daemon) -> dict[Procedure, Handler]:
    host = daemon.host
    version_reply = VersionReply(
        daemon_version=encode_version(daemon.version), hypervisor_version=encode_version(
            daemon.hypervisor_version), daemon_version_string=daemon.version,
        hypervisor="QEMU")
    hostname = StringReply(host.hostname)
    uri = StringReply(daemon.uri)

    def close(ctx: Any, args: Empty) -> Empty:
        ctx.closing = True  # the server closes once this reply is written
        return Empty()

    def capabilities(ctx: Any, args: Empty) -> StringReply:
        return StringReply(daemon.capabilities_xml())

    def client_list(ctx: Any, args: Empty) -> ClientListReply:
        return ClientListReply([
            ClientInfo(id=c.id, transport=c.kind, identity=c.identity, readonly=c.readonly,
                       connected_since=int(c.since), calls=c.calls)
            for c in daemon.server.clients.values()])

    def client_disconnect(ctx: Any, args: ClientIdArgs) -> Empty:
        target = daemon.server.clients.get(args.id)
        if target is None:
            raise InvalidArg(f"no client with id {args.id}")
        if target is ctx:
            raise InvalidArg("a client cannot disconnect itself; use CLOSE")
        daemon.loop.call_soon(lambda: daemon.server.close_client(
            target, f"disconnected by admin client {ctx.id} ({ctx.identity})"))
        return Empty()

    def event_register(ctx: Any, args: EventRegisterArgs) -> Any:
        return daemon.events.register(ctx, args)

    def event_deregister(ctx: Any, args: CallbackArgs) -> Empty:
        daemon.events.deregister(ctx, args)
        return Empty()

    return {
        Procedure.CLOSE: close,
        Procedure.GET_VERSION: lambda ctx, args: version_reply,
        Procedure.GET_HOSTNAME: lambda ctx, args: hostname,
        Procedure.GET_URI: lambda ctx, args: uri,
        Procedure.NODE_INFO: lambda ctx, args: host.node_info,
        Procedure.CAPABILITIES: capabilities,
        Procedure.EVENT_REGISTER: event_register,
        Procedure.EVENT_DEREGISTER: event_deregister,
        Procedure.ADMIN_CLIENT_LIST: client_list,
        Procedure.ADMIN_CLIENT_DISCONNECT: client_disconnect,
    }


