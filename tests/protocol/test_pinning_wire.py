"""The CPU pinning procedures (vcpupin, emulatorpin): numbers, access classes, and their
payloads byte for byte, written with struct here independently of the code under test,
then decoded by a Connection and round-tripped."""

from __future__ import annotations

import struct
import uuid

from wire_helpers import ConnectionPair, frame

import protocol
from protocol import payloads as p
from protocol.procedures import PROCEDURES, Procedure

UUID = uuid.UUID("8f3c5a2e-1b7d-4c9e-a6f0-2d4b8e1c7a93").bytes
DOM = p.DomainRef("web", UUID, 3)
PINS = (Procedure.DOMAIN_PIN_VCPU, Procedure.DOMAIN_GET_VCPU_PIN_INFO,
        Procedure.DOMAIN_PIN_EMULATOR, Procedure.DOMAIN_GET_EMULATOR_PIN_INFO)


def ref_bytes() -> bytes:
    return struct.pack(">I", 3) + b"web" + UUID + struct.pack(">i", 3)


def test_numbers_and_access() -> None:
    assert list(PINS) == [170, 171, 172, 173]
    for proc in (Procedure.DOMAIN_PIN_VCPU, Procedure.DOMAIN_PIN_EMULATOR):
        assert PROCEDURES[proc].mutates and not PROCEDURES[proc].readonly_ok
    for proc in (Procedure.DOMAIN_GET_VCPU_PIN_INFO, Procedure.DOMAIN_GET_EMULATOR_PIN_INFO):
        assert PROCEDURES[proc].readonly_ok
    for proc in PINS:
        assert PROCEDURES[proc].since == 1 and not PROCEDURES[proc].admin


def _server_receives(proc: Procedure, payload: bytes) -> protocol.Call:
    pair = ConnectionPair()
    pair.server.receive_data(frame(proc, payload, serial=9))
    got = pair.server.next_message()
    assert isinstance(got, protocol.Call) and got.serial == 9
    return got


def test_pin_vcpu_args_on_the_wire() -> None:
    # vCPU 1 on host CPUs 0 and 2 (libvirt's cpumap: one byte, bits 0 and 2), live
    raw = ref_bytes() + struct.pack(">II", 1, 1) + b"\x05" + struct.pack(">I", 1)
    got = _server_receives(Procedure.DOMAIN_PIN_VCPU, raw)
    assert got.args == p.PinVcpuArgs(DOM, 1, b"\x05", 1)
    assert ConnectionPair().client.send(
        protocol.Call(Procedure.DOMAIN_PIN_VCPU, 9, p.PinVcpuArgs(DOM, 1, b"\x05", 1))) == \
        frame(Procedure.DOMAIN_PIN_VCPU, raw, serial=9)


def test_pin_emulator_args_on_the_wire() -> None:
    raw = ref_bytes() + struct.pack(">I", 2) + b"\x01\x80" + struct.pack(">I", 2)
    got = _server_receives(Procedure.DOMAIN_PIN_EMULATOR, raw)
    assert got.args == p.PinEmulatorArgs(DOM, b"\x01\x80", 2)


def test_pin_info_replies_on_the_wire() -> None:
    pair = ConnectionPair()
    reply = p.VcpuPinInfoReply([p.VcpuPinInfo(0, b"\x01"), p.VcpuPinInfo(1, b"\x03")])
    pair.client.send(protocol.Call(Procedure.DOMAIN_GET_VCPU_PIN_INFO, 2,
                                   p.DomainFlagsArgs(DOM, 2)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_GET_VCPU_PIN_INFO, 2, reply))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(">III", 2, 0, 1) + b"\x01" + \
        struct.pack(">II", 1, 1) + b"\x03"
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == reply

    pair.client.send(protocol.Call(Procedure.DOMAIN_GET_EMULATOR_PIN_INFO, 3,
                                   p.DomainFlagsArgs(DOM)))
    raw = pair.server.send(protocol.Reply(Procedure.DOMAIN_GET_EMULATOR_PIN_INFO, 3,
                                          p.EmulatorPinInfoReply(b"\x02")))
    assert raw[protocol.HEADER_SIZE:] == struct.pack(">I", 1) + b"\x02"
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == p.EmulatorPinInfoReply(b"\x02")
