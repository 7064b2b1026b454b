"""Appliance templates: domain XML rendered against the host it is going to run on.

A template is a domain definition with ``{{...}}`` placeholders, a formula section and two
declarative conveniences, all in qemud's appliance namespace::

    <domain type='kvm' xmlns:qemud='http://qemud.org/xmlns/appliance/1'>
      <name>appliance</name>
      <metadata>
        <qemud:formulas>
          <qemud:set name="memory" value="max(host.memory - host.reserve, 512MiB)"/>
          <qemud:set name="vcpus" value="host.cores"/>
        </qemud:formulas>
      </metadata>
      <memory unit='MiB'>{{memory:MiB}}</memory>
      <vcpu>{{vcpus}}</vcpu>
      <qemud:smbios inherit="yes"/>
      ...
      <devices>
        <qemud:nics bridge-prefix="br" first-mac="host" model="virtio"/>
      </devices>
    </domain>

Formulas
  ``<qemud:set name=... value=...>`` in document order; a formula may use the ones before
  it. Expressions: numbers (``2``, ``1.5``) with an optional size unit glued on (``512MiB``,
  ``2GiB``, ``4G``, ``100MB``: they become bytes), names, ``+ - * / //``, unary minus,
  parentheses, ``min(a, b, ...)`` and ``max(a, b, ...)``. No ``eval``: a small
  recursive-descent parser over exact fractions, each at most 256 bits over 256 bits
  (a number written at most 64 characters long). Errors name the formula and the
  1-based position in its value, e.g. ``formula 'memory' (value "host.memory -"),
  position 14: expected a number, a name or '('``.

Host names (sizes in bytes)
  ``host.memory`` (MemTotal), ``host.reserve`` (config ``appliance.host_reserve_mib``),
  ``host.cores`` (physical cores), ``host.threads`` (logical CPUs), ``host.sockets``,
  ``host.nics`` (number of physical NICs), ``host.nicN.name`` / ``host.nicN.mac`` (strings),
  ``host.dmi.FIELD`` (strings, when the host has DMI: ``sys_vendor``, ``product_name``...).

Placeholders
  ``{{EXPR}}`` or ``{{EXPR:UNIT}}`` in element text and attribute values (the formula
  section excepted). The value replaces the placeholder: strings as they are, whole
  numbers without decimals, others with up to 6 decimals; ``:UNIT`` divides by the unit
  and rounds down (``{{memory:MiB}}`` for ``<memory unit='MiB'>``).

``<qemud:nics bridge-prefix="br" first-mac="host" model="virtio"/>``
  One ``<interface type='bridge'>`` per physical host NIC, on bridge ``<prefix><index>``
  (br0 for the first NIC, br1...; creating those bridges is the host's networking job).
  ``first-mac="host"`` gives the first interface the first NIC's own MAC (the host then
  has no address on that LAN: the appliance is the machine). Other interfaces get a MAC
  when the domain is defined. ``model`` is optional. Inside ``<devices>`` the element is
  replaced in place; anywhere else the interfaces are added to ``<devices>``.

``<qemud:smbios inherit="yes"/>``
  libvirt's ``<sysinfo type='smbios'>`` with bios/system/baseBoard entries from the host's
  DMI, plus ``<os><smbios mode='sysinfo'/></os>``. Nothing when the host has no DMI or
  ``inherit="no"``. ``uuid="inherit"`` also gives the guest the host's product UUID (as
  ``<uuid>`` and the system uuid entry, which libvirt requires to agree); by default the
  UUID is not inherited. (qemud's command-line builder does not pass ``<sysinfo>`` to
  QEMU yet: the element is kept in the definition, as libvirt XML.)

Output: the directives and the ``<qemud:formulas>`` element are removed (an emptied
``<metadata>`` too); other metadata (``<qemud:appliance>`` policies) stays. The result
is plain libvirt domain XML, checked by ``parse_domain_xml`` in the APPLIANCE_RENDER
handler before it is returned.
"""

from __future__ import annotations

import math
import re
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from lxml import etree

