"""``python -m client.shell.doc``: docs/SHELL.md's command reference, from the registry.

The reference is generated from the same table that drives help, parsing and tab
completion, and a test compares it with docs/SHELL.md, so the doc cannot go stale.
"""

from __future__ import annotations

import sys

from . import commands  # noqa: F401 - registers every command
from .registry import GROUPS, REGISTRY

BEGIN = "<!-- BEGIN COMMAND REFERENCE -->"
END = "<!-- END COMMAND REFERENCE -->"


def reference() -> str:
    out: list[str] = [BEGIN, ""]
    groups: dict[str, list[str]] = {}
    for name in sorted(REGISTRY):
        groups.setdefault(REGISTRY[name].group, []).append(name)
    for group in sorted(groups, key=lambda g: list(GROUPS).index(g) if g in GROUPS else 99):
        title = GROUPS.get(group, group) if isinstance(GROUPS, dict) else group
        out.append(f"### {title}")
        out.append("")
        for name in groups[group]:
            cmd = REGISTRY[name]
            out.append(f"#### `{cmd.synopsis()}`")
            out.append("")
            out.append(cmd.summary[:1].upper() + cmd.summary[1:] + ".")
            if cmd.description:
                out.append("")
                out.append(cmd.description)
            rows = [(f"`{a.name.upper()}`", a.help) for a in cmd.args]
            rows += [(f"`--{o.name}" + (f" {o.metavar}" if o.metavar else "") + "`", o.help)
                     for o in cmd.all_opts]
            if rows:
                out.append("")
                out.append("| argument | meaning |")
                out.append("|---|---|")
                out += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in rows]
            out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = sys.argv[2]
        with open(path) as f:
            text = f.read()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        new = text[:start] + reference() + text[end:]  # computed before the file is opened
        with open(path, "w") as f:
            f.write(new)
        return 0
    print(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
