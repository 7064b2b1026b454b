"""qemud: a single-threaded management daemon for QEMU guests and virtual appliances."""

#: the one place the version is written (pyproject.toml reads it from here); the daemon
#: reports it without importlib.metadata, which pulls in ~0.7 MiB of modules for it
__version__ = "0.1.0"
