"""Domain management and monitoring commands."""

from __future__ import annotations

from typing import Any

from protocol.constants import (
    DomainState,
    ListFlags,
    RebootFlags,
    ShutoffReason,
    UndefineFlags,
)

from ...domain import (
    AFFECT_CONFIG,
    AFFECT_LIVE,
    DESTROY_GRACEFUL,
    MODIFY_FORCE,
    SAVE_BYPASS_CACHE,
    SAVE_PAUSED,
    SAVE_RUNNING,
    START_FORCE_BOOT,
    START_PAUSED,
    START_RESET_NVRAM,
    UNDEFINE_MANAGED_SAVE,
    XML_INACTIVE,
    XML_SECURE,
    Domain,
)
from ...errors import NoDomainError
from ...format import key_values, reason_name, state_name, state_text, table
from ..context import Shell
from ..diskxml import disk_has_media, graphics_display, os_type
from ..progress import Progress
from ..registry import DOMAIN, FILE, Arg, Args, CommandError, Opt, UsageError, command
from ..xmlfile import XMLFileError, read_xml_file
from .undefine_storage import selected_volumes, split_volume_list

DOM = Arg("domain", "domain name, id or uuid", complete=DOMAIN)

LIVE = Opt("live", "affect the running domain")
CONFIG = Opt("config", "affect the persistent definition")
CURRENT = Opt("current", "affect the current state of the domain (the default)")
PERSISTENT = Opt("persistent", "make the live change persistent too")

#: virsh's --mode words for the reboot/shutdown modes (the same bits in both flag enums)
POWER_MODES: dict[str, int] = {
    "acpi": RebootFlags.ACPI_POWER_BTN, "agent": RebootFlags.GUEST_AGENT,
    "initctl": RebootFlags.INITCTL, "signal": RebootFlags.SIGNAL,
    "paravirt": RebootFlags.PARAVIRT,
}
MODE = Opt("mode", "shutdown mode: acpi|agent|initctl|signal|paravirt", "string",
           suggest=tuple(POWER_MODES))


def read_xml(path: str, context: str) -> str:
    """An XML file for the daemon, decoded as it declares (see client/shell/xmlfile.py);
    a file that cannot be read, is not XML text or is too large for the protocol fails
    with ``error: CONTEXT`` + why, naming the file."""
    try:
        return read_xml_file(path)
    except OSError as exc:
        raise CommandError(context, f"cannot read '{path}': {exc.strerror or exc}") from None
    except XMLFileError as exc:
        raise CommandError(context, str(exc)) from None


def affect_flags(sh: Shell, args: Args, dom: Domain) -> int:
    """virsh's --live/--config/--current/--persistent → VIR_DOMAIN_AFFECT_* flags."""
    live, config = args.flag("live"), args.flag("config")
    current, persistent = args.flag("current"), args.flag("persistent")
    if current and (live or config):
        raise UsageError("Options --current and --live/--config are mutually exclusive")
    if persistent and current:
        raise UsageError("Options --persistent and --current are mutually exclusive")
    flags = 0
    if live:
        flags |= AFFECT_LIVE
    if config:
        flags |= AFFECT_CONFIG
    if persistent:
        flags |= AFFECT_CONFIG
        with sh.failing(f"failed to get state of domain '{dom.name}'"):
            if dom.is_active():
                flags |= AFFECT_LIVE
    return flags


def _mode_flags(args: Args) -> int:
    """virsh's ``--mode acpi,agent``: the OR of the listed modes' flags (0 without it).

    Every word is checked here, as virsh does; whether the daemon can do the mode is the
    daemon's answer (qemud: acpi, and agent only together with acpi).
    """
    text = args.get("mode")
    flags = 0
    for word in [] if text is None else text.split(","):
        if word not in POWER_MODES:
            raise UsageError(f"Unknown mode {word} value, expecting 'acpi', 'agent', "
                             "'initctl', 'signal', or 'paravirt'")
        flags |= POWER_MODES[word]
    return flags


def _id_text(dom_id: int) -> str:
    return "-" if dom_id < 0 else str(dom_id)


# -- listing -----------------------------------------------------------------------------

