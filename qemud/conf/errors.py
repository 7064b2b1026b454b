"""Errors raised by the domain XML layer.

Everything that can be wrong with a definition a client sends is a :class:`ConfError`, so the
RPC layer can map the whole family to one "invalid definition" reply while tests and the QEMU
layer can still tell the stages apart::

    ConfError  (ValueError)     root: .path names the element, .message says what is wrong
    ├── XMLParseError           not well-formed, empty, forbidden DOCTYPE, wrong root element
    ├── SchemaError             well-formed, but rejected by libvirt's RelaxNG schema (domain.rng)
    └── DefinitionError         semantically invalid: bad or unsupported value, duplicate,
                                missing element, inconsistent memory sizes, ...

``str(err)`` is ``"<path>: <message>"``, e.g.
``devices/disk[2]/target: duplicate target dev 'vda'`` — the path is relative to the document
root (``domain`` itself for the root element, ``disk/...`` for a stand-alone device) and uses
1-based XPath-style indexes for repeated elements, so a user can find the element at fault.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfError", "DefinitionError", "SchemaError", "XMLParseError"]


class ConfError(ValueError):
    """Root of all definition errors; a ``ValueError`` because the input value is bad.

    ``path`` may be empty when no element can be named (e.g. an empty document); callers that
    build an error from a complete string (``DefinitionError("disk: ...")``) keep working.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep .path/.message across pickling (multiprocessing, logging handlers).
        return (_rebuild, (type(self), self.message, self.path, self.__dict__.copy()))


def _rebuild(cls: type[ConfError], message: str, path: str, state: dict[str, Any]) -> ConfError:
    err = cls.__new__(cls)
    ConfError.__init__(err, message, path=path)
    err.__dict__.update(state)
    return err


class XMLParseError(ConfError):
    """The text is not a usable XML document of the expected kind.

    ``line``/``column`` locate syntax errors reported by libxml2 (None when not applicable).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.line = line
        self.column = column


class SchemaError(ConfError):
    """libvirt's RelaxNG schema rejected the document.

    ``details`` keeps libxml2's raw validator messages; they are often vague for interleaved
    content, which is why ``path``/``message`` are computed by narrowing the document down to
    the offending element or attribute.
    """

    def __init__(self, message: str, *, path: str = "", details: tuple[str, ...] = ()) -> None:
        super().__init__(message, path=path)
        self.details = details


class DefinitionError(ConfError):
    """The document is well-formed and schema-valid (as far as checked) but makes no sense."""