from qemud.conf import ConfError, parse_domain_xml
from qemud.conf.domain import DEVICE_CHILD_ORDER, DOMAIN_CHILD_ORDER, OS_CHILD_ORDER
from qemud.conf.xmlmodel import element_path, insert_ordered, parse_document, serialize

from .inspect import HostInventory
from .metadata import NS

if TYPE_CHECKING:
    from protocol.payloads import RenderArgs, StringReply

    from . import ApplianceContext

__all__ = ["TemplateError", "ExpressionError", "evaluate", "host_names", "render",
           "format_value", "UNITS", "render_for_host"]

_Q = f"{{{NS}}}"
Value = Fraction | str

#: size units -> bytes (libvirt's spellings: k/K/M/G/T are binary, KB/MB/... decimal)
UNITS: dict[str, int] = {
    "b": 1, "B": 1, "bytes": 1,
    "k": 1024, "K": 1024, "KiB": 1024, "KB": 1000,
    "M": 1024**2, "MiB": 1024**2, "MB": 1000**2,
    "G": 1024**3, "GiB": 1024**3, "GB": 1000**3,
    "T": 1024**4, "TiB": 1024**4, "TB": 1000**4,
}
_FUNCTIONS: dict[str, Callable[..., Fraction]] = {"min": min, "max": max}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_UNIT_RE = re.compile(r"[A-Za-z]+")
_PLACEHOLDER_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
_FORMULA_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")


class TemplateError(Exception):
    """A template that cannot be rendered; the message says where and why."""


