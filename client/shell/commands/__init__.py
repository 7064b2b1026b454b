"""Importing this package registers every command in :data:`client.shell.registry.REGISTRY`."""

from . import console, domain, events, host, shell, snapshot

__all__ = ["console", "domain", "events", "host", "shell", "snapshot"]
