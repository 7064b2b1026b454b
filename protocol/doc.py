"""Generate the tables of docs/PROTOCOL.md from the protocol package itself.

::

    python -m protocol.doc                          # the procedure table (stdout)
    python -m protocol.doc --constants              # the constants tables (stdout)
    python -m protocol.doc --write docs/PROTOCOL.md # rewrite both generated blocks in place
    python -m protocol.doc --check docs/PROTOCOL.md # exit status 1 if the file is stale

The procedure table is derived from :data:`protocol.procedures.PROCEDURES` and the payload
dataclasses' annotations; the constants tables from :mod:`protocol.constants`. The text
between the marker comments in docs/PROTOCOL.md is exactly this output, and a test
(tests/protocol/test_doc.py) fails when it is not, so the document cannot go stale.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

from . import constants as c
from . import fields
from . import payloads as p
from .procedures import PROCEDURES, Kind, ProcedureSpec

__all__ = [
    "BEGIN", "END", "CONSTANTS_BEGIN", "CONSTANTS_END", "LIBVIRT_EQUIVALENTS", "wire_type",
    "struct_fields", "procedure_table", "constants_tables", "extract_block", "replace_block",
    "main",
]

BEGIN = "<!-- BEGIN PROCEDURE TABLE -->"
END = "<!-- END PROCEDURE TABLE -->"
CONSTANTS_BEGIN = "<!-- BEGIN CONSTANTS -->"
CONSTANTS_END = "<!-- END CONSTANTS -->"

_LEAVES: list[tuple[Any, str]] = [
    (fields.U8, "u8"), (fields.U16, "u16"), (fields.U32, "u32"), (fields.U64, "u64"),
    (fields.S32, "s32"), (fields.S64, "s64"), (fields.F64, "f64"), (fields.Bool, "bool"),
    (fields.Str, "string"), (fields.Blob, "blob"), (fields.UUIDBytes, "uuid"),
]


def wire_type(tp: Any) -> str:
    """The spec's name for annotation ``tp``: ``u32``, ``list<DomainRef>``, ``DomainRef``."""
    if typing.get_origin(tp) is Annotated:
        for alias, name in _LEAVES:
            if tp == alias:
                return name
        raise TypeError(f"undocumented wire type {tp!r}: add it to protocol/doc.py")
    if typing.get_origin(tp) is list:
        return f"list<{wire_type(typing.get_args(tp)[0])}>"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp.__name__
    raise TypeError(f"unsupported wire type {tp!r}")


def struct_fields(cls: type) -> list[tuple[str, str]]:
    """(name, wire type) of each field of payload class ``cls``, in wire order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f.name, wire_type(hints[f.name])) for f in dataclasses.fields(cls)]


def _nested(tp: Any) -> list[type]:
    """Payload classes reachable from ``tp``'s fields (not ``tp`` itself), in field order."""
    found: list[type] = []
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            found.append(tp)
            found.extend(_nested(tp))
        return found
    if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return found
    hints = typing.get_type_hints(tp, include_extras=True)
    for f in dataclasses.fields(tp):
        sub = hints[f.name]
        if typing.get_origin(sub) is list or (isinstance(sub, type)
                                              and dataclasses.is_dataclass(sub)):
            if isinstance(sub, type):
                found.append(sub)
            found.extend(_nested(sub))
    return found


def _fields_text(cls: type) -> str:
    return ", ".join(f"`{name}: {tp}`" for name, tp in struct_fields(cls))


def _describe(cls: type) -> str:
    body = _fields_text(cls)
    return f"`{cls.__name__}` ({body})" if body else f"`{cls.__name__}` (no fields)"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _row(spec: ProcedureSpec) -> str:
    proc = spec.procedure
    if spec.kind is Kind.EVENT:
        args, reply = f"body: {_describe(spec.args)}", "none (events are not answered)"
    else:
        args, reply = _describe(spec.args), _describe(spec.reply)
    return (f"| {proc.value} | `{proc.name}` | {spec.kind.value} | {args} | {reply} | "
            f"{_yes(spec.mutates)} | {_yes(spec.admin)} | {spec.since} | {spec.doc} |")


