"""Appliance image commands (docs/APPLIANCE-IMAGES.md) and the support bundle."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ... import appliance_images as images
from ...format import table
from ..context import Shell
from ..progress import Progress
from ..registry import FILE, Arg, Args, CommandError, Opt, UsageError, command
from .domain import DOM


@command("appliance-import", "host", "import an appliance tarball into the image store",
         description=("Check an appliance tarball (a tar or tar.gz with appliance.json, "
                      "disk images, kernel/initrd) against the host and store it read-only "
                      "as NAME:VERSION. FILE is a path on the daemon's host; a relative "
                      "path is made absolute here when the file exists locally."),
         args=(Arg("file", "appliance tarball", complete=FILE),))
def cmd_appliance_import(sh: Shell, args: Args) -> None:
    path = args.req("file")
    if not os.path.isabs(path) and os.path.exists(path):
        path = os.path.abspath(path)
    with sh.failing(f"Failed to import appliance from '{path}'"), \
            Progress(sh.err, f"Importing appliance {Path(path).name}"):
        ref = images.import_appliance(sh.conn(), path)
    sh.print(f"Appliance {ref} imported")


@command("appliance-deploy", "domain", "create a VM from a stored appliance",
         description=("Define VM --as from appliance NAME (the newest version unless "
                      "--version): its own overlays on the read-only originals, fresh "
                      "scratch disks. --start starts it too."),
         args=(Arg("name", "appliance name"),),
         opts=(Opt("as", "name of the new VM", "vm"),
               Opt("version", "appliance version (default: the newest)", "version"),
               Opt("start", "start the VM once it is defined (a VM whose start fails "
                            "stays defined)")))
def cmd_appliance_deploy(sh: Shell, args: Args) -> None:
    name = args.req("name")
    vm = args.get("as")
    if not vm:
        raise UsageError("command 'appliance-deploy' requires --as <vm>")
    # (with --start the daemon's message says which part failed: a VM whose start fails
    # is kept, deployed)
    what = "deploy and start" if args.flag("start") else "deploy"
    with sh.failing(f"Failed to {what} appliance '{name}' as '{vm}'"), \
            Progress(sh.err, f"Deploying appliance {name} as {vm}"):
        images.deploy(sh.conn(), name, vm, args.get("version") or "",
                      start=args.flag("start"))
    sh.print(f"Domain '{vm}' deployed from appliance {name}"
             + (" and started" if args.flag("start") else ""))


@command("appliance-update", "domain", "A/B update of a VM to another appliance version",
         description=("Switch the VM's system disk to VERSION (a running VM is stopped and "
                      "started again; data disks are kept, scratch disks emptied). Unless "
                      "its heartbeat comes within appliance.update_deadline of the start, "
                      "the daemon rolls it back by itself (appliance events "
                      "update-confirmed / update-rolled-back)."),
         args=(DOM,), opts=(Opt("to", "appliance version to update to", "version"),))
def cmd_appliance_update(sh: Shell, args: Args) -> None:
    version = args.get("to")
    if not version:
        raise UsageError("command 'appliance-update' requires --to <version>")
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to update domain '{dom.name}' to {version}"), \
            Progress(sh.err, f"Updating domain '{dom.name}' to {version}"):
        images.update(sh.conn(), dom, version)
    sh.print(f"Domain '{dom.name}' switched to version {version} (waiting for its "
             "heartbeat to confirm)")


@command("appliance-reset", "domain", "factory reset of a VM deployed from an appliance",
         description=("Discard every change to the VM's system disk (a running VM is "
                      "stopped and started again); data disks are kept, scratch disks "
                      "emptied."), args=(DOM,))
def cmd_appliance_reset(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to reset domain '{dom.name}'"), \
            Progress(sh.err, f"Resetting domain '{dom.name}'"):
        images.factory_reset(sh.conn(), dom)
    sh.print(f"Domain '{dom.name}' reset to its appliance's original system disk")


@command("appliance-list", "host", "list stored appliances and the VMs deployed from them",
         description="Appliance images in the daemon's store and the VMs made from each.",
         json=True)
def cmd_appliance_list(sh: Shell, args: Args) -> None:
    with sh.failing("failed to list appliances"):
        infos = images.list_appliances(sh.conn())
    if sh.want_json(args):
        sh.print_json([{"name": i.name, "version": i.version, "arch": i.arch,
                        "path": i.path, "vms": list(i.vms)} for i in infos])
        return
    rows = [[i.name, i.version, i.arch, ", ".join(i.vms) or "-", i.path] for i in infos]
    sh.write(table(["Name", "Version", "Arch", "VMs", "Path"], rows))
    sh.print()


@command("support-bundle", "admin", "download a support bundle from the daemon",
         description=("A tar.gz of the daemon's logs, guests' QEMU logs and XML, "
                      "capabilities, versions and configuration (secrets redacted, no "
                      "private keys). Written to FILE (-o FILE or --output FILE), by "
                      "default qemud-support-<time>.tar.gz here."),
         args=(Arg("file", "output file ('-o FILE' works too)", required=False, many=True,
                   complete=FILE),),
         opts=(Opt("output", "output file", "file", complete=FILE),))
def cmd_support_bundle(sh: Shell, args: Args) -> None:
    words = args.many("file")
    if words and words[0] == "-o":
        words = words[1:]
        if not words:
            raise UsageError("command 'support-bundle': -o needs a file name")
    if len(words) > 1 or (words and args.get("output")):
        raise UsageError("command 'support-bundle': give one output file")
    target = args.get("output") or (words[0] if words else
                                    f"qemud-support-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    partial = f"{target}.part"
    try:
        out = open(partial, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CommandError("Failed to write the support bundle",
                           f"cannot open '{partial}': {exc.strerror or exc}") from None
    try:
        try:
            with out, sh.failing("Failed to get the support bundle"), \
                    Progress(sh.err, "Collecting the support bundle"):
                size = images.support_bundle(sh.conn(), out)
        except OSError as exc:  # (the local file: a full disk, a file size limit)
            raise CommandError("Failed to write the support bundle",
                               f"cannot write '{partial}': {exc.strerror or exc}") from None
        try:
            os.replace(partial, target)
        except OSError as exc:
            raise CommandError("Failed to write the support bundle",
                               f"cannot rename '{partial}' to '{target}': "
                               f"{exc.strerror or exc}") from None
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    sh.print(f"Support bundle written to {target} ({size} bytes)")
