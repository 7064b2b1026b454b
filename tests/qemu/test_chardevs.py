"""Which chardev a serial/console/channel is, its pty from query-chardev, and what a
console stream opens (pure)."""

from __future__ import annotations

import pytest

from qemud.qemu.chardevs import (
    chardev_id_of,
    console_is_serial0,
    console_sources,
    pty_paths,
)
from tests.qemu.fake_argv import argv, option

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


# -- console_sources ---------------------------------------------------------------------


def test_console_sources_consoles_first_and_console0_is_serial0() -> None:
    """libvirt looks a console name up among the consoles, then the serial ports, and with
    no name opens the first console: the first key. ``console0`` here is serial 0's
    compatibility console, so it opens serial 0's pty (as ``virsh console g console0``
    does on libvirtd 9.0); the null serial and the channels have nothing to open."""
    sources = console_sources(virt_install_like(), query_chardev())
    assert list(sources.items()) == [
        ("console0", "/dev/pts/3"), ("console1", "/dev/pts/4"), ("serial0", "/dev/pts/3")]


def test_console_sources_of_listening_unix_sockets() -> None:
    """QEMU names a socket it listens on ``unix:PATH,server=on``, and while no client is
    connected (the usual case when a console is opened) ``disconnected:unix:...``; a path
    may hold a comma. A socket QEMU connects out on is someone else's server: left out."""
    dom = FakeDomain(
        serials=[FakeChar(type="unix", source_mode="bind", target_port=0),
                 FakeChar(type="unix", source_mode="bind", target_port=1),
                 FakeChar(type="unix", source_mode="connect", target_port=2)],
        consoles=[FakeChar(type="unix", target_type="serial", target_port=0)])
    reply = [
        {"label": "charserial0", "filename": "disconnected:unix:/run/q/a,b.sock,server=on"},
        {"label": "charserial1", "filename": "unix:/run/q/charserial1.sock,server=on"},
        {"label": "charserial2", "filename": "unix:/run/elsewhere.sock"},
    ]
    assert list(console_sources(dom, reply).items()) == [
        ("console0", "unix:/run/q/a,b.sock"), ("serial0", "unix:/run/q/a,b.sock"),
        ("serial1", "unix:/run/q/charserial1.sock")]


def test_console_sources_without_a_console_start_with_serial_0() -> None:
    dom = FakeDomain(serials=[FakeChar(), FakeChar(target_port=1)])
    reply = [{"label": "charserial0", "filename": "pty:/dev/pts/7"},
             {"label": "charserial1", "filename": "pty:/dev/pts/8"}]
    assert list(console_sources(dom, reply)) == ["serial0", "serial1"]


@pytest.mark.parametrize("reply", [
    None, {}, "pty:/dev/pts/1", [None, 3, {"label": 1}],
    [{"label": "charserial0", "filename": "pty:"}],
    [{"label": "charserial0", "filename": "unix:,server=on"}],
    [{"label": "charserial0", "filename": "disconnected:unix:/run/a.sock"}],
    [{"label": "charserial0", "filename": "file:/var/log/serial.log"}],
    [{"label": "charchannel0", "filename": "pty:/dev/pts/5"}]])
def test_console_sources_of_a_malformed_or_useless_answer_are_none(reply: object) -> None:
    assert console_sources(virt_install_like(), reply) == {}
