"""CONNECT_DOMAIN_XML_TO_NATIVE (domxml-to-native): its number, its access class (refused
read-only although it changes nothing, as libvirt's connect:write ACL), and its payloads
byte for byte, written with struct here independently of the code under test."""

from __future__ import annotations

import struct

from wire_helpers import ConnectionPair, frame

import protocol
from protocol import payloads as p
from protocol.procedures import PROCEDURES, Procedure

PROC = Procedure.CONNECT_DOMAIN_XML_TO_NATIVE
XML = "<domain type='qemu'><name>vm</name></domain>"


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def test_number_and_access() -> None:
    assert PROC == 182
    spec = PROCEDURES[PROC]
    assert spec.mutates and not spec.admin and not spec.readonly_ok
    assert spec.since == 1
    assert (spec.args, spec.reply) == (p.XMLToNativeArgs, p.StringReply)


def test_args_on_the_wire() -> None:
    raw = _string("qemu-argv") + _string(XML) + struct.pack(">I", 0)
    pair = ConnectionPair()
    pair.server.receive_data(frame(PROC, raw, serial=5))
    got = pair.server.next_message()
    assert isinstance(got, protocol.Call) and got.serial == 5
    assert got.args == p.XMLToNativeArgs("qemu-argv", XML, 0)
    assert ConnectionPair().client.send(
        protocol.Call(PROC, 5, p.XMLToNativeArgs("qemu-argv", XML))) == \
        frame(PROC, raw, serial=5)


def test_reply_on_the_wire() -> None:
    line = "/usr/bin/qemu-system-x86_64 -name guest=vm,debug-threads=on -S"
    pair = ConnectionPair()
    pair.client.send(protocol.Call(PROC, 2, p.XMLToNativeArgs("qemu-argv", XML)))
    raw = pair.server.send(protocol.Reply(PROC, 2, p.StringReply(line)))
    assert raw[protocol.HEADER_SIZE:] == _string(line)
    pair.client.receive_data(raw)
    got = pair.client.next_message()
    assert isinstance(got, protocol.Reply) and got.result == p.StringReply(line)
