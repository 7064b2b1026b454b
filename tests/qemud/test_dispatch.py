"""Dispatcher.wrap (how the appliance layer puts a check in front of a driver procedure) and
ReplyWaits (a reply held back until what its handler started is done)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from protocol import Call, ErrorReply, Procedure, Reply
from protocol.fields import Empty
from protocol.payloads import ClientIdArgs
from qemud.dispatch import Deferred, Dispatcher, HelloPolicy
from qemud.errors import OperationFailed, OperationInvalid


def _ctx(readonly: bool = False) -> SimpleNamespace:
    return SimpleNamespace(id=7, kind="unix", identity="pid=1 uid=0", readonly=readonly)


def _call() -> Call:
    return Call(Procedure.ADMIN_CLIENT_DISCONNECT, 3, ClientIdArgs(5))


def test_the_wrapper_decides_whether_the_handler_runs() -> None:
    disp = Dispatcher(HelloPolicy("test", 0))
    seen: list[int] = []

    def handler(ctx: Any, args: ClientIdArgs) -> Empty:
        seen.append(args.id)
        return Empty()

    def refuse_odd(inner: Any, ctx: Any, args: ClientIdArgs) -> Any:
        if args.id % 2:
            raise OperationInvalid(f"client {args.id} is odd")
        return inner(ctx, args)

    disp.register(Procedure.ADMIN_CLIENT_DISCONNECT, handler)
    disp.wrap(Procedure.ADMIN_CLIENT_DISCONNECT, refuse_odd)
    refused = disp.dispatch(_ctx(), _call())
    assert isinstance(refused, ErrorReply) and "client 5 is odd" in refused.error.message
    assert seen == []
    passed = disp.dispatch(_ctx(), Call(Procedure.ADMIN_CLIENT_DISCONNECT, 4, ClientIdArgs(6)))
    assert isinstance(passed, Reply) and seen == [6]
    # access is still the table's business: a read-only client never reaches the wrapper
    readonly = disp.dispatch(_ctx(readonly=True), _call())
    assert isinstance(readonly, ErrorReply) and "read-only" in readonly.error.message


def test_wrapping_a_procedure_nobody_handles_is_a_bug() -> None:
    disp = Dispatcher(HelloPolicy("test", 0))
    with pytest.raises(ValueError, match="ADMIN_CLIENT_DISCONNECT is not registered"):
        disp.wrap(Procedure.ADMIN_CLIENT_DISCONNECT, lambda inner, ctx, args: inner(ctx, args))


# -- ReplyWaits: a reply held back for what its handler started ---------------------------

def _waiting_handler(disp: Dispatcher, started: list[Deferred],
                     results: list[Deferred] | None = None) -> None:
    """ADMIN_CLIENT_DISCONNECT's handler starts one piece of work (a Deferred it hands
    to ReplyWaits, as the registry does with a config write) and returns Empty, or the
    next of ``results`` (its own Deferred)."""
    def handler(ctx: Any, args: ClientIdArgs) -> Any:
        work = Deferred()
        started.append(work)
        disp.reply_waits.add(work)
        return results.pop(0) if results else Empty()
    disp.register(Procedure.ADMIN_CLIENT_DISCONNECT, handler)


def test_a_reply_waits_for_what_its_handler_started() -> None:
    disp = Dispatcher(HelloPolicy("test", 0))
    started: list[Deferred] = []
    _waiting_handler(disp, started)
    reply = disp.dispatch(_ctx(), _call())
    assert isinstance(reply, Deferred) and not reply.done
    started[0].resolve(None)
    assert reply.done and reply.error is None and reply.result == Empty()

    # work done by the time the handler returns is not waited for
    def quick(ctx: Any, args: Any) -> Empty:
        disp.reply_waits.add(Deferred.resolved(None))
        return Empty()
    disp.register(Procedure.ADMIN_CLIENT_LIST, quick)
    assert isinstance(disp.dispatch(_ctx(), Call(Procedure.ADMIN_CLIENT_LIST, 4, Empty())),
                      Reply)


def test_a_failed_piece_of_work_fails_the_reply_and_the_handlers_error_comes_first(
        ) -> None:
    disp = Dispatcher(HelloPolicy("test", 0))
    started: list[Deferred] = []
    own = [Deferred(), Deferred()]
    _waiting_handler(disp, started, list(own))
    reply = disp.dispatch(_ctx(), _call())
    assert isinstance(reply, Deferred)
    write_failed = OperationFailed("cannot save the definition of 'x'")
    started[0].fail(write_failed)
    assert not reply.done  # the handler's own result is still to come
    refused = OperationInvalid("the guest refused")
    own[0].fail(refused)
    assert reply.error is refused
    # only the work failed: its error is the reply's
    reply = disp.dispatch(_ctx(), _call())
    assert isinstance(reply, Deferred)
    own[1].resolve(Empty())
    started[1].fail(write_failed)
    assert reply.error is write_failed


def test_outside_a_call_nothing_is_collected() -> None:
    disp = Dispatcher(HelloPolicy("test", 0))
    later = Deferred()
    disp.reply_waits.add(later)  # (a QMP answer's callback: it chains the work itself)
    started: list[Deferred] = []
    _waiting_handler(disp, started)
    reply = disp.dispatch(_ctx(), _call())
    started[0].resolve(None)
    assert isinstance(reply, Deferred) and reply.done  # `later` was never waited for
