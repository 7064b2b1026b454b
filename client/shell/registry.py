"""The command table: every command is one declarative entry, and help, argument parsing
and tab completion are all derived from it.

Arguments follow virsh: ``--flag``, ``--opt VALUE`` or ``--opt=VALUE``; positional
arguments may also be given by name (``dominfo --domain demo``); ``--`` ends options.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import Shell

__all__ = [
    "Arg", "Opt", "Command", "Args", "CommandError", "UsageError", "GROUPS", "REGISTRY",
    "command", "lookup", "parse_args", "JSON_OPT",
]

#: completion kinds for arguments and option values
DOMAIN = "domain"
FILE = "file"
SNAPSHOT = "snapshot"

#: help groups, in display order: keyword -> title
GROUPS: dict[str, str] = {
    "domain": "Domain Management",
    "monitor": "Domain Monitoring",
    "snapshot": "Snapshot",
    "host": "Host and Hypervisor",
    "admin": "Daemon Administration",
    "shell": "Qemush itself",
}


class CommandError(Exception):
    """A command failed; each line is printed as ``error: <line>``."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = [line for line in lines if line]


class UsageError(CommandError):
    """The command line itself is wrong (unknown option, missing argument ...)."""


@dataclass(frozen=True)
class Arg:
    """A positional argument (may also be given as ``--NAME VALUE``)."""

    name: str
    help: str
    required: bool = True
    many: bool = False  # takes every remaining positional
    complete: str | None = None  # DOMAIN | FILE | SNAPSHOT
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Opt:
    """A ``--NAME`` option: a boolean flag, or one that takes a value (``metavar``)."""

    name: str
    help: str
    metavar: str | None = None  # None: a boolean flag
    choices: tuple[str, ...] = ()  # accepted values (checked)
    suggest: tuple[str, ...] = ()  # offered by completion only (not checked)
    integer: bool = False
    #: the values an ``integer`` option takes (virsh's int by default; narrower where
    #: the call's field is)
    minimum: int = -(2**31)
    maximum: int = 2**31 - 1
    complete: str | None = None

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None


JSON_OPT = Opt("json", "print JSON instead of text")

Handler = Callable[["Shell", "Args"], None]


@dataclass(frozen=True)
class Command:
    name: str
    group: str
    summary: str
    handler: Handler
    description: str = ""
    args: tuple[Arg, ...] = ()
    opts: tuple[Opt, ...] = ()
    connect: bool = True  # needs the connection
    json: bool = False  # accepts --json

    @property
    def all_opts(self) -> tuple[Opt, ...]:
        return self.opts + ((JSON_OPT,) if self.json else ())

    def opt(self, name: str) -> Opt | None:
        for o in self.all_opts:
            if o.name == name:
                return o
        return None

    def arg(self, name: str) -> Arg | None:
        for a in self.args:
            if a.name == name:
                return a
        return None

    def synopsis(self) -> str:
        parts = [self.name]
        for a in self.args:
            text = f"<{a.name}>" + ("..." if a.many else "")
            parts.append(text if a.required else f"[{text}]")
        for o in self.all_opts:
            parts.append(f"[--{o.name}" + (f" <{o.metavar}>]" if o.metavar else "]"))
        return " ".join(parts)

    def option_words(self) -> list[str]:
        """Every ``--word`` this command understands (for completion)."""
        return [f"--{o.name}" for o in self.all_opts] + [f"--{a.name}" for a in self.args]


REGISTRY: dict[str, Command] = {}


