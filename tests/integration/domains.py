"""Domain XML for integration tests, around the test guest."""

from __future__ import annotations

from pathlib import Path

READY = r"QEMUD-GUEST-READY uptime="


PTY_CONSOLE = """<serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>"""


def guest_xml(name: str, guest: object, serial_sock: Path | None, *, extra: str = "",
              on_reboot: str = "restart", on_poweroff: str = "destroy",
              cmdline: str = "console=ttyS0 quiet", memory_mib: int = 256,
              metadata: str = "") -> str:
    """The test guest with its first serial port on ``serial_sock`` (QEMU listens), or
    with ``serial_sock=None`` on a pty, with a console on it (as virt-install makes it)."""
    serial = PTY_CONSOLE if serial_sock is None else f"""<serial type='unix'>
      <source mode='bind' path='{serial_sock}'/>
      <target port='0'/>
    </serial>"""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  {metadata}
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{guest.kernel}</kernel>
    <initrd>{guest.initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>{on_poweroff}</on_poweroff>
  <on_reboot>{on_reboot}</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {serial}
    {extra}
  </devices>
</domain>
"""


def bare_xml(name: str, arch: str = "x86_64", machine: str | None = None) -> str:
    """A diskless guest with no kernel (boots to firmware): enough to start paused."""
    machine_attr = f" machine='{machine}'" if machine else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='{arch}'{machine_attr}>hvm</type></os>
</domain>
"""
