"""VNC port allocation from the configured range (autoport / port='-1')."""

from __future__ import annotations

import socket

from qemud.conf import DomainDef
from qemud.errors import OperationFailed

__all__ = ["PortAllocator"]


class PortAllocator:
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._used: set[int] = set()

    def _free_on_host(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    def assign(self, live: DomainDef) -> None:
        """Give every auto-port VNC display of ``live`` a free port (written into it).

        All or nothing: if one display finds no port, the ports taken for the others are
        given back (the caller never gets to :meth:`release` a start that failed here).
        """
        taken: list[int] = []
        try:
            for graphics in live.graphics:
                if graphics.type != "vnc":
                    continue
                if graphics.autoport or graphics.port in (None, -1):
                    graphics.port = self._take()
                    taken.append(graphics.port)
                elif int(graphics.port) not in self._used:
                    self._used.add(int(graphics.port))
                    taken.append(int(graphics.port))
        except BaseException:
            self._used.difference_update(taken)
            raise

    def _take(self) -> int:
        for port in range(self.low, self.high + 1):
            if port not in self._used and self._free_on_host(port):
                self._used.add(port)
                return port
        raise OperationFailed(f"no free VNC port in {self.low}-{self.high} "
                              "(qemu.vnc_port_min/max)")

    def claim(self, live: DomainDef) -> None:
        for graphics in live.graphics:
            if graphics.port not in (None, -1):
                self._used.add(int(graphics.port))

    def release(self, live: DomainDef) -> None:
        for graphics in live.graphics:
            if graphics.port is not None:
                self._used.discard(int(graphics.port))
