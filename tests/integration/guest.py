"""A booted test guest: defined, started, its serial line answering.

What the save, restore and hotplug tests share: they each boot the test guest, talk to
its init over the first serial port (tests/integration/serial.py) and need to tell a
guest that runs on from one that booted again.
"""

from __future__ import annotations

from pathlib import Path

import client
from protocol.constants import UndefineFlags
from tests.helpers.daemon import remove_domain
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

__all__ = ["PONG", "BootedGuest"]

#: the test guest's answer to ``ping``: its uptime in seconds
PONG = r"QEMUD-PONG uptime=(\d+(?:\.\d+)?)"


class BootedGuest:
    """The test guest (``guest_xml`` with ``extra`` devices, or the given ``xml``),
    defined on ``conn``, started, READY seen on its serial line ``sock`` (default
    ``tmp/s.sock``: short, a unix socket path has 107 bytes at most)."""

    def __init__(self, conn: client.Connection, test_guest: TestGuest, name: str,
                 tmp: Path, *, extra: str = "", sock: Path | None = None,
                 xml: str | None = None) -> None:
        self.sock = sock or tmp / "s.sock"
        self.xml = xml or guest_xml(name, test_guest, self.sock, extra=extra)
        self.dom = conn.define_xml(self.xml)
        self.dom.create()
        self.serial = SerialPort(self.sock)
        self.serial.wait_for(READY)

    def answers(self, word: str) -> None:
        """The guest runs: its init answers an unknown command on the serial line."""
        mark = self.serial.mark()
        self.serial.send(word)
        self.serial.wait_for(f"QEMUD-UNKNOWN {word}", timeout=30, start=mark)

    def uptime(self) -> float:
        mark = self.serial.mark()
        self.serial.send("ping")
        return float(self.serial.wait_for(PONG, timeout=30, start=mark).group(1))

    def reconnect(self) -> None:
        """The serial line of the guest's new QEMU (after a start or a restore)."""
        self.serial.close()
        self.serial = SerialPort(self.sock)

    def resumed(self) -> None:
        """The guest runs on from a saved state: it answers without having booted again
        (a boot prints READY before its command loop answers, and the serial line is
        connected again as the restore returns, long before a boot gets that far). Its
        uptime is not compared: under TCG a restored guest's clock can read earlier than
        before the save (seen in CI: 2.0 s after it against 2.64 s before)."""
        self.reconnect()
        self.uptime()
        assert "QEMUD-GUEST-READY" not in self.serial.text  # (all it said since reconnect)

    def close(self) -> None:
        """Serial line closed; the domain destroyed and undefined (its managed save image
        and snapshot metadata too)."""
        self.serial.close()
        remove_domain(self.dom, client.domain.UNDEFINE_MANAGED_SAVE
                      | UndefineFlags.SNAPSHOTS_METADATA)
