"""Validation against libvirt's RelaxNG domain schema, when it is installed.

Why: qemud accepts libvirt's domain XML, and libvirt's own schema (shipped by Debian's
``libvirt0`` package as ``/usr/share/libvirt/schemas/domain.rng``) is the most complete
description of it — it catches typos in elements and attributes we do not model but keep.
We do not ship a copy (it is libvirt's, and must match the libvirt the user knows), so where
it is absent only our semantic checks run.

The schema is loaded lazily, on first validation, and cached (loading takes ~10 ms,
validating a typical domain ~50 µs).  Compiled, it holds a few MiB of libxml2 memory, so a
long-running process that validates rarely (the daemon: on define and attach) drops it
with :func:`release_schema` once :func:`idle_seconds` says it has not been used for a
while; the next validation loads it again.  :func:`set_load_hook` tells such a process
when there is something to drop.  ``QEMUD_DOMAIN_SCHEMA`` overrides the file to use; set
to an empty string it disables schema validation.

libxml2 reports interleave failures vaguely ("Extra element devices in interleave"), so on
failure we narrow the document down: remove one element or attribute at a time and see
whether the rest becomes valid.  That names the culprit precisely, e.g.
``devices/disk[1]/driver: attribute cache='bogus' rejected by libvirt's domain schema``.
The narrowing only runs on the error path.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from .errors import SchemaError
from .xmlmodel import element_path, local_name

__all__ = [
    "DEFAULT_SCHEMA_PATHS",
    "SCHEMA_ENV",
    "domain_schema",
    "idle_seconds",
    "release_schema",
    "reset_schema",
    "schema_path",
    "set_load_hook",
    "set_schema_path",
    "validate_device",
    "validate_domain",
]

log = logging.getLogger(__name__)

SCHEMA_ENV = "QEMUD_DOMAIN_SCHEMA"
"""Environment variable naming the domain.rng to use ("" disables schema validation)."""

DEFAULT_SCHEMA_PATHS: tuple[Path, ...] = (
    Path("/usr/share/libvirt/schemas/domain.rng"),
    Path("/usr/local/share/libvirt/schemas/domain.rng"),
)
"""Where libvirt installs its schemas (distribution package first, then a source build)."""

_override: Path | None = None
_override_set = False
_loaded = False
_schema: etree.RelaxNG | None = None
_schema_file: Path | None = None
_last_use = 0.0  # time.monotonic() of the last domain_schema() that returned the schema
_load_hook: Callable[[], None] | None = None

# Minimal domain used to validate a stand-alone device (domain.rng only starts at <domain>).
_SCAFFOLD = (
    "<domain type='kvm'><name>scaffold</name><memory>1024</memory>"
    "<os><type>hvm</type></os><devices/></domain>"
)


def set_schema_path(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` as domain.rng (None: no schema validation at all); drops the cache."""
    global _override, _override_set
    _override = None if path is None else Path(path)
    _override_set = True
    _forget()


def reset_schema() -> None:
    """Back to the default discovery (environment, then libvirt's install paths)."""
    global _override, _override_set
    _override = None
    _override_set = False
    _forget()


def _forget() -> None:
    global _loaded, _schema, _schema_file
    _loaded = False
    _schema = None
    _schema_file = None


def set_load_hook(hook: Callable[[], None] | None) -> None:
    """Call ``hook()`` each time the schema has been loaded (None: no hook).

    The daemon arms its release timer from it, so nothing runs while no schema is held.
    """
    global _load_hook
    _load_hook = hook


def idle_seconds() -> float | None:
    """Seconds since the loaded schema was last used; None when none is held."""
    if _schema is None:
        return None
    return time.monotonic() - _last_use


def release_schema() -> bool:
    """Drop the loaded schema so its memory can be freed; the next validation loads it
    again.  Returns whether there was one to drop.

    A schema that failed to load stays "known bad" (not retried, not logged again).
    """
    if _schema is None:
        return False
    path = _schema_file
    _forget()
    log.debug("libvirt domain schema %s released", path)
    return True


def _candidate() -> Path | None:
    if _override_set:
        return _override
    env = os.environ.get(SCHEMA_ENV)
    if env is not None:
        return Path(env) if env else None
    for path in DEFAULT_SCHEMA_PATHS:
        if path.is_file():
            return path
    return None


def domain_schema() -> etree.RelaxNG | None:
    """The compiled schema, loading it on first use; None when not installed or unusable.

    A schema that exists but fails to compile (e.g. a libvirt newer than our libxml2 can
    handle) is logged once and then ignored rather than refusing every definition.
    """
    global _loaded, _schema, _schema_file, _last_use
    if _loaded:
        _last_use = time.monotonic()
        return _schema
    _loaded = True
    path = _candidate()
    if path is None:
        return None
    if not path.is_file():
        log.info("libvirt domain schema %s not found; schema validation disabled", path)
        return None
    started = time.monotonic()
    try:
        schema = etree.RelaxNG(etree.parse(str(path)))
    except (etree.LxmlError, OSError) as exc:
        log.warning("cannot load libvirt domain schema %s (%s); schema validation disabled",
                    path, exc)
        return None
    _schema, _schema_file = schema, path
    _last_use = time.monotonic()
    log.debug("libvirt domain schema %s loaded in %.0f ms", path,
              (_last_use - started) * 1000)
    if _load_hook is not None:
        _load_hook()
    return schema


