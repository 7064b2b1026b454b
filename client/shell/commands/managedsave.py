"""virsh's managed save commands: ``managedsave``, ``managedsave-remove`` and
``managedsave-dumpxml`` (the ``start --force-boot``, ``dominfo``, ``list`` and
``undefine --managed-save`` parts are in :mod:`.domain`)."""

from __future__ import annotations

from ...domain import XML_SECURE
from ..context import Shell
from ..progress import Progress
from ..registry import Args, Opt, command
from .domain import DOM, save_state_flags


@command("managedsave", "domain", "managed save of a domain state", description=(
    "Save the RAM state of a running or paused persistent domain to an image the daemon "
    "keeps (<state_dir>/save/DOMAIN.save) and stop it (state shut off, reason saved). "
    "The next 'start' (or autostart) resumes the domain from the image and removes it; "
    "'start --force-boot' discards it and boots. --running / --paused pick the state the "
    "domain comes back in (else the state it had). --bypass-cache is accepted and "
    "changes nothing."),
    args=(DOM,), opts=(Opt("bypass-cache", "avoid file system cache when saving"),
                       Opt("running", "set domain to be running on next start"),
                       Opt("paused", "set domain to be paused on next start")))
def cmd_managedsave(sh: Shell, args: Args) -> None:
    flags = save_state_flags(args)
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to save domain '{dom.name}' state"), \
            Progress(sh.err, f"Saving domain '{dom.name}'"):
        dom.managed_save(flags)
    sh.print(f"Domain '{dom.name}' state saved by qemud")


@command("managedsave-remove", "domain", "Remove managed save of a domain", description=(
    "Remove the managed save image of a domain, if it has one: its next start boots "
    "afresh."), args=(DOM,))
def cmd_managedsave_remove(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing("Failed to check for domain managed save image"):
        has_image = dom.has_managed_save()
    if not has_image:
        sh.print(f"Domain '{dom.name}' has no manage save image; removal skipped")
        return
    with sh.failing(f"Failed to remove managed save image for domain '{dom.name}'"):
        dom.managed_save_remove()
    sh.print(f"Removed managedsave image for domain '{dom.name}'")


@command("managedsave-dumpxml", "domain", "Domain information of managed save state file "
         "in XML", description=(
             "Output the domain XML stored in the domain's managed save image. Secrets (the "
             "VNC password) are left out unless --security-info is given, which a "
             "read-only connection may not do. --xpath and --wrap work as for dumpxml."),
         args=(DOM,), opts=(Opt("security-info", "include security sensitive information "
                                                 "in XML dump"),
                            Opt("xpath", "xpath expression to filter the XML document",
                                "string"),
                            Opt("wrap", "wrap xpath results in an common root element")))
def cmd_managedsave_dumpxml(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    flags = XML_SECURE if args.flag("security-info") else 0
    with sh.failing(f"Failed to get the managed save image XML of domain '{dom.name}'"):
        xml = dom.managed_save_xml(flags)
    expression = args.get("xpath")
    if expression is not None:
        from .domxml import xpath_output
        sh.write(xpath_output(xml, expression, args.flag("wrap")))
        return
    sh.write(xml if xml.endswith("\n") else xml + "\n")