def procedure_table() -> str:
    """The generated part of docs/PROTOCOL.md between BEGIN and END (no markers)."""
    lines = [
        "| No. | Procedure | Kind | Arguments (call) / body (event) | Reply | Mutates "
        "| Admin | Since | Notes |",
        "|---:|---|---|---|---|---|---|---:|---|",
    ]
    specs = sorted(PROCEDURES.values(), key=lambda s: s.procedure.value)
    lines += [_row(spec) for spec in specs]

    nested: list[type] = []
    for spec in specs:
        for cls in (*_nested(spec.args), *_nested(spec.reply)):
            if cls not in nested:
                nested.append(cls)
    lines += [
        "",
        "Structures used inside the payloads above, and `ErrorPayload`, the body of every",
        "frame whose status is ERROR. A structure is encoded inline: its fields in this",
        "order, with no length or tag of its own.",
        "",
        "| Structure | Fields (wire order) |",
        "|---|---|",
    ]
    for cls in [*nested, p.ErrorPayload]:
        lines.append(f"| `{cls.__name__}` | {_fields_text(cls)} |")
    readonly = [s.procedure.name for s in specs if s.kind is Kind.CALL and s.readonly_ok]
    lines += [
        "",
        f"A read-only connection may make the {len(readonly)} calls with Mutates = no and",
        "Admin = no; every other call is refused with `OPERATION_DENIED`. STREAM frames",
        "carry raw bytes (`StreamChunk.data` is the whole frame body, without a length).",
    ]
    return "\n".join(lines) + "\n"


# --- constants ---------------------------------------------------------------------------

def _own_above(limit: int) -> Callable[[enum.Enum], bool]:
    def own(member: enum.Enum) -> bool:
        return int(member.value) >= limit
    return own


def _own_names(*names: str) -> Callable[[enum.Enum], bool]:
    def own(member: enum.Enum) -> bool:
        return member.name in names
    return own


def _never(member: enum.Enum) -> bool:
    return False


#: (enum, libvirt constant prefix or None, which members are qemud's own). tests compare
#: every other member with the installed libvirt-python (``libvirt.<prefix><NAME>``).
LIBVIRT_EQUIVALENTS: list[tuple[type[enum.Enum], str | None, Callable[[enum.Enum], bool]]] = [
    (c.MessageType, None, _never),
    (c.Status, None, _never),
    (c.KeepaliveProc, None, _never),
    (c.HelloFlags, None, _never),
    (c.ErrorCode, "VIR_ERR_", _own_above(1000)),
    (c.ErrorDomain, "VIR_FROM_", _own_above(1000)),
    (c.ErrorLevel, "VIR_ERR_", _never),
    (c.DomainState, "VIR_DOMAIN_", _never),
    (c.RunningReason, "VIR_DOMAIN_RUNNING_", _never),
    (c.PausedReason, "VIR_DOMAIN_PAUSED_", _never),
    (c.ShutdownReason, "VIR_DOMAIN_SHUTDOWN_", _never),
    (c.ShutoffReason, "VIR_DOMAIN_SHUTOFF_", _never),
    (c.CrashedReason, "VIR_DOMAIN_CRASHED_", _never),
    (c.EventId, "VIR_DOMAIN_EVENT_ID_", _own_above(1000)),
    (c.LifecycleEvent, "VIR_DOMAIN_EVENT_", _never),
    (c.DefinedDetail, "VIR_DOMAIN_EVENT_DEFINED_", _never),
    (c.UndefinedDetail, "VIR_DOMAIN_EVENT_UNDEFINED_", _never),
    (c.StartedDetail, "VIR_DOMAIN_EVENT_STARTED_", _never),
    (c.SuspendedDetail, "VIR_DOMAIN_EVENT_SUSPENDED_", _never),
    (c.ResumedDetail, "VIR_DOMAIN_EVENT_RESUMED_", _never),
    (c.StoppedDetail, "VIR_DOMAIN_EVENT_STOPPED_", _never),
    (c.ShutdownDetail, "VIR_DOMAIN_EVENT_SHUTDOWN_", _never),
    (c.CrashedDetail, "VIR_DOMAIN_EVENT_CRASHED_", _never),
    (c.ListFlags, "VIR_CONNECT_LIST_DOMAINS_", _never),
    (c.ShutdownFlags, "VIR_DOMAIN_SHUTDOWN_", _own_names("DESTROY_ON_TIMEOUT")),
    (c.RebootFlags, "VIR_DOMAIN_REBOOT_", _never),
    (c.UndefineFlags, "VIR_DOMAIN_UNDEFINE_", _never),
    (c.MetadataType, "VIR_DOMAIN_METADATA_", _never),
    (c.TypedParamKind, None, _never),
]


