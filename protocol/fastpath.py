"""Generated ``struct`` encoders and decoders: the fast path of the payload codec.

construct (:mod:`protocol.reference`) is the reference codec: it says precisely what is
wrong with a bad value and reads older peers' payloads. It is also slow per record: a list
reply of 1,000 domains took ~7 ms to encode and as long to decode, one nested
``Container`` per record. This module derives the same layout from the same annotations
and generates, once per payload class, a straight-line Python function per direction:
runs of fixed-width fields become one ``struct`` call, strings and lists read or write
their u32 length, nested dataclasses are built in place. ``DOMAIN_LIST`` with 1,000
records goes from ~14 ms to ~1.2 ms per round trip (``bench/bench_codec.py``).

It is an optimisation, not a second definition. Anything it does not accept raises
(``struct.error``, ``ValueError``, ``TypeError``...) and the caller falls back to
construct, which then raises the error users see; a payload from an older peer (trailing
defaulted fields absent) also falls back. tests/protocol/test_fastpath.py checks that
both paths give identical bytes and values for every payload class.

The leaf annotations carry a :class:`WireType` (defined here, re-exported by
:mod:`protocol.fields`) rather than a construct object, so that building this codec
needs no construct: a process that never falls back never imports it (~3 MiB).
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import struct
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from .constants import MAX_LIST, MAX_STRING

__all__ = ["FastCodec", "Encoded", "WireType"]

T = TypeVar("T")

#: the struct codes of variable-length leaves (everything else is a struct format code)
_VARIABLE = ("str", "blob")


@dataclasses.dataclass(frozen=True, slots=True)
class WireType:
    """The wire type of a leaf field: the metadata of ``U32 = Annotated[int, WireType("I")]``.

    ``code`` is the big-endian ``struct`` format code of a fixed-width value, or ``"str"``
    / ``"blob"`` for a u32 length followed by that many bytes (UTF-8 text for ``"str"``).
    Both codecs read it: this module directly, and :mod:`protocol.reference` maps it to
    a construct field when construct is first needed.
    """

    code: str


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded(Generic[T]):
    """A list item encoded ahead of time, written as is: ``data`` is ``value``'s bytes.

    For records a sender keeps and sends again and again unchanged (the daemon's
    listing of domains, one cached record per domain): both codecs accept one wherever
    the list's item type is ``value``'s class; the fast path copies ``data``, construct
    encodes ``value``. Make them with :func:`protocol.fields.encoded`, which guarantees
    the two agree.
    """

    value: T
    data: bytes


class _Unsupported(Exception):
    """An annotation the fast path does not know: the class stays with construct."""


class _Emitter:
    """Accumulates generated source lines, names and the constants they refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {
            "_L": struct.Struct(">I"), "_MAX_STRING": MAX_STRING, "_MAX_LIST": MAX_LIST,
            "_len": len, "_range": range, "_bytes": bytes,
            "_type": type, "_new": object.__new__, "_Encoded": Encoded}
        self._count = 0
        self._structs: dict[str, str] = {}

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: Any, prefix: str) -> str:
        key = self.name(prefix)
        self.env[key] = value
        return key

    def packer(self, codes: list[str]) -> str:
        fmt = ">" + "".join(codes)
        if fmt not in self._structs:
            self._structs[fmt] = self.const(struct.Struct(fmt), "_S")
        return self._structs[fmt]

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def compile(self, name: str, params: str) -> Callable[..., Any]:
        # Every constant is also a keyword-only default: the body then reads locals
        # (LOAD_FAST) instead of globals, which is measurable at 1,000 records.
        defaults = ", ".join(f"{key}={key}" for key in self.env)
        header = f"def {name}({params}, *, {defaults}):"
        source = "\n".join([header, *self.lines])
        exec(compile(source, f"<fastpath {name}>", "exec"), self.env)  # noqa: S102
        function: Callable[..., Any] = self.env[name]
        return function


