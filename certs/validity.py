"""A certificate's validity window as timezone-aware datetimes, and its status now.

Why a module: ``cryptography`` before 42 only offers naive ``not_valid_before``
(deprecated from 42 on); this hides the difference so the rest of the package works
with aware UTC datetimes on every version ``pyproject.toml`` allows.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from cryptography import x509

__all__ = ["Validity", "not_after", "not_before", "utc", "validity_status"]


class Validity(enum.Enum):
    """Where ``now`` falls relative to a certificate's validity window."""

    VALID = "valid"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT YET VALID"


def utc(when: datetime) -> datetime:
    """``when`` as aware UTC; a naive datetime is taken to be UTC (cryptography's rule)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def not_before(cert: x509.Certificate) -> datetime:
    """Start of validity, aware UTC."""
    aware: datetime | None = getattr(cert, "not_valid_before_utc", None)
    return aware if aware is not None else utc(cert.not_valid_before)


def not_after(cert: x509.Certificate) -> datetime:
    """End of validity (inclusive, per RFC 5280), aware UTC."""
    aware: datetime | None = getattr(cert, "not_valid_after_utc", None)
    return aware if aware is not None else utc(cert.not_valid_after)


def validity_status(cert: x509.Certificate, now: datetime | None = None) -> Validity:
    """Classify ``cert`` at ``now`` (default: the current time)."""
    t = utc(now) if now is not None else datetime.now(UTC)
    if t < not_before(cert):
        return Validity.NOT_YET_VALID
    if t > not_after(cert):
        return Validity.EXPIRED
    return Validity.VALID
