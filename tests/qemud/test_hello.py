"""Protocol rules the daemon enforces per connection, and that a bad client hurts only itself.

After every misbehaviour the next client must be served at once (``_served_promptly``).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from protocol import CURRENT_VERSION, ErrorCode, ErrorReply, MessageType, Procedure, Reply
from protocol.payloads import HelloArgs
from tests.helpers.daemon import wait_for
from tests.qemud.wire import RawClient, error_of, frame, hello_frame


def _served_promptly(daemon, limit: float = 2.0) -> None:
    started = time.monotonic()
    with RawClient(daemon.rw_socket, timeout=limit) as other:
        reply = other.call(Procedure.NODE_INFO, timeout=limit)
        assert isinstance(reply, Reply)
    assert time.monotonic() - started < limit


def test_call_before_hello_is_refused_and_connection_stays_usable(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket, hello=False) as c:
        c.send_bytes(frame(Procedure.NODE_INFO, 7))
        reply = c.recv()
        code, message = error_of(reply)
        assert code == ErrorCode.HELLO_REQUIRED
        assert reply.serial == 7 and "HELLO" in message
        c.send_bytes(hello_frame(serial=8))
        hello = c.recv()
        assert isinstance(hello, Reply) and hello.serial == 8
        assert hello.result.version == CURRENT_VERSION
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    _served_promptly(shared_daemon)


def test_hello_with_unknown_versions_names_them(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket, hello=False) as c:
        c.send_bytes(hello_frame(serial=1, versions=(99,)))
        reply = c.recv()
        code, message = error_of(reply)
        assert code == ErrorCode.UNSUPPORTED_VERSION and reply.serial == 1
        assert "99" in message and str(CURRENT_VERSION) in message, message
        # still not negotiated: calls are refused, a good HELLO works
        c.send_bytes(frame(Procedure.NODE_INFO, 2))
        assert error_of(c.recv())[0] == ErrorCode.HELLO_REQUIRED
        c.send_bytes(hello_frame(serial=3, versions=(99, CURRENT_VERSION)))
        hello = c.recv()
        assert isinstance(hello, Reply) and hello.result.version == CURRENT_VERSION
    _served_promptly(shared_daemon)


def test_library_reports_version_mismatch(shared_daemon, monkeypatch) -> None:
    import client
    import client.connection as cc
    monkeypatch.setattr(cc, "SUPPORTED_VERSIONS", (99,))
    with pytest.raises(client.ProtocolVersionError, match="99"):
        shared_daemon.connect()


def test_wrong_header_version_after_hello(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        c.send_bytes(frame(Procedure.NODE_INFO, 41, version=CURRENT_VERSION + 1))
        reply = c.recv()
        code, message = error_of(reply)
        assert code == ErrorCode.UNSUPPORTED_VERSION and reply.serial == 41
        assert "version" in message
        c._serials = iter(range(42, 100))
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    _served_promptly(shared_daemon)


def test_unknown_procedure_gets_error_with_same_serial(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        c.send_bytes(frame(9999, 12345))
        reply = c.recv()
        code, message = error_of(reply)
        assert reply.serial == 12345 and reply.procedure == 9999
        assert code == ErrorCode.RPC and "9999" in message
        # an event number is not a callable procedure either
        c.send_bytes(frame(Procedure.EVENT_LIFECYCLE, 12346))
        assert c.recv().serial == 12346
        assert isinstance(c.call(Procedure.GET_URI), Reply)
    _served_promptly(shared_daemon)


def test_malformed_payload_is_an_error_not_a_disconnect(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        # ADMIN_CLIENT_DISCONNECT wants a u64: give it 3 bytes
        c.send_bytes(frame(Procedure.ADMIN_CLIENT_DISCONNECT, 77, b"\x00\x01\x02"))
        reply = c.recv()
        assert reply.serial == 77 and "malformed" in error_of(reply)[1]
        # a reply-type frame from a client is refused too
        c.send_bytes(frame(Procedure.NODE_INFO, 78, msg_type=MessageType.REPLY))
        assert isinstance(c.recv(), ErrorReply)
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
    _served_promptly(shared_daemon)


def test_wrong_program_is_an_error(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        bad = bytearray(frame(Procedure.NODE_INFO, 5))
        bad[4:8] = struct.pack(">I", 0xDEADBEEF)
        c.send_bytes(bytes(bad))
        reply = c.recv()
        assert "program" in error_of(reply)[1] and reply.serial == 5
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",  # length field reads as ~1.2 GB
    b"\xff" * 64,
])
def test_garbage_gets_an_error_frame_then_close(shared_daemon, garbage: bytes) -> None:
    with RawClient(shared_daemon.rw_socket, hello=False) as c:
        c.send_bytes(garbage)
        seen = c.expect_closed(timeout=5)
        assert len(seen) == 1 and isinstance(seen[0], ErrorReply), seen
        assert "exceeds the limit" in seen[0].error.message
    _served_promptly(shared_daemon)


def test_length_below_header_size_is_fatal(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        c.send_bytes(struct.pack(">I", 8) + b"\x00" * 16)
        seen = c.expect_closed(timeout=5)
        assert [type(m) for m in seen] == [ErrorReply]
        assert "smaller than" in seen[0].error.message
    _served_promptly(shared_daemon)


def test_truncated_frame_then_eof(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        whole = frame(Procedure.NODE_INFO, 3)
        c.send_bytes(whole[:11])
        c.sock.shutdown(socket.SHUT_WR)
        c.expect_closed(timeout=5)
    wait_for(lambda: "connection closed inside a frame" in shared_daemon.log_text(),
             timeout=5, message="truncation logged")
    _served_promptly(shared_daemon)


def test_half_close_after_a_call_still_gets_the_reply(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        c.send_bytes(frame(Procedure.GET_HOSTNAME, 9))
        c.sock.shutdown(socket.SHUT_WR)
        seen = c.expect_closed(timeout=5)
        assert [type(m) for m in seen] == [Reply] and seen[0].serial == 9
        assert seen[0].result.value == socket.gethostname()


def test_abrupt_disconnect_mid_call_stream(shared_daemon) -> None:
    # many calls then a reset: the daemon must neither crash nor keep the client
    for _ in range(20):
        c = RawClient(shared_daemon.rw_socket)
        c.send_bytes(frame(Procedure.NODE_INFO, 100) * 500)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    _served_promptly(shared_daemon)
    assert "Traceback" not in shared_daemon.log_text()


def test_close_procedure_replies_then_closes(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        reply = c.call(Procedure.CLOSE)
        assert isinstance(reply, Reply)
        assert c.expect_closed(timeout=5) == []


def test_ping_before_hello_is_answered(shared_daemon) -> None:
    from protocol import Ping, Pong
    with RawClient(shared_daemon.rw_socket, hello=False) as c:
        c.send(Ping())
        assert isinstance(c.recv(), Pong)
        c.send_bytes(hello_frame())
        assert isinstance(c.recv(), Reply)


def test_hello_reply_fields(shared_daemon) -> None:
    with RawClient(shared_daemon.rw_socket) as c:
        h = c.hello_reply
        assert h.server_name.startswith("qemud ") and h.readonly is False
        assert h.keepalive_interval == 5  # the default limits.keepalive_interval
        # a second HELLO (accepted or refused) leaves the connection usable
        c.call(Procedure.HELLO, HelloArgs([CURRENT_VERSION]))
        assert isinstance(c.call(Procedure.NODE_INFO), Reply)
