"""``reset``, ``inject-nmi``, ``screenshot``, ``qemu-monitor-command`` and ``blockresize`` on
a real daemon and the test guest: what the guest and QEMU show afterwards, the events,
libvirt's refusals, and the shell's output as virsh prints it."""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import BLOCK_RESIZE_BYTES, MONITOR_COMMAND_HMP
from tests.helpers.daemon import DaemonProcess, qemush, wait_for
from tests.integration.conftest import TestGuest
from tests.integration.domains import READY, bare_xml, guest_xml
from tests.integration.lifecycle import resets_since
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

MIB = 1 << 20


def shell(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    proc = qemush(daemon, *args)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def guest(daemon: DaemonProcess, test_guest: TestGuest,
          tmp_path: Path) -> Iterator[tuple[client.Domain, SerialPort]]:
    """The running test guest ("ctl"), booted, with kernel messages up to info level on
    its serial port (an NMI and a disk's new size are reported there), and a raw and a
    qcow2 data disk."""
    raw, qcow2 = tmp_path / "data.raw", tmp_path / "data.qcow2"
    for fmt, path in (("raw", raw), ("qcow2", qcow2)):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "64M"], check=True,
                       timeout=60)
    disks = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
             f"<source file='{raw}'/><target dev='vdb' bus='virtio'/></disk>"
             f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
             f"<source file='{qcow2}'/><target dev='vdc' bus='virtio'/></disk>")
    sock = tmp_path / "s.sock"
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("ctl", test_guest, sock, extra=disks,
                                        cmdline="console=ttyS0 loglevel=7"))
        dom.create()
        serial = SerialPort(sock)
        try:
            serial.wait_for(READY)
            yield dom, serial
        finally:
            serial.close()


def test_reset_reboots_the_guest_at_once_and_says_so(daemon: DaemonProcess,
                                                     guest: tuple[client.Domain, SerialPort]
                                                     ) -> None:
    """One REBOOT event for the reset, one more for each reset the firmware makes while
    booting again (SeaBIOS may), as libvirt sends one per reset; no lifecycle event: the
    same QEMU runs on."""
    dom, serial = guest
    with daemon.connect() as watcher:
        watcher.register_event(client.EventId.REBOOT)
        watcher.register_event(client.EventId.LIFECYCLE)
        mark, log_mark = serial.mark(), len(daemon.log_text())
        dom.reset()
        event = watcher.next_event(timeout=30)
        assert event is not None and event.event_id == client.EventId.REBOOT
        assert event.domain.name == "ctl"
        serial.wait_for(READY, start=mark)  # booted again, in the same QEMU
        assert dom.state() == (client.DomainState.RUNNING, 1)  # running (booted)
        resets = resets_since(daemon, "ctl", log_mark)
        assert "--> system_reset" in daemon.log_text()[log_mark:]
        more = [watcher.next_event(timeout=10) for _ in range(resets - 1)]
        assert all(e is not None and e.event_id == client.EventId.REBOOT for e in more), more
        assert watcher.next_event(timeout=0.5) is None
    assert shell(daemon, "reset", "ctl") == (0, "Domain 'ctl' was reset\n", "")


def test_reset_and_nmi_refusals(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("off"))
        for call in (dom.reset, dom.inject_nmi):
            with pytest.raises(client.OperationInvalid) as exc:
                call()
            assert exc.value.message == ("Requested operation is not valid: domain 'off' "
                                         "is not running")
        with pytest.raises(client.InvalidArgError, match="unsupported flags"):
            dom.reset(2)
    with daemon.connect(readonly=True) as ro:
        with pytest.raises(client.ReadOnlyError):
            ro.lookup("off").reset()
    assert shell(daemon, "reset", "off") == (
        1, "", "error: Failed to reset domain 'off'\nerror: Requested operation is not "
               "valid: domain 'off' is not running\n")


def test_inject_nmi_reaches_the_guest_kernel(daemon: DaemonProcess,
                                             guest: tuple[client.Domain, SerialPort]) -> None:
    dom, serial = guest
    mark = serial.mark()
    dom.inject_nmi()
    serial.wait_for(r"NMI received for unknown reason", start=mark, timeout=30)
    mark = serial.mark()
    assert shell(daemon, "inject-nmi", "ctl") == (0, "", "")
    serial.wait_for(r"NMI received for unknown reason", start=mark, timeout=30)


