"""Wire field types and the dataclass -> construct codec.

A payload is a frozen dataclass whose fields are annotated with the types below
(``U32``, ``Str``, ``list[SomeDataclass]`` ...). :func:`codec_for` turns such a class into
a compiled construct ``Struct`` once, and converts between instances and bytes.
Only fixed-width, big-endian integers exist on the wire; strings and lists carry a u32
length that is checked against :data:`~protocol.constants.MAX_STRING` /
:data:`~protocol.constants.MAX_LIST` *before* anything is allocated.

Decoding ignores bytes after the last known field: that is what lets a newer peer
append fields without breaking an older one (see docs/PROTOCOL.md, "Evolution").
"""

from __future__ import annotations

import dataclasses
import io
import operator
import typing
from collections.abc import Callable
from struct import error as struct_error
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import construct as cs

from .constants import MAX_LIST, MAX_STRING
from .fastpath import Encoded, FastCodec

__all__ = [
    "U8", "U16", "U32", "U64", "S32", "S64", "F64", "Bool", "Str", "Blob", "UUIDBytes",
    "Codec", "codec_for", "Payload", "Empty", "Encoded", "encoded",
]

_string_len = cs.ExprValidator(cs.Int32ub, lambda obj, ctx: obj <= MAX_STRING)
_list_len = cs.ExprValidator(cs.Int32ub, lambda obj, ctx: obj <= MAX_LIST)

U8 = Annotated[int, cs.Int8ub]
U16 = Annotated[int, cs.Int16ub]
U32 = Annotated[int, cs.Int32ub]
U64 = Annotated[int, cs.Int64ub]
S32 = Annotated[int, cs.Int32sb]
S64 = Annotated[int, cs.Int64sb]
F64 = Annotated[float, cs.Float64b]

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

Bool = Annotated[bool, _flag]
Str = Annotated[str, _string]
Blob = Annotated[bytes, _blob]
UUIDBytes = Annotated[bytes, _uuid]


class Payload:
    """Marker base for payload dataclasses (gives them ``codec`` access)."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Empty(Payload):
    """The payload of calls and replies that carry nothing."""


P = TypeVar("P")


class Codec(Generic[P]):
    """Encodes and decodes one payload dataclass with a compiled construct Struct."""

    _cache: ClassVar[dict[type, Codec[Any]]] = {}

    def __init__(self, cls: type[P]) -> None:
        self.cls = cls
        struct, to_wire, from_wire = _describe(cls)
        assert to_wire is not None and from_wire is not None, "payloads are dataclasses"
        self._to_wire, self._from_wire = to_wire, from_wire
        self.struct = struct
        compiled = struct.compile()
        # Call the compiled functions directly with a prepared context: construct's
        # parse()/build() wrappers cost as much again as the generated code itself.
        self._parsefunc = compiled.parsefunc
        self._buildfunc = compiled.buildfunc
        #: payloads without fields skip construct entirely (most calls have no arguments)
        self._empty = not struct.subcons
        #: parsers for the same payload without its trailing defaulted fields, longest
        #: first: what an older peer sends, from before those fields were appended
        self._older = [compiled_prefix.parsefunc for compiled_prefix in _older_forms(cls)]
        #: generated struct-based functions for the same layout (protocol/fastpath.py);
        #: anything they do not handle falls back to construct, the reference
        self._fast = FastCodec.build(cls, _FIXED_CODES)

    def encode(self, obj: P) -> bytes:
        """Bytes for ``obj``; a value outside its field's range is a ValueError."""
        if self._empty:
            return b""
        if self._fast is not None:
            try:
                return self._fast.encode(obj)
            except (struct_error, TypeError, ValueError, AttributeError, OverflowError,
                    UnicodeError):
                pass  # construct says precisely what is wrong
        stream = io.BytesIO()
        try:
            self._buildfunc(self._to_wire(obj), stream, _BUILD_CONTEXT)
        except (cs.ConstructError, OverflowError, UnicodeError, TypeError,
                AttributeError, KeyError, struct_error) as exc:
            raise ValueError(f"cannot encode {self.cls.__name__}: {exc}") from exc
        return stream.getvalue()

    def decode(self, data: bytes) -> P:
        """The payload in ``data``; raises ValueError (with the cause) if it does not parse."""
        if self._empty:
            result: P = self.cls()
            return result
        if self._fast is not None:
            try:
                fast: P = self._fast.decode(data)
                return fast
            except (struct_error, ValueError, UnicodeError, IndexError):
                pass  # malformed, or an older peer's shorter form: construct decides
        try:
            container = self._parsefunc(io.BytesIO(data), _PARSE_CONTEXT)
        except (cs.ConstructError, UnicodeError, OverflowError, ValueError,
                struct_error) as exc:
            container = self._decode_older(data)
            if container is None:
                raise ValueError(f"{self.cls.__name__}: {exc}") from exc
        result = self._from_wire(container)
        return result

    def _decode_older(self, data: bytes) -> Any:
        """Parse ``data`` as an older peer's payload (trailing defaulted fields absent)."""
        for parsefunc in self._older:
            stream = io.BytesIO(data)
            try:
                container = parsefunc(stream, _PARSE_CONTEXT)
            except (cs.ConstructError, UnicodeError, OverflowError, ValueError,
                    struct_error):
                continue
            # Only a payload that ends exactly where the older form ends is an older
            # peer's; leftover bytes mean a malformed newer field, not an absent one.
            if stream.tell() == len(data):
                return container
        return None


