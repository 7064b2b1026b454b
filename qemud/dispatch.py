"""Call dispatch: the procedure table's access rules, handler lookup, error mapping, audit.

Handlers are plain functions ``handler(ctx, args) -> Payload | Deferred``. A handler that
needs QEMU to answer first returns a :class:`Deferred`; the server stops reading from that
client until the deferred completes (the protocol is synchronous per client) while every
other client carries on. Whether a read-only connection may call a procedure is decided
here, from the table's flags, and nowhere else.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol import Call, ErrorReply, Procedure, Reply, spec_for
from protocol.constants import ErrorLevel, HelloFlags
from protocol.errors import UnsupportedVersion
from protocol.fields import Payload
from protocol.payloads import ErrorPayload, HelloArgs, HelloReply

from .errors import InternalError, NoSupport, OperationDenied, OperationInvalid, QemudError

__all__ = ["Deferred", "Dispatcher", "CallContext", "Handler", "ReplyWaits", "all_ended",
           "error_payload"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qemud.audit")


class CallContext(Protocol):
    """What a handler may know about its caller (the server's client object)."""

    id: int
    kind: str
    identity: str
    readonly: bool


Handler = Callable[[Any, Any], "Payload | Deferred"]


class Deferred:
    """A reply that becomes ready later, from inside the loop (e.g. a QMP answer)."""

    __slots__ = ("_callbacks", "result", "error", "done")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Deferred], object]] = []
        self.result: Any = None
        self.error: QemudError | None = None
        self.done = False

    def resolve(self, result: Any) -> None:
        self._finish(result, None)

    def fail(self, error: QemudError) -> None:
        self._finish(None, error)

    def _finish(self, result: Any, error: QemudError | None) -> None:
        if self.done:
            return  # e.g. a deadline already failed it
        self.done, self.result, self.error = True, result, error
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[Deferred], object]) -> None:
        """Call ``cb(self)`` once done (now, if it already is); its return value is ignored."""
        if self.done:
            cb(self)
        else:
            self._callbacks.append(cb)

    def chain(self, other: Deferred, transform: Callable[[Any], Any] | None = None
              ) -> None:
        """Complete ``other`` when this completes (optionally mapping the result)."""
        def done(d: Deferred) -> None:
            if d.error is not None:
                other.fail(d.error)
            else:
                other.resolve(transform(d.result) if transform else d.result)
        self.add_done_callback(done)

    @classmethod
    def resolved(cls, result: Any) -> Deferred:
        d = cls()
        d.resolve(result)
        return d

    @classmethod
    def failed(cls, error: QemudError) -> Deferred:
        d = cls()
        d.fail(error)
        return d


class ReplyWaits:
    """Work a handler started that its reply waits for, beyond the handler's own result.

    A change to a persistent definition is in memory at once (the handler's next steps,
    and every later call, build on it) while its file is fsynced off the loop; the
    caller must still hear of it only once it is durable. The registry hands each such
    write's Deferred to :meth:`add`; the dispatcher collects them around the handler
    and replies when both they and the handler's result are done (the first error
    wins: the handler's, then the writes'). Outside a call (a QMP answer's callback)
    nothing is collected: such code chains the write's Deferred itself.
    """

    __slots__ = ("_collected",)

    def __init__(self) -> None:
        self._collected: list[Deferred] | None = None

    def add(self, deferred: Deferred) -> None:
        if self._collected is not None and not deferred.done:
            self._collected.append(deferred)

    def run(self, handler: Handler, ctx: Any, args: Any) -> Payload | Deferred:
        """``handler(ctx, args)``, its result held back until what it started is done."""
        collected: list[Deferred] = []
        self._collected = collected
        try:
            result = handler(ctx, args)
        finally:
            self._collected = None
        return _after(result, collected) if collected else result


def all_ended(items: list[Deferred]) -> Deferred:
    """Resolves (with None) once every one of ``items`` has ended, however it ended."""
    out = Deferred()
    left = [len(items)]
    if not items:
        out.resolve(None)

    def one_ended(_: Deferred) -> None:
        left[0] -= 1
        if left[0] == 0:
            out.resolve(None)
    for item in items:
        item.add_done_callback(one_ended)
    return out


def _after(result: Payload | Deferred, waits: list[Deferred]) -> Deferred:
    """A Deferred done once ``result`` (a payload or a Deferred) and ``waits`` are."""
    out = Deferred()
    pending = [result, *waits] if isinstance(result, Deferred) else list(waits)

    def all_done(_: Deferred) -> None:
        for d in pending:
            if d.error is not None:
                out.fail(d.error)
                return
        out.resolve(result.result if isinstance(result, Deferred) else result)
    all_ended(pending).add_done_callback(all_done)
    return out


def error_payload(exc: QemudError) -> ErrorPayload:
    return ErrorPayload(code=int(exc.code), domain=int(exc.domain),
                        level=int(ErrorLevel.ERROR), message=exc.message)


@dataclass
class HelloPolicy:
    server_name: str
    keepalive_interval: int


