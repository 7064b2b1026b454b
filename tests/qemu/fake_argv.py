"""The QEMU argv build_argv makes of a fake definition, and the values of one option in
it: for test_command and test_chardevs.
"""

from __future__ import annotations

from qemud.qemu.arch import get_strategy
from qemud.qemu.command import GuestPaths, build_argv
from tests.qemu.fakes import FakeDomain, fake_caps

PATHS = GuestPaths.under("/run/qemud", "/var/log/qemud", "guest")


def argv(dom: FakeDomain, arch: str = "x86_64", kvm: bool = False, pci: bool = False
         ) -> list[str]:
    """The argv of ``dom``; without ``pci`` no device names its PCI slot, so each rule's
    test shows only its rule (the slots have their own tests: tests/qemu/test_pci.py, and
    the golden files)."""
    return build_argv(dom, get_strategy(arch), fake_caps(kvm=kvm), PATHS, pci_addresses=pci)


def option(args: list[str], name: str) -> list[str]:
    """All values of ``name`` in ``args``."""
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]
