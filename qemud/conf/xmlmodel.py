"""Declarative, typed views over an lxml tree.

The domain model does not copy XML into Python objects and back: each model object wraps an
lxml element, and each attribute of the model is a descriptor that reads or writes one spot
of the tree, addressed by a tiny path language::

    class OSDef(XMLModel):
        arch = XMLProperty("./os/type/@arch")        # attribute -> str | None
        kernel = XMLProperty("./os/kernel")          # element text -> str | None
        boot_order = XMLIntProperty("./boot/@order")   # int | None
        readonly = XMLPresenceProperty("./readonly")   # <readonly/> present -> bool

Why: whatever nobody modelled (elements, attributes, comments, foreign namespaces) stays in
the tree untouched, so a definition survives parse/write round trips byte-for-byte modulo
indentation, and adding support for a new element is one line.

Paths are ``.``-relative, made of plain element names and an optional final ``@attribute``;
no predicates, so lookups are a few ``find()`` calls (the daemon parses 1,000 domains at
start-up).  Writing creates missing elements at a sensible position (see
:attr:`XMLModel.XML_CHILD_ORDER`); writing ``None`` removes the attribute/text and prunes the
elements that became empty.

Every descriptor registers itself, so tests can check that each one is exercised by the
golden files (:func:`all_properties`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

from lxml import etree

from .errors import DefinitionError, XMLParseError

__all__ = [
    "XMLIntProperty",
    "XMLListProperty",
    "XMLModel",
    "XMLPresenceProperty",
    "XMLProperty",
    "XMLPropertyBase",
    "XMLYesNoProperty",
    "all_properties",
    "element_path",
    "first_child",
    "insert_ordered",
    "iter_model_properties",
    "local_name",
    "not_xml_text",
    "parse_document",
    "read_only_scope",
    "serialize",
    "single_quoted",
]

#: the characters XML 1.0 cannot hold, of those a Python string may have: C0 controls
#: but tab, newline and carriage return, lone surrogates, U+FFFE and U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def not_xml_text(text: str) -> str:
    """What in ``text`` XML cannot hold ("U+0001: XML has no such character"), or ""."""
    bad = _NOT_XML.search(text)
    if bad is None:
        return ""
    return f"U+{ord(bad.group()):04X}: XML has no such character"


_T = TypeVar("_T")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")
_XML_DECL = re.compile(r"^\s*<\?xml\b[^>]*\?>")

_REGISTRY: list[XMLPropertyBase] = []


# --------------------------------------------------------------------------- parsing


_parsers = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread, created once.
    parser: etree.XMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            remove_blank_text=True,  # canonical indentation is ours to produce
            strip_cdata=False,  # metadata is kept verbatim, CDATA sections included
            resolve_entities=False,  # no entity expansion from client input
            no_network=True,
            load_dtd=False,
            huge_tree=False,
        )
        _parsers.parser = parser
    return parser


def parse_document(text: str | bytes, *, source: str = "[inline data]") -> etree._Element:
    """Parse client-supplied XML safely and return its root element.

    Refuses DOCTYPEs (entity tricks have no place in a definition) and tolerates an XML
    declaration in a ``str`` (which lxml would otherwise reject).  Raises
    :class:`XMLParseError` for syntax errors, worded as libvirt's first line of one:
    ``<source>:<line>: <libxml2's message>``, the place said once (``source`` names the
    document as libvirt does, e.g. ``(domain_definition)``; the error's ``line`` and
    ``column`` keep the place for callers). One line: error messages end up in one-line
    records (the audit log, ``error: ...`` of qemush).
    """
    if isinstance(text, str):
        text = _XML_DECL.sub("", text, count=1)
    if not text.strip():
        raise XMLParseError("empty document")
    try:
        root = etree.fromstring(text, _parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        # lxml appends ", line L, column C" to libxml2's message: the location is said once
        cause = _LXML_POSITION.sub("", exc.msg or "syntax error")
        raise XMLParseError(
            f"not well-formed XML: {source}:{line}: {cause}",
            line=line,
            column=column,
        ) from None
    doctype: str = getattr(root.getroottree().docinfo, "doctype", "")
    if doctype:
        raise XMLParseError("DOCTYPE declarations are not allowed", path=local_name(root))
    return root


_LXML_POSITION = re.compile(r",? line \d+, column \d+$")


def serialize(node: etree._Element) -> str:
    """Canonical text of ``node``: 2-space indentation, no declaration, trailing newline,
    attributes in single quotes as libvirt writes them (see :func:`single_quoted`).

    Modifies ``node``'s whitespace, so callers pass a copy.
    """
    etree.indent(node, space="  ")
    text: str = etree.tostring(node, encoding="unicode", with_tail=False)
    return single_quoted(text) + "\n"


#: one piece of markup in serialised XML: a comment, a processing instruction, a CDATA
#: section (all left alone), or a tag (groups: "/" of an end tag, name, attributes).
#: Safe on lxml's output: text and attribute values carry ``<`` and ``>`` escaped.
_MARKUP = re.compile(r"<!--.*?-->|<\?.*?\?>|<!\[CDATA\[.*?\]\]>|<(/?)([^\s/>]+)([^>]*)>",
                     re.DOTALL)
_DOUBLE_QUOTED = re.compile(r'="([^"]*)"')


def _to_single(match: re.Match[str]) -> str:
    # lxml has already written a '"' in a value as &quot;; a "'" needs escaping now
    return "='" + match.group(1).replace("'", "&apos;") + "'"


def single_quoted(text: str) -> str:
    """``text`` (lxml's serialisation) with its attributes in single quotes.

    Why: libvirt formats its XML with ``attr='value'`` (``<domain type='qemu'>``), and
    scripts written against ``virsh dumpxml`` grep for exactly that. Inside ``<metadata>``
    the double quotes stay, as libvirt's own output has them there: libvirt writes that
    subtree with libxml2, which quotes as lxml does. Text, comments and processing
    instructions are not touched, so the document means exactly what it meant.
    """
    if '"' not in text:
        return text
    pieces: list[str] = []
    done = 0
    in_metadata = 0
    for markup in _MARKUP.finditer(text):
        name = markup.group(2)
        if name is None:  # comment, PI or CDATA
            continue
        attrs = markup.group(3)
        if markup.group(1):  # end tag
            if name == "metadata" and in_metadata:
                in_metadata -= 1
            continue
        if not in_metadata and '"' in attrs:
            pieces.append(text[done:markup.start(3)])
            pieces.append(_DOUBLE_QUOTED.sub(_to_single, attrs))
            done = markup.end(3)
        if name == "metadata" and not attrs.endswith("/"):
            in_metadata += 1
    pieces.append(text[done:])
    return "".join(pieces)


# --------------------------------------------------------------------------- paths


def local_name(node: etree._Element) -> str:
    """The element's name as shown in error paths (``prefix:name`` for namespaced ones)."""
    tag = node.tag
    if not isinstance(tag, str):
        return "#comment"
    if tag[0] != "{":
        return tag
    qname = etree.QName(node)
    prefix = node.prefix
    local: str = qname.localname
    return f"{prefix}:{local}" if prefix else tag


def element_path(node: etree._Element, top: etree._Element | None = None) -> str:
    """Path of ``node`` for error messages, e.g. ``devices/disk[2]/target``.

    Relative to the document root: ``domain`` is omitted for its descendants (and is the
    path of the root itself); a stand-alone device keeps its own name (``disk/target``).
    ``top`` stops the walk at that element (used when a device is validated inside a
    scaffold domain).  Device elements always get an index, other elements only when they
    have same-named siblings, like XPath's abbreviated location paths.
    """
    parts: list[str] = []
    cur = node
    while True:
        parent = cur.getparent()
        if parent is None or cur is top:
            if not (parent is None and cur.tag == "domain" and parts):
                parts.append(local_name(cur))
            break
        name = local_name(cur)
        tag = cur.tag
        same = [c for c in parent.iterchildren(tag)] if isinstance(tag, str) else [cur]
        if len(same) > 1 or (parent.tag == "devices" and tag != "emulator"):
            name = f"{name}[{same.index(cur) + 1}]"
        parts.append(name)
        cur = parent
    return "/".join(reversed(parts))


def insert_ordered(
    parent: etree._Element, child: etree._Element, ranks: Mapping[str, int] | None
) -> None:
    """Insert ``child`` into ``parent`` before the first sibling that should come after it.

    ``ranks`` maps tag -> position (libvirt's output order).  Unknown tags and comments
    never move, so hand-written order is kept; a tag without a rank is appended.
    """
    if ranks:
        rank = ranks.get(child.tag)
        if rank is not None:
            for existing in parent.iterchildren():
                other = ranks.get(existing.tag) if isinstance(existing.tag, str) else None
                if other is not None and other > rank:
                    existing.addprevious(child)
                    return
    parent.append(child)


def first_child(node: etree._Element, tag: str) -> etree._Element | None:
    """The first child element named ``tag`` (faster than ``node.find(tag)``)."""
    return _walk(node, (tag,))


class _Scope(threading.local):
    # While a read-only pass (semantic checks) runs in this thread, child lookups are
    # memoised per element: element -> {tag: first child}.  Only valid while nothing
    # writes the tree, hence the explicit scope; per thread, so another thread's edits
    # never read through it.
    kids: dict[Any, dict[Any, etree._Element]] | None = None


_scope = _Scope()


@contextmanager
def read_only_scope() -> Iterator[None]:
    """Memoise element lookups for a pass that does not modify the tree (e.g. checks).

    Roughly halves the cost of a full semantic check; writing inside the scope would read
    stale children, so only read-only code may use it.  Nested scopes share the outer one.
    """
    if _scope.kids is not None:
        yield
        return
    _scope.kids = {}
    try:
        yield
    finally:
        _scope.kids = None


def _kids(scope: dict[Any, dict[Any, etree._Element]], node: etree._Element) -> dict[Any, Any]:
    kids = scope.get(node)
    if kids is None:
        kids = {}
        for child in node.iterchildren():
            kids.setdefault(child.tag, child)
        scope[node] = kids
    return kids


def _walk(node: etree._Element, steps: Sequence[str]) -> etree._Element | None:
    # Hot path (every property read): iterchildren(tag) matches in C and is ~3x faster
    # than find(), which goes through lxml's Python-level ElementPath.
    scope = _scope.kids
    for tag in steps:
        if scope is not None:
            found: etree._Element | None = _kids(scope, node).get(tag)
            if found is None:
                return None
            node = found
            continue
        for child in node.iterchildren(tag):
            node = child
            break
        else:
            return None
    return node


def _prune(node: etree._Element, stop: etree._Element) -> None:
    """Remove ``node`` and its ancestors (below ``stop``) while they carry nothing."""
    while node is not stop:
        parent = node.getparent()
        if parent is None or len(node) or node.attrib or (node.text and node.text.strip()):
            return
        parent.remove(node)
        node = parent


# --------------------------------------------------------------------------- model base


class XMLModel:
    """A typed view over one lxml element.

    Subclasses declare descriptors; instances are cheap (one slot) and two views of the same
    element compare equal, so a device taken from ``dom.disks`` can be found again later.
    """

    __slots__ = ("_node",)

    XML_TAG: ClassVar[str] = ""
    """Element name created by ``Cls()`` and expected by the parser."""

    XML_CHILD_ORDER: ClassVar[Mapping[str, Sequence[str]]] = {}
    """Where new elements go: parent path (``"."`` for the model's element, ``"os"``, ...)
    -> child names in libvirt's output order.  Keeps generated XML looking like libvirt's."""

    _ranks: ClassVar[dict[str, dict[str, int]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ranks = {
            key: {tag: i for i, tag in enumerate(order)}
            for key, order in cls.XML_CHILD_ORDER.items()
        }

    def __init__(self, node: etree._Element | None = None) -> None:
        if node is None:
            if not self.XML_TAG:
                raise TypeError(f"{type(self).__name__} needs an element")
            node = etree.Element(self.XML_TAG)
        self._node = node

    @property
    def node(self) -> etree._Element:
        """The backing lxml element: editing it edits the model (and vice versa)."""
        return self._node

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, XMLModel) or type(other) is not type(self):
            return False
        return other._node is self._node

    def __hash__(self) -> int:
        return hash((type(self), id(self._node)))

    def __repr__(self) -> str:
        text: str = etree.tostring(self._node, encoding="unicode", with_tail=False)
        if len(text) > 72:
            text = text[:69] + "..."
        return f"{type(self).__name__}({text})"

    @property
    def path(self) -> str:
        """Where this element sits, as used in error messages (``devices/disk[2]``)."""
        return element_path(self._node)

    def _error(self, message: str, sub: str | None = None) -> DefinitionError:
        path = self.path if sub is None else f"{self.path}/{sub}"
        return DefinitionError(message, path=path)

    def _child_ranks(self, key: str) -> dict[str, int] | None:
        return type(self)._ranks.get(key)

    def _ensure(self, steps: Sequence[str]) -> etree._Element:
        """Find or create the element at ``steps`` below our element."""
        node = self._node
        for i, tag in enumerate(steps):
            child = _walk(node, (tag,))
            if child is None:
                child = etree.Element(tag)
                insert_ordered(node, child, self._child_ranks("/".join(steps[:i]) or "."))
            node = child
        return node


# --------------------------------------------------------------------------- descriptors


def _parse_path(path: str) -> tuple[tuple[str, ...], str | None]:
    if path == ".":
        return (), None
    if not path.startswith("./"):
        raise ValueError(f"property path must start with './': {path!r}")
    parts = path[2:].split("/")
    attr: str | None = None
    if parts[-1].startswith("@"):
        attr = parts.pop()[1:]
        if not _NAME.fullmatch(attr):
            raise ValueError(f"bad attribute in property path {path!r}")
    for part in parts:
        if not _NAME.fullmatch(part):
            raise ValueError(f"bad element {part!r} in property path {path!r}")
    return tuple(parts), attr


class XMLPropertyBase:
    """What all descriptors share: locating, creating and pruning the addressed node."""

    def __init__(self, path: str, doc: str = "") -> None:
        self.path = path
        self.steps, self.attr = _parse_path(path)
        self.name = ""
        self.owner: type[XMLModel] | None = None
        if doc:
            self.__doc__ = doc

    def __set_name__(self, owner: type[XMLModel], name: str) -> None:
        self.name = name
        self.owner = owner
        _REGISTRY.append(self)

    def __repr__(self) -> str:
        owner = self.owner.__name__ if self.owner else "?"
        return f"<{type(self).__name__} {owner}.{self.name} {self.path!r}>"

    def find_node(self, obj: XMLModel) -> etree._Element | None:
        """The element holding the value (the attribute's owner), or None."""
        return _walk(obj._node, self.steps)

    def get_raw(self, obj: XMLModel) -> str | None:
        """The raw text value, or None when absent."""
        node = _walk(obj._node, self.steps) if self.steps else obj._node
        if node is None:
            return None
        value: str | None = node.get(self.attr) if self.attr is not None else node.text
        return value

    def is_present(self, obj: XMLModel) -> bool:
        """Whether the XML of ``obj`` sets this property (used by the coverage test)."""
        return self.get_raw(obj) is not None

    def set_raw(self, obj: XMLModel, raw: str | None) -> None:
        """Write ``raw``; None removes it and prunes elements left empty."""
        if raw is None:
            node = self.find_node(obj)
            if node is None:
                return
            if self.attr is not None:
                if self.attr in node.attrib:
                    del node.attrib[self.attr]
            else:
                node.text = None
            _prune(node, obj.node)
            return
        bad = not_xml_text(raw)
        if bad:  # (lxml would refuse it with a bare ValueError)
            where = f"attribute '{self.attr}'" if self.attr is not None else "text"
            raise self.error(obj, f"{where} cannot hold {bad}")
        node = obj._ensure(self.steps)
        if self.attr is not None:
            node.set(self.attr, raw)
        else:
            node.text = raw

    def error(self, obj: XMLModel, message: str) -> DefinitionError:
        """A DefinitionError whose path names the element this property lives on."""
        node = self.find_node(obj)
        if node is not None:
            return DefinitionError(message, path=element_path(node))
        return DefinitionError(message, path="/".join((obj.path, *self.steps)))


class _ValueProperty(XMLPropertyBase, Generic[_T]):
    """A scalar value with decode/encode; the default is returned when absent."""

    _decodes: ClassVar[bool] = True  # False: the raw text is the value (no decode call)

    def __init__(self, path: str, default: Any = None, doc: str = "") -> None:
        super().__init__(path, doc)
        self.default = default

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: XMLModel, owner: type[Any] | None = None) -> _T: ...

    def __get__(self, obj: XMLModel | None, owner: type[Any] | None = None) -> Any:
        # Hot path: every read of the model comes here, so _walk/get_raw are inlined.
        if obj is None:
            return self
        node = obj._node
        if self.steps:
            if _scope.kids is not None:
                found = _walk(node, self.steps)
                if found is None:
                    return self.default
                node = found
            else:
                for tag in self.steps:
                    for child in node.iterchildren(tag):
                        node = child
                        break
                    else:
                        return self.default
        attr = self.attr
        raw = node.get(attr) if attr is not None else node.text
        if raw is None:
            return self.default
        if not self._decodes:
            return raw
        try:
            return self.decode(raw)
        except ValueError as exc:
            raise self.error(obj, str(exc)) from None

    def __set__(self, obj: XMLModel, value: _T | None) -> None:
        self.set_raw(obj, None if value is None else self.encode(value))

    def __delete__(self, obj: XMLModel) -> None:
        self.set_raw(obj, None)

    def decode(self, raw: str) -> object:
        """Text -> value; raise ValueError with a user-facing message."""
        return raw

    def encode(self, value: object) -> str:
        """Value -> text."""
        return str(value)


class XMLProperty(_ValueProperty[_T]):
    """A string attribute or element text (``str | None``, or ``str`` with a default)."""

    _decodes = False

    @overload
    def __init__(self: XMLProperty[str | None], path: str, *, doc: str = "") -> None: ...

    @overload
    def __init__(self: XMLProperty[str], path: str, *, default: str, doc: str = "") -> None: ...

    def __init__(self, path: str, *, default: str | None = None, doc: str = "") -> None:
        super().__init__(path, default, doc)

    def encode(self, value: object) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{self.name} must be a str, got {type(value).__name__}")
        return value


class XMLIntProperty(_ValueProperty[_T]):
    """A decimal integer (``int | None``, or ``int`` with a default)."""

    @overload
    def __init__(self: XMLIntProperty[int | None], path: str, *, doc: str = "") -> None: ...

    @overload
    def __init__(self: XMLIntProperty[int], path: str, *, default: int, doc: str = "") -> None: ...

    def __init__(self, path: str, *, default: int | None = None, doc: str = "") -> None:
        super().__init__(path, default, doc)

    def decode(self, raw: str) -> object:
        if not _INT.fullmatch(raw):
            raise ValueError(f"expected an integer, got '{raw}'")
        return int(raw)

    def encode(self, value: object) -> str:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self.name} must be an int, got {type(value).__name__}")
        return str(value)