class ExpressionError(Exception):
    """A bad expression; ``position`` is 1-based within the expression text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# -- expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "name", "op", "end"
    text: str
    pos: int  # 0-based
    value: Fraction | None = None


#: the most bits a number a formula computes may have, numerator and denominator each
#: (a size in bytes needs 64; a ratio of two of them, 128)
MAX_BITS = 256
#: the longest number a formula may write (digits and decimal point)
MAX_DIGITS = 64


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        number = _NUMBER_RE.match(text, i)
        if number:
            if len(number.group()) > MAX_DIGITS:
                raise ExpressionError(f"number too long (more than {MAX_DIGITS} "
                                      "characters)", i + 1)
            value = Fraction(number.group())
            end = number.end()
            unit = _UNIT_RE.match(text, end)
            if unit:
                if unit.group() not in UNITS:
                    raise ExpressionError(
                        f"unknown unit '{unit.group()}' (known: "
                        f"{', '.join(sorted(UNITS, key=lambda u: (UNITS[u], u)))})",
                        end + 1)
                value *= UNITS[unit.group()]
                end = unit.end()
            tokens.append(_Token("num", text[i:end], i, value))
            i = end
            continue
        name = _NAME_RE.match(text, i)
        if name:
            tokens.append(_Token("name", name.group(), i))
            i = name.end()
            continue
        if text.startswith("//", i):
            tokens.append(_Token("op", "//", i))
            i += 2
            continue
        if ch in "+-*/(),":
            tokens.append(_Token("op", ch, i))
            i += 1
            continue
        raise ExpressionError(f"unexpected character {ch!r}", i + 1)
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent, evaluating as it goes::

        expr  := term (('+' | '-') term)*
        term  := unary (('*' | '/' | '//') unary)*
        unary := ('-' | '+') unary | atom
        atom  := NUMBER[UNIT] | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'
    """

    MAX_DEPTH = 100

    def __init__(self, text: str, names: Mapping[str, Value]) -> None:
        self.text = text
        self.names = names
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def _error(self, message: str, tok: _Token | None = None) -> ExpressionError:
        return ExpressionError(message, (tok or self.tok).pos + 1)

    def parse(self) -> Value:
        if self.tok.kind == "end":
            raise self._error("empty expression")
        value = self.expr()
        if self.tok.kind != "end":
            raise self._error(f"unexpected {self._describe(self.tok)} after a complete "
                              "expression")
        return value

    @staticmethod
    def _describe(tok: _Token) -> str:
        return "end of expression" if tok.kind == "end" else f"'{tok.text}'"

    def _number(self, value: Value, tok: _Token, what: str) -> Fraction:
        if isinstance(value, str):
            raise self._error(f"{what} needs numbers, but '{tok.text}' is the string "
                              f"{value!r}", tok)
        return value

    def expr(self) -> Value:
        self.depth += 1
        if self.depth > self.MAX_DEPTH:
            raise self._error("expression nested too deeply")
        try:
            first = self.tok
            value = self.term()
            while self.tok.kind == "op" and self.tok.text in "+-":
                op = self.tok
                self.i += 1
                right_tok = self.tok
                right = self.term()
                left = self._number(value, first, f"'{op.text}'")
                right_n = self._number(right, right_tok, f"'{op.text}'")
                value = self._bounded(left + right_n if op.text == "+" else left - right_n,
                                      op)
            return value
        finally:
            self.depth -= 1

    def term(self) -> Value:
        first = self.tok
        value = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/", "//"):
            op = self.tok
            self.i += 1
            right_tok = self.tok
            right = self.unary()
            left = self._number(value, first, f"'{op.text}'")
            right_n = self._number(right, right_tok, f"'{op.text}'")
            if op.text == "*":
                value = self._bounded(left * right_n, op)
                continue
            if right_n == 0:
                raise self._error("division by zero", op)
            value = self._bounded(left / right_n if op.text == "/"
                                  else Fraction(math.floor(left / right_n)), op)
        return value

    def _bounded(self, value: Fraction, op: _Token) -> Fraction:
        """``value``, if its numerator and denominator fit :data:`MAX_BITS` bits.

        A template is rendered on the daemon's loop, and any client may ask for it
        (a read-only one too): without a bound, formulas that square the one before
        grow a number's size exponentially, and twenty-odd of them stop the daemon for
        seconds, thirty for minutes or all its memory."""
        if value.numerator.bit_length() > MAX_BITS or \
                value.denominator.bit_length() > MAX_BITS:
            raise self._error(f"the result of '{op.text}' is too large (more than "
                              f"{MAX_BITS} bits)", op)
        return value

    def unary(self) -> Value:
        tok = self.tok
        if tok.kind == "op" and tok.text in "+-":
            self.i += 1
            self.depth += 1
            if self.depth > self.MAX_DEPTH:
                raise self._error("expression nested too deeply")
            try:
                operand_tok = self.tok
                value = self._number(self.unary(), operand_tok, f"unary '{tok.text}'")
            finally:
                self.depth -= 1
            return -value if tok.text == "-" else value
        return self.atom()

    def atom(self) -> Value:
        tok = self.tok
        if tok.kind == "num":
            self.i += 1
            assert tok.value is not None
            return tok.value
        if tok.kind == "op" and tok.text == "(":
            self.i += 1
            value = self.expr()
            self._expect(")", tok)
            return value
        if tok.kind == "name":
            self.i += 1
            nxt = self.tok
            if nxt.kind == "op" and nxt.text == "(":
                return self._call(tok)
            if tok.text in _FUNCTIONS:
                raise self._error(f"function '{tok.text}' needs arguments: "
                                  f"{tok.text}(a, b, ...)", tok)
            if tok.text not in self.names:
                raise self._error(f"unknown name '{tok.text}'{self._suggest(tok.text)}", tok)
            return self.names[tok.text]
        raise self._error(f"expected a number, a name or '(', got {self._describe(tok)}")

    def _suggest(self, name: str) -> str:
        import difflib
        close = difflib.get_close_matches(name, list(self.names), n=3)
        return f" (did you mean {', '.join(close)}?)" if close else ""

    def _call(self, name_tok: _Token) -> Value:
        func = _FUNCTIONS.get(name_tok.text)
        if func is None:
            raise self._error(f"unknown function '{name_tok.text}' (known: "
                              f"{', '.join(sorted(_FUNCTIONS))})", name_tok)
        open_tok = self.tok
        self.i += 1  # '('
        args: list[Fraction] = []
        while True:
            arg_tok = self.tok
            args.append(self._number(self.expr(), arg_tok, f"{name_tok.text}()"))
            if self.tok.kind == "op" and self.tok.text == ",":
                self.i += 1
                continue
            break
        self._expect(")", open_tok)
        return func(args)

    def _expect(self, text: str, opened: _Token) -> None:
        if self.tok.kind == "op" and self.tok.text == text:
            self.i += 1
            return
        raise self._error(f"expected '{text}' (to close the '{opened.text}' at position "
                          f"{opened.pos + 1}), got {self._describe(self.tok)}")


