"""Golden files: ``data/*-in.xml`` parsed and written must equal ``*-out.xml``.

The ``-out`` files are the canonical (``dumpxml --inactive``) form: what was defined, plus
generated uuid/MAC and canonical values.  When the live form differs (runtime ids, ports,
pty paths) it is in ``*-live-out.xml``.  Regenerate after an intended change with
``QEMUD_REGENERATE_GOLDEN=1 pytest tests/conf`` and review the diff.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

from qemud.conf import Device, DomainDef, parse_device_xml, parse_domain_xml

DATA = Path(__file__).parent / "data"

REGENERATE = bool(os.environ.get("QEMUD_REGENERATE_GOLDEN"))

DOMAIN_INPUTS = sorted(DATA.glob("*-in.xml"))
DEVICE_INPUTS = sorted((DATA / "devices").glob("*-in.xml"))


def _out(path: Path, suffix: str) -> Path:
    return path.with_name(path.name.replace("-in.xml", suffix))


def _rng(path: Path) -> random.Random:
    return random.Random(zlib.crc32(path.name.encode()))


def _compare(expected_path: Path, actual: str) -> None:
    if REGENERATE:
        expected_path.write_text(actual)
    assert expected_path.exists(), f"missing golden file {expected_path.name}"
    assert actual == expected_path.read_text(), f"output differs from {expected_path.name}"


def _compare_live(in_path: Path, inactive: str, live: str) -> None:
    live_path = _out(in_path, "-live-out.xml")
    if live == inactive:
        if REGENERATE and live_path.exists():
            live_path.unlink()
        assert not live_path.exists(), f"{live_path.name} is redundant (same as inactive)"
    else:
        _compare(live_path, live)


def parse_golden_domain(path: Path) -> DomainDef:
    """A golden input as the daemon would store it after define."""
    dom = parse_domain_xml(path.read_text())
    dom.assign_missing_ids(_rng(path))
    return dom


@pytest.mark.parametrize("path", DOMAIN_INPUTS, ids=lambda p: p.name)
def test_domain_golden(path: Path) -> None:
    dom = parse_golden_domain(path)
    inactive = dom.to_xml()
    _compare(_out(path, "-out.xml"), inactive)
    _compare_live(path, inactive, dom.to_xml(live=True))


@pytest.mark.parametrize("path", DOMAIN_INPUTS, ids=lambda p: p.name)
def test_domain_output_is_a_fixed_point(path: Path) -> None:
    """Canonical output parses (schema included) and writes back unchanged."""
    out = _out(path, "-out.xml").read_text()
    dom = parse_domain_xml(out)
    before = dom.uuid, [n.mac for n in dom.interfaces]
    dom.assign_missing_ids()  # nothing left to generate
    assert (dom.uuid, [n.mac for n in dom.interfaces]) == before
    assert dom.to_xml() == out
    live_path = _out(path, "-live-out.xml")
    if live_path.exists():
        live = live_path.read_text()
        live_dom = parse_domain_xml(live)
        assert live_dom.to_xml(live=True) == live
        assert live_dom.to_xml() == out


@pytest.mark.parametrize("path", DEVICE_INPUTS, ids=lambda p: p.name)
def test_device_golden(path: Path) -> None:
    dev = parse_device_xml(path.read_text())
    assert isinstance(dev, Device)
    inactive = dev.to_xml()
    _compare(_out(path, "-out.xml"), inactive)
    _compare_live(path, inactive, dev.to_xml(live=True))
    assert parse_device_xml(inactive).to_xml() == inactive


def test_golden_set_is_complete() -> None:
    """Every output has an input (no stale goldens left behind after a rename)."""
    for folder in (DATA, DATA / "devices"):
        for out in folder.glob("*-out.xml"):
            stem = out.name.replace("-live-out.xml", "").replace("-out.xml", "")
            assert (folder / f"{stem}-in.xml").exists(), f"stale golden {out.name}"
    assert len(DOMAIN_INPUTS) >= 8 and len(DEVICE_INPUTS) >= 6