class XMLYesNoProperty(_ValueProperty[_T]):
    """libvirt's ``yes``/``no`` attributes as ``bool | None`` (or ``bool`` with a default)."""

    @overload
    def __init__(self: XMLYesNoProperty[bool | None], path: str, *, doc: str = "") -> None: ...

    @overload
    def __init__(
        self: XMLYesNoProperty[bool], path: str, *, default: bool, doc: str = ""
    ) -> None: ...

    def __init__(self, path: str, *, default: bool | None = None, doc: str = "") -> None:
        super().__init__(path, default, doc)

    def decode(self, raw: str) -> object:
        if raw == "yes":
            return True
        if raw == "no":
            return False
        raise ValueError(f"expected 'yes' or 'no', got '{raw}'")

    def encode(self, value: object) -> str:
        return "yes" if value else "no"


class XMLPresenceProperty(XMLPropertyBase):
    """An empty flag element such as ``<readonly/>``: present means True."""

    def __init__(self, path: str, *, doc: str = "") -> None:
        super().__init__(path, doc)
        if self.attr is not None or not self.steps:
            raise ValueError(f"presence property needs an element path: {path!r}")

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: XMLModel, owner: type[Any] | None = None) -> bool: ...

    def __get__(self, obj: XMLModel | None, owner: type[Any] | None = None) -> Self | bool:
        if obj is None:
            return self
        return self.find_node(obj) is not None

    def __set__(self, obj: XMLModel, value: bool | None) -> None:
        node = self.find_node(obj)
        if value:
            if node is None:
                obj._ensure(self.steps)
        elif node is not None:
            parent = node.getparent()
            if parent is not None:
                parent.remove(node)
                _prune(parent, obj.node)

    def is_present(self, obj: XMLModel) -> bool:
        return self.find_node(obj) is not None