def _leaf_code(tp: Any) -> str | None:
    if typing.get_origin(tp) is Annotated:
        wire = typing.get_args(tp)[1]
        if not isinstance(wire, WireType):
            raise _Unsupported(repr(tp))
        return wire.code
    return None


def _edge_leaf(tp: Any, end: int) -> str | None:
    """The struct code of the first (``end=0``) or last (``end=-1``) value on the wire
    for ``tp``; None if that is a list."""
    code = _leaf_code(tp)
    if code is not None:
        return code
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and _fields(tp):
        return _edge_leaf(_fields(tp)[end][1], end)
    return None


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


class _DecoderBuilder:
    """Generates ``decode(data) -> payload``: reads fields in order from offset 0."""

    def __init__(self) -> None:
        self.out = _Emitter()
        self.pending: list[tuple[str, str]] = []  # (struct code, variable) not yet read
        #: constructions waiting for the variables of ``pending``; deferring them lets the
        #: fixed fields of a nested record and of its parent share one unpack
        self.deferred: list[str] = []
        #: a variable already holding the length prefix of the next string or blob
        self.carried: str | None = None

    def flush(self, indent: int) -> None:
        if self.pending:
            self._read_pending(indent)
        for line in self.deferred:
            self.out.emit(indent, line)
        self.deferred = []

    def _read_pending(self, indent: int) -> None:
        packer = self.out.packer([code for code, _ in self.pending])
        names = ", ".join(var for _, var in self.pending)
        size = struct.calcsize(">" + "".join(code for code, _ in self.pending))
        self.out.emit(indent, f"{names}, = {packer}.unpack_from(data, off)")
        self.out.emit(indent, f"off += {size}")
        self.pending = []

    def _read_pending_and_next_length(self, indent: int, length: str, index: str,
                                      last: str) -> None:
        """Read the item's trailing fixed fields and, unless it is the last item, the
        next item's leading length prefix with the same unpack (one call per record
        less: ~15 % of decoding a list of named records)."""
        codes = [code for code, _ in self.pending]
        names = ", ".join(var for _, var in self.pending)
        size = struct.calcsize(">" + "".join(codes))
        emit = self.out.emit
        emit(indent, f"if {index} < {last}:")
        emit(indent + 1, f"{names}, {length}, = "
                         f"{self.out.packer([*codes, 'I'])}.unpack_from(data, off)")
        emit(indent, "else:")
        emit(indent + 1, f"{names}, = {self.out.packer(codes)}.unpack_from(data, off)")
        emit(indent, f"off += {size}")  # the next length stays unread: it is carried
        self.pending = []

    def value(self, tp: Any, indent: int) -> str:
        """Emit code reading one value of type ``tp``; return an expression for it."""
        code = _leaf_code(tp)
        if code is not None and code not in _VARIABLE:
            var = self.out.name("v")
            self.pending.append((code, var))
            return var
        if code is not None:
            self.flush(indent)
            var, end = self.out.name("v"), self.out.name("e")
            emit = self.out.emit
            length, self.carried = self.carried or var, None
            if length == var:
                emit(indent, f"{var}, = _L.unpack_from(data, off)")
            emit(indent, f"{end} = off + 4 + {length}")
            emit(indent, f"if {length} > _MAX_STRING or {end} > size: "
                         "raise ValueError('bad length')")
            chunk = f"data[off + 4:{end}]"
            emit(indent, f"{var} = {chunk}.decode()" if code == "str"  # strict UTF-8
                 else f"{var} = _bytes({chunk})")
            emit(indent, f"off = {end}")
            return var
        if typing.get_origin(tp) is list:
            (item_tp,) = typing.get_args(tp)
            self.flush(indent)
            var, count, append = (self.out.name(p) for p in ("v", "n", "a"))
            emit = self.out.emit
            emit(indent, f"{count}, = _L.unpack_from(data, off)")
            emit(indent, "off += 4")
            emit(indent, f"if {count} > _MAX_LIST: raise ValueError('list too long')")
            emit(indent, f"{var} = []")
            emit(indent, f"{append} = {var}.append")
            if not (_edge_leaf(item_tp, 0) in _VARIABLE
                    and _edge_leaf(item_tp, -1) not in (*_VARIABLE, None)):
                emit(indent, f"for _ in _range({count}):")
                item = self.value(item_tp, indent + 1)
                self.flush(indent + 1)
                emit(indent + 1, f"{append}({item})")
                return var
            # items like DomainSummary: a string first, fixed fields last
            length, index, last = (self.out.name(p) for p in ("l", "k", "z"))
            emit(indent, f"if {count}: {length}, = _L.unpack_from(data, off)")
            emit(indent, f"{last} = {count} - 1")
            emit(indent, f"for {index} in _range({count}):")
            self.carried = length
            item = self.value(item_tp, indent + 1)
            self._read_pending_and_next_length(indent + 1, length, index, last)
            self.flush(indent + 1)
            emit(indent + 1, f"{append}({item})")
            return var
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            fields = _fields(tp)
            args = [self.value(field_tp, indent) for _, field_tp in fields]
            return self.construct(tp, fields, args)
        raise _Unsupported(repr(tp))

    def construct(self, tp: type, fields: list[tuple[str, Any]], args: list[str]) -> str:
        """Defer the construction of a ``tp`` from ``args``; return its variable.

        A frozen dataclass's ``__init__`` assigns through ``object.__setattr__``, one
        call per field; for slotted classes without ``__post_init__`` setting the slots
        directly gives the same object ~40 % faster (the bulk of decoding a long list).
        The slots may come from a base class: a client's handle class that declares the
        wire fields of a record (client.domain.ListedDomain) is decoded into directly;
        slots that are not fields are then left for the caller to set.
        """
        cls = self.out.const(tp, "_C")
        var = self.out.name("d")
        slots = [inspect.getattr_static(tp, n, None) for n, _ in fields]
        if hasattr(tp, "__post_init__") or not all(
                isinstance(slot, types.MemberDescriptorType) for slot in slots):
            self.deferred.append(f"{var} = {cls}({', '.join(args)})")
            return var
        self.deferred.append(f"{var} = _new({cls})")
        if inspect.getattr_static(tp, "__setattr__") is object.__setattr__:
            # not frozen: a plain store, which CPython specialises for slots (STORE_ATTR_SLOT),
            # is faster again than calling the slot's setter
            for (name, _), arg in zip(fields, args, strict=True):
                self.deferred.append(f"{var}.{name} = {arg}")
            return var
        for slot, arg in zip(slots, args, strict=True):
            setter = self.out.const(slot.__set__, "_set")
            self.deferred.append(f"{setter}({var}, {arg})")
        return var

    def build(self, cls: type) -> Callable[[bytes], Any]:
        self.out.emit(1, "off = 0")
        self.out.emit(1, "size = _len(data)")
        result = self.value(cls, 1)
        self.flush(1)
        self.out.emit(1, f"return {result}")
        return self.out.compile("decode", "data")


