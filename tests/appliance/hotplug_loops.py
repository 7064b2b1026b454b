"""Loop devices, images, rules and guests of the udev hotplug tests (test_hotplug and
test_hotplug_reload).

The host devices are loop devices of our own, created at unused numbers through
/dev/loop-control and removed again at the end (:func:`loop_devices`); the rules match
each one by its exact DEVNAME (:func:`rule`), so no other loop device of the host is
ever touched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import client
from client.domain import Domain
from tests.helpers.daemon import wait_for
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

from .conftest import BOOT_TIMEOUT

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
FIRST_NUMBER = 96  # well above what `losetup -f` hands out on this host
#: uevent -> attach -> the guest's block monitor (polls every 0.5 s) under TCG
ATTACH_TIMEOUT = 45.0
#: losetup -d -> auto-clear poll (1 s) -> device_del -> ACPI unplug in the guest
DETACH_TIMEOUT = 60.0


class LoopDevices:
    """Loop devices this test created; ``cleanup`` unbinds and removes every one."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        fd = os.open("/dev/loop-control", os.O_RDWR)
        try:
            for number in range(FIRST_NUMBER, FIRST_NUMBER + 400):
                if os.path.exists(f"/sys/block/loop{number}"):
                    continue
                try:
                    fcntl.ioctl(fd, LOOP_CTL_ADD, number)
                except OSError as exc:
                    if exc.errno == errno.EEXIST:  # another process was quicker
                        continue
                    raise
                dev = f"/dev/loop{number}"
                self.created.append(dev)
                wait_for(lambda d=dev: os.path.exists(d), timeout=10, message=f"{dev} node")
                return dev
        finally:
            os.close(fd)
        raise RuntimeError("no unused loop device number")

    def bind(self, dev: str, backing: Path) -> None:
        assert dev in self.created
        subprocess.run(["losetup", dev, str(backing)], check=True, capture_output=True)

    def refresh(self, dev: str) -> None:
        """``losetup -c``: the kernel reads the backing file's size again (``change``)."""
        assert dev in self.created
        subprocess.run(["losetup", "-c", dev], check=True, capture_output=True)

    def unbind(self, dev: str) -> None:
        assert dev in self.created
        subprocess.run(["losetup", "-d", dev], check=True, capture_output=True)

    @staticmethod
    def bound(dev: str) -> bool:
        return os.path.exists(f"/sys/block/{os.path.basename(dev)}/loop")

    def cleanup(self) -> None:
        for dev in self.created:
            if self.bound(dev):
                subprocess.run(["losetup", "-d", dev], capture_output=True)
        fd = os.open("/dev/loop-control", os.O_RDWR)
        try:
            for dev in self.created:
                number = int(dev.removeprefix("/dev/loop"))
                deadline = time.monotonic() + 15
                while True:
                    try:
                        fcntl.ioctl(fd, LOOP_CTL_REMOVE, number)
                        break
                    except OSError as exc:
                        if exc.errno == errno.ENODEV:
                            break
                        if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                            print(f"cannot remove {dev}: {exc}", file=sys.stderr)
                            break
                        time.sleep(0.1)  # still open (QEMU exiting): auto-clear pending
        finally:
            os.close(fd)


def image(path: Path, mib: int, fill: bytes = b"\0") -> Path:
    path.write_bytes(fill * (mib << 20))
    return path


def rule(name: str, dev: str, domain: str, extra: str = "") -> str:
    """A rules-file entry matching the loop device ``dev`` by name."""
    return f'\n[[rule]]\nname = "{name}"\nmatch = {{ DEVNAME = "{dev}" }}\n' \
           f'domain = "{domain}"\n{extra}'


def loop_devices(roles: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """A loop device per role (``"_"``: the LoopDevices), all cleaned up at the end."""
    devices = LoopDevices()
    try:
        yield {role: devices.create() for role in roles} | {"_": devices}  # type: ignore
    finally:
        devices.cleanup()


def loopctl(loops: dict[str, object]) -> LoopDevices:
    devices = loops["_"]
    assert isinstance(devices, LoopDevices)
    return devices


def boot(conn: client.Connection, name: str, guest: object, sock: Path, extra: str = "",
         cmdline: str = "console=ttyS0 quiet") -> tuple[Domain, SerialPort]:
    dom = conn.define_xml(guest_xml(name, guest, sock, extra=extra, cmdline=cmdline))
    dom.create()
    serial = SerialPort(sock)
    serial.wait_for(READY, timeout=BOOT_TIMEOUT)
    return dom, serial


def row(conn: client.Connection, dev: str) -> client.connection.pl.HotplugInfo | None:
    for info in conn.hotplug_list():
        if info.device == dev:
            return info
    return None
