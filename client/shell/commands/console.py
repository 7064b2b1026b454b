"""``console DOM [DEVNAME]``."""

from __future__ import annotations

import os
import sys
import termios
import tty

from ..console import pipe_console
from ..context import Shell
from ..registry import Arg, Args, command
from .domain import DOM


@command("console", "domain", "connect to the guest console", description=(
    "Connect the terminal to the domain's serial console; Ctrl+] leaves. When stdin is "
    "not a terminal, bytes are piped both ways instead."),
    args=(DOM, Arg("devname", "character device name (default: the first console)",
                   required=False)))
def cmd_console(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    in_fd = sys.stdin.fileno()
    out_fd = sys.stdout.fileno()
    interactive = os.isatty(in_fd)
    with sh.failing(f"Failed to open the console of domain '{dom.name}'"):
        stream = dom.open_console(args.get("devname") or "")
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