class _EncoderBuilder:
    """Generates ``encode(obj) -> bytes``: checks types, packs fields in order."""

    def __init__(self) -> None:
        self.out = _Emitter()
        self.pending: list[tuple[str, str]] = []  # (struct code, expression) not yet packed

    def flush(self, indent: int) -> None:
        if not self.pending:
            return
        packer = self.out.packer([code for code, _ in self.pending])
        values = ", ".join(expr for _, expr in self.pending)
        self.out.emit(indent, f"w({packer}.pack({values}))")
        self.pending = []

    def value(self, tp: Any, expr: str, indent: int) -> None:
        """Emit code writing the value of expression ``expr`` (a local name) as ``tp``."""
        emit = self.out.emit
        code = _leaf_code(tp)
        if code == "16s":  # struct pads or cuts a bytes value to 16; the wire must not
            emit(indent, f"if _type({expr}) is not _bytes or _len({expr}) != 16: "
                         "raise ValueError('uuid must be 16 bytes')")
        if code is not None and code not in _VARIABLE:
            self.pending.append((code, expr))
            return
        if code is not None:
            self.flush(indent)
            raw = self.out.name("b")
            if code == "str":  # not a str: AttributeError, and construct reports it
                emit(indent, f"{raw} = {expr}.encode()")
            else:
                emit(indent, f"if _type({expr}) is not _bytes: raise TypeError('blob')")
                emit(indent, f"{raw} = {expr}")
            emit(indent, f"if _len({raw}) > _MAX_STRING: raise ValueError('too long')")
            emit(indent, f"w(_L.pack(_len({raw})))")
            emit(indent, f"w({raw})")
            return
        if typing.get_origin(tp) is list:
            (item_tp,) = typing.get_args(tp)
            self.flush(indent)
            item = self.out.name("i")
            emit(indent, f"if _len({expr}) > _MAX_LIST: raise ValueError('list too long')")
            emit(indent, f"w(_L.pack(_len({expr})))")
            emit(indent, f"for {item} in {expr}:")
            if isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp):
                emit(indent + 1, f"if _type({item}) is _Encoded:")
                emit(indent + 2, f"w({item}.data)")
                emit(indent + 2, "continue")
            self.value(item_tp, item, indent + 1)
            self.flush(indent + 1)
            return
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            # No isinstance check: like construct's to_wire, any object with the
            # fields' attributes encodes; one without raises AttributeError.
            for name, field_tp in _fields(tp):
                local = self.out.name("o")
                emit(indent, f"{local} = {expr}.{name}")
                self.value(field_tp, local, indent)
            return
        raise _Unsupported(repr(tp))

    def build(self, cls: type) -> Callable[[Any], bytes]:
        self.out.emit(1, "parts = []")
        self.out.emit(1, "w = parts.append")
        self.value(cls, "obj", 1)
        self.flush(1)
        self.out.emit(1, "return b''.join(parts)")
        return self.out.compile("encode", "obj")


