"""Shared test helpers (real daemons in temp dirs, waiting utilities)."""
