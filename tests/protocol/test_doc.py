"""docs/PROTOCOL.md carries exactly the tables `python -m protocol.doc` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import protocol
from protocol import doc
from protocol.procedures import PROCEDURES

DOC = Path(protocol.__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
HINT = "stale: run `python -m protocol.doc --write docs/PROTOCOL.md`"


def test_procedure_table_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(doc.BEGIN) == text.count(doc.END) == 1
    assert doc.extract_block(text) == doc.procedure_table(), HINT


def test_constants_tables_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert doc.extract_block(text, doc.CONSTANTS_BEGIN, doc.CONSTANTS_END) == \
        doc.constants_tables(), HINT


def test_every_procedure_has_a_row() -> None:
    table = doc.procedure_table()
    for number, spec in PROCEDURES.items():
        assert f"| {number} | `{spec.procedure.name}` | {spec.kind.value} |" in table


def test_main_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "protocol.doc"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout == doc.procedure_table()


def test_check_and_write(tmp_path: Path) -> None:
    stale = tmp_path / "P.md"
    stale.write_text(f"# x\n{doc.BEGIN}\nold\n{doc.END}\ntext\n{doc.CONSTANTS_BEGIN}\n"
                     f"{doc.CONSTANTS_END}\nend\n", encoding="utf-8")
    assert doc.main(["--check", str(stale)]) == 1
    assert doc.main(["--write", str(stale)]) == 0
    assert doc.main(["--check", str(stale)]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("# x\n") and text.endswith("end\n") and "\ntext\n" in text
    assert doc.extract_block(text) == doc.procedure_table()
    assert doc.main(["--check", str(DOC)]) == 0


def test_missing_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        doc.extract_block("no markers here")


def test_undocumented_wire_type() -> None:
    from typing import Annotated
    with pytest.raises(TypeError):
        doc.wire_type(Annotated[int, object()])


def _example_frames() -> dict[str, bytes]:
    from protocol import payloads as p
    from protocol.procedures import Procedure as P
    client = protocol.Connection(protocol.Role.CLIENT)
    server = protocol.Connection(protocol.Role.SERVER)
    frames = {"hello-call": client.send(protocol.Call(P.HELLO, 1, p.HelloArgs([1], "qemush")))}
    server.accept_hello(p.HelloArgs([1]))
    frames["hello-reply"] = server.send(
        protocol.Reply(P.HELLO, 1, p.HelloReply(1, "qemud", False, 5)))
    client.receive_data(frames["hello-reply"])
    client.next_message()
    frames["lookup-call"] = client.send(
        protocol.Call(P.DOMAIN_LOOKUP_BY_NAME, 2, p.NameArgs("web")))
    frames["lookup-error"] = server.send(protocol.ErrorReply(
        P.DOMAIN_LOOKUP_BY_NAME, 2, p.ErrorPayload(protocol.ErrorCode.NO_DOMAIN,
                                                   protocol.ErrorDomain.QEMU,
                                                   protocol.ErrorLevel.ERROR,
                                                   "no domain 'web'")))
    frames["ping"] = server.send(protocol.Ping())
    return frames


def test_examples_are_what_the_implementation_sends() -> None:
    text = DOC.read_text(encoding="utf-8")
    found: dict[str, bytes] = {}
    for block in text.split("```text frame=")[1:]:
        name, _, rest = block.partition("\n")
        body = rest.split("```", 1)[0]
        found[name] = bytes.fromhex("".join(line.split(";", 1)[0] for line in
                                            body.splitlines()).replace(" ", ""))
    assert found == _example_frames()