def _class_docs() -> dict[str, str]:
    """First docstring line of each class in constants.py, read from the source so that
    the output does not depend on how a Python version fills in an enum's __doc__."""
    tree = ast.parse(Path(c.__file__).read_text(encoding="utf-8"))
    docs = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                docs[node.name] = doc.strip().splitlines()[0].replace("``", "`")
    return docs


def _enum_table(cls: type[enum.Enum], prefix: str | None,
                own: Callable[[enum.Enum], bool], doc: str | None) -> list[str]:
    lines = [f"#### {cls.__name__}", ""]
    if doc:
        lines += [doc, ""]
    if prefix is None:
        lines += ["| Value | Name |", "|---:|---|"]
        lines += [f"| {m.value} | `{m.name}` |" for m in cls]
    else:
        lines += ["| Value | Name | libvirt |", "|---:|---|---|"]
        for m in cls:
            equivalent = "qemud's own" if own(m) else f"`{prefix}{m.name}`"
            lines.append(f"| {m.value} | `{m.name}` | {equivalent} |")
    return [*lines, ""]


def constants_tables() -> str:
    """The generated part of docs/PROTOCOL.md between CONSTANTS_BEGIN and CONSTANTS_END."""
    lines: list[str] = []
    docs = _class_docs()
    for cls, prefix, own in LIBVIRT_EQUIVALENTS:
        lines += _enum_table(cls, prefix, own, docs.get(cls.__name__))
    return "\n".join(lines).rstrip("\n") + "\n"


# --- the document ------------------------------------------------------------------------

def extract_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    """What lies between the marker lines ``begin`` and ``end`` (exclusive)."""
    try:
        start = text.index(begin + "\n") + len(begin) + 1
        stop = text.index(end, start)
    except ValueError:
        raise ValueError(f"markers {begin!r} / {end!r} not found") from None
    return text[start:stop]


def replace_block(text: str, content: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the lines between the markers replaced by ``content``."""
    old = extract_block(text, begin, end)
    start = text.index(begin + "\n") + len(begin) + 1
    return text[:start] + content + text[start + len(old):]


def _blocks() -> Iterable[tuple[str, str, str]]:
    yield BEGIN, END, procedure_table()
    yield CONSTANTS_BEGIN, CONSTANTS_END, constants_tables()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.doc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--constants", action="store_true", help="print the constants tables")
    group.add_argument("--write", metavar="FILE", type=Path,
                       help="rewrite the generated blocks of FILE in place")
    group.add_argument("--check", metavar="FILE", type=Path,
                       help="exit 1 if the generated blocks of FILE are stale")
    args = parser.parse_args(argv)
    if args.write or args.check:
        path: Path = args.write or args.check
        text = path.read_text(encoding="utf-8")
        new = text
        for begin, end, content in _blocks():
            new = replace_block(new, content, begin, end)
        if args.check:
            if new != text:
                print(f"{path} is stale: run python -m protocol.doc --write {path}",
                      file=sys.stderr)
                return 1
            return 0
        if new != text:
            path.write_text(new, encoding="utf-8")
        return 0
    sys.stdout.write(constants_tables() if args.constants else procedure_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
