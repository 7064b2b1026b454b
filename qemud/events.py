"""Event delivery: client registrations and in-process listeners.

Registrations belong to a client connection and die with it. Emitting never blocks: the
frame is queued on each subscribed client (the server drops a client whose queue passes
``max_queued_bytes``). In-process listeners (the appliance layer) see every event first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol import Event, Procedure
from protocol.constants import EventId
from protocol.payloads import (
    ApplianceEventMsg,
    CallbackArgs,
    CallbackReply,
    DomainRef,
    EventRegisterArgs,
    LifecycleEventMsg,
    MetadataChangeEventMsg,
    RebootEventMsg,
    WatchdogEventMsg,
)

from .errors import InvalidArg, LimitExceeded

if TYPE_CHECKING:
    from .server import Client, Server

__all__ = ["EventBus"]

log = logging.getLogger(__name__)

Listener = Callable[[EventId, DomainRef, tuple[object, ...]], None]


class EventBus:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # -- handlers ------------------------------------------------------------------------

    def register(self, client: Client, args: EventRegisterArgs) -> CallbackReply:
        try:
            event_id = EventId(args.event_id)
        except ValueError:
            raise InvalidArg(f"unknown event id {args.event_id} (known: "
                             f"{', '.join(f'{e.name}={e.value}' for e in EventId)})") from None
        if args.uuid and len(args.uuid) != 16:
            raise InvalidArg("event filter uuid must be 16 bytes or empty")
        limit = self.server.config.limits.max_event_callbacks
        if len(client.callbacks) >= limit:
            raise LimitExceeded(f"this connection already holds {limit} event callbacks "
                                "(limits.max_event_callbacks); deregister some first")
        callback_id = next(self._ids)
        client.callbacks[callback_id] = (int(event_id), bytes(args.uuid))
        return CallbackReply(callback_id)

    def deregister(self, client: Client, args: CallbackArgs) -> None:
        if client.callbacks.pop(args.callback_id, None) is None:
            raise InvalidArg(f"no event callback {args.callback_id} on this connection")

    # -- emitting ------------------------------------------------------------------------

    def lifecycle(self, dom: DomainRef, event: int, detail: int) -> None:
        log.info("event %s: lifecycle %d/%d", dom.name, event, detail)
        self._emit(EventId.LIFECYCLE, dom, (event, detail), lambda cb: Event(
            Procedure.EVENT_LIFECYCLE, LifecycleEventMsg(cb, dom, event, detail)))

    def reboot(self, dom: DomainRef) -> None:
        log.info("event %s: reboot", dom.name)
        self._emit(EventId.REBOOT, dom, (), lambda cb: Event(
            Procedure.EVENT_REBOOT, RebootEventMsg(cb, dom)))

    def watchdog(self, dom: DomainRef, action: int) -> None:
        log.info("event %s: watchdog action %d", dom.name, action)
        self._emit(EventId.WATCHDOG, dom, (action,), lambda cb: Event(
            Procedure.EVENT_WATCHDOG, WatchdogEventMsg(cb, dom, action)))

    def metadata_change(self, dom: DomainRef, kind: int, nsuri: str) -> None:
        """libvirt's METADATA_CHANGE: a DOMAIN_SET_METADATA of MetadataType ``kind``
        succeeded; ``nsuri`` is the ELEMENT's namespace, "" for the title/description."""
        log.info("event %s: metadata change %d %s", dom.name, kind, nsuri or "-")
        self._emit(EventId.METADATA_CHANGE, dom, (kind, nsuri), lambda cb: Event(
            Procedure.EVENT_METADATA_CHANGE, MetadataChangeEventMsg(cb, dom, kind, nsuri)))

    def appliance(self, dom: DomainRef, kind: str, detail: str) -> None:
        log.info("event %s: %s: %s", dom.name, kind, detail)
        self._emit(EventId.APPLIANCE, dom, (kind, detail), lambda cb: Event(
            Procedure.EVENT_APPLIANCE, ApplianceEventMsg(cb, dom, kind, detail)))

    def _emit(self, event_id: EventId, dom: DomainRef, data: tuple[object, ...],
              make: Callable[[int], Event]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event_id, dom, data)
            except Exception:
                log.exception("event listener failed")
        for client in list(self.server.clients.values()):
            for callback_id, (wanted, uuid) in list(client.callbacks.items()):
                if wanted == event_id and (not uuid or uuid == dom.uuid):
                    self.server.send_event(client, make(callback_id))