class Dispatcher:
    """Maps procedures to handlers and turns outcomes into reply messages."""

    def __init__(self, hello: HelloPolicy) -> None:
        self._handlers: dict[Procedure, Handler] = {}
        self.hello = hello
        #: what a handler started that its reply waits for (durable config writes)
        self.reply_waits = ReplyWaits()

    def register(self, procedure: Procedure, handler: Handler) -> None:
        if procedure in self._handlers:
            raise ValueError(f"{procedure.name} registered twice")
        self._handlers[procedure] = handler

    def register_all(self, handlers: dict[Procedure, Handler]) -> None:
        for procedure, handler in handlers.items():
            self.register(procedure, handler)

    def wrap(self, procedure: Procedure, around: Callable[[Handler, Any, Any],
                                                          Payload | Deferred]) -> None:
        """Call ``around(inner, ctx, args)`` for ``procedure`` instead of its registered
        handler ``inner``: how the appliance layer checks a driver procedure first (undefine
        vs snapshot metadata) without the driver knowing of it."""
        inner = self._handlers.get(procedure)
        if inner is None:
            raise ValueError(f"{procedure.name} is not registered: nothing to wrap")
        self._handlers[procedure] = functools.partial(around, inner)

    @property
    def handled(self) -> frozenset[Procedure]:
        return frozenset(self._handlers)

    def dispatch(self, ctx: Any, call: Call) -> Reply | ErrorReply | Deferred:
        """Run ``call`` for client ``ctx``: a reply now, or a Deferred for later."""
        spec = spec_for(call.procedure)
        assert spec is not None  # the protocol layer only yields known calls
        if call.procedure is Procedure.HELLO:
            return self._hello(ctx, call)
        if ctx.readonly and not spec.readonly_ok:
            exc = OperationDenied("read-only connection")
            self.audit(ctx, call, exc)
            return ErrorReply(call.procedure, call.serial, error_payload(exc))
        handler = self._handlers.get(call.procedure)
        try:
            if handler is None:
                raise NoSupport(f"procedure {call.procedure.name} is not supported by this "
                                "daemon")
            result = self.reply_waits.run(handler, ctx, call.args)
        except QemudError as exc:
            if spec.mutates:
                self.audit(ctx, call, exc)
            log.debug("client %s: %s failed: %s", ctx.id, call.procedure.name, exc.message)
            return ErrorReply(call.procedure, call.serial, error_payload(exc))
        except Exception as exc:  # a bug: keep serving, tell the client what broke
            log.exception("client %s: %s crashed", ctx.id, call.procedure.name)
            err = InternalError(f"internal error in {call.procedure.name}: {exc!r}")
            if spec.mutates:
                self.audit(ctx, call, err)  # it may have changed something before crashing
            return ErrorReply(call.procedure, call.serial, error_payload(err))
        if isinstance(result, Deferred):
            if spec.mutates:
                result.add_done_callback(lambda d: self.audit(ctx, call, d.error))
            return result
        if spec.mutates:
            self.audit(ctx, call, None)
        return Reply(call.procedure, call.serial, result)

    def _hello(self, ctx: Any, call: Call) -> Reply | ErrorReply:
        args = call.args
        assert isinstance(args, HelloArgs)
        if ctx.conn.version is not None:
            exc = OperationInvalid("HELLO was already done on this connection; the protocol "
                                   "version cannot change mid-connection")
            return ErrorReply(call.procedure, call.serial, error_payload(exc))
        try:
            version = ctx.conn.accept_hello(args, call.serial)
        except UnsupportedVersion as exc:
            log.info("client %s: %s", ctx.id, exc.message)
            return ErrorReply(call.procedure, call.serial, ErrorPayload(
                code=1001, domain=7, level=int(ErrorLevel.ERROR), message=exc.message))
        if args.client_name:
            ctx.client_name = args.client_name[:200]
        if args.flags & HelloFlags.READONLY and not ctx.readonly:
            ctx.readonly = True  # a client may always give up rights, never gain them
            log.info("client %s: read-only session requested", ctx.id)
        return Reply(call.procedure, call.serial, HelloReply(
            version=version, server_name=self.hello.server_name, readonly=ctx.readonly,
            keepalive_interval=self.hello.keepalive_interval))

    @staticmethod
    def audit(ctx: Any, call: Call, error: QemudError | None) -> None:
        """One line per mutating call (and per refusal): who, what, on what, outcome."""
        target = _target_of(call.args)
        outcome = "ok" if error is None else f"error code={int(error.code)} {error.message!r}"
        audit_log.info("client=%s transport=%s identity=%r proc=%s%s result=%s",
                       ctx.id, ctx.kind, ctx.identity, call.procedure.name,
                       f" target={target!r}" if target else "", outcome)


def _target_of(args: object) -> str:
    dom = getattr(args, "dom", None)
    if dom is not None:
        return str(dom.name)
    for name in ("name", "path", "id"):
        value = getattr(args, name, None)
        if value not in (None, ""):
            return str(value)
    return ""
