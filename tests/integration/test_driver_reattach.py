"""What a running guest keeps across a daemon killed with -9 and started again (TCG).

The pty QEMU allocated for a serial console is shown in the live XML, as libvirt shows
it, before and after the restart; QEMU's own output (here its "terminating on signal"
line on destroy) still reaches the guest's log after the restart, because QEMU writes
the log file itself rather than a pipe that died with the old daemon.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from qemud.driver.process import GuestLog
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.procs import kill_qemus
from tests.integration.domains import READY, guest_xml
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

PTS = re.compile(r"/dev/pts/\d+\Z")
GUESTS = ("ptyguest", "chatty")


def pty_of(xml: str) -> str | None:
    """The pty of serial 0 in a live XML, checking the rest of libvirt's shape: the
    serial has ``<source path>`` (no tty), the console mirrors it with ``tty=`` and the
    same ``<source path>``. None when the XML shows no pty."""
    root = ET.fromstring(xml)
    serial = root.find("devices/serial")
    console = root.find("devices/console")
    assert serial is not None and console is not None
    source = serial.find("source")
    path = None if source is None else source.get("path")
    console_source = console.find("source")
    shown = (path, serial.get("tty"), console.get("tty"),
             None if console_source is None else console_source.get("path"))
    if path is None:
        assert shown == (None, None, None, None), shown
        return None
    assert PTS.match(path), shown
    assert shown == (path, None, path, path), shown
    return path


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon of the test's own, to kill and start again; it leaves no QEMU behind."""
    own = DaemonProcess(tmp_path / "d")
    own.start()
    yield own
    kill_qemus(own, *GUESTS)
    own.stop()


def test_pty_console_is_in_the_live_xml_before_and_after_a_restart(
        daemon: DaemonProcess, test_guest) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("ptyguest", test_guest, None))
        assert pty_of(dom.xml()) is None
        dom.create()
        pty = pty_of(dom.xml())
        assert pty is not None
        assert pty_of(dom.xml(client.XML_INACTIVE)) is None  # runtime data only
        port = SerialPort(Path(pty), pty=True)  # it is the guest's console
        port.wait_for(READY)
        port.send("ping")
        port.wait_for("QEMUD-PONG")
        port.close()

    daemon.kill()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("ptyguest")
        assert dom.state()[0] == DomainState.RUNNING
        assert pty_of(dom.xml()) == pty  # from the status file

    # a status file written without the ptys (by a daemon before this one knew them):
    # the re-attach asks QEMU again
    daemon.kill()
    status = daemon.run_dir / "qemu" / "ptyguest.status.json"
    record = json.loads(status.read_text())
    assert pty in record["live_xml"]
    record["live_xml"] = re.sub(r"""\s*(tty=(['"])[^'"]*\2|<source path=(['"])/dev/pts/"""
                                r"""\d+\3/>)""", "", record["live_xml"])
    assert pty not in record["live_xml"]
    status.write_text(json.dumps(record))
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("ptyguest")
        wait_for(lambda: pty_of(dom.xml()) == pty, message="pty re-read from QEMU")
        dom.destroy()
        assert pty_of(dom.xml()) is None


def test_qemu_output_reaches_the_log_after_a_restart(daemon: DaemonProcess, test_guest,
                                                     tmp_path: Path) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("chatty", test_guest, tmp_path / "s.sock"))
        dom.create()
        SerialPort(tmp_path / "s.sock").wait_for(READY)
    daemon.kill()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("chatty")
        assert dom.state()[0] == DomainState.RUNNING
        dom.destroy()  # SIGTERM from the new daemon: QEMU says so on stderr
    text = (daemon.log_dir / "qemu" / "chatty.log").read_text()
    after = text[text.index("qemud re-attached"):]
    assert f"terminating on signal 15 from pid {daemon.pid()}" in after, text[-2000:]
    assert "QEMU exited" in after


def test_guest_log_is_rotated_only_before_a_launch(tmp_path: Path) -> None:
    """QEMU holds its log open while it runs: the file is renamed only before a new
    QEMU gets it, never under a running one (a re-attach opens it as it is)."""
    path = tmp_path / "g.log"
    path.write_bytes(b"x" * 100)
    GuestLog(path).close()  # as at a re-attach
    assert path.stat().st_size == 100
    log = GuestLog(path, rotate_past=50)  # as before a launch
    assert (tmp_path / "g.log.1").read_bytes() == b"x" * 100
    log.note("next")
    assert log.read(0, log.size()) == b"next\n"
    log.close()
    GuestLog(path, rotate_past=50).close()  # small enough: kept
    assert path.read_bytes() == b"next\n"