def evaluate(text: str, names: Mapping[str, Value]) -> Value:
    """The value of expression ``text``; raises :class:`ExpressionError`."""
    return _Parser(text, names).parse()


def format_value(value: Value, unit: str | None = None) -> str:
    if isinstance(value, str):
        if unit is not None:
            raise ValueError(f"the string {value!r} cannot be shown in {unit}")
        return value
    if unit is not None:
        return str(math.floor(value / UNITS[unit]))
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


# -- host names --------------------------------------------------------------------------


def host_names(host: HostInventory, reserve_mib: int) -> dict[str, Value]:
    names: dict[str, Value] = {
        "host.memory": Fraction(host.memory_bytes),
        "host.reserve": Fraction(reserve_mib * 1024 * 1024),
        "host.cores": Fraction(host.cores),
        "host.threads": Fraction(host.logical_cpus),
        "host.sockets": Fraction(host.sockets),
        "host.nics": Fraction(len(host.nics)),
    }
    for i, nic in enumerate(host.nics):
        names[f"host.nic{i}.name"] = nic.name
        names[f"host.nic{i}.mac"] = nic.mac
    for key, value in (host.dmi or {}).items():
        names[f"host.dmi.{key}"] = value
    return names


# -- rendering ---------------------------------------------------------------------------


def _where(node: etree._Element) -> str:
    try:
        return element_path(node)
    except Exception:  # pragma: no cover - defensive: paths are for messages only
        return str(node.tag)


def _substitute(text: str, names: Mapping[str, Value], where: str) -> str:
    def one(match: re.Match[str]) -> str:
        inner = match.group(1)
        expr, unit = inner, None
        head, sep, tail = inner.rpartition(":")
        if sep and tail.strip() in UNITS:
            expr, unit = head, tail.strip()
        try:
            value = evaluate(expr, names)
            return format_value(value, unit)
        except ExpressionError as exc:
            raise TemplateError(f"placeholder {{{{{inner}}}}} in {where}, position "
                                f"{exc.position}: {exc.message}") from None
        except ValueError as exc:
            raise TemplateError(f"placeholder {{{{{inner}}}}} in {where}: {exc}") from None
    return _PLACEHOLDER_RE.sub(one, text)


def _formulas(root: etree._Element, names: dict[str, Value]) -> list[etree._Element]:
    """Evaluate every <qemud:set> into ``names``; returns the sections (removed later)."""
    sections = list(root.iter(f"{_Q}formulas"))
    for section in sections:
        for child in section:
            if not isinstance(child.tag, str) or child.tag in (f"{_Q}nics", f"{_Q}smbios"):
                continue  # comments; directives may live here too
            if child.tag != f"{_Q}set":
                raise TemplateError(f"{_where(child)}: unexpected element in qemud:formulas "
                                    "(<qemud:set name=... value=...>, <qemud:nics>, "
                                    "<qemud:smbios>)")
            name, value = child.get("name"), child.get("value")
            if not name or value is None:
                raise TemplateError(f"{_where(child)}: <qemud:set> needs name and value "
                                    "attributes")
            if not _FORMULA_NAME_RE.fullmatch(name) or name.split(".")[0] == "host" or \
                    name in _FUNCTIONS:
                raise TemplateError(f"formula name '{name}' is not allowed (letters, digits, "
                                    "_ and dots; not host.* or a function name)")
            try:
                names[name] = evaluate(value, names)
            except ExpressionError as exc:
                raise TemplateError(f"formula '{name}' (value \"{value}\"), position "
                                    f"{exc.position}: {exc.message}") from None
    return sections


