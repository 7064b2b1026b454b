"""Host tap devices for guests' network counters: made with ``ip tuntap``, fed with
broadcast frames through an AF_PACKET socket (root only; loopback-only machines have
/dev/net/tun)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

__all__ = ["make_tap", "send_frames"]


def make_tap(name: str) -> bool:
    """Create tap ``name`` and set it up; False when this machine cannot (not root, no
    /dev/net/tun, ``ip`` refused). The caller deletes it (``ip link del``)."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        return False
    made = subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"],
                          capture_output=True, check=False)
    if made.returncode != 0:
        return False
    subprocess.run(["ip", "link", "set", name, "up"], capture_output=True, check=False)
    return True


def send_frames(ifname: str, count: int, size: int = 100) -> None:
    """Broadcast ``count`` ethernet frames out of the host tap: the guest receives them."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        frame = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x88\xb5" + bytes(size - 14)
        for _ in range(count):
            s.send(frame)
