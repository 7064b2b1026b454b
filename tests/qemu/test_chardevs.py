"""Which chardev a serial/console/channel is, and its pty from query-chardev (pure)."""

from __future__ import annotations

import pytest

from qemud.qemu.chardevs import chardev_id_of, console_is_serial0, pty_paths
from tests.qemu.test_command import argv, option

from .fakes import FakeChar, FakeDomain


def virt_install_like() -> FakeDomain:
    """A pty serial, the console that mirrors it, a virtio console, a pty channel and a
    unix channel."""
    return FakeDomain(
        serials=[FakeChar(target_port=0), FakeChar(type="null", target_port=1)],
        consoles=[FakeChar(target_type="serial", target_port=0),
                  FakeChar(target_type="virtio")],
        channels=[FakeChar(target_type="virtio", target_name="org.example.0"),
                  FakeChar(type="unix", source_path="/run/a.sock", source_mode="bind",
                           target_type="virtio", target_name="org.example.1")])


def query_chardev() -> list[dict[str, object]]:
    """QEMU 7.2's answer for virt_install_like() (plus the monitor)."""
    return [
        {"frontend-open": True, "filename": "unix:/run/qemud/guest/monitor.sock,server=on",
         "label": "charmonitor"},
        {"frontend-open": True, "filename": "pty:/dev/pts/3", "label": "charserial0"},
        {"frontend-open": False, "filename": "null", "label": "charserial1"},
        {"frontend-open": False, "filename": "pty:/dev/pts/4", "label": "charconsole1"},
        {"frontend-open": False, "filename": "pty:/dev/pts/5", "label": "charchannel0"},
        {"frontend-open": False, "filename": "unix:/run/a.sock,server=on",
         "label": "charchannel1"},
    ]


def test_the_first_serial_console_is_serial_0() -> None:
    dom = virt_install_like()
    assert console_is_serial0(dom, 0) and not console_is_serial0(dom, 1)
    assert [chardev_id_of(dom, "console", i) for i in (0, 1)] == ["charserial0",
                                                                  "charconsole1"]
    # no serial: a serial-type console has a chardev of its own
    alone = FakeDomain(consoles=[FakeChar(target_type="serial")])
    assert not console_is_serial0(alone, 0)
    assert chardev_id_of(alone, "console", 0) == "charconsole0"
    # a virtio first console is never serial 0
    virtio = FakeDomain(serials=[FakeChar()], consoles=[FakeChar(target_type="virtio")])
    assert chardev_id_of(virtio, "console", 0) == "charconsole0"


def test_the_command_line_defines_every_chardev_the_devices_are_looked_up_by() -> None:
    dom = virt_install_like()
    defined = {spec.split("id=")[1].split(",")[0] for spec in option(argv(dom), "-chardev")}
    for kind, devices in (("serial", dom.serials), ("console", dom.consoles),
                          ("channel", dom.channels)):
        for index in range(len(devices)):
            assert chardev_id_of(dom, kind, index) in defined, (kind, index)


def test_pty_paths_from_query_chardev() -> None:
    dom = virt_install_like()
    assert pty_paths(dom, query_chardev()) == [
        ("serial", 0, "/dev/pts/3"), ("console", 0, "/dev/pts/3"),
        ("console", 1, "/dev/pts/4"), ("channel", 0, "/dev/pts/5")]


@pytest.mark.parametrize("reply", [None, {}, "pty:/dev/pts/1", [None, 3, {"label": 1}],
                                   [{"label": "charserial0", "filename": "pty:"}]])
def test_a_malformed_answer_gives_no_paths(reply: object) -> None:
    assert pty_paths(virt_install_like(), reply) == [
        ("serial", 0, None), ("console", 0, None), ("console", 1, None),
        ("channel", 0, None)]


def test_only_pty_devices_are_listed() -> None:
    """The console mirrors serial 0, but only shows a pty if it says type='pty'."""
    dom = FakeDomain(serials=[FakeChar()], consoles=[FakeChar(type="null")])
    assert pty_paths(dom, query_chardev()) == [("serial", 0, "/dev/pts/3")]
