"""Golden argv files: tests/qemu/data/NAME.xml -> NAME.argv (one argument per line).

The XML goes through the real domain parser (qemud.conf), so these also
check that the driver and the model agree on the contract.  After an
intended change, regenerate with ``QEMUD_REGEN_GOLDEN=1 pytest tests/qemu``
and review the diff of the .argv files like code.

``data/errors/NAME.xml`` must fail with the message in ``NAME.err``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemud.qemu.arch import get_strategy
from qemud.qemu.command import GuestPaths, argv_to_text, build_argv
from qemud.qemu.errors import QemuError
from tests.qemu.fakes import fake_caps

conf = pytest.importorskip("qemud.conf")

DATA = Path(__file__).parent / "data"
REGEN = bool(os.environ.get("QEMUD_REGEN_GOLDEN"))


def _build(xml: Path) -> list[str]:
    dom = conf.parse_domain_xml(xml.read_text())
    strategy = get_strategy(dom.os.arch or "x86_64")
    paths = GuestPaths.under("/run/qemud", "/var/log/qemud", dom.name)
    return build_argv(dom, strategy, fake_caps(kvm=True), paths)


@pytest.mark.parametrize("xml", sorted(DATA.glob("*.xml")), ids=lambda p: p.stem)
def test_golden_argv(xml: Path) -> None:
    text = argv_to_text(_build(xml))
    golden = xml.with_suffix(".argv")
    if REGEN:
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("xml", sorted((DATA / "errors").glob("*.xml")), ids=lambda p: p.stem)
def test_golden_errors(xml: Path) -> None:
    with pytest.raises(QemuError) as info:
        _build(xml)
    text = f"{type(info.value).__name__}: {info.value}\n"
    expected = xml.with_suffix(".err")
    if REGEN:
        expected.write_text(text)
    assert text == expected.read_text()


def test_every_golden_file_has_its_xml() -> None:
    stale = [p.name for p in DATA.glob("*.argv") if not p.with_suffix(".xml").exists()]
    assert stale == []
