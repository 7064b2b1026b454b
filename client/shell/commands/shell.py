"""Commands about the shell itself: help, connect, quit."""

from __future__ import annotations

from ..context import Shell
from ..registry import GROUPS, REGISTRY, Arg, Args, Command, CommandError, Opt, command

__all__ = ["QuitShell", "help_text", "command_help"]


class QuitShell(Exception):
    """Raised by quit/exit to leave the interactive loop."""


def help_text(group: str | None = None) -> str:
    """The grouped command list (``help``) or one group's (``help KEYWORD``)."""
    lines = [] if group else ["Grouped commands:", ""]
    for key, title in GROUPS.items():
        if group and key != group:
            continue
        lines.append(f" {title} (help keyword '{key}'):")
        for cmd in sorted((c for c in REGISTRY.values() if c.group == key),
                          key=lambda c: c.name):
            lines.append(f"    {cmd.name:<30} {cmd.summary}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _arg_label(a: Arg) -> str:
    label = f"[--{a.name}] <string>"
    return label + "..." if a.many else label


def _opt_label(o: Opt) -> str:
    if not o.takes_value:
        return f"--{o.name}"
    kind = "number" if o.integer else (o.metavar or "string")
    return f"--{o.name} <{kind}>"


def command_help(cmd: Command) -> str:
    """virsh's ``help COMMAND`` page: NAME, SYNOPSIS, DESCRIPTION, OPTIONS."""
    out = ["  NAME", f"    {cmd.name} - {cmd.summary}", "", "  SYNOPSIS",
           f"    {cmd.synopsis()}", "", "  DESCRIPTION", f"    {cmd.description}", ""]
    entries: list[tuple[str, str]] = []
    for a in cmd.args:
        text = a.help + ("" if a.required else " (optional)")
        if a.choices:
            text += f" ({'|'.join(a.choices)})"
        entries.append((_arg_label(a), text))
    for o in cmd.all_opts:
        text = o.help
        if o.choices:
            text += f" ({'|'.join(o.choices)})"
        entries.append((_opt_label(o), text))
    if entries:
        width = max(15, *(len(label) for label, _ in entries))
        out.append("  OPTIONS")
        out += [f"    {label:<{width}}  {text}" for label, text in entries]
        out.append("")
    return "\n".join(out) + "\n"


@command("help", "shell", "print help", description=(
    "Prints the grouped list of commands, the commands of one group (by keyword) or "
    "the manual of one command."),
    args=(Arg("command", "command or command group keyword", required=False),),
    connect=False)
def cmd_help(sh: Shell, args: Args) -> None:
    name = args.get("command")
    if not name:
        sh.write(help_text())
        return
    cmd = REGISTRY.get(name)
    if cmd is not None:
        sh.write(command_help(cmd))
    elif name in GROUPS:
        sh.write(help_text(name))
    else:
        raise CommandError(f"command or command group '{name}' doesn't exist")


@command("quit", "shell", "quit this interactive terminal", connect=False)
def cmd_quit(sh: Shell, args: Args) -> None:
    raise QuitShell()


@command("exit", "shell", "quit this interactive terminal", connect=False)
def cmd_exit(sh: Shell, args: Args) -> None:
    raise QuitShell()


@command("connect", "shell", "(re)connect to the daemon", description=(
    "Close the current connection and open one to URI (default: the current URI, or "
    "the default one)."),
    args=(Arg("name", "daemon connection URI", required=False),),
    opts=(Opt("readonly", "read-only connection"),), connect=False)
def cmd_connect(sh: Shell, args: Args) -> None:
    sh.reconnect(args.get("name") or sh.uri, args.flag("readonly"))
