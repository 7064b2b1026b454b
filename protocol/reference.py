"""The construct codec: the reference that words errors and reads older peers' payloads.

:mod:`protocol.fields` encodes and decodes with the generated struct code of
:mod:`protocol.fastpath` and comes here only when that rejects something: a malformed
payload, a value out of range, a payload from an older peer (trailing defaulted fields
absent). construct says precisely what is wrong, so the errors users see are its words.

Importing construct costs ~3 MiB (it pulls in ``pdb``, ``inspect``...) and compiling a
Struct per payload class more, for code a healthy session never runs; so nothing imports
this module at start-up: :attr:`protocol.fields.Codec.reference` does, on first need.
This is also the one place where a :class:`~protocol.fastpath.WireType` becomes a
construct object (``_CONSTRUCTS``), and where the frame header is described with
construct (:data:`HEADER`, re-exported lazily as ``protocol.HEADER``).
"""

from __future__ import annotations

import dataclasses
import io
import operator
import typing
from collections.abc import Callable
from struct import error as struct_error
from typing import Annotated, Any, Generic, TypeVar

import construct as cs

from .constants import MAX_LIST, MAX_STRING
from .fastpath import Encoded, WireType

__all__ = ["HEADER", "ReferenceCodec", "describe"]

_string_len = cs.ExprValidator(cs.Int32ub, lambda obj, ctx: obj <= MAX_STRING)
_list_len = cs.ExprValidator(cs.Int32ub, lambda obj, ctx: obj <= MAX_LIST)

# construct 2.10's compiled code reads Flag, Bytes and length-prefixed data with a bare
# io.read(n), which silently returns fewer bytes at the end of a payload (an empty Flag
# even reads as True), and writes Bytes(16) without checking the length. These instances
# emit checked reads and writes instead (struct.unpack raises unless it gets exactly the
# bytes it wants), so a truncated payload is a ValueError (BadPayload) and a uuid that is
# not 16 bytes cannot be sent.
_flag = type(cs.Flag)()
_flag._emitparse = lambda code: "struct.unpack('?', io.read(1))[0]"
_uuid = cs.Bytes(16)
_uuid._emitparse = lambda code: "struct.unpack('16s', io.read(16))[0]"
_uuid._emitbuild = lambda code: "(stream_write(io, obj, 16, '(uuid)'), obj)[1]"
_string = cs.PascalString(_string_len, "utf8")
_string._emitparse = lambda code: (
    f"stream_read(io, {_string_len._compileparse(code)}, '(string)').decode('utf8')")
_blob = cs.Prefixed(_string_len, cs.GreedyBytes)
_blob._emitparse = lambda code: f"stream_read(io, {_string_len._compileparse(code)}, '(blob)')"

#: The frame header as construct describes it (``protocol.HEADER``: docs and tests); the
#: connection packs the same layout with ``struct``.
HEADER = cs.Struct(
    "length" / cs.Int32ub,
    "program" / cs.Int32ub,
    "version" / cs.Int16ub,
    "type" / cs.Int8ub,
    "status" / cs.Int8ub,
    "procedure" / cs.Int32ub,
    "serial" / cs.Int32ub,
)

#: WireType.code -> the construct field that reads and writes it
_CONSTRUCTS: dict[str, cs.Construct] = {
    "B": cs.Int8ub, "H": cs.Int16ub, "I": cs.Int32ub, "Q": cs.Int64ub, "i": cs.Int32sb,
    "q": cs.Int64sb, "d": cs.Float64b, "?": _flag, "16s": _uuid, "str": _string,
    "blob": _blob,
}

#: what construct's compiled code raises for bytes or values it refuses
_PARSE_ERRORS = (cs.ConstructError, UnicodeError, OverflowError, ValueError, struct_error)
_BUILD_ERRORS = (cs.ConstructError, OverflowError, UnicodeError, TypeError, AttributeError,
                 KeyError, struct_error)

P = TypeVar("P")
Converter = Callable[[Any], Any]


