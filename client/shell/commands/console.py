"""``console DOM [DEVNAME]``."""

from __future__ import annotations

import os
import sys
import termios
import tty

from ...domain import CONSOLE_FORCE, CONSOLE_SAFE, Domain
from ..console import pipe_console
from ..context import Shell
from ..registry import Arg, Args, Opt, command
from .domain import DOM


@command("console", "domain", "connect to the guest console", description=(
    "Connect the terminal to the domain's serial console; Ctrl+] leaves. When stdin is "
    "not a terminal, bytes are piped both ways instead."),
    args=(DOM, Arg("devname", "character device name (default: the first console)",
                   required=False)),
    opts=(Opt("safe", "only connect if safe console handling is supported (it always is: "
                      "one session per domain)"),
          Opt("force", "take the console over from another session holding it (that "
                       "session ends with an error)")))
def cmd_console(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    flags = (CONSOLE_FORCE if args.flag("force") else 0) | (
        CONSOLE_SAFE if args.flag("safe") else 0)
    run_console(sh, dom, args.get("devname") or "", flags)


def run_console(sh: Shell, dom: Domain, devname: str = "", flags: int = 0) -> None:
    """Attach the terminal (or stdin/stdout) to console ``devname`` of ``dom`` until the
    user leaves or the stream ends: ``console``, and ``start``/``create --console``."""
    in_fd = sys.stdin.fileno()
    out_fd = sys.stdout.fileno()
    interactive = os.isatty(in_fd)
    with sh.failing(f"Failed to open the console of domain '{dom.name}'"):
        stream = dom.open_console(devname, flags)
    if not interactive:
        sh.out.flush()
        with sh.failing(f"console of domain '{dom.name}' failed"):
            pipe_console(stream, in_fd, out_fd, raw=False)
        return
    sh.print(f"Connected to domain '{dom.name}'")
    sh.print("Escape character is ^] (Ctrl + ])")
    sh.out.flush()
    saved = termios.tcgetattr(in_fd)
    try:
        tty.setraw(in_fd)
        with sh.failing(f"console of domain '{dom.name}' failed"):
            pipe_console(stream, in_fd, out_fd, raw=True)
    finally:
        termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        sh.print()
