"""Read-only connections: the procedure table's flags decide, for every procedure."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol import PROCEDURES, ErrorCode, Kind, Procedure, Reply
from tests.helpers.daemon import DaemonProcess
from tests.qemud.wire import RawClient, error_of, minimal_instance

DENIED = "operation forbidden: read-only connection"
CALLS = [spec for spec in PROCEDURES.values() if spec.kind is Kind.CALL]
FORBIDDEN = [spec for spec in CALLS if not spec.readonly_ok]
ALLOWED = [spec for spec in CALLS
           if spec.readonly_ok and spec.procedure not in (Procedure.HELLO, Procedure.CLOSE)]


def test_table_has_both_kinds() -> None:
    # the loop below must actually exercise something on both sides
    assert len(FORBIDDEN) >= 10
    assert Procedure.ADMIN_CLIENT_LIST in {s.procedure for s in FORBIDDEN}
    assert Procedure.NODE_INFO in {s.procedure for s in ALLOWED}


def test_every_mutating_or_admin_procedure_is_refused_on_ro(shared_daemon) -> None:
    with RawClient(shared_daemon.ro_socket) as ro:
        assert ro.hello_reply.readonly is True
        for spec in FORBIDDEN:
            reply = ro.call(spec.procedure, minimal_instance(spec.args))
            code, message = error_of(reply)
            assert (code, message) == (ErrorCode.OPERATION_DENIED, DENIED), spec.procedure.name
            assert reply.procedure == spec.procedure
        # the connection is still good for reading
        reply = ro.call(Procedure.NODE_INFO)
        assert isinstance(reply, Reply) and reply.result.cpus >= 1


def test_readonly_ok_procedures_are_not_refused_on_ro(shared_daemon) -> None:
    with RawClient(shared_daemon.ro_socket) as ro:
        for spec in ALLOWED:
            reply = ro.call(spec.procedure, minimal_instance(spec.args))
            if not isinstance(reply, Reply):  # e.g. NO_SUPPORT without a driver, NO_DOMAIN
                assert reply.error.code != ErrorCode.OPERATION_DENIED, spec.procedure.name


def test_rw_socket_is_not_readonly(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as rw:
        assert rw.hello_reply.readonly is False
        reply = rw.call(Procedure.ADMIN_CLIENT_LIST)
        assert isinstance(reply, Reply)


def test_library_readonly_connection(shared_daemon) -> None:
    with shared_daemon.connect(readonly=True) as conn:
        assert conn.readonly
        with pytest.raises(client.ReadOnlyError) as info:
            conn.client_list()
        assert info.value.code == 29 and DENIED in info.value.message
        assert conn.node_info().memory_kib > 0


@pytest.fixture
def traversable_daemon() -> Iterator[DaemonProcess]:
    """A daemon whose run dir an unprivileged uid can reach (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="qemud-ro-"))
    os.chmod(root, 0o755)
    d = DaemonProcess(root)
    try:
        yield d.start()
    finally:
        try:
            d.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_unprivileged_user_reaches_only_the_ro_socket(traversable_daemon) -> None:
    d = traversable_daemon
    assert stat.S_IMODE(os.stat(d.rw_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.ro_socket).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(d.run_dir).st_mode) == 0o755
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    pid = os.fork()
    if pid == 0:  # child: become nobody and try both sockets
        code = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                RawClient(d.rw_socket, timeout=3).close()
                code |= 1  # must not be allowed
            except PermissionError:
                pass
            with RawClient(d.ro_socket, timeout=3) as ro:
                if ro.hello_reply.readonly is not True:
                    code |= 2
                if not isinstance(ro.call(Procedure.NODE_INFO), Reply):
                    code |= 4
                if error_of(ro.call(Procedure.ADMIN_CLIENT_LIST))[0] != 29:
                    code |= 16
        except BaseException:
            code |= 8
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "bits: 1 rw reachable, 2 not ro, " \
        "4 read failed, 8 crashed, 16 admin not refused"