_FIXED_CODES: dict[int, str] = {}  # id(construct field) -> struct code, filled below


def _make_context(parsing: bool) -> cs.Container:
    ctx = cs.Container(_parsing=parsing, _building=not parsing, _sizing=False)
    ctx._params = ctx
    return ctx


# The generated code only reads the outer context (each Struct makes its own child
# context), so one shared outer context per direction is safe and saves ~2 us a message.
_PARSE_CONTEXT = _make_context(True)
_BUILD_CONTEXT = _make_context(False)


def encoded(value: P) -> Encoded[P]:
    """``value`` with its bytes, to be sent as an item of a list field (see Encoded)."""
    return Encoded(value, codec_for(type(value)).encode(value))


def codec_for(cls: type[P]) -> Codec[P]:
    """The (cached) codec of payload class ``cls``."""
    codec = Codec._cache.get(cls)
    if codec is None:
        codec = Codec(cls)
        Codec._cache[cls] = codec
    return codec


Converter = Callable[[Any], Any]


def _describe(tp: Any) -> tuple[cs.Construct, Converter | None, Converter | None]:
    """(construct, python->wire, wire->python) for an annotation or dataclass.

    A converter is None where construct already speaks the Python value (ints, str,
    bytes, bool), which is most fields: skipping the call is most of the decode cost.
    """
    if typing.get_origin(tp) is Annotated:
        return typing.get_args(tp)[1], None, None
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        item, item_out, item_in = _describe(item_tp)
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
            con, field_out, field_in = _describe(hints[field.name])
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
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return []
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = list(dataclasses.fields(cls))
    forms = []
    while fields and (fields[-1].default is not dataclasses.MISSING or
                      fields[-1].default_factory is not dataclasses.MISSING):
        fields.pop()
        forms.append(cs.Struct(*[f.name / _describe(hints[f.name])[0] for f in fields])
                     .compile())
    return forms


def _identity(value: Any) -> Any:
    return value


_FIXED_CODES.update({id(cs.Int8ub): "B", id(cs.Int16ub): "H", id(cs.Int32ub): "I",
                     id(cs.Int64ub): "Q", id(cs.Int32sb): "i", id(cs.Int64sb): "q",
                     id(cs.Float64b): "d", id(_flag): "?", id(_uuid): "16s",
                     id(_string): "str", id(_blob): "blob"})