def test_qemu_monitor_command_passes_qmp_and_hmp_through(
        daemon: DaemonProcess, guest: tuple[client.Domain, SerialPort]) -> None:
    dom, _ = guest
    reply = json.loads(dom.qemu_monitor_command('{"execute": "query-status", "id": "mine"}'))
    assert reply == {"return": {"status": "running", "singlestep": False, "running": True}}
    # QEMU's error reply is the result, as libvirt gives it
    assert json.loads(dom.qemu_monitor_command('{"execute": "no-such-command"}')) == {
        "error": {"class": "CommandNotFound",
                  "desc": "The command no-such-command has not been found"}}
    assert json.loads(dom.qemu_monitor_command('{"execute": "query-status", "x": 1}')) == {
        "error": {"class": "GenericError", "desc": "QMP input member 'x' is unexpected"}}
    with pytest.raises(client.RemoteError, match="internal error: cannot parse json "):
        dom.qemu_monitor_command('{"execute":')
    # HMP: the human monitor's text
    assert dom.qemu_monitor_command("info name", MONITOR_COMMAND_HMP) == "ctl\r\n"
    # a pause made behind the daemon's back is still followed (QEMU's STOP event)
    dom.qemu_monitor_command('{"execute": "stop"}')
    wait_for(lambda: dom.state()[0] == client.DomainState.PAUSED, timeout=10,
             message="the pause seen")
    dom.qemu_monitor_command("cont", MONITOR_COMMAND_HMP)
    wait_for(lambda: dom.state()[0] == client.DomainState.RUNNING, timeout=10,
             message="the resume seen")
    # libvirt's taint, logged once for this QEMU
    assert daemon.log_text().count("domain ctl (id 1) is tainted: custom-monitor") == 1
    with daemon.connect(readonly=True) as ro:
        with pytest.raises(client.ReadOnlyError):
            ro.lookup("ctl").qemu_monitor_command('{"execute": "query-status"}')


def test_qemu_monitor_command_in_the_shell(daemon: DaemonProcess,
                                          guest: tuple[client.Domain, SerialPort]) -> None:
    code, out, err = shell(daemon, "qemu-monitor-command", "ctl", '{"execute":"query-name"}')
    assert (code, out, err) == (0, '{"return":{"name":"ctl"}}\n', "")
    # virsh's shorthand: a command name and key=value arguments
    assert shell(daemon, "qemu-monitor-command", "ctl", "query-name", "--pretty") == (
        0, '{\n  "return": {\n    "name": "ctl"\n  }\n}\n', "")
    assert shell(daemon, "qemu-monitor-command", "ctl", "--return-value",
                 "human-monitor-command", "command-line=info name") == (0, '"ctl\\r\\n"\n', "")
    assert shell(daemon, "qemu-monitor-command", "ctl", "--hmp", "info", "status") == (
        0, "VM status: running\n", "")
    code, out, err = shell(daemon, "qemu-monitor-command", "ctl", "--return-value", "nothing")
    assert (code, out, err) == (1, "", "error: 'return' member missing\n")
    assert shell(daemon, "qemu-monitor-command", "ctl", "query-name", "junk") == (
        1, "", "error: Malformed QMP command argument 'junk' (expected key=value, or the "
               "whole command as JSON)\n")
    assert shell(daemon, "qemu-monitor-command", "ctl", "--hmp", "--pretty", "info") == (
        1, "", "error: Options --hmp and --pretty are mutually exclusive\n")


def capacity(dom: client.Domain, disk: str) -> int:
    return dom.block_info(disk).capacity


def test_blockresize_grows_a_running_guests_disks(daemon: DaemonProcess,
                                                  guest: tuple[client.Domain, SerialPort],
                                                  tmp_path: Path) -> None:
    dom, serial = guest
    raw = tmp_path / "data.raw"
    mark = serial.mark()
    dom.block_resize("vdb", 128 * 1024)  # KiB by default
    assert capacity(dom, "vdb") == 128 * MIB
    assert raw.stat().st_size == 128 * MIB  # QEMU grew the file itself
    # the guest's kernel saw it (the guest calls its first virtio disk vda)
    serial.wait_for(r"\[vda\] new size: 262144 512-byte logical blocks", start=mark)
    # qcow2, by path, in bytes: rounded up to whole 512-byte sectors, as libvirt does
    dom.block_resize(str(tmp_path / "data.qcow2"), 96 * MIB + 1, BLOCK_RESIZE_BYTES)
    assert capacity(dom, "vdc") == 96 * MIB + 512
    assert shell(daemon, "blockresize", "ctl", "vdc", "1G") == (
        0, "Block device 'vdc' is resized\n", "")
    assert capacity(dom, "vdc") == 1 << 30
    with pytest.raises(client.InvalidArgError) as exc:
        dom.block_resize("vdz", 1024)
    assert exc.value.message == "invalid argument: disk 'vdz' was not found in the domain config"
    assert shell(daemon, "blockresize", "ctl", "vdb", "12X") == (
        1, "", "error: Scaled numeric value '12X' for <size> option is malformed or out of "
               "range\nerror: invalid argument: unknown suffix 'X'\n")


