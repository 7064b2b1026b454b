"""udev hotplug commands (the appliance layer's host block devices handed to guests)."""

from __future__ import annotations

from ...format import table
from ..context import Shell
from ..registry import Args, command


@command("hotplug-list", "host", "list host devices matched by udev hotplug rules",
         description=("Host block devices matched by the daemon's udev hotplug rules "
                      "(docs/HOTPLUG.md): the rule, the domain they go to, and the guest "
                      "target they are attached as ('-' when not attached)."), json=True)
def cmd_hotplug_list(sh: Shell, args: Args) -> None:
    with sh.failing("failed to list hotplug devices"):
        devices = sh.conn().hotplug_list()
    if sh.want_json(args):
        sh.print_json([{"rule": d.rule, "device": d.device, "domain": d.domain,
                        "target": d.target or None, "attached": bool(d.attached)}
                       for d in devices])
        return
    rows = [[d.device, d.rule, d.domain, d.target or "-", "yes" if d.attached else "no"]
            for d in devices]
    sh.write(table(["Device", "Rule", "Domain", "Target", "Attached"], rows))
    sh.print()
