"""Guests and disk images of the snapshot tests (test_snapshots and the test_snapshot_*,
test_image_discard and test_detach_timeout modules next to it, and integration tests that
want a qcow2 disk): images made and written with qemu-img/qemu-io, disk XML, a test guest
commanded on its serial line, a transient one, and the module-scoped daemon fixture
``qemud`` (import it as ``qemud as qemud``: each importing module gets its own daemon).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import Domain
from tests.helpers.daemon import DaemonProcess, remove_domain, serving
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

from .conftest import BOOT_TIMEOUT


def make_image(path: Path, fmt: str = "qcow2", size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def disk_xml(path: Path, fmt: str = "qcow2", dev: str = "vda") -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
            f"<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>")


def disk_source(xml: str, dev: str = "vda") -> str:
    from lxml import etree
    root = etree.fromstring(xml.encode())
    for disk in root.iter("disk"):
        if disk.find("target").get("dev") == dev:
            return str(disk.find("source").get("file"))
    raise AssertionError(f"no disk {dev} in {xml}")


def qemu_io_write(image: str, text: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {ord(text[0])} 0 512", image], check=True,
                   capture_output=True)


def first_bytes(image: Path | str, fmt: str, n: int) -> bytes:
    """The first ``n`` bytes of the guest-visible disk (raw: the file itself)."""
    if fmt == "raw":
        with open(image, "rb") as f:
            return f.read(n)
    out = Path(str(image) + ".raw")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(image), str(out)],
                   check=True)
    try:
        with open(out, "rb") as f:
            return f.read(n)
    finally:
        out.unlink()


class Guest:
    """A running test guest with a serial line to command it."""

    def __init__(self, conn: client.Connection, guest: TestGuest, name: str, tmp: Path,
                 disks: str) -> None:
        self.sock = tmp / f"{name}.serial"
        self.dom: Domain = conn.define_xml(guest_xml(name, guest, self.sock, extra=disks))
        self.serial: SerialPort | None = None

    def boot(self) -> Guest:
        self.dom = self.dom.create()
        return self.attach()

    def attach(self) -> Guest:
        if self.serial is not None:
            self.serial.close()
        self.serial = SerialPort(self.sock)
        self.serial.wait_for(READY, BOOT_TIMEOUT)
        return self

    def command(self, line: str, answer: str) -> str:
        assert self.serial is not None
        mark = self.serial.mark()
        self.serial.send(line)
        return self.serial.wait_for(answer, 30, start=mark).group(0)

    def write(self, text: str) -> None:
        self.command(f"write-disk vda {text}", r"QEMUD-WROTE vda")

    def read(self, n: int) -> str:
        line = self.command(f"read-disk vda {n}", r"QEMUD-READ vda [^\n]*\n")
        return line.rstrip("\n").split(" ", 2)[2]

    def close(self) -> None:
        if self.serial is not None:
            self.serial.close()
        remove_domain(self.dom)


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-snap"))
    with serving(daemon):
        yield daemon


def qcow2_guest(conn: client.Connection, guest: TestGuest, tmp: Path, name: str
                ) -> tuple[Guest, Path]:
    """A shut-off test guest ``name`` with a new qcow2 disk vda; returns it and the image."""
    data = make_image(tmp / f"{name}.qcow2")
    return Guest(conn, guest, name, tmp, disk_xml(data)), data


# -- transient guests ------------------------------------------------------------------


def boot_transient(conn: client.Connection, test_guest: TestGuest, xml: str,
                   sock: Path) -> tuple[client.Domain, SerialPort]:
    dom = conn.create_xml(xml)
    serial = SerialPort(sock)
    serial.wait_for(READY, BOOT_TIMEOUT)
    return dom, serial


def write(serial: SerialPort, text: str) -> None:
    mark = serial.mark()
    serial.send(f"write-disk vda {text}")
    serial.wait_for(r"QEMUD-WROTE vda", 30, start=mark)
