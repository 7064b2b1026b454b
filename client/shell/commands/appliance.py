"""Appliance templates and host inspection (the daemon renders against its own host)."""

from __future__ import annotations

import json

from ... import appliance
from ..context import Shell
from ..registry import FILE, Arg, Args, Opt, command
from .domain import read_xml


@command("host-inspect", "host", "what the appliance layer sees of the daemon's host",
         description=("Prints JSON: memory, physical cores (hyperthreads excluded), "
                      "physical NICs with their MACs and the DMI/SMBIOS fields that "
                      "appliance templates can "
                      "use (host.memory, host.cores, host.nic0.mac, ...). A read-only "
                      "connection gets no product_serial, product_uuid or board_serial "
                      "(files only root may read), nor do the templates it renders."))
def cmd_host_inspect(sh: Shell, args: Args) -> None:
    with sh.failing("failed to inspect the host"):
        facts = appliance.host_inspect(sh.conn())
    sh.print(json.dumps(facts, indent=2, sort_keys=True))


@command("appliance-generate", "domain", "render an appliance template against the host",
         description=("Render an appliance template (domain XML with qemud formulas and "
                      "placeholders, see docs/APPLIANCE.md) against the daemon's host and "
                      "print the domain XML; --define defines it as well."),
         args=(Arg("template", "appliance template file", complete=FILE),),
         opts=(Opt("define", "define the rendered domain too"),))
def cmd_appliance_generate(sh: Shell, args: Args) -> None:
    path = args.req("template")
    template = read_xml(path, f"Failed to read template {path}")
    with sh.failing(f"Failed to render appliance template {path}"):
        xml = appliance.render(sh.conn(), template)
    if not args.flag("define"):
        sh.print(xml.rstrip("\n"))
        return
    with sh.failing(f"Failed to define the domain rendered from {path}"):
        dom = sh.conn().define_xml(xml)
    sh.print(f"Domain '{dom.name}' defined from appliance template {path}")