@command("list", "monitor", "list domains", description=(
    "Returns the list of domains: active ones by default, with --all every one. The "
    "--state-*, --persistent/--transient, --autostart/--no-autostart and "
    "--with-snapshot/--without-snapshot filters combine (the snapshot filters ask each "
    "listed domain for its snapshots), as do --with-managed-save/--without-managed-save; "
    "--managed-save shows a domain with a managed save image as 'saved'."),
    opts=(
        Opt("inactive", "list inactive domains"),
        Opt("all", "list inactive & active domains"),
        Opt("managed-save", "mark inactive domains with managed save state"),
        Opt("with-managed-save", "list domains with managed save state"),
        Opt("without-managed-save", "list domains without managed save"),
        Opt("transient", "list transient domains"),
        Opt("persistent", "list persistent domains"),
        Opt("with-snapshot", "list domains with existing snapshot"),
        Opt("without-snapshot", "list domains without a snapshot"),
        Opt("state-running", "list domains in running state"),
        Opt("state-paused", "list domains in paused state"),
        Opt("state-shutoff", "list domains in shutoff state"),
        Opt("state-other", "list domains in other states"),
        Opt("autostart", "list domains with autostart enabled"),
        Opt("no-autostart", "list domains with autostart disabled"),
        Opt("uuid", "list uuid's only"),
        Opt("name", "list domain names only"),
        Opt("id", "list domain IDs only"),
        Opt("table", "list table (default)"),
        Opt("title", "show domain title"),
    ), json=True)
def cmd_list(sh: Shell, args: Args) -> None:
    states = {"state-running": ListFlags.RUNNING, "state-paused": ListFlags.PAUSED,
              "state-shutoff": ListFlags.SHUTOFF, "state-other": ListFlags.OTHER}
    flags = 0
    if args.flag("all"):
        pass
    elif args.flag("inactive"):
        flags |= ListFlags.INACTIVE
    elif not any(args.flag(s) for s in states):
        flags |= ListFlags.ACTIVE
    for name, bit in (*states.items(), ("persistent", ListFlags.PERSISTENT),
                      ("transient", ListFlags.TRANSIENT), ("autostart", ListFlags.AUTOSTART),
                      ("no-autostart", ListFlags.NO_AUTOSTART),
                      ("with-managed-save", ListFlags.MANAGEDSAVE),
                      ("without-managed-save", ListFlags.NO_MANAGEDSAVE)):
        if args.flag(name):
            flags |= bit
    if args.flag("table") and (args.flag("name") or args.flag("uuid") or args.flag("id")):
        raise UsageError("Options --table and --name/--uuid/--id are mutually exclusive")
    with sh.failing("failed to list domains"):
        doms = sh.conn().list_domains(int(flags))
        doms = _snapshot_filter(doms, args.flag("with-snapshot"),
                                args.flag("without-snapshot"))
        # virsh asks each domain; one listing of the domains with an image does it here
        saved = {d.uuid_bytes for d in sh.conn().list_domains(ListFlags.MANAGEDSAVE)} \
            if args.flag("managed-save") else set()
    # virsh order (virshDomainSorter): running domains by id, then the others by name,
    # ignoring ASCII case (strcasecmp)
    doms.sort(key=lambda d: (d.id < 0, d.id if d.id >= 0 else 0,
                             d.name.encode().lower(), d.name))
    if sh.want_json(args):
        entries = [_summary_json(d) for d in doms]
        if args.flag("title"):
            from .domxml import add_json_titles  # domxml imports this module
            entries = add_json_titles(sh, doms, entries)
        sh.print_json(entries)
        return
    if args.flag("uuid") or args.flag("name") or args.flag("id"):
        # virsh's columns, in its order (uuid, id, name) and one space apart; --id
        # alone lists only the running domains
        alone = not (args.flag("uuid") or args.flag("name"))
        for d in doms:
            if alone and d.id < 0:
                continue
            sh.print(" ".join(value for wanted, value in (
                ("uuid", d.uuid), ("id", _id_text(d.id)), ("name", d.name))
                if args.flag(wanted)))
        return
    rows = []
    for d in doms:
        state = d.summary.state if d.summary else int(DomainState.NOSTATE)
        rows.append([_id_text(d.id), d.name,
                     "saved" if d.uuid_bytes in saved else state_name(state)])
    headers = ["Id", "Name", "State"]
    if args.flag("title"):
        from .domxml import add_titles  # domxml imports this module
        headers, rows = add_titles(sh, doms, headers, rows)
    sh.write(table(headers, rows))
    sh.print()


