"""docs/CONFIG.md and contrib/qemud.toml.example cover every config key, correctly."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from qemud import config as cfg
from qemud.cli import build_parser
from qemud.config import load_config, system_paths

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIG.md"
EXAMPLE = ROOT / "contrib" / "qemud.toml.example"
SERVICE = ROOT / "contrib" / "systemd" / "qemud.service"
TMPFILES = ROOT / "contrib" / "systemd" / "qemud.tmpfiles.conf"

SECTIONS = cfg._SECTIONS  # the loader's own table: what the file may contain
KEYS = [(section, f.name) for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)]


def test_sections_are_the_config_fields() -> None:
    fields = {f.name for f in dataclasses.fields(cfg.Config)} - {"mode", "source", "overrides"}
    assert set(SECTIONS) == fields


@pytest.mark.parametrize("section, key", KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_key_is_documented(section: str, key: str) -> None:
    doc = DOC.read_text()
    assert f"## `[{section}]`" in doc, f"no section heading for [{section}] in {DOC}"
    part = doc.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"^\| `{key}`", part, re.M), f"{section}.{key} not in its table in {DOC}"


@pytest.mark.parametrize("section, key", KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_key_is_in_the_example(section: str, key: str) -> None:
    text = EXAMPLE.read_text()
    part = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    assert re.search(rf"^#? ?{key} = ", part, re.M), f"{section}.{key} not in {EXAMPLE}"


def test_example_loads_and_states_the_defaults() -> None:
    config = load_config("system", EXAMPLE)
    defaults = load_config("system", None, {})
    for section in SECTIONS:
        assert getattr(config, section) == getattr(defaults, section), \
            f"[{section}] in the example differs from the defaults"
    # the example sets every non-path key explicitly
    data = tomllib.loads(EXAMPLE.read_text())
    for section, key in KEYS:
        if section != "paths":
            assert key in data.get(section, {}), f"{section}.{key} is not set in the example"


def test_example_paths_are_the_system_defaults_when_uncommented(tmp_path) -> None:
    text = EXAMPLE.read_text()
    head, rest = text.split("[paths]\n", 1)
    body, tail = rest.split("\n[", 1)
    body = re.sub(r"^# (\w+_dir = )", r"\1", body, flags=re.M)
    path = tmp_path / "uncommented.toml"
    path.write_text(head + "[paths]\n" + body + "\n[" + tail)
    assert load_config("system", path).paths == system_paths()


def test_doc_defaults_match_the_code() -> None:
    doc = DOC.read_text()
    for section, cls in SECTIONS.items():
        if section == "paths":
            continue
        part = doc.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            row = re.search(rf"^\| `{f.name}`\s*\| `([^`]*)`", part, re.M)
            assert row, f"{section}.{f.name}: no default column"
            value = tomllib.loads(f"v = {row.group(1)}")["v"]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert value == default, f"{section}.{f.name}: doc says {value!r}, code {default!r}"


def test_every_cli_flag_is_documented() -> None:
    doc = DOC.read_text()
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert f"`{flag}" in doc, f"{flag} not in {DOC}"


def test_systemd_unit() -> None:
    unit = SERVICE.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["Type"] == "notify"
    assert settings["ExecStart"].split()[0].endswith("/qemud")
    assert "--system" in settings["ExecStart"].split()
    assert settings["KillMode"] == "process"
    assert re.fullmatch(r"(/bin/|/usr/bin/)?kill -HUP \$MAINPID", settings["ExecReload"])
    assert settings["Restart"] == "on-failure"
    assert "RuntimeDirectory" not in settings  # it would be removed on stop (guests!)
    assert "depends on how qemud was installed" in unit


def test_tmpfiles() -> None:
    lines = [ln.split() for ln in TMPFILES.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert ["d", "/run/qemud", "0755", "root", "root"] in [ln[:5] for ln in lines]
