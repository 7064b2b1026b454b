"""Fixtures for the domain XML layer's tests (qemud/conf).

Test modules do not import from here (pytest injects fixtures), so a conftest.py elsewhere
in tests/ cannot shadow these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qemud.conf import schema


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


@pytest.fixture
def installed_schema() -> Path:
    """libvirt's domain.rng on this machine; skips the test where it is not installed."""
    for path in schema.DEFAULT_SCHEMA_PATHS:
        if path.is_file():
            return path
    pytest.skip(
        "libvirt's RelaxNG schema (/usr/share/libvirt/schemas/domain.rng, Debian package"
        " libvirt0) is not installed; schema validation cannot be tested here"
    )