class ReferenceCodec(Generic[P]):
    """One payload dataclass as a compiled construct Struct, plus its older forms."""

    def __init__(self, cls: type[P]) -> None:
        self.cls = cls
        struct, to_wire, from_wire = describe(cls)
        assert to_wire is not None and from_wire is not None, "payloads are dataclasses"
        #: the uncompiled Struct (tests build with it) and the converters around it
        self.struct, self.to_wire, self.from_wire = struct, to_wire, from_wire
        compiled = struct.compile()
        # Call the compiled functions directly with a prepared context: construct's
        # parse()/build() wrappers cost as much again as the generated code itself.
        self._parsefunc = compiled.parsefunc
        self._buildfunc = compiled.buildfunc
        #: parsers for the same payload without its trailing defaulted fields, longest
        #: first: what an older peer sends, from before those fields were appended
        self._older = [compiled_prefix.parsefunc for compiled_prefix in _older_forms(cls)]

    def encode(self, obj: P) -> bytes:
        """Bytes for ``obj``; construct's complaint about a bad value as a ValueError."""
        stream = io.BytesIO()
        try:
            self._buildfunc(self.to_wire(obj), stream, _BUILD_CONTEXT)
        except _BUILD_ERRORS as exc:
            raise ValueError(f"cannot encode {self.cls.__name__}: {exc}") from exc
        return stream.getvalue()

    def decode(self, data: bytes) -> P:
        """The payload in ``data``, in the current form or an older peer's; raises
        ValueError with construct's reason (for the current form) if neither parses."""
        try:
            container = self._parsefunc(io.BytesIO(data), _PARSE_CONTEXT)
        except _PARSE_ERRORS as exc:
            container = self._decode_older(data)
            if container is None:
                raise ValueError(f"{self.cls.__name__}: {exc}") from exc
        result: P = self.from_wire(container)
        return result

    def _decode_older(self, data: bytes) -> Any:
        """Parse ``data`` as an older peer's payload (trailing defaulted fields absent)."""
        for parsefunc in self._older:
            stream = io.BytesIO(data)
            try:
                container = parsefunc(stream, _PARSE_CONTEXT)
            except _PARSE_ERRORS:
                continue
            # Only a payload that ends exactly where the older form ends is an older
            # peer's; leftover bytes mean a malformed newer field, not an absent one.
            if stream.tell() == len(data):
                return container
        return None


def _make_context(parsing: bool) -> cs.Container:
    ctx = cs.Container(_parsing=parsing, _building=not parsing, _sizing=False)
    ctx._params = ctx
    return ctx


# The generated code only reads the outer context (each Struct makes its own child
# context), so one shared outer context per direction is safe and saves ~2 us a message.
_PARSE_CONTEXT = _make_context(True)
_BUILD_CONTEXT = _make_context(False)


def describe(tp: Any) -> tuple[cs.Construct, Converter | None, Converter | None]:
    """(construct, python->wire, wire->python) for an annotation or dataclass.

    A converter is None where construct already speaks the Python value (ints, str,
    bytes, bool), which is most fields: skipping the call is most of the decode cost.
    """
    wire = typing.get_args(tp)[1] if typing.get_origin(tp) is Annotated else None
    if isinstance(wire, WireType):
        return _CONSTRUCTS[wire.code], None, None
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        item, item_out, item_in = describe(item_tp)
        array = cs.PrefixedArray(_list_len, item)
        if item_out is None and item_in is None:
            return array, None, list
        out, inn = item_out or _identity, item_in or _identity
        if isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp):
            return (array, lambda v: [out(x.value if type(x) is Encoded else x) for x in v],
                    lambda v: [inn(x) for x in v])
        return (array, lambda v: [out(x) for x in v], lambda v: [inn(x) for x in v])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        names: list[str] = []
        subcons = []
        outs: list[tuple[str, Converter]] = []
        ins: list[tuple[str, Converter]] = []
        for field in dataclasses.fields(tp):
            con, field_out, field_in = describe(hints[field.name])
            names.append(field.name)
            subcons.append(field.name / con)
            if field_out is not None:
                outs.append((field.name, field_out))
            if field_in is not None:
                ins.append((field.name, field_in))
        struct = cs.Struct(*subcons)
        cls = tp
        getter = operator.attrgetter(*names) if len(names) > 1 else None

        def to_wire(obj: Any) -> dict[str, Any]:
            wire = dict(zip(names, getter(obj), strict=True)) if getter else {
                n: getattr(obj, n) for n in names}
            for name, out in outs:
                wire[name] = out(wire[name])
            return wire

        def from_wire(container: Any) -> Any:
            try:
                values = {n: container[n] for n in names}
            except KeyError:  # an older peer's payload: absent fields take their defaults
                values = {n: container[n] for n in names if n in container}
            for name, inn in ins:
                if name in values:
                    values[name] = inn(values[name])
            return cls(**values)

        return struct, to_wire, from_wire
    raise TypeError(f"unsupported wire type {tp!r}: use U32, Str, list[...] or a dataclass")


def _older_forms(cls: type) -> list[Any]:
    """Compiled structs for ``cls`` minus 1, 2, ... trailing fields that have defaults.

    Fields are only ever appended, and appended fields carry defaults (the evolution
    rule in docs/PROTOCOL.md), so a payload from a peer that predates them is one of
    these prefixes; from_wire then leaves the missing fields at their defaults.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = list(dataclasses.fields(cls))
    forms = []
    while fields and (fields[-1].default is not dataclasses.MISSING or
                      fields[-1].default_factory is not dataclasses.MISSING):
        fields.pop()
        forms.append(cs.Struct(*[f.name / describe(hints[f.name])[0] for f in fields])
                     .compile())
    return forms


def _identity(value: Any) -> Any:
    return value
