"""A deployed VM's serial console: the driver's socket of its serial port, computed from
the VM's name at each start, so that a renamed VM and a new one deployed under its old
name each reach their own guest; a definition of an older deploy (the socket's path
written in it, under the run directory of its name) has that path follow a rename.

Real daemon, real qemu-img and the test guest (TCG), with the appliances of test_images
(demo 1.0 and 2.0, whose system disks start with ``SYSTEM-V1.0`` and ``SYSTEM-V2.0``).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

import client
from client import appliance_images as images
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, remove_domain, serving
from tests.integration.conftest import TestGuest

from .appliances import build_appliance, descriptor
from .appliances import work as work
from .conftest import BOOT_TIMEOUT, wait_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-img-console"))
    with serving(daemon):
        yield daemon


@pytest.fixture(scope="module")
def stored(qemud: DaemonProcess, work: Path, test_guest: TestGuest) -> None:
    with qemud.connect() as c:
        for version in ("1.0", "2.0"):
            images.import_appliance(c, str(build_appliance(work, test_guest,
                                                           descriptor(version))))


def serial_sources(xml: str) -> list[str | None]:
    """The ``<source path>`` of each ``<serial>`` (None: none given)."""
    root = etree.fromstring(xml.encode())
    return [s.get("path") for s in (el.find("source") for el in root.iter("serial"))
            if s is not None] or [None]


def read_disk(dom: client.Domain, dev: str, n: int) -> str:
    """The first ``n`` bytes of the guest's ``dev``, asked through the domain's console
    stream (``qemush console``: DOMAIN_OPEN_CONSOLE), until the booting guest answers."""
    stream = dom.open_console()
    try:
        got = ""
        deadline = time.monotonic() + BOOT_TIMEOUT
        ask = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= ask:
                stream.send(f"read-disk {dev} {n}\n".encode())
                ask = time.monotonic() + 3
            chunk = stream.recv(0.5)
            got += (chunk or b"").decode(errors="replace")
            answer = re.search(rf"QEMUD-READ {dev} ([^\r\n]*)\r?\n", got)
            if answer:
                return answer.group(1)
        raise TimeoutError(f"{dom.name}: no answer on its console; got {got[-500:]!r}")
    finally:
        stream.close()


def test_a_renamed_vm_and_a_new_one_of_its_old_name_have_their_own_consoles(
        conn: client.Connection, qemud: DaemonProcess, stored: None) -> None:
    first = images.deploy(conn, "demo", "con-a", "1.0", start=True)
    doms = [first]
    try:
        assert serial_sources(first.xml(client.XML_INACTIVE)) == [None]  # no path
        assert read_disk(first, "vda", 11) == "SYSTEM-V1.0"
        assert (qemud.guest_run_dir("con-a") / "charserial0.sock").exists()
        first.destroy()
        first.rename("con-b")
        renamed = conn.lookup_by_name("con-b")
        doms.append(renamed)
        second = images.deploy(conn, "demo", "con-a", "2.0", start=True)
        doms.append(second)
        renamed.create()
        assert read_disk(second, "vda", 11) == "SYSTEM-V2.0"
        assert read_disk(renamed, "vda", 11) == "SYSTEM-V1.0"  # its own guest
        renamed.destroy()
        shutil.rmtree(qemud.guest_run_dir("con-b"), ignore_errors=True)  # /run emptied
        renamed.create()
        assert read_disk(renamed, "vda", 11) == "SYSTEM-V1.0"
    finally:
        for dom in doms:
            remove_domain(dom)


def test_the_console_path_of_an_older_deploy_follows_a_rename(
        conn: client.Connection, qemud: DaemonProcess, stored: None) -> None:
    """A definition written by an older deploy names ``<run_dir>/qemu/<VM>/console.sock``
    itself: a rename moves it to the run directory of the new name, so that the VM
    still starts once the run directory is emptied (a tmpfs at boot)."""
    dom = images.deploy(conn, "demo", "old-con", "1.0")
    try:
        old_sock = qemud.guest_run_dir("old-con") / "console.sock"
        xml = dom.xml(client.XML_INACTIVE).replace(
            "<serial type='unix'>",
            f"<serial type='unix'><source mode='bind' path='{old_sock}'/>")
        dom = conn.define_xml(xml)
        assert serial_sources(dom.xml(client.XML_INACTIVE)) == [str(old_sock)]
        dom.rename("new-con")
        dom = conn.lookup_by_name("new-con")
        assert serial_sources(dom.xml(client.XML_INACTIVE)) == [
            str(qemud.guest_run_dir("new-con") / "console.sock")]
        shutil.rmtree(qemud.guest_run_dir("old-con"), ignore_errors=True)
        dom.create()
        wait_state(dom, DomainState.RUNNING)
        assert read_disk(dom, "vda", 11) == "SYSTEM-V1.0"
        assert (qemud.guest_run_dir("new-con") / "console.sock").exists()
        assert not qemud.guest_run_dir("old-con").exists()
    finally:
        remove_domain(dom)