def _remove(node: etree._Element) -> None:
    """Remove ``node``, keeping its tail text; drop a <metadata> it leaves empty."""
    parent = node.getparent()
    if parent is None:
        return
    if node.tail and node.tail.strip():
        prev = node.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + node.tail
        else:
            parent.text = (parent.text or "") + node.tail
    parent.remove(node)
    if parent.tag == "metadata" and len(parent) == 0 and not (parent.text or "").strip():
        grand = parent.getparent()
        if grand is not None:
            grand.remove(parent)


def _child(parent: etree._Element, tag: str, order: tuple[str, ...]) -> etree._Element:
    found = parent.find(tag)
    if found is not None:
        return found
    node = etree.Element(tag)
    insert_ordered(parent, node, {t: i for i, t in enumerate(order)})
    return node


def _nics(root: etree._Element, host: HostInventory) -> None:
    for directive in list(root.iter(f"{_Q}nics")):
        prefix = directive.get("bridge-prefix", "br")
        first_mac = directive.get("first-mac", "generate")
        if first_mac not in ("host", "generate"):
            raise TemplateError(f"{_where(directive)}/@first-mac: '{first_mac}' is not one "
                                "of host, generate")
        model = directive.get("model")
        interfaces = []
        for i, nic in enumerate(host.nics):
            iface = etree.Element("interface", type="bridge")
            if i == 0 and first_mac == "host" and nic.mac:
                etree.SubElement(iface, "mac", address=nic.mac)
            etree.SubElement(iface, "source", bridge=f"{prefix}{i}")
            if model:
                etree.SubElement(iface, "model", type=model)
            interfaces.append(iface)
        parent = directive.getparent()
        if parent is not None and parent.tag == "devices":
            for iface in interfaces:
                directive.addprevious(iface)
        else:
            devices = _child(root, "devices", DOMAIN_CHILD_ORDER)
            ranks = {t: i for i, t in enumerate(DEVICE_CHILD_ORDER)}
            for iface in interfaces:
                insert_ordered(devices, iface, ranks)
        _remove(directive)


_SYSINFO = {
    "bios": (("vendor", "bios_vendor"), ("version", "bios_version")),
    "system": (("manufacturer", "sys_vendor"), ("product", "product_name"),
               ("version", "product_version"), ("serial", "product_serial"),
               ("sku", "product_sku"), ("family", "product_family")),
    "baseBoard": (("manufacturer", "board_vendor"), ("product", "board_name"),
                  ("version", "board_version"), ("serial", "board_serial"),
                  ("asset", "board_asset_tag")),
}


def _smbios(root: etree._Element, host: HostInventory) -> None:
    for directive in list(root.iter(f"{_Q}smbios")):
        inherit = directive.get("inherit", "yes")
        uuid_mode = directive.get("uuid", "no")
        if inherit not in ("yes", "no"):
            raise TemplateError(f"{_where(directive)}/@inherit: '{inherit}' is not yes or no")
        if uuid_mode not in ("inherit", "no"):
            raise TemplateError(f"{_where(directive)}/@uuid: '{uuid_mode}' is not inherit "
                                "or no")
        _remove(directive)
        dmi = host.dmi
        if inherit != "yes" or not dmi:
            continue
        old = root.find("sysinfo")
        if old is not None:
            root.remove(old)
        sysinfo = etree.Element("sysinfo", type="smbios")
        for group, fields in _SYSINFO.items():
            entries = [(name, dmi[key]) for name, key in fields if dmi.get(key)]
            if group == "system" and uuid_mode == "inherit":
                host_uuid = _host_uuid(dmi)
                if host_uuid is not None:
                    current = root.findtext("uuid")
                    if current and _same_uuid(current, host_uuid) is False:
                        raise TemplateError(
                            f"<qemud:smbios uuid='inherit'>: the template's <uuid> {current} "
                            f"differs from the host's {host_uuid} (remove one)")
                    _child(root, "uuid", DOMAIN_CHILD_ORDER).text = host_uuid
                    entries.append(("uuid", host_uuid))
            if not entries:
                continue
            el = etree.SubElement(sysinfo, group)
            for name, value in entries:
                etree.SubElement(el, "entry", name=name).text = value
        if len(sysinfo) == 0:
            continue
        insert_ordered(root, sysinfo, {t: i for i, t in enumerate(DOMAIN_CHILD_ORDER)})
        os_el = _child(root, "os", DOMAIN_CHILD_ORDER)
        _child(os_el, "smbios", OS_CHILD_ORDER).set("mode", "sysinfo")


