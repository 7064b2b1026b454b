"""``qemush``: a virsh-like shell over the client library.

The console script is ``qemush = client.shell:main``; ``python -m client.shell`` works
too. Commands are declared in :mod:`client.shell.commands` with the
:func:`~client.shell.registry.command` decorator; help, argument parsing and tab
completion all come from that one table.
"""

from .main import main

__all__ = ["main"]