def _snapshot_filter(doms: list[Domain], with_snapshot: bool, without_snapshot: bool
                     ) -> list[Domain]:
    """virsh's --with-snapshot / --without-snapshot (VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT /
    _NO_SNAPSHOT), done here because the daemon's DOMAIN_LIST does not filter on them:
    each domain is asked for its snapshots. Both flags, like neither, keep every domain
    (as in libvirt); a domain gone since the listing is left out."""
    if with_snapshot == without_snapshot:
        return doms
    kept = []
    for d in doms:
        try:
            has = bool(d.snapshots())
        except NoDomainError:
            continue
        if has == with_snapshot:
            kept.append(d)
    return kept


def _summary_json(d: Domain) -> dict[str, Any]:
    s = d.summary
    out: dict[str, Any] = {"id": d.id if d.id >= 0 else None, "name": d.name, "uuid": d.uuid}
    if s is not None:
        out.update(state=state_name(s.state), reason=reason_name(s.state, s.reason),
                   state_code=s.state, reason_code=s.reason, persistent=bool(s.persistent),
                   autostart=bool(s.autostart))
    return out


# -- information -------------------------------------------------------------------------

@command("dominfo", "monitor", "domain information", description=(
    "Returns basic information about the domain."), args=(DOM,), json=True)
