"""Fuzz the wire protocol against a real daemon over its unix socket.

Two generators, each a bounded number of connections (one per example):

* raw byte strings, and byte strings shaped like a header with random fields;
* a valid HELLO followed by valid CALL frames (every procedure in the table, minimal
  arguments plus a few realistic ones) that are then mutated: bytes flipped, frames
  truncated, the length, procedure, type or status field replaced, bytes inserted.

Each example half-closes its side after sending, so the daemon must answer what it can
and close the connection; every byte it sent back must parse as well-formed frames.
After all examples: the daemon is alive, a well-behaved client gets correct answers, its
RSS stayed bounded, and its log shows no unexpected exception (protocol warnings are
expected and fine).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    CLOSED,
    CURRENT_VERSION,
    NEED_DATA,
    PROGRAM,
    Call,
    Connection,
    Procedure,
    ProtocolError,
    Reply,
    Role,
)
from protocol import payloads as pl
from tests.helpers.daemon import DaemonProcess
from tests.qemud.wire import RawClient, hello_frame

from .conftest import assert_log_clean, bare_domain_xml, guest_name
from .fuzz_seeds import client_conn, seed_frames

EXAMPLES_RAW = 400
EXAMPLES_MUTATED = 800
#: how long the daemon may take to close a connection whose client half-closed
CLOSE_WITHIN = 10.0
#: RSS growth allowed over all examples (generous: the allocator keeps pools)
RSS_GROWTH_KIB = 24 * 1024

FUZZ_SETTINGS = settings(max_examples=EXAMPLES_MUTATED, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("fuzz-qemud"), {
        # no pings (they would only add frames to parse); short frame deadline
        "limits": {"keepalive_interval": 0, "frame_deadline": 2.0},
        # belt and braces: nothing a fuzzed call does may touch the host's power
        "appliance": {"shutdown_host_command": ["true"], "reboot_host_command": ["true"]},
    }).start()
    # warm up allocator pools and import paths before the RSS baseline
    for _ in range(100):
        _exchange(d, hello_frame() + seed_frames()[0])
    d.baseline_rss = d.rss_kib()  # type: ignore[attr-defined]
    yield d
    try:
        d.stop()
    except Exception:
        d.kill()


# -- one connection --------------------------------------------------------------------

def _exchange(d: DaemonProcess, data: bytes) -> bytes:
    """Send ``data``, half-close, return everything the daemon sent until it closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CLOSE_WITHIN)
        s.connect(str(d.rw_socket))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon already refused what it saw and closed
        received = bytearray()
        deadline = time.monotonic() + CLOSE_WITHIN
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break  # the daemon closed: what we want
            if chunk:
                received += chunk
            if chunk is None or time.monotonic() > deadline:
                raise AssertionError(
                    f"daemon did not close the connection within {CLOSE_WITHIN} s after "
                    f"the client half-closed; sent {data[:64].hex()}... ({len(data)} bytes)")
        return bytes(received)


def _assert_well_formed(out: bytes, sent: bytes) -> None:
    """Everything the daemon sends must parse as frames a client understands."""
    conn = Connection(Role.CLIENT)
    conn.receive_data(out)
    conn.receive_data(b"")
    while True:
        try:
            msg = conn.next_message()
        except ProtocolError as exc:
            raise AssertionError(f"daemon sent a malformed frame ({exc}) in reply to "
                                 f"{sent[:80].hex()}: {out[:200].hex()}") from None
        if msg is CLOSED or msg is NEED_DATA:
            return


def _fuzz_one(d: DaemonProcess, data: bytes) -> None:
    _assert_well_formed(_exchange(d, data), data)


# -- strategies ------------------------------------------------------------------------

_HEADER = struct.Struct(">IIHBBII")

header_like = st.builds(
    lambda length, program, version, mtype, status, proc, serial, body: _HEADER.pack(
        length, program, version, mtype, status, proc, serial) + body,
    length=st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
    program=st.one_of(st.just(PROGRAM), st.integers(0, 2**32 - 1)),
    version=st.one_of(st.just(CURRENT_VERSION), st.integers(0, 2**16 - 1)),
    mtype=st.integers(0, 255),
    status=st.integers(0, 255),
    proc=st.one_of(st.sampled_from([int(p) for p in Procedure]), st.integers(0, 2**32 - 1)),
    serial=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=64),
)