def command(name: str, group: str, summary: str, *, description: str = "",
            args: Sequence[Arg] = (), opts: Sequence[Opt] = (), connect: bool = True,
            json: bool = False) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of command ``name``."""
    if group not in GROUPS:
        raise ValueError(f"unknown help group {group!r}")

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise ValueError(f"command {name!r} registered twice")
        REGISTRY[name] = Command(name, group, summary, handler, description or summary,
                                 tuple(args), tuple(opts), connect, json)
        return handler

    return register


def lookup(name: str) -> Command | None:
    return REGISTRY.get(name)


class Args:
    """Parsed arguments of one command invocation."""

    def __init__(self, cmd: Command, values: dict[str, str | int | bool | list[str]]) -> None:
        self.cmd = cmd
        self._values = values

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def flag(self, name: str) -> bool:
        return bool(self._values.get(name, False))

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        return None if value is None else str(value)

    def req(self, name: str) -> str:
        value = self.get(name)
        if value is None:  # parse_args guarantees required ones; this is for optional use
            raise UsageError(f"command '{self.cmd.name}' requires <{name}> option")
        return value

    def number(self, name: str) -> int | None:
        value = self._values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def many(self, name: str) -> list[str]:
        value = self._values.get(name)
        return list(value) if isinstance(value, list) else []

    def exclusive(self, *pairs: tuple[str, str]) -> None:
        """virsh's VSH_EXCLUSIVE_OPTIONS_VAR: refuse each pair of flags given together, in
        its words."""
        for first, second in pairs:
            if self.flag(first) and self.flag(second):
                raise UsageError(f"Options --{first} and --{second} are mutually exclusive")


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _convert(cmd: Command, opt: Opt, value: str) -> str | int:
    if opt.choices and value not in opt.choices:
        raise UsageError(f"command '{cmd.name}': invalid value '{value}' for --{opt.name} "
                         f"(expected {'|'.join(opt.choices)})")
    if opt.integer:
        # (not int(): it takes "1_0" and " 1")
        if not _INTEGER.fullmatch(value) or not \
                opt.minimum <= int(value) <= opt.maximum:
            raise UsageError(f"Numeric value '{value}' for <{opt.name}> option is malformed "
                             "or out of range")
        return int(value)
    return value


def parse_args(cmd: Command, argv: Sequence[str]) -> Args:
    """Parse ``argv`` (the words after the command name) against ``cmd``'s table entry.

    Error messages follow virsh and name the offending word.
    """
    values: dict[str, str | int | bool | list[str]] = {}
    positional: list[str] = []
    i = 0
    only_positional = False
    while i < len(argv):
        word = argv[i]
        i += 1
        if only_positional or not word.startswith("--"):
            positional.append(word)
            continue
        if word == "--":
            only_positional = True
            continue
        name, eq, inline = word[2:].partition("=")
        opt = cmd.opt(name)
        arg = None if opt is not None else cmd.arg(name)
        if opt is None and arg is None:
            raise UsageError(f"command '{cmd.name}' doesn't support option --{name}")
        if opt is not None and not opt.takes_value:
            if eq:
                raise UsageError(f"command '{cmd.name}': option --{name} takes no value")
            if name in values:
                raise UsageError(f"option --{name} already seen")
            values[name] = True
            continue
        if eq:
            value = inline
        elif i < len(argv):
            value = argv[i]
            i += 1
        else:
            raise UsageError(f"command '{cmd.name}': expected syntax: --{name} "
                             f"<{opt.metavar if opt else 'string'}>")
        if opt is not None:
            if name in values:
                raise UsageError(f"option --{name} already seen")
            values[name] = _convert(cmd, opt, value)
        else:
            assert arg is not None
            if arg.many:
                current = values.setdefault(name, [])
                assert isinstance(current, list)
                current.append(value)
            else:
                if name in values:
                    raise UsageError(f"option --{name} already seen")
                values[name] = value
    # fill positional arguments in order, skipping those given by name
    slots = [a for a in cmd.args if a.name not in values or a.many]
    for word in positional:
        while slots and not slots[0].many and slots[0].name in values:
            slots.pop(0)
        if not slots:
            raise UsageError(f"command '{cmd.name}': unexpected data '{word}'")
        slot = slots[0]
        if slot.many:
            current = values.setdefault(slot.name, [])
            assert isinstance(current, list)
            current.append(word)
        else:
            values[slot.name] = word
            slots.pop(0)
    for a in cmd.args:
        if a.required and a.name not in values:
            raise UsageError(f"command '{cmd.name}' requires <{a.name}> option")
        given = values.get(a.name)
        if a.choices and isinstance(given, str) and given not in a.choices:
            raise UsageError(f"command '{cmd.name}': invalid value '{given}' for <{a.name}> "
                             f"(expected {'|'.join(a.choices)})")
    return Args(cmd, values)
