"""``desc`` and ``metadata``: a domain's description, title and custom XML metadata, as
virsh's commands of those names (DOMAIN_GET_METADATA / DOMAIN_SET_METADATA).

``desc DOMAIN [--live|--config|--current] [--title] [--edit] [--new-desc] TEXT...``;
``metadata DOMAIN URI [--key KEY] [--set XML | --remove | --edit] [--live|--config|
--current]``. ``--edit`` runs $VISUAL / $EDITOR as ``edit`` does
(:func:`.domxml.edit_text`).
"""

from __future__ import annotations

from protocol.constants import MetadataType

from ...domain import AFFECT_CONFIG, AFFECT_LIVE, Domain
from ...errors import NoMetadataError
from ..context import Shell
from ..registry import Arg, Args, Opt, UsageError, command
from .domain import CONFIG, CURRENT, DOM, LIVE
from .domxml import edit_text


def _affect(args: Args) -> int:
    """virsh's --live / --config / --current (the last alone with neither other)."""
    args.exclusive(("current", "live"), ("current", "config"))
    return (AFFECT_LIVE if args.flag("live") else 0) | (
        AFFECT_CONFIG if args.flag("config") else 0)


def _current(sh: Shell, dom: Domain, kind: MetadataType, flags: int) -> str:
    """The description or title ("" when none): virsh reads the persistent one with
    --config, else the current state's."""
    with sh.failing(""):
        try:
            return dom.metadata(kind, flags & AFFECT_CONFIG)
        except NoMetadataError:
            return ""


@command("desc", "domain", "show or set domain's description or title", description=(
    "Without TEXT, print the domain's description (with --title its one-line title), or "
    "'No description for domain: NAME'. With TEXT (the remaining words, joined by "
    "spaces; --new-desc TEXT too), set it; an empty TEXT ('') removes it. --edit opens "
    "the text (TEXT, else the present one) in $VISUAL, else $EDITOR, else vi, and sets "
    "what is saved unless it is unchanged (a title loses one trailing newline). --live "
    "and --config pick the running or the persistent definition (both: both); the "
    "default is the running one of a running domain, else the persistent one. A title "
    "must be one line."),
    args=(DOM, Arg("new-desc", "message", required=False, many=True)),
    opts=(LIVE, CONFIG, CURRENT, Opt("title", "modify/get the title instead of description"),
          Opt("edit", "open an editor to modify the description")))
def cmd_desc(sh: Shell, args: Args) -> None:
    flags = _affect(args)
    title = args.flag("title")
    kind = MetadataType.TITLE if title else MetadataType.DESCRIPTION
    what = "title" if title else "description"
    words = args.many("new-desc")
    dom = sh.domain(args.req("domain"))
    if args.flag("edit"):
        text = " ".join(words) if words else _current(sh, dom, kind, flags)

        def tidy(edited: str) -> str:  # editors end a file with a newline: not a title's
            return edited[:-1] if title and edited.endswith("\n") else edited

        def apply(edited: str) -> None:
            dom.set_metadata(kind, edited, flags)

        if not edit_text(sh, text, apply, f"Failed to set new domain {what}", tidy):
            sh.print(f"Domain {what} not changed")
            return
        sh.print(f"Domain {what} updated successfully")
        return
    if words:
        with sh.failing(f"Failed to set new domain {what}"):
            dom.set_metadata(kind, " ".join(words), flags)
        sh.print(f"Domain {what} updated successfully")
        return
    text = _current(sh, dom, kind, flags)
    if text:
        sh.print(text)
    else:
        sh.print(f"No {what} for domain: {dom.name}")


@command("metadata", "domain", "show or set domain's custom XML metadata", description=(
    "Shows or modifies the XML metadata of a domain: the element of namespace URI in "
    "its <metadata>. Without --set, --remove or --edit, print that element's XML "
    "(without the namespace, as it was set). --set XML replaces it with XML, whose "
    "elements without a namespace are put into URI under the prefix --key; --remove "
    "removes it; --edit opens it (or an empty file) in $VISUAL, else $EDITOR, else vi "
    "and sets what is saved unless it is unchanged (an emptied file removes it). --set "
    "and --edit need --key. --live and --config pick the running or the persistent "
    "definition (both: both, when setting); the default is the running one of a "
    "running domain, else the persistent one. qemud's appliance settings (namespace "
    "http://qemud.org/xmlns/appliance/1) change only with --config, checked as at "
    "define, and take effect at the domain's next start."),
    args=(DOM, Arg("uri", "URI of the namespace")),
    opts=(LIVE, CONFIG, CURRENT,
          Opt("edit", "use an editor to change the metadata"),
          Opt("key", "key to be used as a namespace identifier", "string"),
          Opt("set", "new metadata to set", "string"),
          Opt("remove", "remove the metadata corresponding to an uri")))
def cmd_metadata(sh: Shell, args: Args) -> None:
    flags = _affect(args)
    args.exclusive(("edit", "set"), ("remove", "set"), ("remove", "edit"))
    uri = args.req("uri")
    key = args.get("key")
    new = args.get("set")
    if new == "":
        raise UsageError("option --set needs the XML of an element (--remove removes it)")
    if (new is not None or args.flag("edit")) and not key:
        raise UsageError("namespace key is required when modifying metadata")
    dom = sh.domain(args.req("domain"))
    element = MetadataType.ELEMENT
    if new is not None or args.flag("remove"):
        with sh.failing(""):  # virsh: the error alone
            dom.set_metadata(element, new or "", flags, key or "", uri)
        sh.print("Metadata removed" if new is None else "Metadata modified")
        return
    if args.flag("edit"):
        with sh.failing(""):
            try:
                doc = dom.metadata(element, flags & ~AFFECT_LIVE if flags & AFFECT_CONFIG
                                   else flags, uri)
            except NoMetadataError:
                doc = "\n"  # virsh: nothing yet, an empty file to write it in

        def apply(edited: str) -> None:
            dom.set_metadata(element, edited if edited.strip() else "", flags, key or "",
                             uri)

        if edit_text(sh, doc, apply, ""):
            sh.print("Metadata modified")
        else:
            sh.print("Metadata not changed")
        return
    with sh.failing(""):
        sh.print(dom.metadata(element, flags, uri))