#: one mutation: (kind, position, value, bytes)
mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "length", "procedure", "type", "status", "insert",
                     "version", "serial", "payload"]),
    st.integers(0, 10_000),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=48),
)
Mutation = tuple[str, int, int, bytes]


def _mutate(frame: bytes, mutations: list[Mutation]) -> bytes:
    buf = bytearray(frame)
    for kind, pos, value, blob in mutations:
        if not buf:
            break
        at = pos % len(buf)
        if kind == "payload" and len(buf) >= 20:
            # garbage body behind a consistent header: reaches the payload decoders
            keep = pos % (len(buf) - 19)
            buf[20 + keep:] = blob
            buf[0:4] = len(buf).to_bytes(4, "big")
        elif kind == "flip":
            buf[at] ^= (value % 255) + 1
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = value.to_bytes(4, "big")[: (value % 4) + 1]
        elif len(buf) >= 20:
            if kind == "length":
                # mostly near the real length (partial/overlong frames), sometimes huge
                new = len(buf) + (value % 64) - 32 if value % 4 else value
                buf[0:4] = (max(0, new) % 2**32).to_bytes(4, "big")
            elif kind == "procedure":
                buf[12:16] = value.to_bytes(4, "big")
            elif kind == "type":
                buf[10] = value % 256
            elif kind == "status":
                buf[11] = value % 256
            elif kind == "version":
                buf[8:10] = (value % 2**16).to_bytes(2, "big")
            elif kind == "serial":
                buf[16:20] = value.to_bytes(4, "big")
    return bytes(buf)


# -- the tests -------------------------------------------------------------------------

@settings(FUZZ_SETTINGS, max_examples=EXAMPLES_RAW)
@given(data=st.one_of(st.binary(min_size=1, max_size=512), header_like))
def test_random_bytes_before_hello(fuzz_daemon: DaemonProcess, data: bytes) -> None:
    _fuzz_one(fuzz_daemon, data)


@FUZZ_SETTINGS
@given(picks=st.lists(st.tuples(st.integers(0, 10_000), st.lists(mutation, max_size=4)),
                      min_size=1, max_size=4),
       trailer=st.booleans())
def test_mutated_frames_after_hello(fuzz_daemon: DaemonProcess,
                                    picks: list[tuple[int, list[Mutation]]],
                                    trailer: bool) -> None:
    seeds = seed_frames()
    body = b"".join(_mutate(seeds[i % len(seeds)], muts) for i, muts in picks)
    if trailer:  # a valid call after the damage: answered if the damage was not fatal
        body += client_conn().send(Call(Procedure.GET_URI, 0xBEEF, pl.Empty()))
    _fuzz_one(fuzz_daemon, hello_frame() + body)


def test_daemon_healthy_after_fuzzing(fuzz_daemon: DaemonProcess) -> None:
    """Runs after the two fuzz tests (file order): the daemon must be unharmed."""
    d = fuzz_daemon
    assert d.proc is not None and d.proc.poll() is None, "daemon died while being fuzzed"
    with RawClient(d.rw_socket, timeout=5) as good:
        for _ in range(20):
            reply = good.call(Procedure.NODE_INFO)
            assert isinstance(reply, Reply) and reply.result.cpus >= 1
        reply = good.call(Procedure.GET_URI)
        assert isinstance(reply, Reply) and reply.result.value == "qemud:///session"
    with d.connect() as conn:
        name = guest_name("fuzz-check")
        dom = conn.define_xml(bare_domain_xml(name))
        assert conn.lookup_by_name(name).uuid == dom.uuid
        assert f"<name>{name}</name>" in dom.xml()
        dom.undefine()
        assert name not in {x.name for x in conn.list_domains()}
        clients = conn.client_list()
        assert len(clients) == 1, f"fuzz connections left behind: {clients}"
    grown = d.rss_kib() - d.baseline_rss  # type: ignore[attr-defined]
    assert grown < RSS_GROWTH_KIB, f"RSS grew {grown} KiB while fuzzing " \
                                   f"({d.baseline_rss} KiB before)"  # type: ignore
    log = d.log_text()
    assert "protocol error" in log, "the fuzzer never provoked a protocol error?"
    assert_log_clean(d)
