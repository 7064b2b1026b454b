"""The procedure table: integrity, access classes, and the evolution rules.

wire_v1.json pins what version 1 of the protocol puts on the wire: every procedure's
number, name, kind, access class and the flattened wire layout of its payloads. Tests
check the current table against it: numbers are never reused or renumbered, payloads only
grow at the end, access classes do not silently change. Adding a procedure or appending a
field passes without touching the file. Re-pin (``python tests/protocol/test_procedures.py
--write``) when a version is released, or for a deliberate change to a version that has
not been released yet.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest

from protocol import doc
from protocol.constants import CURRENT_VERSION, SUPPORTED_VERSIONS
from protocol.fields import Empty
from protocol.procedures import PROCEDURES, Kind, Procedure, spec_for

GOLDEN = Path(__file__).with_name("wire_v1.json")


def signature(tp: Any) -> list[str]:
    """The wire layout of ``tp`` as tokens; nested structs are inline, so they are spliced
    in (appending a field to a nested struct shifts what follows it: incompatible), and a
    list is one token holding its item layout (items have no length of their own)."""
    if typing.get_origin(tp) is Annotated:
        return [doc.wire_type(tp)]
    if typing.get_origin(tp) is list:
        return [f"list<{' '.join(signature(typing.get_args(tp)[0]))}>"]
    hints = typing.get_type_hints(tp, include_extras=True)
    out: list[str] = []
    for f in dataclasses.fields(tp):
        out += signature(hints[f.name])
    return out


def snapshot() -> dict[str, Any]:
    return {str(number): {
        "name": spec.procedure.name, "kind": spec.kind.value, "mutates": spec.mutates,
        "admin": spec.admin, "since": spec.since,
        "args": signature(spec.args), "reply": signature(spec.reply),
    } for number, spec in sorted(PROCEDURES.items())}


def test_table_integrity() -> None:
    assert [s.procedure for s in PROCEDURES.values()] == sorted(Procedure)
    assert len({p.name for p in Procedure}) == len(Procedure)
    assert PROCEDURES[1].procedure is Procedure.HELLO
    for number, spec in PROCEDURES.items():
        assert spec_for(number) is spec
        assert 0 < number < 2**32
        assert spec.since in SUPPORTED_VERSIONS and spec.since <= CURRENT_VERSION
        if spec.kind is Kind.EVENT:
            assert spec.reply is Empty and not spec.mutates and not spec.admin
    assert spec_for(0) is None and spec_for(9999) is None


def test_readonly_ok_is_derived_from_mutates_and_admin() -> None:
    for spec in PROCEDURES.values():
        assert spec.readonly_ok is (not spec.mutates and not spec.admin)
    assert PROCEDURES[Procedure.HELLO].readonly_ok
    assert PROCEDURES[Procedure.CLOSE].readonly_ok
    assert PROCEDURES[Procedure.EVENT_REGISTER].readonly_ok
    for proc in (Procedure.DOMAIN_DESTROY, Procedure.DOMAIN_OPEN_CONSOLE,
                 Procedure.DOMAIN_DEFINE_XML, Procedure.ADMIN_CLIENT_LIST,
                 Procedure.ADMIN_CLIENT_DISCONNECT):
        assert not PROCEDURES[proc].readonly_ok, proc


def test_spec_is_immutable() -> None:
    spec = PROCEDURES[Procedure.NODE_INFO]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mutates = True  # type: ignore[misc]


def _golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))["procedures"]
    return data


def test_procedure_numbers_are_never_reused_or_renumbered() -> None:
    now = snapshot()
    for number, old in _golden().items():
        assert number in now, f"procedure {number} ({old['name']}) was removed or renumbered"
        assert now[number]["name"] == old["name"], f"procedure {number} was renamed/reused"
        assert now[number]["kind"] == old["kind"]
        assert now[number]["since"] == old["since"]


def test_access_classes_do_not_change_silently() -> None:
    now = snapshot()
    for number, old in _golden().items():
        assert (now[number]["mutates"], now[number]["admin"]) == (old["mutates"], old["admin"]), \
            old["name"]


@pytest.mark.parametrize("part", ["args", "reply"])
def test_payloads_only_grow_at_the_end(part: str) -> None:
    now = snapshot()
    for number, old in _golden().items():
        pinned, current = old[part], now[number][part]
        assert current[:len(pinned)] == pinned, (
            f"{old['name']} {part}: {pinned} -> {current}: fields may only be appended "
            "(see the module docstring to re-pin an unreleased version)")


def test_new_procedures_say_since_when() -> None:
    """A procedure the golden file does not know cannot predate the pinned ones."""
    golden = _golden()
    newest = max(entry["since"] for entry in golden.values())
    for number, spec in PROCEDURES.items():
        if str(number) not in golden:
            assert newest <= spec.since <= CURRENT_VERSION, (
                f"{spec.procedure.name}: since={spec.since}; new procedures belong to "
                f"version {newest} or later")


def test_signature_examples() -> None:
    from protocol import payloads as p
    assert signature(p.DomainFlagsArgs) == ["string", "uuid", "s32", "u32"]
    assert signature(p.ListDomainsReply) == ["list<string uuid s32 u8 u8 bool bool>"]
    assert signature(Empty) == []


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in snapshot().items())
    GOLDEN.write_text(
        '{\n "about": "Wire layout of protocol version 1; see tests/protocol/'
        'test_procedures.py",\n "procedures": {\n' + rows + "\n }\n}\n", encoding="utf-8")
