"""Importing this package registers every command in :data:`client.shell.registry.REGISTRY`.

Every module in this package is imported, so a new group of commands (e.g. an appliance
duty) is one new module here and nothing else.
"""

import importlib
import pkgutil

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__))
for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
