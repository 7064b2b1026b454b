"""DOMAIN_GET_BLOCK_INFO / ``domblkinfo`` on a real daemon: raw and qcow2 images made by
qemu-img, read from the files while the domain is shut off and through QMP while the
test guest runs, and libvirt's errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import client
from protocol.payloads import BlockInfoReply
from tests.helpers.daemon import DaemonProcess, qemush
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
GIB = 1 << 30


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def du(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def shell_ok(daemon: DaemonProcess, *args: str) -> str:
    proc = qemush(daemon, *args)
    assert proc.returncode == 0 and proc.stderr == "", (args, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    """A sparse 64 MiB raw image with its first MiB written, and an empty 1 GiB qcow2."""
    raw, qcow2 = tmp_path / "data.raw", tmp_path / "data.qcow2"
    qemu_img("create", "-f", "raw", str(raw), "64M")
    with open(raw, "r+b") as f:
        f.write(b"\x5a" * MIB)
    qemu_img("create", "-f", "qcow2", str(qcow2), "1G")
    return raw, qcow2


def disks(raw: Path, qcow2: Path) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{raw}'/><target dev='vdb' bus='virtio'/></disk>"
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{qcow2}'/><target dev='vdc' bus='virtio'/></disk>"
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
            "<target dev='hdc' bus='ide'/><readonly/></disk>")


def sizes(info: BlockInfoReply) -> tuple[int, int, int]:
    return info.capacity, info.allocation, info.physical


def test_block_info_of_a_shut_off_domain(daemon: DaemonProcess, test_guest: TestGuest,
                                         tmp_path: Path, images: tuple[Path, Path]) -> None:
    raw, qcow2 = images
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("blk", test_guest, tmp_path / "s.sock",
                                        extra=disks(raw, qcow2)))
        # raw: what the guest sees is the file's size; allocation is what it occupies
        assert 64 * MIB > du(raw) >= MIB
        assert sizes(dom.block_info("vdb")) == (64 * MIB, du(raw), 64 * MIB)
        assert sizes(dom.block_info(str(raw))) == (64 * MIB, du(raw), 64 * MIB)
        # qcow2: the virtual size from its header; the file is small
        assert qcow2.stat().st_size < MIB
        assert sizes(dom.block_info("vdc")) == (GIB, du(qcow2), qcow2.stat().st_size)

        with pytest.raises(client.InvalidArgError) as exc:
            dom.block_info("vdz")
        assert exc.value.message == "invalid argument: invalid path vdz not assigned to domain"
        with pytest.raises(client.InvalidArgError, match="invalid path /nowhere/x.img not "):
            dom.block_info("/nowhere/x.img")
        with pytest.raises(client.InvalidArgError) as exc:
            dom.block_info("hdc")
        assert exc.value.message == ("invalid argument: disk 'hdc' does not currently have a "
                                     "source assigned")
        raw.unlink()
        with pytest.raises(client.OperationFailed, match=f"cannot open file '{raw}': No such"):
            dom.block_info("vdb")
    with daemon.connect(readonly=True) as ro:
        assert sizes(ro.lookup("blk").block_info("vdc"))[0] == GIB

    # the shell, as virsh prints it
    assert shell_ok(daemon, "domblkinfo", "blk", "vdc") == (
        f"Capacity:       {GIB}\nAllocation:     {du(qcow2)}\n"
        f"Physical:       {qcow2.stat().st_size}\n")
    text = shell_ok(daemon, "domblkinfo", "blk", "--device", "vdc", "--human")
    assert text.startswith("Capacity:       1.000 GiB\nAllocation:     ") and \
        text.endswith(" KiB\n"), text
    proc = qemush(daemon, "domblkinfo", "blk", "vdz")
    assert (proc.returncode, proc.stderr) == (
        1, "error: invalid argument: invalid path vdz not assigned to domain\n")
    proc = qemush(daemon, "domblkinfo", "blk")
    assert proc.stderr == "error: command 'domblkinfo' requires <device> option\n"
    proc = qemush(daemon, "domblkinfo", "blk", "vdc", "--all")
    assert proc.stderr == "error: Options --all and --device are mutually exclusive\n"
    proc = qemush(daemon, "domblkinfo", "blk", "--all")  # the raw image is gone
    assert proc.returncode == 1 and f"cannot open file '{raw}'" in proc.stderr


def test_block_info_of_a_running_domain(daemon: DaemonProcess, test_guest: TestGuest,
                                        tmp_path: Path, images: tuple[Path, Path]) -> None:
    raw, qcow2 = images
    sock = tmp_path / "s.sock"
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("blk", test_guest, sock, extra=disks(raw, qcow2)))
        dom.create()
        serial = SerialPort(sock)
        try:
            serial.wait_for(READY)
            # qcow2 file: capacity from QEMU, allocation QEMU's actual-size (du), physical
            # the file's size
            assert sizes(dom.block_info("vdc")) == (GIB, du(qcow2), qcow2.stat().st_size)
            # raw: nothing written yet, so allocation is QEMU's actual-size (du)
            assert sizes(dom.block_info("vdb")) == (64 * MIB, du(raw), 64 * MIB)
            # after a write at offset 0, the highest offset QEMU wrote to, as libvirt's
            mark = serial.mark()
            serial.send("write-disk vda hello")  # the guest's first virtio disk: vdb
            serial.wait_for("QEMUD-WROTE vda", start=mark)
            capacity, allocation, physical = sizes(dom.block_info("vdb"))
            assert (capacity, physical) == (64 * MIB, 64 * MIB)
            assert 0 < allocation <= 4096, allocation
            with pytest.raises(client.InvalidArgError, match="does not currently have a "):
                dom.block_info("hdc")
            with pytest.raises(client.InvalidArgError, match="invalid path vdz not"):
                dom.block_info("vdz")

            table = shell_ok(daemon, "domblkinfo", "blk", "--all").splitlines()
            assert table[0].split() == ["Target", "Capacity", "Allocation", "Physical"]
            rows = {line.split()[0]: line.split()[1:] for line in table[2:] if line}
            assert rows == {"vdb": [str(64 * MIB), str(allocation), str(64 * MIB)],
                            "vdc": [str(GIB), str(du(qcow2)), str(qcow2.stat().st_size)],
                            "hdc": ["-", "-", "-"]}, table
            human = shell_ok(daemon, "domblkinfo", "blk", "--all", "--human")
            assert " vdb      64.000 MiB " in human and " 1.000 GiB " in human, human
        finally:
            serial.close()
            dom.destroy()
