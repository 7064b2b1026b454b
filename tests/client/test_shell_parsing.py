"""qemush without a daemon: the command table, argument parsing, line splitting, help."""

from __future__ import annotations

import io

import pytest

from client.shell import commands  # noqa: F401 - registers the commands
from client.shell.commands.shell import command_help, help_text
from client.shell.context import Shell
from client.shell.lexer import LexError, scan, split_argv, split_commands
from client.shell.main import execute, main
from client.shell.registry import GROUPS, REGISTRY, UsageError, parse_args

EXPECTED = {
    "list", "dominfo", "domstate", "domid", "domname", "domuuid", "dumpxml", "define",
    "undefine", "create", "start", "shutdown", "reboot", "destroy", "suspend", "resume",
    "save", "restore", "autostart", "attach-disk", "detach-disk", "change-media",
    "console", "vncdisplay", "event", "snapshot-create-as", "snapshot-list",
    "snapshot-revert", "snapshot-delete", "domstats", "nodestats", "nodeinfo",
    "capabilities", "version", "uri", "hostname", "client-list", "client-disconnect",
    "help", "quit", "exit", "connect",
}
JSON_COMMANDS = {"list", "dominfo", "domstate", "nodeinfo", "client-list", "snapshot-list",
                 "hotplug-list", "appliance-list",
                 "domstats", "nodestats", "version"}


def test_every_command_is_registered() -> None:
    assert set(REGISTRY) >= EXPECTED


def test_json_commands() -> None:
    assert {name for name, c in REGISTRY.items() if c.json} == JSON_COMMANDS


def test_every_command_is_documented() -> None:
    for cmd in REGISTRY.values():
        assert cmd.group in GROUPS, cmd.name
        assert cmd.summary and cmd.description, cmd.name
        for a in cmd.args:
            assert a.help, (cmd.name, a.name)
        for o in cmd.all_opts:
            assert o.help, (cmd.name, o.name)
        names = [o.name for o in cmd.all_opts] + [a.name for a in cmd.args]
        assert len(names) == len(set(names)), cmd.name


# -- parse_args --------------------------------------------------------------------------


def p(name: str, *argv: str) -> dict[str, object]:
    args = parse_args(REGISTRY[name], list(argv))
    return dict(args._values)


def test_positional_and_named_arguments() -> None:
    assert p("dominfo", "demo") == {"domain": "demo"}
    assert p("dominfo", "--domain", "demo") == {"domain": "demo"}
    assert p("dominfo", "--domain=demo") == {"domain": "demo"}
    assert p("save", "--file", "/x", "demo") == {"file": "/x", "domain": "demo"}
    assert p("save", "demo", "/x") == {"domain": "demo", "file": "/x"}


def test_flags_and_values() -> None:
    assert p("list", "--all", "--name") == {"all": True, "name": True}
    assert p("shutdown", "demo", "--timeout", "5") == {"domain": "demo", "timeout": 5}
    assert p("event", "--event=reboot", "--loop") == {"event": "reboot", "loop": True}
    assert p("snapshot-create-as", "demo", "--description", "two words") == {
        "domain": "demo", "description": "two words"}


def test_many_and_optional() -> None:
    assert p("domstats") == {}
    assert p("domstats", "a", "b", "--domain", "c") == {"domain": ["c", "a", "b"]}
    assert p("change-media", "demo", "sda") == {"domain": "demo", "path": "sda"}


def test_double_dash_ends_options() -> None:
    assert p("dominfo", "--", "--weird-name") == {"domain": "--weird-name"}


