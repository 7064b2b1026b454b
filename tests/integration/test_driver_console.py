"""DOMAIN_OPEN_CONSOLE against real QEMU and the test guest, under TCG: which device a
console name opens (qemud/qemu/chardevs.py's console_sources), for ptys and for unix
sockets QEMU listens on, proven by the guest answering ``ping`` through the stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import CONSOLE_FORCE, CONSOLE_SAFE
from protocol.constants import ErrorCode
from tests.helpers.daemon import DaemonProcess, serving
from tests.integration.domains import guest_xml

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 120.0  # two test guests under TCG on a busy 2-core machine
#: a second console, virtio: a device of its own (charconsole1), where the guest is silent;
#: and a pty channel, which is no console
MORE_PTYS = """<console type='pty'>
      <target type='virtio' port='1'/>
    </console>
    <channel type='pty'>
      <target type='virtio' name='org.example.0'/>
    </channel>"""


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-console"))
    with serving(daemon):
        yield daemon


def ping(dom: client.Domain, device: str, timeout: float = BOOT_TIMEOUT) -> None:
    """Open console ``device`` of ``dom`` and send ``ping`` until the guest answers
    (it may still be booting: what it reads before its shell runs is lost)."""
    stream = dom.open_console(device)
    try:
        seen = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stream.send(b"ping\n")
            answer_by = time.monotonic() + 2.0
            while time.monotonic() < answer_by:
                chunk = stream.recv(0.2)
                assert chunk is not None, f"console {device!r} ended; it said {seen!r}"
                seen += chunk
                if b"QEMUD-PONG" in seen:
                    return
        raise TimeoutError(f"no answer on console {device!r} of {dom.name}; saw {seen!r}")
    finally:
        stream.close()


def test_console_names_of_a_pty_serial_and_its_console(qemud: DaemonProcess,
                                                       test_guest) -> None:
    """virt-install's shape: a pty serial 0, the console that is serial 0 (libvirt's
    compatibility console), and a virtio console. As on libvirtd 9.0: no name opens the
    first console, ``console0`` and ``serial0`` both open serial 0's pty (the guest
    answers on each), ``console1`` is the virtio console, a channel or an unknown name is
    not a console. (Before console_sources, no name opened ``console1`` -- the names were
    sorted -- and ``console0`` was not found.)"""
    with qemud.connect() as conn:
        dom = conn.create_xml(guest_xml("console-pty", test_guest, None,
                                        extra=MORE_PTYS))
        try:
            for device in ("", "console0", "serial0"):
                ping(dom, device)
            dom.open_console("console1").close()
            for device in ("channel0", "serial1"):
                with pytest.raises(client.RemoteError,
                                   match=rf"cannot find character device '{device}' \(have: "
                                         r"console0, console1, serial0\)") as refused:
                    dom.open_console(device).close()
                assert refused.value.code == ErrorCode.INTERNAL_ERROR  # as libvirt's
        finally:
            dom.destroy()


def test_console_of_a_unix_socket_serial(qemud: DaemonProcess, test_guest,
                                         tmp_path: Path) -> None:
    """A serial port on a unix socket QEMU listens on (the appliance VMs' console): while
    no client is connected QEMU calls it ``disconnected:unix:...``, and that is when a
    console is opened. It opens, twice in a row (each close frees the socket for the
    next), with no name and by name."""
    sock = tmp_path / "serial.sock"
    with qemud.connect() as conn:
        dom = conn.create_xml(guest_xml("console-unix", test_guest, sock))
        try:
            ping(dom, "")
            ping(dom, "serial0")
            # one session at a time (libvirt: OPERATION_FAILED); closing frees it
            first = dom.open_console("")
            try:
                with pytest.raises(client.OperationFailed,
                                   match="^operation failed: Active console session "
                                         "exists for this domain$"):
                    dom.open_console("serial0").close()
            finally:
                first.close()
            ping(dom, "serial0")
        finally:
            dom.destroy()


def test_console_force_takes_the_console_over(qemud: DaemonProcess, test_guest,
                                              tmp_path: Path) -> None:
    """virsh console --force (VIR_DOMAIN_CONSOLE_FORCE): the session holding the console
    ends with an error saying why, the new one gets the guest (it answers on it);
    --safe is accepted (one session per domain is safe handling); other flags are
    refused in libvirt's words before anything is opened."""
    sock = tmp_path / "serial.sock"
    with qemud.connect() as conn:
        dom = conn.create_xml(guest_xml("console-force", test_guest, sock))
        try:
            ping(dom, "")
            first = dom.open_console("", CONSOLE_SAFE)
            try:
                second = dom.open_console("serial0", CONSOLE_FORCE)
                try:
                    with pytest.raises(client.OperationFailed,
                                       match="console of domain 'console-force' was taken "
                                             r"over by another session \(console --force\)"):
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline:
                            first.recv(0.5)  # data the guest sent before: read past it
                    second.send(b"ping\n")
                    seen = b""
                    deadline = time.monotonic() + 30
                    while b"QEMUD-PONG" not in seen and time.monotonic() < deadline:
                        chunk = second.recv(0.5)
                        assert chunk is not None, seen
                        seen += chunk
                        if not chunk:
                            second.send(b"ping\n")
                    assert b"QEMUD-PONG" in seen, seen
                finally:
                    second.close()
            finally:
                first.close()
            with pytest.raises(client.InvalidArgError,
                               match=r"unsupported flags \(0x4\) in function "
                                     "qemuDomainOpenConsole"):
                dom.open_console("", 4).close()
            ping(dom, "")  # nothing was left holding it
        finally:
            dom.destroy()
