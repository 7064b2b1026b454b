"""Tab completion: command names, their --options, option values and domain names.

:meth:`Completer.candidates` is a pure function of the text before the cursor (plus the
providers it was given), so it is testable without readline or a daemon.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from .lexer import scan
from .registry import DOMAIN, FILE, REGISTRY, SNAPSHOT, Arg, Command, Opt

__all__ = ["Completer", "file_candidates", "COMPLETER_DELIMS"]

#: readline word delimiters: only blanks and ';' (options contain '-' and '=')
COMPLETER_DELIMS = " \t\n;"


def file_candidates(prefix: str) -> list[str]:
    """Paths starting with ``prefix``; directories end with '/'."""
    expanded = os.path.expanduser(prefix)
    out = []
    for path in sorted(glob.glob(glob.escape(expanded) + "*")):
        out.append(path + "/" if os.path.isdir(path) else path)
    return out


class Completer:
    def __init__(self, domains: Callable[[], list[str]],
                 snapshots: Callable[[str], list[str]] | None = None,
                 files: Callable[[str], list[str]] = file_candidates) -> None:
        self.domains = domains
        self.snapshots = snapshots or (lambda dom: [])
        self.files = files
        self._matches: list[str] = []

    # -- the pure part -------------------------------------------------------------------

    def candidates(self, line: str) -> list[str]:
        """Completions for the word being typed at the end of ``line``."""
        s = scan(line, lenient=True)
        words = s.commands[-1]
        partial = s.partial or ""
        if not words:
            return sorted(n for n in REGISTRY if n.startswith(partial))
        cmd = REGISTRY.get(words[0])
        if cmd is None:
            return []
        return self._for_command(cmd, words[1:], partial)

    def _for_command(self, cmd: Command, rest: list[str], partial: str) -> list[str]:
        used: set[str] = set()
        values: dict[str, list[str]] = {}
        positional: list[str] = []
        pending: Opt | Arg | None = None
        only_positional = False
        i = 0
        while i < len(rest):
            word = rest[i]
            i += 1
            if only_positional or not word.startswith("--"):
                positional.append(word)
                continue
            if word == "--":
                only_positional = True
                continue
            name, eq, inline = word[2:].partition("=")
            target: Opt | Arg | None = cmd.opt(name) or cmd.arg(name)
            if target is None:
                continue
            used.add(name)
            if isinstance(target, Opt) and not target.takes_value:
                continue
            if eq:
                values.setdefault(name, []).append(inline)
            elif i < len(rest):
                values.setdefault(name, []).append(rest[i])
                i += 1
            else:
                pending = target
        # the positional slot each bare word fills
        slots = [a for a in cmd.args if a.name not in values or a.many]
        next_slot: Arg | None = None
        for word in positional:
            if not slots:
                break
            values.setdefault(slots[0].name, []).append(word)
            if not slots[0].many:
                slots.pop(0)
        if slots:
            next_slot = slots[0]

        if pending is not None:
            return self._values(pending, partial, values)
        if partial.startswith("--") and "=" in partial:
            name, _, value = partial[2:].partition("=")
            target = cmd.opt(name) or cmd.arg(name)
            if target is None or (isinstance(target, Opt) and not target.takes_value):
                return []
            return [f"--{name}={v}" for v in self._values(target, value, values)]
        if partial.startswith("-"):
            return self._options(cmd, partial, used, values)
        if next_slot is not None:
            found = self._values(next_slot, partial, values)
            if found or partial:
                return found
        if not partial:
            return self._options(cmd, partial, used, values)
        return []

    @staticmethod
    def _options(cmd: Command, partial: str, used: set[str],
                 values: dict[str, list[str]]) -> list[str]:
        out = []
        for o in cmd.all_opts:
            if o.name not in used:
                out.append(f"--{o.name}")
        for a in cmd.args:
            if a.name not in used and (a.many or a.name not in values):
                out.append(f"--{a.name}")
        return sorted(w for w in out if w.startswith(partial))

    def _values(self, target: Opt | Arg, partial: str, values: dict[str, list[str]]
                ) -> list[str]:
        kind = target.complete
        pool: list[str]
        if target.choices:
            pool = list(target.choices)
        elif isinstance(target, Opt) and target.suggest:
            pool = list(target.suggest)
        elif kind == DOMAIN:
            taken = set(values.get(target.name, [])) if isinstance(target, Arg) and \
                target.many else set()
            pool = [n for n in self.domains() if n not in taken]
        elif kind == SNAPSHOT:
            dom = values.get("domain")
            pool = self.snapshots(dom[0]) if dom else []
        elif kind == FILE:
            return self.files(partial)
        else:
            pool = []
        return sorted(v for v in pool if v.startswith(partial))

    # -- readline glue -------------------------------------------------------------------

    def readline_hook(self, text: str, state: int) -> str | None:
        if state == 0:
            try:
                import readline
                line = readline.get_line_buffer()[:readline.get_endidx()]
                self._matches = self.candidates(line)
            except Exception:  # completion must never kill the prompt
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None
