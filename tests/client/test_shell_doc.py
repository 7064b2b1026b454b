"""docs/SHELL.md's command reference is exactly what the command table says."""

from pathlib import Path

from client.shell.doc import BEGIN, END, reference
from client.shell.registry import REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "SHELL.md"


def test_reference_is_current() -> None:
    text = DOC.read_text()
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == reference(), "run: python -m client.shell.doc --write docs/SHELL.md"


def test_every_command_is_documented() -> None:
    text = DOC.read_text()
    for name in REGISTRY:
        assert f"#### `{name}" in text, name
