"""A guest that cannot start: the error names the cause, and nothing is left running.

Every case checks the error text, that the domain is shut off, that no QEMU for it is
running (``pgrep -f guest=NAME,``), and that the daemon then starts other guests fine
(nothing it allocated for the failed start, e.g. a VNC port, leaked).
"""

from __future__ import annotations

import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from qemud.driver.lifecycle import MONITOR_TIMEOUT_ENV
from tests.helpers.daemon import DaemonProcess
from tests.integration.domains import guest_xml

from .conftest import (
    assert_log_clean,
    bare_domain_xml,
    guest_name,
    kill_qemus,
    make_short_dir,
    qemu_pids,
)

pytestmark = pytest.mark.integration


class _Held:
    """Two loopback ports: the daemon's whole VNC range; the test holds some of them."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}
        self.low = self.high = 0

    def pick(self) -> None:
        # two adjacent ports that are both free now (ephemeral range, above 5900)
        for _ in range(50):
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            b = socket.socket()
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                a.close()
                b.close()
                continue
            a.close()
            b.close()
            self.low, self.high = port, port + 1
            return
        raise RuntimeError("no two adjacent free ports")

    def hold(self, port: int) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        self.socks[port] = s

    def release(self, port: int) -> None:
        self.socks.pop(port).close()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


@pytest.fixture(scope="module")
def ports() -> Iterator[_Held]:
    held = _Held()
    held.pick()
    yield held
    held.close()


@pytest.fixture(scope="module")
def qemud(ports: _Held) -> Iterator[DaemonProcess]:
    root = make_short_dir()
    d = DaemonProcess(root, {
        "limits": {"keepalive_interval": 0},
        "qemu": {"vnc_port_min": ports.low, "vnc_port_max": ports.high,
                 "destroy_grace": 1.0},
    }).start()
    yield d
    try:
        kill_qemus()
        d.stop()
    except Exception:
        d.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def conn(qemud: DaemonProcess) -> Iterator[client.Connection]:
    with qemud.connect() as c:
        yield c
    kill_qemus()


def _assert_nothing_running(conn: client.Connection, dom: client.Domain) -> None:
    assert dom.state()[0] == DomainState.SHUTOFF
    assert qemu_pids(dom.name) == [], f"QEMU left running for {dom.name}"


def _fake_emulator(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# -- the emulator ------------------------------------------------------------------------

def test_missing_emulator_names_the_path(conn: client.Connection) -> None:
    """Refused at define (and create), in libvirt's words: no domain that could never
    start is defined."""
    name = guest_name("noemu")
    xml = bare_domain_xml(name, emulator="/nonexistent/qemu-system-x86_64")
    for call in (conn.define_xml, conn.create_xml):
        with pytest.raises(client.QemudClientError) as info:
            call(xml)
        assert str(info.value) == ("Cannot check QEMU binary /nonexistent/qemu-system-x86_64: "
                                   "No such file or directory")
    assert name not in {d.name for d in conn.list_domains()}


def test_emulator_not_executable_names_the_cause(conn: client.Connection,
                                                  tmp_path: Path) -> None:
    name = guest_name("noexec")
    emulator = tmp_path / "qemu-not-executable"
    emulator.write_text("#!/bin/sh\nexit 0\n")
    emulator.chmod(0o644)
    with pytest.raises(client.QemudClientError) as info:
        conn.define_xml(bare_domain_xml(name, emulator=str(emulator)))
    assert str(emulator) in str(info.value) and "Permission denied" in str(info.value)
    assert name not in {d.name for d in conn.list_domains()}


def test_emulator_gone_after_define_fails_the_start(conn: client.Connection,
                                                    tmp_path: Path) -> None:
    """The binary removed after define: the domain stays defined and its start names the
    path and the cause."""
    name = guest_name("goneemu")
    emulator = _fake_emulator(tmp_path / "qemu-gone", "exit 1")
    dom = conn.define_xml(bare_domain_xml(name, emulator=str(emulator)))
    emulator.unlink()
    with pytest.raises(client.OperationFailed) as info:
        dom.create()
    assert str(emulator) in str(info.value) and "No such file or directory" in str(info.value)
    _assert_nothing_running(conn, dom)
    dom.undefine()


def test_qemu_exiting_at_start_returns_its_message(conn: client.Connection,
                                                  tmp_path: Path) -> None:
    name = guest_name("qexit")
    emulator = _fake_emulator(tmp_path / "qemu-exits", (
        "echo \"qemu-system-x86_64: -machine bogus-board: unsupported machine type\" >&2\n"
        "exit 1"))
    dom = conn.define_xml(bare_domain_xml(name, emulator=str(emulator)))
    with pytest.raises(client.OperationFailed) as info:
        dom.create()
    assert "QEMU failed to start" in str(info.value)
    assert "-machine bogus-board: unsupported machine type" in str(info.value)
    _assert_nothing_running(conn, dom)
    dom.undefine()


def test_qemu_crashing_at_start_returns_its_message(conn: client.Connection,
                                                   tmp_path: Path) -> None:
    name = guest_name("qcrash")
    emulator = _fake_emulator(tmp_path / "qemu-crashes", (
        "echo 'qemu: fatal: assertion failed in tcg_gen_code' >&2\n"
        "kill -SEGV $$"))
    dom = conn.define_xml(bare_domain_xml(name, emulator=str(emulator)))
    with pytest.raises(client.OperationFailed, match="assertion failed in tcg_gen_code"):
        dom.create()
    _assert_nothing_running(conn, dom)
    dom.undefine()


def test_qemu_that_never_opens_its_monitor_is_killed(tmp_path: Path) -> None:
    """A QEMU hung before it opens QMP (or an emulator that is not QEMU): the start
    fails once the monitor wait is over (30 s, 2 s here through its test hook), naming
    the monitor and the wait; the process is killed and the domain is shut off."""
    root = make_short_dir()
    daemon = DaemonProcess(root / "d", env={MONITOR_TIMEOUT_ENV: "2"}).start()
    try:
        with daemon.connect() as conn:
            name = guest_name("qhang")
            emulator = _fake_emulator(tmp_path / "qemu-hangs", "while :; do sleep 1; done")
            dom = conn.define_xml(bare_domain_xml(name, emulator=str(emulator)))
            with pytest.raises(client.OperationFailed) as info:
                dom.create()
            message = str(info.value)
            assert "QEMU monitor " in message and message.endswith(
                "did not appear within 2 s: QEMU did not get as far as opening it"), message
            _assert_nothing_running(conn, dom)
            dom.undefine()
    finally:
        kill_qemus()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_unknown_machine_type_is_refused_at_define(conn: client.Connection) -> None:
    """As libvirt: the emulator's machine types are known at define, so a definition no
    start could ever run is not accepted (nor created)."""
    name = guest_name("nomachine")
    xml = bare_domain_xml(name, machine="nonexistent-board")
    for call in (conn.define_xml, conn.create_xml):
        with pytest.raises(client.ConfigUnsupportedError) as info:
            call(xml)
        message = str(info.value)
        assert message.startswith("unsupported configuration: Emulator '/"), message
        assert message.endswith("qemu-system-x86_64' does not support machine type "
                                "'nonexistent-board'"), message
    assert name not in {d.name for d in conn.list_domains()}


# -- the guest's files -------------------------------------------------------------------

def test_missing_disk_image_names_the_path(conn: client.Connection, qemud: DaemonProcess,
                                           test_guest, tmp_path: Path) -> None:
    name = guest_name("nodisk")
    missing = tmp_path / "images" / "missing-disk.qcow2"
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{missing}'/><target dev='vda' bus='virtio'/></disk>")
    dom = conn.define_xml(guest_xml(name, test_guest, tmp_path / "s.sock", extra=disk))
    with pytest.raises(client.OperationFailed) as info:
        dom.create()
    assert str(missing) in str(info.value)
    assert "No such file or directory" in str(info.value)
    _assert_nothing_running(conn, dom)
    assert not list(qemud.guest_run_dir(name).glob("*.sock"))
    dom.undefine()


def test_missing_kernel_names_the_path(conn: client.Connection, test_guest,
                                       tmp_path: Path) -> None:
    name = guest_name("nokernel")
    xml = guest_xml(name, test_guest, tmp_path / "s.sock").replace(
        str(test_guest.kernel), str(tmp_path / "missing-vmlinuz"))
    dom = conn.define_xml(xml)
    with pytest.raises(client.OperationFailed) as info:
        dom.create()
    assert "missing-vmlinuz" in str(info.value)
    _assert_nothing_running(conn, dom)
    dom.undefine()


# -- VNC ports ---------------------------------------------------------------------------

VNC = "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"


def test_vnc_port_range_exhausted(conn: client.Connection, ports: _Held) -> None:
    name = guest_name("vnc")
    ports.hold(ports.low)
    ports.hold(ports.high)
    try:
        dom = conn.define_xml(bare_domain_xml(name, devices=VNC))
        with pytest.raises(client.OperationFailed) as info:
            dom.create(flags=1)  # paused: no firmware boot under TCG needed
        message = str(info.value)
        assert "no free VNC port" in message
        assert f"{ports.low}-{ports.high}" in message
        assert "qemu.vnc_port_min" in message and "max" in message
        _assert_nothing_running(conn, dom)
    finally:
        ports.release(ports.low)
        ports.release(ports.high)
    # the range is free again: the same guest starts and gets the first port
    dom.create(flags=1)
    assert f"port='{ports.low}'" in dom.xml().replace('"', "'")
    dom.destroy()
    _assert_nothing_running(conn, dom)
    dom.undefine()


def test_failed_vnc_assignment_does_not_leak_ports(conn: client.Connection,
                                                   ports: _Held) -> None:
    """Two displays, one free port: the start fails, and the port it took is given back."""
    two = guest_name("vnc-two")
    one = guest_name("vnc-one")
    ports.hold(ports.high)
    try:
        dom2 = conn.define_xml(bare_domain_xml(two, devices=VNC + VNC))
        with pytest.raises(client.OperationFailed, match="no free VNC port"):
            dom2.create(flags=1)
        _assert_nothing_running(conn, dom2)
        dom1 = conn.define_xml(bare_domain_xml(one, devices=VNC))
        dom1.create(flags=1)  # fails if the first display's port leaked
        assert f"port='{ports.low}'" in dom1.xml().replace('"', "'")
        dom1.destroy()
        _assert_nothing_running(conn, dom1)
    finally:
        ports.release(ports.high)
    dom1.undefine()
    dom2.undefine()


def test_daemon_log_clean_after_failed_starts(qemud: DaemonProcess) -> None:
    assert_log_clean(qemud)