#: payloads with lists larger than this are decoded with the cyclic GC paused
GC_PAUSE_BYTES = 4096


def _gc_paused(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode`` with the cyclic garbage collector paused for large payloads.

    A 1,000-record list allocates ~5,000 container objects, which ran the young
    generation's collection several times per reply and promoted the records into
    older generations that were then traversed again: ~20 % of a client's listing call.
    The records cannot form cycles, so there is nothing for the collector to find; it
    runs normally again right after (as msgpack advises for large messages).
    """
    def paused(data: bytes) -> Any:
        if len(data) < GC_PAUSE_BYTES or not gc.isenabled():
            return decode(data)
        gc.disable()
        try:
            return decode(data)
        finally:
            gc.enable()
    return paused


class FastCodec:
    """The generated pair of functions for one payload class."""

    __slots__ = ("encode", "decode")

    def __init__(self, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> None:
        self.encode = encode
        self.decode = decode

    @classmethod
    def build(cls, payload: type) -> FastCodec | None:
        """The fast codec of ``payload``, or None if it has no fields or an annotation
        that is not a :class:`WireType`, a list or a dataclass."""
        if not dataclasses.fields(payload):
            return None
        try:
            encode = _EncoderBuilder().build(payload)
            decode = _DecoderBuilder().build(payload)
        except _Unsupported:
            return None
        return cls(encode, _gc_paused(decode) if _has_list(payload) else decode)


def _has_list(tp: Any) -> bool:
    if typing.get_origin(tp) is list:
        return True
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return any(_has_list(field_tp) for _, field_tp in _fields(tp))
    return False
