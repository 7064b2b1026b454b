"""Tab completion, tested directly on Completer.candidates (no readline, no daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.shell import commands  # noqa: F401 - registers the commands
from client.shell.completion import Completer, file_candidates
from client.shell.registry import REGISTRY

DOMAINS = ["demo", "dev-box", "web1"]


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def c(calls: list[str]) -> Completer:
    def domains() -> list[str]:
        calls.append("domains")
        return list(DOMAINS)

    def snapshots(dom: str) -> list[str]:
        calls.append(f"snapshots:{dom}")
        return ["base", "before-upgrade"] if dom == "demo" else []

    return Completer(domains, snapshots, files=lambda prefix: [f"{prefix}FILE"])


def test_command_names(c: Completer) -> None:
    assert c.candidates("") == sorted(REGISTRY)
    assert c.candidates("dom") == ["domblkinfo", "domblklist", "domblkstat", "domcontrol",
                                   "domdisplay", "domid", "domif-getlink", "domif-setlink",
                                   "domiflist", "domifstat", "dominfo",
                                   "domjobabort", "domjobinfo", "dommemstat", "domname",
                                   "domrename", "domstate", "domstats", "domuuid",
                                   "domxml-to-native"]
    assert c.candidates("snapshot-l") == ["snapshot-list"]
    assert c.candidates("nosuch") == []


def test_command_names_after_separator(c: Completer) -> None:
    assert c.candidates("list --all; hostn") == ["hostname"]


def test_domain_names_for_domain_argument(c: Completer, calls: list[str]) -> None:
    assert c.candidates("dominfo ") == DOMAINS
    assert c.candidates("dominfo d") == ["demo", "dev-box"]
    assert c.candidates("start we") == ["web1"]
    assert "domains" in calls


def test_no_domain_names_once_the_domain_is_given(c: Completer) -> None:
    # dominfo takes one domain: next come options only
    assert c.candidates("dominfo demo ") == ["--json"]
    assert c.candidates("dominfo --domain demo ") == ["--json"]


def test_flags(c: Completer) -> None:
    assert c.candidates("list --st") == ["--state-other", "--state-paused", "--state-running",
                                         "--state-shutoff"]
    assert c.candidates("list --a") == ["--all", "--autostart"]
    assert c.candidates("domstate demo --") == ["--json", "--reason"]
    assert "--domain" in c.candidates("domstate --")


def test_used_flags_are_not_offered_again(c: Completer) -> None:
    assert "--all" not in c.candidates("list --all --")
    assert c.candidates("domstate demo --reason --") == ["--json"]


def test_option_values(c: Completer) -> None:
    assert c.candidates("event --event ") == ["appliance", "lifecycle", "metadata-change",
                                              "reboot", "watchdog"]
    assert c.candidates("event --event l") == ["lifecycle"]
    assert c.candidates("event --event=re") == ["--event=reboot"]
    assert c.candidates("attach-disk demo /a vdb --subdriver q") == ["qcow2"]
    assert c.candidates("attach-disk demo /a vdb --targetbus v") == ["virtio"]
    assert c.candidates("event --domain d") == ["demo", "dev-box"]


def test_many_domains_exclude_given_ones(c: Completer) -> None:
    assert c.candidates("domstats demo ") == ["dev-box", "web1"]


def test_files_and_snapshots(c: Completer, calls: list[str]) -> None:
    assert c.candidates("define /tmp/x") == ["/tmp/xFILE"]
    assert c.candidates("save demo /var/") == ["/var/FILE"]
    assert c.candidates("snapshot-revert demo ") == ["base", "before-upgrade"]
    assert c.candidates("snapshot-delete demo be") == ["before-upgrade"]
    assert "snapshots:demo" in calls


def test_unknown_command_completes_nothing(c: Completer, calls: list[str]) -> None:
    assert c.candidates("frobnicate ") == []
    assert calls == []


def test_readline_hook_states(c: Completer, monkeypatch: pytest.MonkeyPatch) -> None:
    import readline
    monkeypatch.setattr(readline, "get_line_buffer", lambda: "dominfo d")
    monkeypatch.setattr(readline, "get_endidx", lambda: len("dominfo d"))
    assert [c.readline_hook("d", i) for i in range(3)] == ["demo", "dev-box", None]


def test_file_candidates(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "b.xml").write_text("")
    assert file_candidates(str(tmp_path / "a")) == [str(tmp_path / "a.xml"),
                                                    str(tmp_path / "adir") + "/"]


def test_real_shell_name_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Shell's provider caches names briefly and survives a dead daemon."""
    from client.shell import context
    from client.shell.context import Shell

    sh = Shell(uri="qemud+unix:///session?socket=/nonexistent/qemud-sock")
    assert sh.domain_names() == []  # cannot connect: no names, no exception
    now = [1000.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: now[0])
    sh._names = (1000.0, ["cached"])
    assert sh.domain_names() == ["cached"]
    now[0] += context.NAME_CACHE_SECONDS + 1
    assert sh.domain_names() == []  # expired: refetched (and the daemon is still away)
