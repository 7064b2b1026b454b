"""``reset``, ``inject-nmi``, ``screenshot`` and ``qemu-monitor-command``: virsh's
commands that act on a running guest's hardware, look at its screen or talk to its QEMU
directly (tools/virsh-domain.c)."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from ...domain import MONITOR_COMMAND_HMP
from ..context import Shell
from ..registry import FILE, Arg, Args, CommandError, Opt, UsageError, command
from .domain import DOM

#: a QMP command name (qapi: letters, digits, '-' and '_'; some start with x-)
_QMP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@command("reset", "domain", "reset a domain", description=(
    "Reset a running domain at once, as the reset button does: the guest is not asked "
    "and loses what it had not written."), args=(DOM,))
def cmd_reset(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to reset domain '{dom.name}'"):
        dom.reset()
    sh.print(f"Domain '{dom.name}' was reset")


@command("inject-nmi", "domain", "Inject NMI to the guest", description=(
    "Send a non-maskable interrupt to the running guest (its kernel logs it, or panics "
    "if told to)."), args=(DOM,))
def cmd_inject_nmi(sh: Shell, args: Args) -> None:
    dom = sh.domain(args.req("domain"))
    with sh.failing(f"Failed to inject NMI to domain '{dom.name}'"):
        dom.inject_nmi()


#: virsh's file name extensions by MIME type (virshGenFileName)
_EXTENSIONS = {"image/x-portable-pixmap": ".ppm", "image/png": ".png"}


@command("screenshot", "domain", "take a screenshot of a current domain console and store it "
         "into a file", description=(
             "Take a screenshot of the running guest's screen (its graphics console) and "
             "store it into FILE, by default DOMAIN-YYYY-MM-DD-HH:MM:SS.ppm here (QEMU "
             "makes PPM images). A guest without graphics has no screen to take."),
         args=(DOM, Arg("file", "where to store the screenshot", required=False,
                        complete=FILE)),
         opts=(Opt("screen", "ID of a screen to take screenshot of", "number",
                   integer=True, minimum=0),))
def cmd_screenshot(sh: Shell, args: Args) -> None:
    """Written to a temporary file beside the target and renamed at the end: a failed
    screenshot leaves no partial image and never costs an existing file."""
    dom = sh.domain(args.req("domain"))
    screen = args.number("screen") or 0
    path = args.get("file")
    part = os.path.join(os.path.dirname(path or "") or ".",
                        f".{os.path.basename(path or dom.name)}.{os.getpid()}.part")
    try:
        out = open(part, "wb")  # noqa: SIM115 - closed below, before the rename
    except OSError as exc:
        raise CommandError(f"cannot create file {path or part}: {exc.strerror or exc}"
                           ) from None
    try:
        with out, sh.failing(f"could not take a screenshot of {dom.name}"):
            mime = dom.screenshot(out, screen)
        if path is None:  # virsh's name, once the type is known
            path = (f"{dom.name}-{time.strftime('%Y-%m-%d-%H:%M:%S')}"
                    f"{_EXTENSIONS.get(mime, '')}")
        try:
            os.replace(part, path)
        except OSError as exc:
            raise CommandError(f"cannot create file {path}: {exc.strerror or exc}"
                               ) from None
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    sh.print(f"Screenshot saved to {path}, with type of {mime}")


def _json_value(text: str) -> Any:
    """A ``key=value`` argument's value: JSON if it parses, else the text as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def qmp_text(words: list[str]) -> str:
    """The QMP command the words make: virsh's shorthand, a command name followed by
    ``key=value`` arguments (each value JSON if it parses, else a string), or else the
    words themselves, as JSON text."""
    text = " ".join(words)
    name, *rest = words
    if not _QMP_NAME.fullmatch(name):
        return text  # JSON, or meant to be: the daemon says what is wrong with it
    arguments: dict[str, Any] = {}
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UsageError(f"Malformed QMP command argument '{word}' (expected "
                             "key=value, or the whole command as JSON)")
        arguments[key] = _json_value(value)
    command_obj: dict[str, Any] = {"execute": name}
    if arguments:
        command_obj["arguments"] = arguments
    return json.dumps(command_obj)


@command("qemu-monitor-command", "domain", "QEMU Monitor Command", description=(
    "Send a command to the running guest's QEMU and print QEMU's reply. Without --hmp "
    "the command is QMP: JSON ('{\"execute\": \"query-status\"}'), or a command name "
    "followed by key=value arguments (each value JSON if it parses, else a string); the "
    "reply is printed as QEMU gave it, an error reply too, --pretty indents it and "
    "--return-value prints only its 'return' member. With --hmp the words are a human "
    "monitor command line and its text output is printed. QEMU may change what the "
    "daemon does not see announced; the domain is logged as tainted."),
    args=(DOM, Arg("cmd", "command", many=True)),
    opts=(Opt("hmp", "command is in human monitor protocol"),
          Opt("pretty", "pretty-print any qemu monitor protocol output"),
          Opt("return-value", "extract the value of the 'return' key from the returned "
                              "string")))
def cmd_qemu_monitor_command(sh: Shell, args: Args) -> None:
    args.exclusive(("hmp", "pretty"), ("hmp", "return-value"))
    words = args.many("cmd")
    if not words:
        raise UsageError("command 'qemu-monitor-command' requires <cmd> option")
    dom = sh.domain(args.req("domain"))
    hmp = args.flag("hmp")
    text = " ".join(words) if hmp else qmp_text(words)
    with sh.failing(f"Failed to run the QEMU monitor command on domain '{dom.name}'"):
        reply = dom.qemu_monitor_command(text, MONITOR_COMMAND_HMP if hmp else 0)
    if hmp:
        sh.print(reply.replace("\r\n", "\n").rstrip("\n"))
        return
    if not (args.flag("pretty") or args.flag("return-value")):
        sh.print(reply)
        return
    value = json.loads(reply)
    if args.flag("return-value"):
        if not isinstance(value, dict) or "return" not in value:
            raise CommandError("'return' member missing")
        value = value["return"]
    sh.print(json.dumps(value, indent=2) if args.flag("pretty")
             else json.dumps(value, separators=(",", ":")))