def test_blockresize_needs_a_running_domain(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        conn.define_xml(bare_xml("off"))
    assert shell(daemon, "blockresize", "off", "vda", "1G") == (
        1, "", "error: Failed to resize block device 'vda'\nerror: Requested operation is "
               "not valid: domain 'off' is not running\n")


VNC = "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"


def ppm_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a binary PPM whose pixels are all there."""
    m = re.match(rb"P6\n(\d+) (\d+)\n255\n", data)
    assert m is not None, data[:32]
    width, height = int(m.group(1)), int(m.group(2))
    assert len(data) == m.end() + width * height * 3
    return width, height


def test_screenshot_of_the_guests_screen(daemon: DaemonProcess, test_guest: TestGuest,
                                         tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    with daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("shot", test_guest, sock, extra=VNC))
        dom.create()
        serial = SerialPort(sock)
        try:
            serial.wait_for(READY)
            # what a screenshot QEMU answered too late leaves (its call timed out): the
            # next one removes it
            run_dir = daemon.guest_run_dir("shot")
            (run_dir / "screendump-999998.ppm").write_bytes(b"P6\n" + bytes(1 << 20))
            image = io.BytesIO()
            assert dom.screenshot(image) == "image/x-portable-pixmap"
            assert not (run_dir / "screendump-999998.ppm").exists()
            width, height = ppm_size(image.getvalue())
            assert width >= 320 and height >= 200
            with pytest.raises(client.InvalidArgError, match="Screen ID 1 too big"):
                dom.screenshot(io.BytesIO(), 1)
            # the shell: a file named as virsh names it, in the current directory
            code, out, err = shell_in(daemon, tmp_path, "screenshot", "shot")
            assert (code, err) == (0, ""), err
            m = re.fullmatch(r"Screenshot saved to (shot-\d{4}-\d\d-\d\d-\d\d:\d\d:\d\d"
                             r"\.ppm), with type of image/x-portable-pixmap\n", out)
            assert m is not None, out
            assert ppm_size((tmp_path / m.group(1)).read_bytes()) == (width, height)
            target = tmp_path / "screen.ppm"
            assert shell(daemon, "screenshot", "shot", str(target)) == (
                0, f"Screenshot saved to {target}, with type of image/x-portable-pixmap\n",
                "")
            assert ppm_size(target.read_bytes()) == (width, height)
            # a write that fails (a file size limit, as a full disk would): an error
            # line, no traceback, no partial image, the earlier file kept
            proc = qemush(daemon, "screenshot", "shot", str(target), max_file_size=4096)
            assert (proc.returncode, proc.stdout, proc.stderr) == (
                1, "", "error: File too large\n")
            assert ppm_size(target.read_bytes()) == (width, height)
            assert sorted(p.name for p in tmp_path.iterdir() if ".part" in p.name) == []
            # nothing of the daemon's is left in the guest's run directory
            assert not list(daemon.run_dir.rglob("screendump-*"))
            # nor after the guest's stop
            (run_dir / "screendump-999999.ppm").write_bytes(b"P6\n")
            dom.destroy()
            assert not list(daemon.run_dir.rglob("screendump-*"))
        finally:
            serial.close()
            if dom.state()[0] != client.DomainState.SHUTOFF:
                dom.destroy()
    with daemon.connect(readonly=True) as ro:  # libvirt refuses it read-only too
        with pytest.raises(client.ReadOnlyError):
            ro.lookup("shot").screenshot(io.BytesIO())


def shell_in(daemon: DaemonProcess, cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = qemush(daemon, *args, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def test_screenshot_refusals_leave_files_alone(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml("blind"))
        dom.create(flags=client.domain.START_PAUSED)
        try:
            with pytest.raises(client.OperationInvalid, match="no screens to take "):
                dom.screenshot(io.BytesIO())
            shots = tmp_path / "shots"
            shots.mkdir()
            kept = shots / "kept.ppm"
            kept.write_bytes(b"mine")
            assert shell(daemon, "screenshot", "blind", str(kept)) == (
                1, "", "error: could not take a screenshot of blind\nerror: Requested "
                       "operation is not valid: no screens to take screenshot from\n")
            assert kept.read_bytes() == b"mine"  # an existing file is not lost
            assert [p.name for p in shots.iterdir()] == ["kept.ppm"]  # no partial file
        finally:
            dom.destroy()
        with pytest.raises(client.OperationInvalid, match="is not running"):
            dom.screenshot(io.BytesIO())
