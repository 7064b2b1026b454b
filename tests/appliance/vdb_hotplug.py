"""A second disk, vdb, plugged into and unplugged from a running snapshot test guest, as
the guest (its serial line), the daemon (its log, its snapshot store) and QEMU (its open
files) see it: for test_snapshot_unplug, test_snapshot_after_unplug and
test_detach_timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import client
from tests.helpers.daemon import DaemonProcess
from tests.integration.conftest import TestGuest

from .snapshot_chains import qemu_files
from .snapshot_guests import Guest, disk_source, disk_xml, make_image

HAS_VDB = r"QEMUD-BLOCK: [^\n]*vdb"
NO_VDB = r"QEMUD-BLOCK: (?![^\n]*vdb)[^\n]*\n"
#: device_del -> ACPI unplug in the guest -> its block monitor (polls every 0.5 s), TCG
UNPLUG_TIMEOUT = 60.0


def has_vdb(xml: str) -> bool:
    return "<target dev='vdb'" in xml


def plug(g: Guest, xml: str) -> None:
    """Attach ``xml`` (vdb) live and wait until the guest sees it."""
    assert g.serial is not None
    mark = g.serial.mark()
    g.dom.attach_device(xml)
    g.serial.wait_for(HAS_VDB, UNPLUG_TIMEOUT, start=mark)


def unplug(g: Guest, xml: str) -> None:
    """Detach ``xml`` (vdb) live: the call returns once the guest released it."""
    assert g.serial is not None
    mark = g.serial.mark()
    g.dom.detach_device(xml)
    g.serial.wait_for(NO_VDB, UNPLUG_TIMEOUT, start=mark)
    assert not has_vdb(g.dom.xml())


def device_dels(qemud: DaemonProcess, device: str = "disk-vdb") -> int:
    """How many ``device_del`` of ``device`` the daemon has sent (its debug log)."""
    return sum(1 for line in qemud.log_text().splitlines()
               if "--> device_del" in line and device in line)


def wait_until(what: Callable[[], bool], timeout: float = UNPLUG_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"still not true after {timeout} s: {what}"
        time.sleep(0.05)


def overlays_of(qemud: DaemonProcess, name: str) -> list[str]:
    """The overlay files snapshots of ``name`` made for its disk vdb."""
    images = qemud.state_dir / "snapshots" / name / "images"
    return sorted(str(p) for p in images.glob("vdb.*"))


def read_vdb(g: Guest, n: int) -> str:
    line = g.command(f"read-disk vdb {n}", r"QEMUD-READ vdb [^\n]*\n")
    return line.rstrip("\n").split(" ", 2)[2]


def replug_in_qemu(g: Guest, qemud: DaemonProcess, tmp_path: Path, gone: list[str]
                   ) -> None:
    """``gone`` are no longer open in QEMU and a new vdb can be attached (its node
    names are free again), as QEMU sees it: after a pause the test guest's serial line
    does not report hotplug reliably, so the guest is not asked."""
    assert not [f for f in qemu_files(qemud, g.dom.name) if f in gone]
    fresh = make_image(tmp_path / "fresh.qcow2")
    g.dom.attach_device(disk_xml(fresh, dev="vdb"))
    assert disk_source(g.dom.xml(), "vdb") == str(fresh)
    assert str(fresh) in qemu_files(qemud, g.dom.name)


def snapshotted_vdb(conn: client.Connection, test_guest: TestGuest, name: str,
                    tmp_path: Path) -> tuple[Guest, Path, str]:
    """A booted guest ``name`` with a hot-plugged vdb under a live snapshot ``s1`` (an
    overlay on vdb's image), vdb's image and its XML; the caller closes the guest."""
    vda = make_image(tmp_path / "vda.qcow2")
    vdb = make_image(tmp_path / "vdb.qcow2")
    vdb_xml = disk_xml(vdb, dev="vdb")
    g = Guest(conn, test_guest, name, tmp_path, disk_xml(vda)).boot()
    try:
        plug(g, vdb_xml)
        g.dom.snapshot_create("s1")
    except BaseException:
        g.close()
        raise
    return g, vdb, vdb_xml
