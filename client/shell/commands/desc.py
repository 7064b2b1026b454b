"""``desc DOMAIN [--live|--config|--current] [--title] [--new-desc] TEXT...``: show or
change a domain's description or title, as virsh's ``desc``."""

from __future__ import annotations

from protocol.constants import MetadataType

from ...domain import AFFECT_CONFIG, AFFECT_LIVE
from ...errors import NoMetadataError
from ..context import Shell
from ..registry import Arg, Args, Opt, command
from .domain import CONFIG, CURRENT, DOM, LIVE


@command("desc", "domain", "show or set domain's description or title", description=(
    "Without TEXT, print the domain's description (with --title its one-line title), or "
    "'No description for domain: NAME'. With TEXT (the remaining words, joined by "
    "spaces; --new-desc TEXT too), set it; an empty TEXT ('') removes it. --live and "
    "--config pick the running or the persistent definition (both: both); the default "
    "is the running one of a running domain, else the persistent one. A title must be "
    "one line."),
    args=(DOM, Arg("new-desc", "message", required=False, many=True)),
    opts=(LIVE, CONFIG, CURRENT, Opt("title", "modify/get the title instead of description")))
def cmd_desc(sh: Shell, args: Args) -> None:
    args.exclusive(("current", "live"), ("current", "config"))
    flags = (AFFECT_LIVE if args.flag("live") else 0) | (
        AFFECT_CONFIG if args.flag("config") else 0)
    title = args.flag("title")
    kind = MetadataType.TITLE if title else MetadataType.DESCRIPTION
    words = args.many("new-desc")
    dom = sh.domain(args.req("domain"))
    if words:
        what = "title" if title else "description"
        with sh.failing(f"Failed to set new domain {what}"):
            dom.set_metadata(kind, " ".join(words), flags)
        sh.print(f"Domain {what} updated successfully")
        return
    # virsh reads the persistent one with --config, else the current state's
    with sh.failing(""):
        try:
            text = dom.metadata(kind, flags & AFFECT_CONFIG)
        except NoMetadataError:
            text = ""
    if text:
        sh.print(text)
    else:
        sh.print(f"No {'title' if title else 'description'} for domain: {dom.name}")
