"""Dispatcher.wrap: how the appliance layer puts a check in front of a driver procedure."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from protocol import Call, ErrorReply, Procedure, Reply
from protocol.fields import Empty
from protocol.payloads import ClientIdArgs
from qemud.dispatch import Dispatcher, HelloPolicy
from qemud.errors import OperationInvalid


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