def _host_uuid(dmi: Mapping[str, str]) -> str | None:
    raw = dmi.get("product_uuid")
    if not raw:
        return None
    try:
        return str(uuidlib.UUID(raw))
    except ValueError:
        return None


def _same_uuid(a: str, b: str) -> bool | None:
    try:
        return uuidlib.UUID(a) == uuidlib.UUID(b)
    except ValueError:
        return None


def render(template: str, host: HostInventory, reserve_mib: int = 512) -> str:
    """The domain XML of ``template`` for ``host``; raises :class:`TemplateError`."""
    try:
        root = parse_document(template)
    except ConfError as exc:
        raise TemplateError(f"template: {exc}") from None
    if root.tag != "domain":
        raise TemplateError(f"template: expected a <domain> document, got <{root.tag}>")
    names = host_names(host, reserve_mib)
    sections = _formulas(root, names)
    leftover = next((el for el in root.iter() if isinstance(el.tag, str) and
                     el.tag.startswith(_Q) and _outside_metadata(el) and el.tag not in
                     (f"{_Q}nics", f"{_Q}smbios")), None)
    if leftover is not None:
        raise TemplateError(f"{_where(leftover)}: unknown template directive "
                            f"<qemud:{etree.QName(leftover).localname}> (known: formulas, "
                            "nics, smbios)")
    # placeholders first, so the content the directives generate (DMI strings) is
    # never taken for a placeholder
    for el in root.iter():
        if not isinstance(el.tag, str) or el.tag == f"{_Q}set":
            continue
        where = _where(el)
        if el.text and "{{" in el.text:
            el.text = _substitute(el.text, names, where)
        if el.tail and "{{" in el.tail:
            el.tail = _substitute(el.tail, names, where)
        for raw_name, raw_value in el.attrib.items():  # lxml's typing allows bytes
            attr = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            if "{{" in value:
                el.set(attr, _substitute(value, names, f"{where}/@{attr}"))
    _nics(root, host)
    _smbios(root, host)
    for section in sections:
        _remove(section)
    etree.cleanup_namespaces(root)
    for el in root.iter():  # whitespace left by removed elements: let serialize re-indent
        if isinstance(el.tag, str) and len(el):
            if el.text is not None and not el.text.strip():
                el.text = None
            for child in el:
                if child.tail is not None and not child.tail.strip():
                    child.tail = None
    return serialize(root)


def _outside_metadata(el: etree._Element) -> bool:
    parent = el.getparent()
    while parent is not None:
        if parent.tag == "metadata":
            return False
        parent = parent.getparent()
    return True


def check_rendered(xml: str) -> None:
    """Raise :class:`TemplateError` unless ``xml`` is a valid domain definition."""
    try:
        parse_domain_xml(xml)
    except ConfError as exc:
        raise TemplateError(f"the rendered template is not a valid domain: {exc}") from None


def render_for_host(ctx: ApplianceContext, args: RenderArgs, readonly: bool = False
                    ) -> StringReply:
    """APPLIANCE_RENDER: ``args.template`` rendered for this host, checked (a StringReply).
    For a ``readonly`` caller without the host's root-only DMI fields (its serial
    numbers and UUID: ``HostInventory.public``).

    Installed with the inspect duty, which imports this module on the first render only:
    exact arithmetic (``fractions``, hence ``decimal``) is ~1 MiB an idle daemon need not
    carry.
    """
    from protocol.payloads import StringReply
    from qemud.errors import XMLError

    from .inspect import inspect_host

    config = ctx.daemon.config.appliance
    host = inspect_host(config.inspect_root)
    if readonly:
        host = host.public()
    try:
        xml = render(args.template, host, config.host_reserve_mib)
        check_rendered(xml)
    except TemplateError as exc:
        raise XMLError(str(exc)) from None
    return StringReply(xml)
