"""Fixtures for the domain XML layer's tests (qemud/conf)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qemud.conf import schema

DATA = Path(__file__).parent / "data"


@pytest.fixture
def isolated_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests that reconfigure schema validation: restore discovery afterwards."""
    monkeypatch.delenv(schema.SCHEMA_ENV, raising=False)
    schema.reset_schema()
    yield
    monkeypatch.delenv(schema.SCHEMA_ENV, raising=False)
    schema.reset_schema()


@pytest.fixture
def no_schema(isolated_schema: None) -> None:
    """Run with RelaxNG validation disabled (semantic checks only)."""
    schema.set_schema_path(None)


def installed_schema() -> Path | None:
    """libvirt's domain.rng if this machine has it (Debian: package libvirt0)."""
    for path in schema.DEFAULT_SCHEMA_PATHS:
        if path.is_file():
            return path
    return None


requires_schema = pytest.mark.skipif(
    installed_schema() is None,
    reason="libvirt's RelaxNG schema (/usr/share/libvirt/schemas/domain.rng, Debian package"
    " libvirt0) is not installed; schema validation cannot be tested here",
)