class XMLListProperty(XMLPropertyBase):
    """Repeated elements, e.g. ``./os/boot/@dev`` -> ``['hd', 'cdrom']``.

    Assigning a list replaces all those elements (other attributes on them are lost, which
    is what replacing a list means).
    """

    def __init__(self, path: str, *, doc: str = "") -> None:
        super().__init__(path, doc)
        if not self.steps:
            raise ValueError(f"list property needs an element path: {path!r}")

    def _parent(self, obj: XMLModel) -> etree._Element | None:
        return _walk(obj._node, self.steps[:-1])

    def _items(self, obj: XMLModel) -> list[etree._Element]:
        parent = self._parent(obj)
        if parent is None:
            return []
        return list(parent.iterchildren(self.steps[-1]))

    def _value(self, node: etree._Element) -> str | None:
        value: str | None = node.get(self.attr) if self.attr is not None else node.text
        return value

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: XMLModel, owner: type[Any] | None = None) -> list[str]: ...

    def __get__(self, obj: XMLModel | None, owner: type[Any] | None = None) -> Self | list[str]:
        if obj is None:
            return self
        values = [self._value(n) for n in self._items(obj)]
        return [v for v in values if v is not None]

    def __set__(self, obj: XMLModel, values: Sequence[str] | None) -> None:
        if isinstance(values, str):
            raise TypeError(f"{self.name} must be a sequence of str, not a str")
        for node in self._items(obj):
            parent = node.getparent()
            if parent is not None:
                parent.remove(node)
        if not values:
            parent = self._parent(obj)
            if parent is not None:
                _prune(parent, obj.node)
            return
        parent = obj._ensure(self.steps[:-1])
        ranks = obj._child_ranks("/".join(self.steps[:-1]) or ".")
        for value in values:
            child = etree.Element(self.steps[-1])
            if self.attr is not None:
                child.set(self.attr, value)
            else:
                child.text = value
            insert_ordered(parent, child, ranks)

    def nodes(self, obj: XMLModel) -> list[etree._Element]:
        """The elements backing the list (for error paths)."""
        return self._items(obj)

    def is_present(self, obj: XMLModel) -> bool:
        return bool(self.__get__(obj))


def all_properties() -> list[XMLPropertyBase]:
    """Every descriptor declared on any model class, in declaration order."""
    return list(_REGISTRY)


def iter_model_properties(cls: type[XMLModel]) -> Iterator[XMLPropertyBase]:
    """The descriptors visible on ``cls`` (including inherited ones)."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if isinstance(value, XMLPropertyBase) and name not in seen:
                seen.add(name)
                yield value

