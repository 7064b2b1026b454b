"""The audit log: one line per refusal and per mutating call, with who/what/outcome."""

from __future__ import annotations

import logging
import os
import re
from types import SimpleNamespace

from protocol import PROCEDURES, Call, ErrorReply, Kind, Procedure, Reply
from protocol.payloads import ClientIdArgs
from qemud.dispatch import Dispatcher, HelloPolicy
from tests.helpers.daemon import wait_for
from tests.qemud.wire import RawClient, minimal_instance

FORBIDDEN = [s for s in PROCEDURES.values() if s.kind is Kind.CALL and not s.readonly_ok]


def _audit_lines(daemon) -> list[str]:
    path = daemon.audit_file
    return path.read_text().splitlines() if path.exists() else []


def test_each_ro_refusal_is_audited(shared_daemon) -> None:
    daemon = shared_daemon
    identity = f"pid={os.getpid()} uid={os.getuid()}"
    before = len(_audit_lines(daemon))
    with RawClient(daemon.ro_socket) as ro:
        for spec in FORBIDDEN:
            ro.call(spec.procedure, minimal_instance(spec.args))
        ro.call(Procedure.NODE_INFO)  # reads are not audited

    def new_lines() -> list[str] | None:
        lines = _audit_lines(daemon)[before:]
        return lines if len(lines) >= len(FORBIDDEN) else None
    lines = wait_for(new_lines, timeout=5, message="audit lines for every refusal")
    assert len(lines) == len(FORBIDDEN), "\n".join(lines)
    for spec, line in zip(FORBIDDEN, lines, strict=True):
        assert f"identity='{identity}'" in line
        assert f"proc={spec.procedure.name} " in line
        assert "result=error code=29 'operation forbidden: read-only connection'" in line
    assert not any("NODE_INFO" in ln for ln in _audit_lines(daemon))


def test_mutating_call_on_rw_is_audited(shared_daemon) -> None:
    daemon = shared_daemon
    with RawClient(daemon.rw_socket) as admin, RawClient(daemon.rw_socket) as victim:
        clients = admin.call(Procedure.ADMIN_CLIENT_LIST).result.clients
        victim_id = max(c.id for c in clients)
        reply = admin.call(Procedure.ADMIN_CLIENT_DISCONNECT, ClientIdArgs(victim_id))
        assert isinstance(reply, Reply)
        # a mutating call that fails is audited with its error
        bad = admin.call(Procedure.ADMIN_CLIENT_DISCONNECT, ClientIdArgs(999999))
        assert isinstance(bad, ErrorReply)
        victim.expect_closed()
    line = wait_for(lambda: [ln for ln in _audit_lines(daemon)
                             if f"target='{victim_id}' result=ok" in ln],
                    timeout=5, message="audit line for the disconnect")[0]
    assert re.search(r"client=\d+ transport=unix identity='pid=\d+ uid=\d+' "
                     r"proc=ADMIN_CLIENT_DISCONNECT", line), line
    failed = [ln for ln in _audit_lines(daemon) if "target='999999'" in ln]
    assert len(failed) == 1 and "result=error code=8" in failed[0], failed


def test_crashing_mutating_handler_is_still_audited(caplog) -> None:
    # in-process: a handler bug must not leave a mutation unaudited
    disp = Dispatcher(HelloPolicy("test", 0))

    def boom(ctx, args):
        raise RuntimeError("half done")

    disp.register(Procedure.ADMIN_CLIENT_DISCONNECT, boom)
    ctx = SimpleNamespace(id=7, kind="unix", identity="pid=1 uid=0", readonly=False)
    with caplog.at_level(logging.INFO, logger="qemud.audit"):
        reply = disp.dispatch(ctx, Call(Procedure.ADMIN_CLIENT_DISCONNECT, 3, ClientIdArgs(5)))
    assert isinstance(reply, ErrorReply) and reply.error.code == 1
    audit = [r.getMessage() for r in caplog.records if r.name == "qemud.audit"]
    assert len(audit) == 1 and "proc=ADMIN_CLIENT_DISCONNECT" in audit[0] \
        and "result=error code=1" in audit[0], audit
