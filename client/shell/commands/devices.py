"""Device listings computed from the domain XML (no daemon procedure of their own)."""

from __future__ import annotations

from ...domain import XML_INACTIVE
from ...format import table
from ..context import Shell
from ..devicelist import (
    BLOCK_DETAIL_HEADERS,
    BLOCK_HEADERS,
    INTERFACE_HEADERS,
    block_rows,
    interface_rows,
)
from ..registry import Args, CommandError, Opt, command
from .domain import DOM

INACTIVE = Opt("inactive", "get inactive rather than running configuration")


def _xml(sh: Shell, args: Args) -> tuple[str, str]:
    """(domain name, its XML: the live one, or with --inactive the persistent one)."""
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        return dom.name, dom.xml(XML_INACTIVE if args.flag("inactive") else 0)


@command("domblklist", "monitor", "list all domain blocks", description=(
    "Get the summary of block devices for a domain: each disk's target and source ('-' "
    "for an empty drive), read from the domain XML."),
    args=(DOM,), opts=(INACTIVE, Opt("details", "additionally display the type and device "
                                                "value")))
def cmd_domblklist(sh: Shell, args: Args) -> None:
    name, xml = _xml(sh, args)
    details = args.flag("details")
    try:
        rows = block_rows(xml, details)
    except Exception as exc:  # the daemon's XML, not ours: say so rather than crash
        raise CommandError(f"failed to read the disks of domain '{name}'", str(exc)) from None
    sh.write(table(BLOCK_DETAIL_HEADERS if details else BLOCK_HEADERS, rows))
    sh.print()


@command("domiflist", "monitor", "list all domain virtual interfaces", description=(
    "Get the summary of virtual interfaces for a domain: host device ('-' while it is "
    "not running), type, source, model and MAC, read from the domain XML."),
    args=(DOM,), opts=(INACTIVE,))
def cmd_domiflist(sh: Shell, args: Args) -> None:
    name, xml = _xml(sh, args)
    try:
        rows = interface_rows(xml)
    except Exception as exc:
        raise CommandError(f"failed to read the interfaces of domain '{name}'",
                           str(exc)) from None
    sh.write(table(INTERFACE_HEADERS, rows))
    sh.print()
