"""The memory and vCPU procedures (setmem, setmaxmem, dommemstat, setvcpus, vcpuinfo):
numbers, access classes, and their payloads byte for byte, written with struct here
independently of the code under test, then decoded by a Connection and round-tripped."""

from __future__ import annotations

import struct
import uuid

import pytest
from wire_helpers import ConnectionPair, frame

import protocol
from protocol import payloads as p
from protocol.procedures import PROCEDURES, Procedure

UUID = uuid.UUID("8f3c5a2e-1b7d-4c9e-a6f0-2d4b8e1c7a93").bytes
DOM = p.DomainRef("web", UUID, 3)


def ref_bytes() -> bytes:
    return struct.pack(">I", 3) + b"web" + UUID + struct.pack(">i", 3)


def test_numbers_and_access() -> None:
    assert [Procedure.DOMAIN_SET_MEMORY, Procedure.DOMAIN_MEMORY_STATS,
            Procedure.DOMAIN_SET_VCPUS, Procedure.DOMAIN_GET_VCPUS] == [140, 141, 142, 143]
    # the setters are refused on a read-only connection, the getters are not
    for proc in (Procedure.DOMAIN_SET_MEMORY, Procedure.DOMAIN_SET_VCPUS):
        assert PROCEDURES[proc].mutates and not PROCEDURES[proc].readonly_ok
    for proc in (Procedure.DOMAIN_MEMORY_STATS, Procedure.DOMAIN_GET_VCPUS):
        assert PROCEDURES[proc].readonly_ok
    for proc in (140, 141, 142, 143):
        assert PROCEDURES[proc].since == 1 and not PROCEDURES[proc].admin


def _server_receives(proc: Procedure, payload: bytes) -> protocol.Call:
    pair = ConnectionPair()
    pair.server.receive_data(frame(proc, payload, serial=9))
    got = pair.server.next_message()
    assert isinstance(got, protocol.Call) and got.serial == 9
    return got


def test_set_memory_args_on_the_wire() -> None:
    raw = ref_bytes() + struct.pack(">QI", 524288, 2 | 4)
    got = _server_receives(Procedure.DOMAIN_SET_MEMORY, raw)
    assert got.args == p.MemoryArgs(DOM, 524288, 6)
    assert ConnectionPair().client.send(
        protocol.Call(Procedure.DOMAIN_SET_MEMORY, 9, p.MemoryArgs(DOM, 524288, 6))) == \
        frame(Procedure.DOMAIN_SET_MEMORY, raw, serial=9)


def test_set_vcpus_args_on_the_wire() -> None:
    raw = ref_bytes() + struct.pack(">II", 2, 2)
    got = _server_receives(Procedure.DOMAIN_SET_VCPUS, raw)
    assert got.args == p.VcpusArgs(DOM, 2, 2)


def test_memory_stats_reply_on_the_wire() -> None:
    pair = ConnectionPair()
    reply = p.MemoryStatsReply([p.MemoryStat(6, 262144), p.MemoryStat(7, 183012)])
    pair.client.send(protocol.Call(Procedure.DOMAIN_MEMORY_STATS, 2, p.DomainFlagsArgs(DOM)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_MEMORY_STATS, 2, reply))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(">IIQIQ", 2, 6, 262144, 7, 183012)
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == reply
    assert [p.MEMORY_STAT_TAGS[s.tag] for s in got.result.stats] == ["actual", "rss"]


def test_vcpu_info_reply_on_the_wire() -> None:
    pair = ConnectionPair()
    info = p.VcpuInfo(number=1, state=1, cpu_time_ns=2_500_000_000, cpu=3, cpumap=b"\x0b")
    pair.client.send(protocol.Call(Procedure.DOMAIN_GET_VCPUS, 2, p.DomainFlagsArgs(DOM)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_GET_VCPUS, 2,
                                          p.VcpuInfoReply([info])))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(">IIiQiI", 1, 1, 1, 2_500_000_000, 3, 1) \
        + b"\x0b"
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == p.VcpuInfoReply([info])


@pytest.mark.parametrize("payload", [
    p.MemoryArgs(DOM, 2**64 - 1, 0), p.VcpusArgs(DOM, 2**32 - 1, 0),
])
def test_extreme_values_round_trip(payload: p.MemoryArgs | p.VcpusArgs) -> None:
    proc = Procedure.DOMAIN_SET_MEMORY if isinstance(payload, p.MemoryArgs) \
        else Procedure.DOMAIN_SET_VCPUS
    got = ConnectionPair().send_to_server(protocol.Call(proc, 5, payload))
    assert isinstance(got, protocol.Call) and got.args == payload


def test_memory_stat_tags_are_libvirts() -> None:
    """VIR_DOMAIN_MEMORY_STAT_* values and virsh dommemstat's names for them."""
    assert p.MEMORY_STAT_TAGS == {
        0: "swap_in", 1: "swap_out", 2: "major_fault", 3: "minor_fault", 4: "unused",
        5: "available", 6: "actual", 7: "rss", 8: "usable", 9: "last_update",
        10: "disk_caches", 11: "hugetlb_pgalloc", 12: "hugetlb_pgfail"}
