"""``qemush``: global options, one-shot commands and the interactive prompt."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from protocol.errors import LocalProtocolError, ProtocolError

from ..errors import ConnectionLost, QemudClientError
from . import commands as _commands  # noqa: F401 - registers the commands
from .commands.host import client_version
from .commands.shell import QuitShell, command_help, help_text
from .completion import COMPLETER_DELIMS, Completer
from .context import Shell
from .lexer import LexError, split_argv, split_commands
from .registry import CommandError, UsageError, lookup, parse_args

__all__ = ["main", "execute", "run_line", "interactive", "USAGE"]

HISTORY_FILE = "~/.qemush_history"
HISTORY_LENGTH = 1000

USAGE = """\
qemush [options]... [<command_string>]
qemush [options]... <command> [args...]

  options:
    -c | --connect=URI      daemon connection URI
    -r | --readonly         connect read-only
    --json                  JSON output from listing and information commands
    -h | --help             this help
    -v | --version          program version

  With no command, qemush reads commands interactively (or, when stdin is not a
  terminal, one command line per input line). Several commands may be given at once,
  separated by ';'.

  commands (non interactive mode):

"""


def execute(sh: Shell, argv: Sequence[str]) -> bool:
    """Run one command (``argv[0]`` is its name); print errors; True on success.

    Raises QuitShell for quit/exit.
    """
    name, rest = argv[0], list(argv[1:])
    try:
        cmd = lookup(name)
        if cmd is None:
            raise UsageError(f"unknown command: '{name}'")
        before_dashdash = rest[:rest.index("--")] if "--" in rest else rest
        if "--help" in before_dashdash and cmd.opt("help") is None and \
                cmd.arg("help") is None:
            sh.write(command_help(cmd))
            return True
        args = parse_args(cmd, rest)
        cmd.handler(sh, args)
        return True
    except QuitShell:
        raise
    except CommandError as exc:
        sh.error(*exc.lines)
    except ConnectionLost as exc:
        sh.error(exc.message)
        sh.disconnect()
    except QemudClientError as exc:
        sh.error(exc.message)
    except ProtocolError as exc:
        # The client library converts these (InvalidCall, ConnectionLost); one that gets
        # through is still an error message, never a traceback that ends the session.
        sh.error(f"protocol error: {exc.message}")
        if not isinstance(exc, LocalProtocolError):  # what we received: stop trusting it
            sh.disconnect()
    except KeyboardInterrupt:
        sh.error("interrupted")
    except BrokenPipeError:
        raise  # (our own output is gone: main's handler ends quietly)
    except OSError as exc:
        # a local file a command reads or writes (the daemon's errors come as
        # QemudClientError): an error line, never a traceback that ends the session
        where = f"'{exc.filename}': " if exc.filename else ""
        sh.error(f"{where}{exc.strerror or exc}")
    finally:
        sh.forget_names()
        try:
            sh.out.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError):
            pass
    return False


def run_commands(sh: Shell, commands: list[list[str]]) -> bool:
    """Run every command in order, as virsh's vshCommandRun: a failure is reported and
    the next command runs (``destroy x; undefine x`` undefines a shut-off ``x``); the
    outcome is the last command's (``quit`` and ``exit`` end the run)."""
    ok = True
    for argv in commands:
        ok = execute(sh, argv)
    return ok


def run_line(sh: Shell, line: str) -> bool:
    """One interactive input line (may hold several ';'-separated commands)."""
    try:
        commands = split_commands(line)
    except LexError as exc:
        sh.error(str(exc))
        return False
    return run_commands(sh, commands)


def _setup_readline(completer: Completer) -> str | None:
    try:
        import readline
    except ImportError:  # pragma: no cover - Python built without readline
        return None
    readline.set_completer_delims(COMPLETER_DELIMS)
    readline.set_completer(completer.readline_hook)
    if "libedit" in (readline.__doc__ or ""):  # pragma: no cover - macOS
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    history = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(history)
    except (OSError, UnicodeDecodeError):
        pass
    readline.set_history_length(HISTORY_LENGTH)
    return history


def _save_history(history: str | None) -> None:
    if history is None:
        return
    try:
        import readline
        readline.write_history_file(history)
    except (ImportError, OSError):
        pass


def interactive(sh: Shell) -> int:
    """The prompt loop. Failed commands print their error and the session goes on;
    quit, exit or EOF leave with status 0."""
    tty = sys.stdin.isatty()
    history = None
    if tty:
        history = _setup_readline(Completer(sh.domain_names, sh.snapshot_names))
        sh.print("Welcome to qemush, the interactive terminal for qemud.\n")
        sh.print("Type:  'help' for help with commands")
        sh.print("       'quit' to quit\n")
    try:
        while True:
            prompt = "qemush > " if sh.readonly else "qemush # "
            try:
                if tty:
                    line = input(prompt)
                else:
                    line = sys.stdin.readline()
                    if not line:
                        break
            except EOFError:
                sh.print()
                break
            except KeyboardInterrupt:
                sh.print()
                continue
            try:
                run_line(sh, line)
            except QuitShell:
                break
    finally:
        _save_history(history)
    return 0


def _parse_global(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    opts: dict[str, object] = {"uri": None, "readonly": False, "json": False}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        i += 1
        if word in ("-c", "--connect"):
            if i >= len(argv):
                raise UsageError(f"option '{word}' requires an argument (a URI)")
            opts["uri"] = argv[i]
            i += 1
        elif word.startswith("--connect="):
            opts["uri"] = word.partition("=")[2]
        elif word.startswith("-c") and not word.startswith("--"):
            opts["uri"] = word[2:]
        elif word in ("-r", "--readonly"):
            opts["readonly"] = True
        elif word == "--json":
            opts["json"] = True
        elif word in ("-h", "--help"):
            opts["help"] = True
        elif word in ("-v", "--version"):
            opts["version"] = True
        else:
            raise UsageError(f"unsupported option '{word}'. See 'qemush --help'.")
    return opts, argv[i:]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    sh = Shell()
    try:
        try:
            opts, rest = _parse_global(args)
        except UsageError as exc:
            sh.error(*exc.lines)
            return 1
        if opts.get("help"):
            sh.write(USAGE + help_text())
            return 0
        if opts.get("version"):
            sh.print(client_version())
            return 0
        sh.uri = opts["uri"] if isinstance(opts["uri"], str) else None
        sh.readonly = bool(opts["readonly"])
        sh.json = bool(opts["json"])
        if not rest:
            sh.interactive = True
            return interactive(sh)
        try:
            commands = split_argv(rest)
        except LexError as exc:
            sh.error(str(exc))
            return 1
        try:
            ok = run_commands(sh, commands)
        except QuitShell:
            ok = True
        return 0 if ok else 1
    except BrokenPipeError:
        # the reader went away (qemush list | head): stay quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        sh.disconnect()