@pytest.mark.parametrize("name, argv, message", [
    ("list", ["--bogus"], "command 'list' doesn't support option --bogus"),
    ("dominfo", [], "command 'dominfo' requires <domain> option"),
    ("dominfo", ["a", "b"], "command 'dominfo': unexpected data 'b'"),
    ("shutdown", ["d", "--timeout"], "expected syntax: --timeout <seconds>"),
    # virsh's words for a number it cannot take
    ("shutdown", ["d", "--timeout", "soon"],
     "Numeric value 'soon' for <timeout> option is malformed or out of range"),
    ("shutdown", ["d", "--timeout", "4294968"],  # (its milliseconds must fit 32 bits)
     "Numeric value '4294968' for <timeout> option is malformed or out of range"),
    ("nodecpustats", ["--cpu", "99999999999999999999"],
     "Numeric value '99999999999999999999' for <cpu> option is malformed or out of range"),
    ("nodecpustats", ["--cpu=1_0"],  # (Python's int() would take these)
     "Numeric value '1_0' for <cpu> option is malformed or out of range"),
    ("nodememstats", ["--cell", " 1"],
     "Numeric value ' 1' for <cell> option is malformed or out of range"),
    ("screenshot", ["d", "--screen", "-1"],
     "Numeric value '-1' for <screen> option is malformed or out of range"),
    ("event", ["--event", "bogus"], "invalid value 'bogus' for --event"),
    ("list", ["--all=yes"], "option --all takes no value"),
    ("shutdown", ["d", "--timeout", "1", "--timeout", "2"], "option --timeout already seen"),
    ("list", ["--all", "--all"], "option --all already seen"),
    ("attach-disk", ["d", "s", "t", "--mode", "rw"], "invalid value 'rw' for --mode"),
])
def test_usage_errors_name_the_bad_option(name: str, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_args(REGISTRY[name], argv)
    assert message in info.value.lines[0]


# -- the lexer ---------------------------------------------------------------------------


def test_split_commands() -> None:
    assert split_commands("list --all; dominfo 'my dom'") == [["list", "--all"],
                                                               ["dominfo", "my dom"]]
    assert split_commands('define "/a b/c.xml"  # a comment') == [["define", "/a b/c.xml"]]
    assert split_commands(r'echo a\ b "x\"y" ' + "'q\\'") == [["echo", "a b", 'x"y', "q\\"]]
    assert split_commands(";; \n ;") == []
    assert split_commands("uri\nhostname") == [["uri"], ["hostname"]]


def test_backslashes_as_virsh_reads_them() -> None:
    """vshCommandStringGetArg: inside double quotes a backslash escapes any character (a
    Windows path loses its backslashes, as in virsh), a backslash-newline is dropped
    (a continued line), and one at the very end is an error."""
    assert split_commands(r'desc d1 "C:\temp"') == [["desc", "d1", "C:temp"]]
    assert split_commands(r'desc d1 "C:\\temp"') == [["desc", "d1", "C:\\temp"]]
    assert split_commands("list \\\n --all") == [["list", "--all"]]
    assert split_commands("dom\\\ninfo 'a\\\nb'") == [["dominfo", "a\\\nb"]]
    for line in ("desc d1 abc\\", 'desc d1 "abc\\'):
        with pytest.raises(LexError, match=r"^dangling \\$"):
            split_commands(line)
    s = scan("desc d1 abc\\", lenient=True)  # (completion: a word being typed)
    assert s.commands == [["desc", "d1"]] and s.partial == "abc"


def test_missing_quote() -> None:
    with pytest.raises(LexError, match='missing "'):
        split_commands('dominfo "demo')


def test_lenient_scan_for_completion() -> None:
    s = scan('dominfo "my d', lenient=True)
    assert s.commands == [["dominfo"]] and s.partial == "my d" and s.open_quote == '"'
    s = scan("list ", lenient=True)
    assert s.commands == [["list"]] and s.partial is None


def test_split_argv() -> None:
    assert split_argv(["list", "--all"]) == [["list", "--all"]]
    assert split_argv(["uri; hostname"]) == [["uri"], ["hostname"]]
    assert split_argv(["list --all"]) == [["list", "--all"]]
    assert split_argv(["uri", ";", "hostname"]) == [["uri"], ["hostname"]]
    assert split_argv(["define", "/path with space.xml"]) == [["define",
                                                               "/path with space.xml"]]


# -- help --------------------------------------------------------------------------------


def test_grouped_help_lists_every_command() -> None:
    text = help_text()
    assert text.startswith("Grouped commands:\n\n")
    for key, title in GROUPS.items():
        assert f" {title} (help keyword '{key}'):\n" in text
    for name, cmd in REGISTRY.items():
        assert f"    {name:<30} {cmd.summary}\n" in text


def test_group_help() -> None:
    text = help_text("snapshot")
    assert "snapshot-list" in text and "dominfo" not in text


def test_command_help_page() -> None:
    text = command_help(REGISTRY["shutdown"])
    assert "  NAME\n    shutdown - gracefully shutdown a domain\n" in text
    assert "  SYNOPSIS\n    shutdown <domain> [--mode <string>] [--timeout <seconds>]\n" in text
    assert "  DESCRIPTION\n" in text and "  OPTIONS\n" in text
    assert "[--domain] <string>" in text
    assert "--timeout <number>" in text


def test_command_help_flag_via_execute() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert execute(Shell(out=out, err=err), ["dominfo", "--help"])
    assert out.getvalue() == command_help(REGISTRY["dominfo"])


@pytest.mark.parametrize("command", ["reboot", "shutdown"])
def test_unknown_power_mode_is_refused_before_connecting(command: str) -> None:
    """virsh's --mode list: every word must be a mode (the shell never connects here)."""
    out, err = io.StringIO(), io.StringIO()
    assert not execute(Shell(out=out, err=err), [command, "demo", "--mode", "acpi,bogus"])
    assert err.getvalue() == ("error: Unknown mode bogus value, expecting 'acpi', 'agent', "
                              "'initctl', 'signal', or 'paravirt'\n")
    assert out.getvalue() == ""


def test_attach_disk_print_xml_needs_no_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attach-disk", "demo", "/img/a.qcow2", "vdb", "--subdriver", "qcow2",
                 "--print-xml"]) == 0
    out = capsys.readouterr().out
    assert "<source file='/img/a.qcow2'/>" in out
    assert "<driver name='qemu' type='qcow2'/>" in out


def test_global_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 1
    assert "error: unsupported option '--bogus'" in capsys.readouterr().err
    assert main(["-c"]) == 1
    assert "error: option '-c' requires an argument" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "-c | --connect=URI" in out and "Grouped commands:" in out
