"""A domain's XML in the shell: ``edit`` (and :func:`edit_text`, the same editing for
``desc --edit`` and ``metadata --edit``), what ``dumpxml --xpath`` reads from it, and the
titles of ``list --title``.

``edit`` is virsh's (tools/virsh-edit.c): the persistent definition with its secrets goes
to a temporary file, ``$VISUAL`` / ``$EDITOR`` / ``vi`` runs on it through ``sh -c`` (so
``EDITOR="emacs -nw"`` works), an unchanged file changes nothing, a changed one is
defined. When the daemon refuses it, or someone else changed the definition meanwhile,
an interactive user (stdin a terminal) is asked virsh's "Try again?": edit again (y),
give up (n), define the same text again (f). Without a terminal the command gives up
with the error. qemud has no define-time validation switch, so virsh's "i" (turn off
validation) is not offered, as virsh does not offer it where it has no meaning.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import tempfile
import termios
import tty
from collections.abc import Callable, Sequence
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from protocol.constants import MetadataType

from ...domain import XML_INACTIVE, XML_SECURE, Domain
from ...errors import NoDomainError, NoMetadataError, QemudClientError
from ..context import Shell
from ..registry import Args, CommandError, command
from .domain import DOM

__all__ = ["xpath_output", "add_titles", "add_json_titles", "domain_title", "edit_text"]

#: what a temporary file name may contain to be passed to ``sh -c`` unquoted (virsh's
#: ACCEPTED_CHARS): anything else means a strange $TMPDIR
_ACCEPTED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_.:@")
#: virsh's limit on what it reads back (VSH_MAX_XML_FILE)
_MAX_XML = 10 * 1024 * 1024
_RETRY_HELP = ("", "y - yes, start editor again", "n - no, throw away my changes",
               "f - force, try to redefine again", "? - print this help")
_CHANGED_BY_OTHER = "The XML configuration was changed by another user."


# -- dumpxml --xpath -------------------------------------------------------------------

def _xpath_text(value: Any) -> str:
    """A scalar XPath result as XPath's string() writes it (2, not 2.0; true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _serialise(node: Any) -> str:
    return etree.tostring(node, encoding="unicode", pretty_print=True,
                          with_tail=False).rstrip("\n")