def schema_path() -> Path | None:
    """The schema file validation uses (loads it if needed); None means no validation."""
    domain_schema()
    return _schema_file


def validate_domain(root: etree._Element) -> None:
    """Raise :class:`SchemaError` if libvirt's schema (when available) rejects the domain."""
    schema = domain_schema()
    if schema is None or schema.validate(root):
        return
    details = _details(schema)
    work = copy.deepcopy(root)
    _raise_located(schema, work, work, None, details)


def validate_device(node: etree._Element) -> None:
    """Validate one device element by placing a copy into a minimal scaffold domain."""
    schema = domain_schema()
    if schema is None:
        return
    scaffold = etree.fromstring(_SCAFFOLD)
    devices = scaffold.find("devices")
    assert devices is not None
    dev = copy.deepcopy(node)
    dev.tail = None
    devices.append(dev)
    if schema.validate(scaffold):
        return
    _raise_located(schema, scaffold, devices, dev, _details(schema))


def _shown(value: str) -> str:
    """``value`` exactly as the document has it: quoted, spaces and newlines visible."""
    return repr(value)


def _whitespace_hint(value: str, *, parenthesised: bool = False) -> str:
    # The value often looks fine once trimmed ('<memory> 100 </memory>'): say why.
    if value == value.strip():
        return ""
    hint = "leading or trailing whitespace"
    return f" ({hint})" if parenthesised else f"; note the {hint}"


def _details(schema: etree.RelaxNG) -> tuple[str, ...]:
    return tuple(
        f"{entry.path}: {entry.message}" if entry.path else str(entry.message)
        for entry in schema.error_log
    )


def _raise_located(
    schema: etree.RelaxNG,
    doc: etree._Element,
    start: etree._Element,
    top: etree._Element | None,
    details: tuple[str, ...],
) -> None:
    found = _locate(schema, doc, start)
    if found is None:
        path, message = _fallback(schema, doc, top, details)
        raise SchemaError(message, path=path, details=details)
    node, attr = found
    path = element_path(node, top)
    if attr is not None:
        value = node.get(attr) or ""
        message = (
            f"attribute {_attr_name(attr)}={_shown(value)} rejected by libvirt's domain"
            f" schema (unknown attribute or invalid value{_whitespace_hint(value)})"
        )
    elif len(node) == 0 and node.text and node.text.strip():
        text = node.text
        message = (
            f"<{local_name(node)}> value {_shown(text)} rejected by libvirt's"
            f" domain schema{_whitespace_hint(text, parenthesised=True)}"
        )
    else:
        message = (
            f"element <{local_name(node)}> rejected by libvirt's domain schema"
            " (not allowed here, or its content is invalid)"
        )
    raise SchemaError(message, path=path, details=details)


def _attr_name(attr: str) -> str:
    return attr if attr[0] != "{" else etree.QName(attr).localname


def _locate(
    schema: etree.RelaxNG, doc: etree._Element, start: etree._Element
) -> tuple[etree._Element, str | None] | None:
    """Find the deepest element (or attribute) below ``start`` whose removal alone makes
    ``doc`` valid.  None when no single removal helps (several independent errors)."""
    node = start
    descended = False
    while True:
        hit = _removable_child(schema, doc, node)
        if hit is not None:
            node = hit
            descended = True
            continue
        attr = _removable_attribute(schema, doc, node)
        if attr is not None:
            return node, attr
        if not descended:
            return None
        # The culprit is inside a required part (e.g. a bad value on <target>, which the
        # disk cannot do without): look deeper, below any child.
        for inner in node.iterdescendants():
            if not isinstance(inner.tag, str):
                continue
            attr = _removable_attribute(schema, doc, inner)
            if attr is not None:
                return inner, attr
            hit = _removable_child(schema, doc, inner)
            if hit is not None:
                node = hit
                break
        else:
            return node, None


def _removable_child(
    schema: etree.RelaxNG, doc: etree._Element, node: etree._Element
) -> etree._Element | None:
    for child in list(node):
        if not isinstance(child.tag, str):
            continue
        index = node.index(child)
        node.remove(child)
        ok = schema.validate(doc)
        node.insert(index, child)
        if ok:
            return child
    return None


def _removable_attribute(
    schema: etree.RelaxNG, doc: etree._Element, node: etree._Element
) -> str | None:
    items = list(node.attrib.items())
    for name, _value in items:
        del node.attrib[name]
        ok = schema.validate(doc)
        node.attrib.clear()
        for key, value in items:
            node.set(key, value)
        if ok:
            return str(name)
    return None


def _fallback(
    schema: etree.RelaxNG,
    doc: etree._Element,
    top: etree._Element | None,
    details: tuple[str, ...],
) -> tuple[str, str]:
    """Best effort when narrowing fails: libxml2's first located message."""
    schema.validate(doc)  # narrowing overwrote the error log
    for entry in schema.error_log:
        if entry.path:
            try:
                found = doc.getroottree().xpath(entry.path)
            except etree.XPathError:
                found = None
            if isinstance(found, list) and found and isinstance(found[0], etree._Element):
                message = f"rejected by libvirt's domain schema: {entry.message}"
                return element_path(found[0], top), message
    first = details[0] if details else "document is invalid"
    return local_name(doc if top is None else top), f"rejected by libvirt's domain schema: {first}"
