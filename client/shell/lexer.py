"""Splitting a command line into commands and words, as virsh does.

Words are separated by blanks; ``'...'`` quotes literally; a backslash, outside quotes
and inside ``"..."``, escapes the next character (any: ``"C:\\temp"`` is ``C:temp``, as in
virsh's vshCommandStringGetArg), a backslash-newline is dropped (a continued line) and
one at the very end is an error ("dangling \\"); ``;`` or a newline ends a command; ``#``
at the start of a word starts a comment.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LexError", "Scan", "scan", "split_commands"]


class LexError(ValueError):
    pass


@dataclass
class Scan:
    commands: list[list[str]]  # complete commands (the last one may still be growing)
    partial: str | None  # the word under construction at the end, None after a blank
    open_quote: str | None  # the quote left open at the end, if any


def scan(line: str, lenient: bool = False) -> Scan:
    """Scan ``line``; with ``lenient`` an unterminated quote is accepted (for completion)."""
    commands: list[list[str]] = [[]]
    word: list[str] | None = None
    quote: str | None = None
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        i += 1
        if quote == "'":
            if ch == "'":
                quote = None
            else:
                assert word is not None
                word.append(ch)
            continue
        if ch == "\\":
            if i == n:
                if lenient:
                    break
                raise LexError("dangling \\")
            escaped = line[i]
            i += 1
            if escaped != "\n":  # (a backslash-newline is dropped: the line goes on)
                if word is None:
                    word = []
                word.append(escaped)
            continue
        if quote == '"':
            if ch == '"':
                quote = None
            else:
                assert word is not None
                word.append(ch)
            continue
        if ch in " \t\r":
            if word is not None:
                commands[-1].append("".join(word))
                word = None
            continue
        if ch in ";\n":
            if word is not None:
                commands[-1].append("".join(word))
                word = None
            commands.append([])
            continue
        if ch == "#" and word is None:
            j = line.find("\n", i)
            if j < 0:
                break
            i = j
            continue
        if word is None:
            word = []
        if ch in "'\"":
            quote = ch
        else:
            word.append(ch)
    if quote is not None and not lenient:
        raise LexError(f"missing {quote}")
    partial = None if word is None else "".join(word)
    if partial is not None and not lenient:
        commands[-1].append(partial)
        partial = None
    return Scan(commands, partial, quote)


def split_commands(line: str) -> list[list[str]]:
    """The non-empty commands of ``line`` as word lists; raises LexError on a bad quote."""
    return [c for c in scan(line).commands if c]


def split_argv(argv: list[str]) -> list[list[str]]:
    """One-shot arguments: a lone argument holding a whole command line (``'list; uri'``)
    is scanned as one; otherwise the words are used as they are, ``;`` words separating
    commands."""
    if len(argv) == 1 and any(c in argv[0] for c in " \t\n;'\"\\#"):
        return split_commands(argv[0])
    out: list[list[str]] = [[]]
    for word in argv:
        if word == ";":
            out.append([])
        else:
            out[-1].append(word)
    return [c for c in out if c]
