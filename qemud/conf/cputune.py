"""CPU pinning in a definition: libvirt's cpuset syntax, ``<vcpu cpuset>`` and
``<cputune>``'s ``<vcpupin>`` / ``<emulatorpin>``.

libvirt's ``virBitmapParse`` is the reference for the syntax: comma-separated items, each
a host CPU ``N``, a range ``N-M`` (N <= M) or an exclusion ``^N``, applied left to right
(``0-3,^2`` is 0, 1 and 3), blanks around items allowed, CPU numbers below
:data:`CPUMASK_LEN`; the canonical form (``virBitmapFormat``, what ``dumpxml`` shows) is
ranges in ascending order (``0-1,3``). A set that ends up empty is refused, as libvirt's
parser does ("Invalid value of 'cpuset'").

The functions here work on the ``<domain>`` element (:class:`~qemud.conf.DomainDef` wraps
them as properties). Which CPUs the host has is not known here: that check is the
driver's, at start and at a live pin (:mod:`qemud.driver.pinning`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lxml import etree

from .errors import DefinitionError
from .xmlmodel import element_path, first_child, insert_ordered

__all__ = [
    "CPUMASK_LEN",
    "canonicalise",
    "check_cputune",
    "emulatorpin",
    "format_cpuset",
    "parse_cpuset",
    "prune_vcpupins",
    "set_emulatorpin",
    "set_vcpu_cpuset",
    "set_vcpupin",
    "vcpu_cpuset",
    "vcpupins",
]

#: libvirt's VIR_DOMAIN_CPUMASK_LEN: host CPU numbers a cpuset may name are below it
CPUMASK_LEN = 16384

_ITEM = re.compile(r"\s*(\^)?\s*([0-9]+)(?:\s*-\s*([0-9]+))?\s*")
#: libvirt's order of the <cputune> children qemud writes (shares first, then the pins,
#: then the scheduler tunables)
_PIN_BEFORE = ("shares",)


def parse_cpuset(text: str) -> frozenset[int]:
    """The host CPUs ``text`` names (libvirt's cpuset syntax); ``ValueError`` with
    libvirt's words ("Failed to parse bitmap '...'") when it is not one. May be empty
    (``0,^0``): the callers decide whether that is allowed."""
    cpus: set[int] = set()
    if not text.strip():
        raise ValueError(f"Failed to parse bitmap '{text}'")
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"Failed to parse bitmap '{text}'")
        negate, first, last = match.group(1), int(match.group(2)), match.group(3)
        end = first if last is None else int(last)
        if (negate and last is not None) or end < first or end >= CPUMASK_LEN:
            raise ValueError(f"Failed to parse bitmap '{text}'")
        if negate:
            cpus.discard(first)
        else:
            cpus.update(range(first, end + 1))
    return frozenset(cpus)


def format_cpuset(cpus: Iterable[int]) -> str:
    """The canonical text of a set of host CPUs: ascending ranges (``0-2,5``)."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _cpuset_of(node: etree._Element, what: str) -> frozenset[int]:
    """The ``cpuset`` attribute of ``node``, checked: missing, bad syntax and an empty
    set are :class:`DefinitionError` naming the element (libvirt's words)."""
    text = node.get("cpuset")
    path = element_path(node)
    if text is None:
        raise DefinitionError(f"missing cpuset for {what}", path=path)
    try:
        cpus = parse_cpuset(text)
    except ValueError as exc:
        raise DefinitionError(str(exc), path=path) from None
    if not cpus:
        raise DefinitionError(f"Invalid value of 'cpuset': {text}", path=path)
    return cpus


# -- reading -------------------------------------------------------------------------------

def vcpu_cpuset(domain: etree._Element) -> frozenset[int] | None:
    """``<vcpu cpuset>``: the host CPUs every vCPU (and the emulator) may use by default,
    or None (no restriction). Assumes :func:`check_cputune` passed."""
    vcpu = first_child(domain, "vcpu")
    text = None if vcpu is None else vcpu.get("cpuset")
    return None if text is None else parse_cpuset(text)


def vcpupins(domain: etree._Element) -> dict[int, frozenset[int]]:
    """``<vcpupin vcpu= cpuset=>``: vCPU number -> its host CPUs, by vCPU number."""
    cputune = first_child(domain, "cputune")
    if cputune is None:
        return {}
    pins = {int(str(node.get("vcpu"))): parse_cpuset(str(node.get("cpuset")))
            for node in cputune.iterchildren("vcpupin")}
    return dict(sorted(pins.items()))


def emulatorpin(domain: etree._Element) -> frozenset[int] | None:
    """``<emulatorpin cpuset=>``: the host CPUs of QEMU's threads that are not vCPUs."""
    cputune = first_child(domain, "cputune")
    node = None if cputune is None else first_child(cputune, "emulatorpin")
    return None if node is None else parse_cpuset(str(node.get("cpuset")))


# -- checking ------------------------------------------------------------------------------

def check_cputune(domain: etree._Element, max_vcpus: int) -> None:
    """libvirt's parse-time rules for ``<vcpu cpuset>``, ``<vcpupin>`` and
    ``<emulatorpin>``; a vCPU number at or above the maximum is refused (libvirt drops
    such a pin with a warning: qemud does not lose what the user wrote silently)."""
    vcpu = first_child(domain, "vcpu")
    if vcpu is not None and vcpu.get("cpuset") is not None:
        _cpuset_of(vcpu, "vcpu")
    cputune = first_child(domain, "cputune")
    if cputune is None:
        return
    seen: set[int] = set()
    for node in cputune.iterchildren("vcpupin"):
        path = element_path(node)
        raw = node.get("vcpu")
        if raw is None:
            raise DefinitionError("Missing required attribute 'vcpu' in element 'vcpupin'",
                                  path=path)
        if not raw.strip().isdigit():
            raise DefinitionError(f"Invalid value for attribute 'vcpu' in element 'vcpupin':"
                                  f" '{raw}'. Expected non-negative integer value", path=path)
        number = int(raw)
        if number >= max_vcpus:
            raise DefinitionError(f"vcpupin for vCPU {number}, but the domain has"
                                  f" {max_vcpus} vCPU(s) (vcpu ids start at 0)", path=path)
        if number in seen:
            raise DefinitionError(f"duplicate vcpupin for vcpu '{number}'", path=path)
        seen.add(number)
        _cpuset_of(node, "vcpupin")
    pins = list(cputune.iterchildren("emulatorpin"))
    if len(pins) > 1:
        raise DefinitionError("only one emulatorpin is supported", path=element_path(pins[1]))
    for node in pins:
        _cpuset_of(node, "emulatorpin")


# -- writing -------------------------------------------------------------------------------

def canonicalise(domain: etree._Element) -> None:
    """Every cpuset in its canonical spelling (``0-3,^2`` -> ``0-1,3``), as libvirt's
    dumpxml shows them. Assumes :func:`check_cputune` passed."""
    vcpu = first_child(domain, "vcpu")
    if vcpu is not None and vcpu.get("cpuset") is not None:
        vcpu.set("cpuset", format_cpuset(parse_cpuset(str(vcpu.get("cpuset")))))
    cputune = first_child(domain, "cputune")
    if cputune is None:
        return
    for node in cputune.iterchildren("vcpupin", "emulatorpin"):
        node.set("cpuset", format_cpuset(parse_cpuset(str(node.get("cpuset")))))
        if node.tag == "vcpupin":
            node.set("vcpu", str(int(str(node.get("vcpu")))))


def set_vcpu_cpuset(domain: etree._Element, cpus: Iterable[int] | None) -> None:
    """Set (None: remove) ``<vcpu cpuset>``; the ``<vcpu>`` element must exist."""
    vcpu = first_child(domain, "vcpu")
    if vcpu is None:
        raise DefinitionError("element is required", path="vcpu")
    if cpus is None:
        if "cpuset" in vcpu.attrib:
            del vcpu.attrib["cpuset"]
    else:
        # (libvirt's attribute order: placement, cpuset, current)
        rest = {k: v for k, v in vcpu.attrib.items() if k not in ("placement", "cpuset")}
        placement = vcpu.get("placement")
        vcpu.attrib.clear()
        if placement is not None:
            vcpu.set("placement", placement)
        vcpu.set("cpuset", _checked_text(cpus, "vcpu"))
        for key, value in rest.items():
            vcpu.set(key, value)


def _checked_text(cpus: Iterable[int], path: str) -> str:
    text = format_cpuset(cpus)
    if not text:
        raise DefinitionError("Invalid value of 'cpuset': an empty set of CPUs", path=path)
    return text


def _cputune(domain: etree._Element, ranks: Mapping[str, int]) -> etree._Element:
    node = first_child(domain, "cputune")
    if node is None:
        node = etree.Element("cputune")
        insert_ordered(domain, node, ranks)
    return node


def _place(cputune: etree._Element, node: etree._Element) -> None:
    """Put a new pin after the pins that precede it (vCPU order, emulatorpin last),
    else after ``<shares>``, else first."""
    anchor: etree._Element | None = None
    for child in cputune.iterchildren():
        tag = child.tag
        if tag in _PIN_BEFORE:
            anchor = child
        elif tag == "vcpupin" and (node.tag == "emulatorpin" or
                                   int(str(child.get("vcpu"))) < int(str(node.get("vcpu")))):
            anchor = child
    if anchor is None:
        cputune.insert(0, node)
    else:
        anchor.addnext(node)


def _drop_empty(domain: etree._Element, cputune: etree._Element) -> None:
    if len(cputune) == 0 and not (cputune.text and cputune.text.strip()):
        domain.remove(cputune)


def set_vcpupin(domain: etree._Element, vcpu: int, cpus: Iterable[int] | None,
                ranks: Mapping[str, int]) -> None:
    """Pin vCPU ``vcpu`` to ``cpus`` (None: remove its ``<vcpupin>``); ``ranks`` places a
    new ``<cputune>`` among the domain's children."""
    cputune = first_child(domain, "cputune")
    existing = None if cputune is None else next(
        (n for n in cputune.iterchildren("vcpupin") if n.get("vcpu") == str(vcpu)), None)
    _set_pin(domain, cputune, existing, cpus, ranks, "vcpupin", vcpu=str(vcpu))


def set_emulatorpin(domain: etree._Element, cpus: Iterable[int] | None,
                    ranks: Mapping[str, int]) -> None:
    """Pin the emulator threads to ``cpus`` (None: remove ``<emulatorpin>``)."""
    cputune = first_child(domain, "cputune")
    existing = None if cputune is None else first_child(cputune, "emulatorpin")
    _set_pin(domain, cputune, existing, cpus, ranks, "emulatorpin")


def _set_pin(domain: etree._Element, cputune: etree._Element | None,
             existing: etree._Element | None, cpus: Iterable[int] | None,
             ranks: Mapping[str, int], tag: str, **attrs: str) -> None:
    """Set ``existing`` (a ``<tag>`` of ``cputune``, or None) to ``cpus``: its cpuset
    changed, a new ``<tag attrs... cpuset=>`` placed, or with None the element removed
    (and ``<cputune>`` with it once empty)."""
    if cpus is None:
        if cputune is not None and existing is not None:
            cputune.remove(existing)
            _drop_empty(domain, cputune)
        return
    text = _checked_text(cpus, f"cputune/{tag}")
    if existing is not None:
        existing.set("cpuset", text)
        return
    node = etree.Element(tag)
    for key, value in (*attrs.items(), ("cpuset", text)):
        node.set(key, value)
    _place(_cputune(domain, ranks), node)


def prune_vcpupins(domain: etree._Element, max_vcpus: int) -> None:
    """Forget the pins of vCPUs a lowered maximum removed (libvirt's
    virDomainDefSetVcpusMax frees them with the vCPUs)."""
    cputune = first_child(domain, "cputune")
    if cputune is None:
        return
    for node in list(cputune.iterchildren("vcpupin")):
        raw = (node.get("vcpu") or "").strip()
        if raw.isdigit() and int(raw) >= max_vcpus:
            cputune.remove(node)
    _drop_empty(domain, cputune)
