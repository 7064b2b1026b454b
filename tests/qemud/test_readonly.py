"""Read-only connections: the procedure table's flags decide, for every procedure."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol import PROCEDURES, Connection, ErrorCode, Kind, Procedure, Reply, Role
from tests.helpers.daemon import DaemonProcess
from tests.qemud.wire import RawClient, error_of, frame, hello_frame, minimal_instance

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


# Run as an unprivileged uid in a fresh interpreter (no fork of the threaded test process):
# stdlib only, it sends the frames it is given and prints what came back.
_PROBE = r"""
import json, socket, sys
rw, ro, frames = sys.argv[1], sys.argv[2], [bytes.fromhex(f) for f in sys.argv[3:]]
out = {}
try:
    socket.socket(socket.AF_UNIX).connect(rw)
    out["rw"] = "connected"
except PermissionError:
    out["rw"] = "denied"

def complete_frames(buf):
    off = n = 0
    while off + 4 <= len(buf) and off + int.from_bytes(buf[off:off + 4], "big") <= len(buf):
        off += int.from_bytes(buf[off:off + 4], "big")
        n += 1
    return n

s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(ro)
data = b""
for i, f in enumerate(frames):  # one reply per frame
    s.sendall(f)
    while complete_frames(data) < i + 1:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
out["ro"] = data.hex()
print(json.dumps(out))
"""


def test_unprivileged_user_reaches_only_the_ro_socket(traversable_daemon) -> None:
    d = traversable_daemon
    assert stat.S_IMODE(os.stat(d.rw_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.ro_socket).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(d.run_dir).st_mode) == 0o755
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged uid")
    # a system interpreter: the venv's may not be reachable for that uid
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no system python3 to run as an unprivileged uid")
    proto = Connection(Role.CLIENT)
    frames = [hello_frame(1), frame(Procedure.NODE_INFO, 2),
              frame(Procedure.ADMIN_CLIENT_LIST, 3)]
    run = subprocess.run([python, "-I", "-c", _PROBE, str(d.rw_socket),
                          str(d.ro_socket), *(f.hex() for f in frames)],
                         user=65534, group=65534, extra_groups=[], capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["rw"] == "denied"
    proto.receive_data(bytes.fromhex(out["ro"]))
    hello, info, admin = (proto.next_message() for _ in range(3))
    assert isinstance(hello, Reply) and hello.result.readonly is True
    assert isinstance(info, Reply) and info.result.cpus >= 1
    assert error_of(admin) == (ErrorCode.OPERATION_DENIED, DENIED)
