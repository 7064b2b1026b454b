"""Valid frames to mutate: one CALL per procedure of the table (minimal arguments) and a
few realistic ones, for the hypothesis fuzzer (test_fuzz_protocol) and the atheris
target's seed corpus (fuzz_protocol_atheris.py).
"""

from __future__ import annotations

from protocol import CURRENT_VERSION, Call, Connection, Procedure, Role
from protocol import payloads as pl
from protocol.procedures import Kind, spec_for
from tests.qemud.wire import minimal_instance

from .conftest import NO_GUEST_EMULATOR, bare_domain_xml, guest_name

__all__ = ["client_conn", "seed_frames"]


def client_conn() -> Connection:
    conn = Connection(Role.CLIENT)
    conn.version = CURRENT_VERSION  # as if HELLO had been answered
    return conn


_SEEDS: list[bytes] = []


def seed_frames() -> list[bytes]:
    """One valid CALL frame per procedure (minimal args) plus realistic ones."""
    if _SEEDS:
        return _SEEDS
    conn = client_conn()
    serial = 100
    for proc in Procedure:
        spec = spec_for(proc)
        if spec is None or spec.kind is not Kind.CALL:
            continue
        serial += 1
        _SEEDS.append(conn.send(Call(proc, serial, minimal_instance(spec.args))))
    name = guest_name("fuzz")
    # a definable domain whose emulator launches no guest: a mutated create cannot start QEMU
    xml = bare_domain_xml(name, emulator=NO_GUEST_EMULATOR)
    ref = pl.DomainRef(name, bytes(16), -1)
    realistic = [
        Call(Procedure.GET_URI, 1, pl.Empty()),
        Call(Procedure.NODE_INFO, 2, pl.Empty()),
        Call(Procedure.DOMAIN_DEFINE_XML, 3, pl.XMLFlagsArgs(xml, 0)),
        Call(Procedure.DOMAIN_LOOKUP_BY_NAME, 4, pl.NameArgs(name)),
        Call(Procedure.DOMAIN_GET_XML, 5, pl.DomainFlagsArgs(ref, 0)),
        Call(Procedure.DOMAIN_LIST, 6, pl.ListDomainsArgs(0)),
        Call(Procedure.EVENT_REGISTER, 7, pl.EventRegisterArgs(0, b"")),
        Call(Procedure.DOMAIN_SET_AUTOSTART, 8, pl.AutostartArgs(ref, False)),
        Call(Procedure.HELLO, 9, pl.HelloArgs([CURRENT_VERSION], "again")),
    ]
    _SEEDS.extend(conn.send(c) for c in realistic)
    return _SEEDS