def cmd_dominfo(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get information of domain '{dom.name}'"):
        info = dom.info()
        xml = dom.xml()
        autostart = dom.autostart()
        managed_save = dom.has_managed_save()
        persistent: bool | None = None
        for d in sh.conn().list_domains(0):
            if d.uuid == dom.uuid and d.summary is not None:
                persistent = bool(d.summary.persistent)
    dom_id = dom.id
    active = info.state not in (DomainState.SHUTOFF, DomainState.NOSTATE)
    try:
        ostype = os_type(xml) or "-"
    except Exception:  # a domain XML the shell cannot read is no reason to fail
        ostype = "-"
    if sh.want_json(args):
        sh.print_json({
            "id": dom_id if dom_id >= 0 else None, "name": dom.name, "uuid": dom.uuid,
            "os_type": ostype, "state": state_name(info.state), "state_code": int(info.state),
            "vcpus": info.vcpus, "cpu_time_ns": info.cpu_time_ns if active else None,
            "max_memory_kib": info.max_mem_kib, "used_memory_kib": info.memory_kib,
            "persistent": persistent, "autostart": autostart, "managed_save": managed_save,
        })
        return
    pairs: list[tuple[str, object]] = [
        ("Id:", _id_text(dom_id)), ("Name:", dom.name), ("UUID:", dom.uuid),
        ("OS Type:", ostype), ("State:", state_name(info.state)), ("CPU(s):", info.vcpus),
    ]
    if active:
        pairs.append(("CPU time:", f"{info.cpu_time_ns / 1e9:.1f}s"))
    pairs += [
        ("Max memory:", f"{info.max_mem_kib} KiB"), ("Used memory:", f"{info.memory_kib} KiB"),
        ("Persistent:", "unknown" if persistent is None else "yes" if persistent else "no"),
        ("Autostart:", "enable" if autostart else "disable"),
        # no "Security model" lines: there is no security driver to name (virsh prints
        # them only when one is active)
        ("Managed save:", "yes" if managed_save else "no"),
    ]
    sh.write(key_values(pairs))
    sh.print()


@command("domstate", "monitor", "domain state", description=(
    "Returns the state of a domain; with --reason also why it is in that state."),
    args=(DOM,), opts=(Opt("reason", "also print reason for the state"),), json=True)
def cmd_domstate(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get state of domain '{dom.name}'"):
        state, reason = dom.state()
    if sh.want_json(args):
        sh.print_json({"state": state_name(state), "reason": reason_name(state, reason),
                       "state_code": int(state), "reason_code": reason})
        return
    sh.print(state_text(state, reason if args.flag("reason") else None))


@command("domid", "domain", "convert a domain name or UUID to domain id", args=(DOM,))
def cmd_domid(sh: Shell, args: Args) -> None:
    sh.print(_id_text(sh.domain(args.req("domain")).id))


@command("domname", "domain", "convert a domain id or UUID to domain name", args=(DOM,))
def cmd_domname(sh: Shell, args: Args) -> None:
    sh.print(sh.domain(args.req("domain")).name)


@command("domuuid", "domain", "convert a domain name or id to domain UUID", args=(DOM,))
def cmd_domuuid(sh: Shell, args: Args) -> None:
    sh.print(sh.domain(args.req("domain")).uuid)


#: libvirt's VIR_DOMAIN_XML_UPDATE_CPU
_XML_UPDATE_CPU = 4
#: libvirt's VIR_DOMAIN_XML_MIGRATABLE
_XML_MIGRATABLE = 8


@command("dumpxml", "domain", "domain information in XML", description=(
    "Output the domain information as an XML dump to stdout: the live definition of a "
    "running domain, or with --inactive the persistent one. Secrets (the VNC password) "
    "are left out unless --security-info is given, which a read-only connection may not "
    "do. --update-cpu is accepted, as by virsh, and changes nothing: qemud has no "
    "host-model CPU to update. --migratable gives libvirt's XML suitable for "
    "migrations: a lone default USB controller and pci-root are left out (older libvirt "
    "added them by itself); the rest, device aliases and runtime data included, is as "
    "without it. "
    "--xpath prints only what the XPath expression selects (evaluated with <domain> "
    "as the context node): elements as XML, attributes as name=\"value\", text and "
    "numbers as text, one per line; --wrap puts them all in one <nodes> element."),
    args=(DOM,), opts=(Opt("inactive", "show inactive defined XML"),
                       Opt("security-info", "include security sensitive information in "
                                            "XML dump"),
                       Opt("update-cpu", "update guest CPU according to host CPU"),
                       Opt("migratable", "provide XML suitable for migrations"),
                       Opt("xpath", "xpath expression to filter the XML document", "string"),
                       Opt("wrap", "wrap xpath results in an common root element")))
def cmd_dumpxml(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    flags = (XML_INACTIVE if args.flag("inactive") else 0) | \
        (XML_SECURE if args.flag("security-info") else 0) | \
        (_XML_UPDATE_CPU if args.flag("update-cpu") else 0) | \
        (_XML_MIGRATABLE if args.flag("migratable") else 0)
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        xml = dom.xml(flags)
    expression = args.get("xpath")
    if expression is not None:
        from .domxml import xpath_output  # domxml imports this module
        sh.write(xpath_output(xml, expression, args.flag("wrap")))
        return
    sh.write(xml if xml.endswith("\n") else xml + "\n")


@command("vncdisplay", "monitor", "vnc display", description=(
    "Output the IP address and display number for the VNC display of a running domain "
    "(':N' when it listens on every address; the port is 5900 + N)."), args=(DOM,))
def cmd_vncdisplay(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"failed to get the XML of domain '{dom.name}'"):
        xml = dom.xml()
    display = graphics_display(xml, "vnc")
    if display is None:
        raise CommandError(f"no VNC display for domain '{dom.name}' (is it running with a "
                           "<graphics type='vnc'> device?)")
    sh.print(display)


# -- definition --------------------------------------------------------------------------

#: virsh's --validate (VIR_DOMAIN_DEFINE_VALIDATE / VIR_DOMAIN_START_VALIDATE): qemud
#: validates every definition against libvirt's schema anyway (docs/CONFORMANCE.md)
VALIDATE = Opt("validate", "validate the XML against the schema (qemud always does)")
_DEFINE_VALIDATE, _START_VALIDATE = 1, 16


@command("define", "domain", "define (but don't start) a domain from an XML file",
         args=(Arg("file", "file containing an XML domain description", complete=FILE),),
         opts=(VALIDATE,))
def cmd_define(sh: Shell, args: Args) -> None:
    path = args.req("file")
    context = f"Failed to define domain from {path}"
    xml = read_xml(path, context)
    with sh.failing(context):
        dom = sh.conn().define_xml(xml, _DEFINE_VALIDATE if args.flag("validate") else 0)
    sh.print(f"Domain '{dom.name}' defined from {path}")


#: libvirt's VIR_DOMAIN_UNDEFINE_NVRAM / VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
_UNDEFINE_NVRAM, _UNDEFINE_KEEP_NVRAM = 4, 8


@command("undefine", "domain", "undefine a domain", description=(
    "Undefine an inactive domain, or convert a persistent running domain to transient. "
    "An inactive domain that has snapshots is only undefined with --snapshots-metadata, "
    "which removes their metadata (its disks stay); one with a managed save image only "
    "with --managed-save, which removes the image; a UEFI domain whose NVRAM file (its "
    "firmware variables) exists only with --nvram, which removes the file, or "
    "--keep-nvram, which keeps it. --storage (disks by target or source path, "
    "comma-separated) and --remove-all-storage (every disk) are virsh's: they remove "
    "the storage volumes a libvirt storage pool manages. qemud has no storage pools, so "
    "for each disk they select qemush says, as virsh does for an unmanaged disk, that it "
    "'is not managed by libvirt. Remove it manually.', then undefines the domain; the "
    "files stay (--wipe-storage and --delete-storage-volume-snapshots have no volume "
    "to act on). A name --storage finds no disk for is refused before anything is done."),
    args=(DOM,), opts=(Opt("managed-save", "remove domain managed state file"),
                       Opt("storage", "remove associated storage volumes (comma separated "
                                      "list of targets or source paths) (see domblklist)",
                           "string"),
                       Opt("remove-all-storage", "remove all associated storage volumes "
                                                 "(use with caution)"),
                       Opt("delete-storage-volume-snapshots",
                           "delete snapshots associated with volume(s), requires "
                           "--remove-all-storage (must be supported by storage driver)"),
                       Opt("wipe-storage", "wipe data on the removed volumes"),
                       Opt("snapshots-metadata", "remove all domain snapshot metadata too"),
                       Opt("nvram", "remove nvram file"),
                       Opt("keep-nvram", "keep nvram file")))
def cmd_undefine(sh: Shell, args: Args) -> None:
    storage, remove_all = args.get("storage"), args.flag("remove-all-storage")
    if args.flag("delete-storage-volume-snapshots") and not remove_all:
        raise UsageError("Option --remove-all-storage is required by option "
                         "--delete-storage-volume-snapshots")
    if args.flag("wipe-storage") and storage is None and not remove_all:
        raise CommandError("'--wipe-storage' requires '--storage <string>' or "
                           "'--remove-all-storage'")
    dom = sh.domain(args.req("domain"))
    flags = UndefineFlags.SNAPSHOTS_METADATA if args.flag("snapshots-metadata") else 0
    if args.flag("managed-save"):
        flags |= UNDEFINE_MANAGED_SAVE
    if args.flag("nvram"):
        flags |= _UNDEFINE_NVRAM
    if args.flag("keep-nvram"):
        flags |= _UNDEFINE_KEEP_NVRAM
    if storage is not None or remove_all:
        _unmanaged_storage(sh, dom, storage, remove_all)
    with sh.failing(f"Failed to undefine domain '{dom.name}'"):
        dom.undefine(flags)
    sh.print(f"Domain '{dom.name}' has been undefined")


def _unmanaged_storage(sh: Shell, dom: Domain, storage: str | None,
                       remove_all: bool) -> None:
    """virsh's checks and words for undefine's storage options, before the undefine: no
    disk of a qemud domain is a pool's volume, so each selected one is reported as one to
    remove by hand (module undefine_storage)."""
    with sh.failing(""):  # virsh prints the daemon's error alone
        running = dom.is_active()
    if running:
        raise CommandError("Storage volume deletion is supported only on stopped domains")
    if storage is not None and remove_all:
        raise CommandError("Specified both --storage and --remove-all-storage")
    with sh.failing("Could not retrieve domain XML description"):
        xml = dom.xml()
    wanted = split_volume_list(storage) if storage is not None else None
    volumes, missing = selected_volumes(xml, wanted)
    if missing:
        raise CommandError(*(f"Volume '{name}' was not found in domain's definition."
                             for name in missing))
    for volume in volumes:
        line, error = volume.messages()
        if line is not None:
            sh.print(line)
        if error is not None:
            sh.error(error)


@command("domrename", "domain", "rename a domain", description=(
    "Rename an inactive domain: a persistent, shut-off domain without snapshots or a "
    "managed save image. Its uuid stays; its definition, autostart flag, log and "
    "appliance state follow the new name."),
    args=(Arg("domain", "domain name or uuid", complete=DOMAIN),
          Arg("new-name", "new domain name")))
def cmd_domrename(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(""):  # virsh prints the daemon's error alone
        dom.rename(args.req("new-name"))
    sh.print("Domain successfully renamed")


@command("create", "domain", "create a domain from an XML file", description=(
    "Create and start a transient domain from an XML file; with --paused its vCPUs stay "
    "stopped until 'resume'."),
    args=(Arg("file", "file containing an XML domain description", complete=FILE),),
    opts=(Opt("paused", "leave the guest paused after creation"),
          Opt("console", "attach to console after creation"), VALIDATE))
def cmd_create(sh: Shell, args: Args) -> None:
    path = args.req("file")
    context = f"Failed to create domain from {path}"
    xml = read_xml(path, context)
    flags = (START_PAUSED if args.flag("paused") else 0) | (
        _START_VALIDATE if args.flag("validate") else 0)
    with sh.failing(context):
        dom = sh.conn().create_xml(xml, flags)
    sh.print(f"Domain '{dom.name}' created from {path}")
    if args.flag("console"):
        _attach_console(sh, dom)


def _attach_console(sh: Shell, dom: Domain) -> None:
    """virsh's --console of create and start: the console, right after the start."""
    from .console import run_console  # (it imports this module)
    run_console(sh, dom)


@command("autostart", "domain", "autostart a domain", description=(
    "Configure a domain to be automatically started when the daemon starts, once per "
    "host boot as libvirt's: a daemon restarted later (a crash, an upgrade) does not "
    "start again the guests stopped since."),
    args=(DOM,), opts=(Opt("disable", "disable autostarting"),))
def cmd_autostart(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    enable = not args.flag("disable")
    verb = "mark" if enable else "unmark"
    with sh.failing(f"Failed to {verb} domain '{dom.name}' as autostarted"):
        dom.set_autostart(enable)
    sh.print(f"Domain '{dom.name}' {verb}ed as autostarted")


# -- lifecycle ---------------------------------------------------------------------------

@command("start", "domain", "start a (previously defined) inactive domain", description=(
    "Start a (previously defined) inactive domain; with --paused its vCPUs stay stopped "
    "until 'resume'. A domain with a managed save image (managedsave) is restored from "
    "it and the image removed; --force-boot discards the image and boots afresh. "
    "--reset-nvram recreates a UEFI domain's NVRAM file (its firmware variables) from its "
    "template first."),
    args=(DOM,), opts=(Opt("paused", "leave the guest paused after start"),
                       Opt("console", "attach to console after start"),
                       Opt("force-boot", "force fresh boot by discarding any managed "
                                         "save"),
                       Opt("reset-nvram", "re-initialize NVRAM from its pristine "
                                          "template")))
def cmd_start(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    flags = (START_PAUSED if args.flag("paused") else 0) | \
        (START_FORCE_BOOT if args.flag("force-boot") else 0) | \
        (START_RESET_NVRAM if args.flag("reset-nvram") else 0)
    with sh.failing(f"Failed to start domain '{dom.name}'"):
        dom.create(flags)
    sh.print(f"Domain '{dom.name}' started")
    if args.flag("console"):
        _attach_console(sh, dom)


@command("shutdown", "domain", "gracefully shutdown a domain", description=(
    "Ask the domain to shut down: by default (or with --mode acpi) press its ACPI power "
    "button. --mode takes virsh's comma-separated list of modes; qemud has no guest agent, "
    "so 'agent' works only together with 'acpi', and initctl, signal and paravirt are "
    "refused. With --timeout N, wait up to N seconds for it to stop and destroy it if it "
    "has not (the output then says 'did not shut down within N s: destroyed')."),
    args=(DOM,), opts=(MODE, Opt("timeout", "seconds before the domain is destroyed",
                                 "seconds", integer=True,
                                 maximum=(2**32 - 1) // 1000)))
def cmd_shutdown(sh: Shell, args: Args) -> None:
    flags = _mode_flags(args)
    timeout = args.number("timeout")
    if timeout is not None and timeout <= 0:
        raise UsageError("command 'shutdown': --timeout must be a positive number of seconds")
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to shutdown domain '{dom.name}'"):
        if timeout is None:
            dom.shutdown(flags=flags)
        else:
            with Progress(sh.err, f"Shutting down domain '{dom.name}'"):
                dom.shutdown(float(timeout), flags)
    if timeout is None:
        sh.print(f"Domain '{dom.name}' is being shutdown")
        return
    with sh.failing(f"failed to get state of domain '{dom.name}'"):
        state, reason = dom.state()
    if state == DomainState.SHUTOFF and reason == ShutoffReason.DESTROYED:
        # (a hard stop can lose what the guest had not written: say it was one)
        sh.print(f"Domain '{dom.name}' did not shut down within {timeout} s: destroyed")
    else:
        sh.print(f"Domain '{dom.name}' is shut off")


@command("reboot", "domain", "reboot a domain", description=(
    "Reboot the domain: by default (or with --mode acpi) press its ACPI power button, then "
    "reset it when the guest powers off (with on_reboot destroy or preserve, it stays off). "
    "--mode takes virsh's comma-separated list of modes; qemud has no guest agent, so "
    "'agent' works only together with 'acpi', and initctl, signal and paravirt are "
    "refused."),
    args=(DOM,), opts=(MODE,))
def cmd_reboot(sh: Shell, args: Args) -> None:
    flags = _mode_flags(args)
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to reboot domain '{dom.name}'"):
        dom.reboot(flags)
    sh.print(f"Domain '{dom.name}' is being rebooted")


@command("destroy", "domain", "destroy (stop) a domain", description=(
    "Immediately terminate the domain, like pulling the power cord: QEMU gets SIGTERM, "
    "then SIGKILL if it has not exited within the daemon's grace period "
    "(qemu.destroy_grace). With --graceful it gets SIGTERM only: if it has not exited "
    "within that period (10 s when it is 0) the command fails (\"Failed to terminate "
    "process PID with SIGTERM: Device or resource busy\") and the domain stays running. "
    "A domain still starting (QEMU launched, or its NVRAM file still being copied) is "
    "destroyed too, and its start fails saying so."),
    args=(DOM,), opts=(Opt("graceful", "terminate gracefully (SIGTERM only, never SIGKILL)"),))
def cmd_destroy(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to destroy domain '{dom.name}'"):
        dom.destroy(DESTROY_GRACEFUL if args.flag("graceful") else 0)
    sh.print(f"Domain '{dom.name}' destroyed")


@command("suspend", "domain", "suspend a domain", description=(
    "Suspend a running domain (its vCPUs stop; it stays in memory)."), args=(DOM,))
def cmd_suspend(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to suspend domain '{dom.name}'"):
        dom.suspend()
    sh.print(f"Domain '{dom.name}' suspended")


@command("resume", "domain", "resume a domain", args=(DOM,))
def cmd_resume(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to resume domain '{dom.name}'"):
        dom.resume()
    sh.print(f"Domain '{dom.name}' resumed")


def save_state_flags(args: Args) -> int:
    """The VIR_DOMAIN_SAVE_* flags of ``--bypass-cache``, ``--running``, ``--paused``
    (save, restore, managedsave), the last two refused together as virsh does."""
    args.exclusive(("running", "paused"))
    return (SAVE_BYPASS_CACHE if args.flag("bypass-cache") else 0) | \
        (SAVE_RUNNING if args.flag("running") else 0) | \
        (SAVE_PAUSED if args.flag("paused") else 0)


@command("save", "domain", "save a domain state to a file", description=(
    "Save the RAM state of a running or paused domain to a file and stop it. 'restore' "
    "brings it back in the state it had (a paused domain stays paused), unless "
    "--running or --paused, recorded in the file, say otherwise. --bypass-cache is "
    "accepted and changes nothing."),
    args=(DOM, Arg("file", "where to save the data", complete=FILE)),
    opts=(Opt("bypass-cache", "avoid file system cache when saving"),
          Opt("running", "set domain to be running on restore"),
          Opt("paused", "set domain to be paused on restore")))
def cmd_save(sh: Shell, args: Args) -> None:
    flags = save_state_flags(args)
    dom = sh.domain(args.req("domain"))
    path = args.req("file")
    with sh.failing(f"Failed to save domain '{dom.name}' to {path}"), \
            Progress(sh.err, f"Saving domain '{dom.name}'"):
        dom.save(path, flags)
    sh.print(f"Domain '{dom.name}' saved to {path}")


@command("restore", "domain", "restore a domain from a saved state in a file",
         description=(
             "Start a domain from the state 'save' wrote to a file: running or paused as "
             "it was saved (or as 'save --running/--paused' asked), unless --running or "
             "--paused say otherwise. --bypass-cache is accepted and changes nothing."),
         args=(Arg("file", "the state to restore", complete=FILE),),
         opts=(Opt("bypass-cache", "avoid file system cache when restoring"),
               Opt("running", "restore domain into running state"),
               Opt("paused", "restore domain into paused state")))
def cmd_restore(sh: Shell, args: Args) -> None:
    flags = save_state_flags(args)
    path = args.req("file")
    conn = sh.conn()
    with sh.failing(f"Failed to restore domain from {path}"), \
            Progress(sh.err, f"Restoring domain from {path}"):
        conn.restore(path, flags)
    sh.print(f"Domain restored from {path}")


# -- devices -----------------------------------------------------------------------------

@command("change-media", "domain", "change media of CD or floppy drive", description=(
    "Insert, update or eject the medium of a CD-ROM drive. Without --eject/--insert/"
    "--update: update when SOURCE is given, eject otherwise. SOURCE is an absolute path. "
    "As virsh, --insert refuses a drive that has media and --eject one that has none "
    "(checked in the persistent definition with --config, else the live one). With "
    "--live --config the running drive changes first, the persistent definition once "
    "QEMU took the medium. A tray the guest locked stays shut (the change fails) unless "
    "--force."),
    args=(DOM, Arg("path", "fully-qualified path or target of disk device"),
          Arg("source", "source of the media", required=False, complete=FILE)),
    opts=(Opt("eject", "eject the media"), Opt("insert", "insert the media"),
          Opt("update", "update the media"), LIVE, CONFIG, CURRENT,
          Opt("force", "force media changing (open the tray also when the guest "
                       "locked it)")))
def cmd_change_media(sh: Shell, args: Args) -> None:
    actions = [a for a in ("eject", "insert", "update") if args.flag(a)]
    if len(actions) > 1:
        raise UsageError(f"Options --{actions[0]} and --{actions[1]} are mutually exclusive")
    source = args.get("source")
    action = actions[0] if actions else "update"
    if action == "eject" and source:
        raise UsageError("command 'change-media': --eject takes no <source>")
    if action == "insert" and not source:
        raise UsageError("command 'change-media': --insert requires <source>")
    dom = sh.domain(args.req("domain"))
    flags = affect_flags(sh, args, dom)
    target = args.req("path")
    if action in ("eject", "insert"):  # virsh's checks, on the XML the flags change
        with sh.failing(f"Failed to complete action {action} on media"):
            has_media = disk_has_media(dom.xml(XML_INACTIVE if flags & AFFECT_CONFIG
                                               else 0), target)
        if action == "eject" and has_media is False:
            raise CommandError(f"The disk device '{target}' doesn't have media")
        if action == "insert" and has_media:
            raise CommandError(f"The disk device '{target}' already has media")
    if args.flag("force"):
        flags |= MODIFY_FORCE
    with sh.failing(f"Failed to complete action {action} on media"):
        dom.change_media(target, source if action != "eject" else None, flags)
    words = {"eject": "ejected", "insert": "inserted", "update": "updated"}
    sh.print(f"Successfully {words[action]} media.")
