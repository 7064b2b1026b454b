"""The job procedures (domjobinfo, domjobabort, domcontrol): numbers, access classes,
libvirt's enum values, and their payloads byte for byte, written with struct here
independently of the code under test, then decoded by a Connection and round-tripped."""

from __future__ import annotations

import struct
import uuid

from wire_helpers import ConnectionPair, frame

import protocol
from protocol import payloads as p
from protocol.procedures import PROCEDURES, Procedure

UUID = uuid.UUID("0b6f2c1a-7e4d-4a8b-9c3e-5f1d2a7b8c90").bytes
DOM = p.DomainRef("db", UUID, 7)


def ref_bytes() -> bytes:
    return struct.pack(">I", 2) + b"db" + UUID + struct.pack(">i", 7)


def test_numbers_and_access() -> None:
    assert [Procedure.DOMAIN_GET_JOB_INFO, Procedure.DOMAIN_ABORT_JOB,
            Procedure.DOMAIN_GET_CONTROL_INFO] == [146, 147, 148]
    # a read-only connection may look at the job, not abort it (as libvirt's)
    assert PROCEDURES[Procedure.DOMAIN_GET_JOB_INFO].readonly_ok
    assert PROCEDURES[Procedure.DOMAIN_GET_CONTROL_INFO].readonly_ok
    assert not PROCEDURES[Procedure.DOMAIN_ABORT_JOB].readonly_ok
    for proc in (146, 147, 148):
        assert PROCEDURES[proc].since == 1 and not PROCEDURES[proc].admin
        assert PROCEDURES[proc].args is p.DomainFlagsArgs


def test_enums_are_libvirts() -> None:
    assert [(e.name, e.value) for e in p.JobType] == [
        ("NONE", 0), ("BOUNDED", 1), ("UNBOUNDED", 2), ("COMPLETED", 3), ("FAILED", 4),
        ("CANCELLED", 5)]
    assert [(e.name, e.value) for e in p.JobOperation] == [
        ("UNKNOWN", 0), ("START", 1), ("SAVE", 2), ("RESTORE", 3), ("MIGRATION_IN", 4),
        ("MIGRATION_OUT", 5), ("SNAPSHOT", 6), ("SNAPSHOT_REVERT", 7), ("DUMP", 8),
        ("BACKUP", 9), ("SNAPSHOT_DELETE", 10)]
    assert [(e.name, e.value) for e in p.ControlState] == [
        ("OK", 0), ("JOB", 1), ("OCCUPIED", 2), ("ERROR", 3)]
    assert p.ControlErrorReason.MONITOR == 2 and p.ControlErrorReason.INTERNAL == 3


def test_abort_args_on_the_wire() -> None:
    raw = ref_bytes() + struct.pack(">I", 0)
    pair = ConnectionPair()
    pair.server.receive_data(frame(Procedure.DOMAIN_ABORT_JOB, raw, serial=4))
    got = pair.server.next_message()
    assert isinstance(got, protocol.Call) and got.args == p.DomainFlagsArgs(DOM, 0)
    assert ConnectionPair().client.send(protocol.Call(
        Procedure.DOMAIN_ABORT_JOB, 4, p.DomainFlagsArgs(DOM))) == \
        frame(Procedure.DOMAIN_ABORT_JOB, raw, serial=4)


def test_job_info_reply_on_the_wire() -> None:
    pair = ConnectionPair()
    reply = p.JobInfoReply(type=2, operation=9, time_elapsed_ms=1234, time_remaining_ms=0,
                           data_total=2**64 - 1, data_processed=1048576,
                           data_remaining=2**64 - 1 - 1048576)
    pair.client.send(protocol.Call(Procedure.DOMAIN_GET_JOB_INFO, 2, p.DomainFlagsArgs(DOM)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_GET_JOB_INFO, 2, reply))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(
        ">iiQQQQQ", 2, 9, 1234, 0, 2**64 - 1, 1048576, 2**64 - 1 - 1048576)
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == reply
    assert got.result.operation == p.JobOperation.BACKUP


def test_control_info_reply_on_the_wire() -> None:
    pair = ConnectionPair()
    reply = p.ControlInfoReply(state=3, details=2, state_time_ms=0)
    pair.client.send(protocol.Call(Procedure.DOMAIN_GET_CONTROL_INFO, 3,
                                   p.DomainFlagsArgs(DOM)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_GET_CONTROL_INFO, 3, reply))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(">IIQ", 3, 2, 0)
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == reply