def xpath_output(xml: str, expression: str, wrap: bool) -> str:
    """virsh's ``dumpxml --xpath``: ``expression`` evaluated with the root element as the
    context node (so ``./devices/disk`` works as in virsh); each result on its own
    line(s): elements serialised and re-indented, attributes as `` name="value"`` (as
    virsh's xmlNodeDump), text and scalars as text. With ``wrap``, all of them inside
    one ``<nodes>`` element (an attribute becomes an attribute of it, as virsh does).
    The namespace prefixes the root element declares (``qemu:``) may be used."""
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False,
                             no_network=True)
    try:
        root = etree.fromstring(xml.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise CommandError(f"cannot parse the domain XML: {exc}") from None
    namespaces = {prefix: uri for prefix, uri in root.nsmap.items() if prefix}
    try:
        result = root.xpath(expression, namespaces=namespaces)
    except etree.XPathError as exc:
        raise CommandError(f"invalid XPath expression '{expression}': {exc}") from None
    items: list[Any] = list(result) if isinstance(result, list) else [result]
    if not wrap:
        return "".join(_unwrapped(item) + "\n" for item in items)
    nodes = etree.Element("nodes")
    for item in items:
        if isinstance(item, etree._Element):
            nodes.append(_copy(item))
        elif getattr(item, "is_attribute", False):
            nodes.set(str(item.attrname), str(item))
        elif len(nodes):
            last = nodes[-1]
            last.tail = (last.tail or "") + _xpath_text(item)
        else:
            nodes.text = (nodes.text or "") + _xpath_text(item)
    return _serialise(nodes) + "\n"


def _unwrapped(item: Any) -> str:
    """One result as virsh prints it without --wrap (libxml2's xmlNodeDump): an element
    serialised, an attribute as `` name="value"``, text and scalars as text."""
    if isinstance(item, etree._Element):
        return _serialise(item)
    if getattr(item, "is_attribute", False):
        value = escape(str(item), {'"': "&quot;"})
        return f' {item.attrname}="{value}"'
    return _xpath_text(item)


def _copy(element: Any) -> Any:
    """A detached copy of ``element`` without its tail (the text that follows it)."""
    copied = copy.deepcopy(element)
    copied.tail = None
    return copied


# -- list --title ----------------------------------------------------------------------

def domain_title(dom: Domain) -> str | None:
    """A domain's title as virsh's ``list --title`` shows it, asked for alone
    (virDomainGetMetadata, not the whole XML): "" when it has none; None when the domain
    is gone since it was listed."""
    try:
        return dom.metadata(MetadataType.TITLE)
    except NoMetadataError:
        return ""
    except NoDomainError:
        return None


def _titles(sh: Shell, doms: Sequence[Domain]) -> list[str | None]:
    titles = []
    for dom in doms:
        with sh.failing(f"failed to get the title of domain '{dom.name}'"):
            titles.append(domain_title(dom))
    return titles


def add_titles(sh: Shell, doms: Sequence[Domain], headers: list[str],
               rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """``list --title``: a Title column after the others (``rows`` match ``doms``); a
    domain gone since the listing loses its row, as virsh drops it."""
    titled = [[*row, title] for row, title in zip(rows, _titles(sh, doms), strict=True)
              if title is not None]
    return [*headers, "Title"], titled


def add_json_titles(sh: Shell, doms: Sequence[Domain], entries: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """``list --title --json``: each entry (matching ``doms``) with its "title"."""
    return [{**entry, "title": title}
            for entry, title in zip(entries, _titles(sh, doms), strict=True)
            if title is not None]


# -- edit ------------------------------------------------------------------------------

def _editor() -> str:
    return os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"


def _write_temp(doc: str) -> str:
    """virsh's vshEditWriteToTempFile: ``$TMPDIR/qemushXXXXXX.xml`` (mode 0600)."""
    tmpdir = os.environ.get("TMPDIR") or "/tmp"
    try:
        fd, path = tempfile.mkstemp(prefix="qemush", suffix=".xml", dir=tmpdir)
    except OSError as exc:
        raise CommandError(f"createTempFile: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(doc)
    except OSError as exc:
        os.unlink(path)
        raise CommandError(f"write: {path}: {exc.strerror or exc}") from None
    return path


def _run_editor(sh: Shell, path: str) -> None:
    """``sh -c "EDITOR FILE"`` on the terminal, as virsh's vshEditFile."""
    if not set(path) <= _ACCEPTED:
        raise CommandError(f"{path}: temporary filename contains shell meta or other "
                           "unacceptable characters (is $TMPDIR wrong?)")
    line = f"{_editor()} {path}"
    sh.out.flush()
    sh.err.flush()
    # ^C belongs to the editor (vi cancels a command with it): the shell must neither
    # die nor kill the editor meanwhile. A handler, unlike SIG_IGN, is not inherited.
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    except ValueError:  # not the main thread: no signals to take care of
        previous = None
    try:
        status = subprocess.run(["sh", "-c", line], check=False).returncode
    except OSError as exc:
        raise CommandError(f"cannot run the editor: {exc.strerror or exc}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if status != 0:
        what = f"fatal signal {-status}" if status < 0 else f"exit status {status}"
        raise CommandError(f"Child process (sh -c '{line}') unexpected {what}")


def _read_back(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_XML + 1)
    except OSError as exc:
        raise CommandError(f"{path}: failed to read temporary file: "
                           f"{exc.strerror or exc}") from None
    if len(data) > _MAX_XML:
        raise CommandError(f"{path}: failed to read temporary file: the file is larger "
                           f"than {_MAX_XML} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: failed to read temporary file: not UTF-8 text "
                           f"({exc.reason} at byte {exc.start})") from None


def _ask_reedit(sh: Shell, message: str, error: str | None) -> str:
    """virsh's vshAskReedit: with a terminal on stdin, report ``error`` and ask until
    the answer is y, n or f ("n" on end of input or ^C); without one, "" (give up)."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        return ""
    if error:
        sh.error(error)
    saved = termios.tcgetattr(fd)
    answer = "n"
    try:
        tty.setcbreak(fd)  # one key, no echo; ^C still interrupts
        while True:
            sh.write(f"\r{message} Try again? [y,n,f,?]: ")
            sh.out.flush()
            key = os.read(fd, 1).decode(errors="replace")
            if key == "?":
                sh.write("\n".join(_RETRY_HELP) + "\n")
                continue
            if key in ("y", "n", "f"):
                answer = key
                break
            if key in ("", "\x04"):  # end of input
                break
    except KeyboardInterrupt:
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sh.print()
    return answer


@command("edit", "domain", "edit XML configuration for a domain", description=(
    "Edit the persistent XML definition of a domain (with its secrets) in $VISUAL, else "
    "$EDITOR, else vi (run through 'sh -c', so the variable may carry options), then "
    "define the result; an unchanged file changes nothing. When the new definition is "
    "refused, or was changed by someone else meanwhile, and stdin is a terminal, it asks "
    "'Try again? [y,n,f,?]': y edits the same file again, n gives up, f defines it "
    "again; without a terminal it gives up with the error. The temporary file is "
    "removed in every case."),
    args=(DOM,))
def cmd_edit(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    conn = sh.conn()
    flags = XML_INACTIVE | XML_SECURE
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        doc = dom.xml(flags)
    path = _write_temp(doc)
    try:
        edited = _edit(sh, path, doc)
        while edited is not None:
            with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
                reread = dom.xml(flags)
            message, error = "", None
            if reread != doc:
                message, doc = _CHANGED_BY_OTHER, reread
            else:
                try:
                    defined = conn.define_xml(edited)
                except QemudClientError as exc:
                    message, error = "Failed.", exc.message
                else:
                    sh.print(f"Domain '{defined.name}' XML configuration edited.")
                    return
            answer = _ask_reedit(sh, message, error)
            if answer == "y":
                edited = _edit(sh, path, doc)
            elif answer == "n":
                raise CommandError()  # the user gave up: status 1, nothing more to say
            elif answer != "f":  # no terminal to ask on: give up, saying why
                raise CommandError(*([error] if error else []),
                                   f"{message} Domain '{dom.name}' XML configuration not "
                                   "changed.")
        sh.print(f"Domain '{dom.name}' XML configuration not changed.")
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _edit(sh: Shell, path: str, doc: str) -> str | None:
    """Run the editor on ``path``; the edited XML, or None when the file still holds
    ``doc`` (virsh compares the text exactly)."""
    _run_editor(sh, path)
    edited = _read_back(path)
    return None if edited == doc else edited


def edit_text(sh: Shell, doc: str, apply: Callable[[str], None], failure: str,
              tidy: Callable[[str], str] = str) -> bool:
    """virsh's editing of something other than a definition (``desc --edit``, ``metadata
    --edit``): ``doc`` in a temporary file, the editor on it, ``tidy`` on what comes
    back; False when that is ``doc`` still (nothing applied), else ``apply`` it and True.
    When ``apply`` is refused and stdin is a terminal, virsh's "Try again?" (y: edit
    again, f: apply again, n: give up); without one, ``failure`` and the error."""
    path = _write_temp(doc)
    try:
        while True:
            _run_editor(sh, path)
            edited = tidy(_read_back(path))
            if edited == doc:
                return False
            while True:
                try:
                    apply(edited)
                    return True
                except QemudClientError as exc:
                    answer = _ask_reedit(sh, "Failed.", exc.message)
                    if answer == "f":
                        continue
                    if answer == "n":
                        raise CommandError() from None
                    if answer != "y":  # no terminal to ask on
                        raise CommandError(failure, exc.message) from None
                    break
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
