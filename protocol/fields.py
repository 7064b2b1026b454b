"""Wire field types and the payload codec.

A payload is a frozen dataclass whose fields are annotated with the types below
(``U32``, ``Str``, ``list[SomeDataclass]`` ...). :func:`codec_for` turns such a class into
a :class:`Codec` once, and converts between instances and bytes.
Only fixed-width, big-endian integers exist on the wire; strings and lists carry a u32
length that is checked against :data:`~protocol.constants.MAX_STRING` /
:data:`~protocol.constants.MAX_LIST` *before* anything is allocated.

Decoding ignores bytes after the last known field: that is what lets a newer peer
append fields without breaking an older one (see docs/PROTOCOL.md, "Evolution").

Two codecs implement the same layout: generated ``struct`` code
(:mod:`protocol.fastpath`) for every message, and construct (:mod:`protocol.reference`),
which words the errors and reads older peers' payloads. The annotations carry our own
:class:`WireType` markers, so this module and the payload classes do not import
construct: a process imports it only when a payload first needs the reference codec.
"""

from __future__ import annotations

import dataclasses
from struct import error as struct_error
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

from .fastpath import Encoded, FastCodec, WireType

if TYPE_CHECKING:
    from .reference import ReferenceCodec

__all__ = [
    "U8", "U16", "U32", "U64", "S32", "S64", "F64", "Bool", "Str", "Blob", "UUIDBytes",
    "Codec", "codec_for", "Payload", "Empty", "Encoded", "WireType", "encoded",
]

U8 = Annotated[int, WireType("B")]
U16 = Annotated[int, WireType("H")]
U32 = Annotated[int, WireType("I")]
U64 = Annotated[int, WireType("Q")]
S32 = Annotated[int, WireType("i")]
S64 = Annotated[int, WireType("q")]
F64 = Annotated[float, WireType("d")]
Bool = Annotated[bool, WireType("?")]  # one byte, 0 or 1
Str = Annotated[str, WireType("str")]  # u32 byte length + UTF-8
Blob = Annotated[bytes, WireType("blob")]  # u32 length + bytes
UUIDBytes = Annotated[bytes, WireType("16s")]  # 16 raw bytes, no length


class Payload:
    """Marker base for payload dataclasses (gives them ``codec`` access)."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Empty(Payload):
    """The payload of calls and replies that carry nothing."""


P = TypeVar("P")


class Codec(Generic[P]):
    """Encodes and decodes one payload dataclass: generated struct code first, construct
    (built on first need) for whatever that rejects."""

    _cache: ClassVar[dict[type, Codec[Any]]] = {}

    def __init__(self, cls: type[P]) -> None:
        self.cls = cls
        #: payloads without fields skip both codecs (most calls have no arguments)
        self._empty = not dataclasses.fields(cls)  # type: ignore[arg-type]
        #: generated struct-based functions (protocol/fastpath.py); anything they do not
        #: handle falls back to construct, the reference
        self._fast = FastCodec.build(cls)
        self._reference: ReferenceCodec[P] | None = None
        if self._fast is None and not self._empty:
            # Not a layout the fast path knows: construct alone, or its TypeError naming
            # the annotation, now rather than at the first message.
            self._reference = _reference_codec(cls)

    @property
    def reference(self) -> ReferenceCodec[P]:
        """The construct codec of the same class, compiled on first use (first fallback):
        most processes never need it, and construct costs ~3 MiB to import."""
        if self._reference is None:
            self._reference = _reference_codec(self.cls)
        return self._reference

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
        return self.reference.encode(obj)

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
        return self.reference.decode(data)


def _reference_codec(cls: type[P]) -> ReferenceCodec[P]:
    """Import construct (once per process) and compile ``cls``'s reference codec."""
    from .reference import ReferenceCodec
    return ReferenceCodec(cls)


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
