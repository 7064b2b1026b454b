"""qemush helpers without a daemon: disk XML, vncdisplay, progress, console piping."""

from __future__ import annotations

import io
import os
import queue
import threading
import xml.etree.ElementTree as ET

import pytest

from client.errors import ConnectionLost
from client.shell.console import ESCAPE, pipe_console
from client.shell.diskxml import build_disk_xml, find_disk_xml, graphics_display, os_type
from client.shell.progress import Progress
from client.shell.xmltext import virsh_xml

# -- attach-disk's XML -------------------------------------------------------------------


def test_disk_xml_full() -> None:
    xml = build_disk_xml("/var/lib/img/a.qcow2", "vdb", driver="qemu", subdriver="qcow2",
                         device="disk", mode="readonly", targetbus="virtio")
    assert xml == (
        "<disk type='file' device='disk'>\n"
        "  <driver name='qemu' type='qcow2'/>\n"
        "  <source file='/var/lib/img/a.qcow2'/>\n"
        "  <target dev='vdb' bus='virtio'/>\n"
        "  <readonly/>\n"
        "</disk>\n"
    )


def test_disk_xml_quotes_as_virsh() -> None:
    """A quote, an ampersand or a newline in a path is escaped; the text reads back."""
    path = "/img/it's \"a\" & <b>\n.qcow2"
    xml = build_disk_xml(path, "vdb")
    assert "<source file='/img/it&apos;s &quot;a&quot; &amp; &lt;b&gt;&#10;.qcow2'/>" in xml
    assert ET.fromstring(xml).find("source").get("file") == path  # type: ignore[union-attr]


def test_virsh_xml_text_and_mixed_content() -> None:
    root = ET.fromstring("<a x='1'><b>t &amp; u</b><c/></a>")
    assert virsh_xml(root) == "<a x='1'>\n  <b>t &amp; u</b>\n  <c/>\n</a>\n"
    with pytest.raises(ValueError, match="<a> holds both text and elements"):
        virsh_xml(ET.fromstring("<a>text<b/></a>"))


def test_disk_xml_minimal() -> None:
    root = ET.fromstring(build_disk_xml("/a.img", "vdc"))
    assert root.attrib == {"type": "file", "device": "disk"}
    assert root.find("driver") is None  # the daemon picks the driver
    assert root.find("source").attrib == {"file": "/a.img"}  # type: ignore[union-attr]
    assert root.find("target").attrib == {"dev": "vdc"}  # type: ignore[union-attr]
    assert root.find("readonly") is None


def test_disk_xml_subdriver_implies_qemu_driver() -> None:
    root = ET.fromstring(build_disk_xml("/a.img", "vdc", subdriver="raw"))
    assert root.find("driver").attrib == {"name": "qemu", "type": "raw"}  # type: ignore[union-attr]


def test_disk_xml_block_device_and_cdrom() -> None:
    root = ET.fromstring(build_disk_xml("/dev/sdz", "vdd"))
    assert root.get("type") == "block"
    assert root.find("source").attrib == {"dev": "/dev/sdz"}  # type: ignore[union-attr]
    cd = ET.fromstring(build_disk_xml("/iso/x.iso", "sdb", device="cdrom", targetbus="sata",
                                      mode="readonly"))
    assert cd.get("device") == "cdrom"
    assert cd.find("target").attrib == {"dev": "sdb", "bus": "sata"}  # type: ignore[union-attr]
    empty = ET.fromstring(build_disk_xml("", "sdc", device="cdrom"))
    assert empty.find("source") is None


def test_disk_xml_escapes_paths() -> None:
    root = ET.fromstring(build_disk_xml("/a'b\"<c>&.img", "vdb"))
    assert root.find("source").get("file") == "/a'b\"<c>&.img"  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "rw"}, "no support for rw in --mode"),
    ({"sourcetype": "network"}, "unsupported source type 'network'"),
])
def test_disk_xml_bad_options(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_disk_xml("/a.img", "vdb", **kwargs)  # type: ignore[arg-type]


DOMAIN_XML = """<domain type='qemu' id='3'>
  <name>demo</name>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <graphics type='vnc' port='5903' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>"""


def test_find_disk_by_target_or_source() -> None:
    by_target = find_disk_xml(DOMAIN_XML, "vda")
    assert by_target is not None
    assert ET.fromstring(by_target).find("target").get("dev") == "vda"  # type: ignore[union-attr]
    assert find_disk_xml(DOMAIN_XML, "/img/root.qcow2") == by_target
    assert find_disk_xml(DOMAIN_XML, "sda") is not None
    assert find_disk_xml(DOMAIN_XML, "vdz") is None


@pytest.mark.parametrize("graphics, display", [
    ("<graphics type='vnc' port='5903' listen='127.0.0.1'/>", "127.0.0.1:3"),
    ("<graphics type='vnc' port='5900'/>", ":0"),
    ("<graphics type='vnc' port='5910' listen='0.0.0.0'/>", ":10"),
    ("<graphics type='vnc' port='5901'><listen type='address' address='10.0.0.2'/>"
     "</graphics>", "10.0.0.2:1"),
    ("<graphics type='vnc' port='5902' listen='::1'/>", "[::1]:2"),
    ("<graphics type='vnc' port='-1' autoport='yes'/>", None),
    ("<graphics type='spice' port='5900'/>", None),
    ("", None),
])
def test_vnc_display(graphics: str, display: str | None) -> None:
    xml = f"<domain><devices>{graphics}</devices></domain>"
    assert graphics_display(xml) == display


def test_os_type() -> None:
    assert os_type(DOMAIN_XML) == "hvm"
    assert os_type("<domain/>") is None


# -- progress ----------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_silent_off_a_terminal() -> None:
    stream = FakeTTY(False)
    with Progress(stream, "Saving domain 'demo'", interval=0.01) as p:
        threading.Event().wait(0.05)
    assert not p.enabled
    assert stream.getvalue() == ""


def test_progress_draws_and_erases_on_a_terminal() -> None:
    stream = FakeTTY(True)
    with Progress(stream, "Saving domain 'demo'", interval=0.01) as p:
        threading.Event().wait(0.1)
    text = stream.getvalue()
    assert p.enabled and p.frames >= 2
    assert "\rSaving domain 'demo' ... " in text and " s " in text
    assert text.endswith("\r\x1b[K")  # the line is cleared at the end


def test_progress_stops_on_error() -> None:
    stream = FakeTTY(True)
    with pytest.raises(RuntimeError), Progress(stream, "x", interval=0.01):
        raise RuntimeError("call failed")
    assert stream.getvalue().endswith("\r\x1b[K")
    assert not any(t.name == "qemush-progress" for t in threading.enumerate())


# -- console piping ----------------------------------------------------------------------


class FakeStream:
    """A console stream whose guest echoes input upper-cased; b'bye' ends it."""

    def __init__(self, greeting: bytes = b"login: ") -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.q: queue.Queue[bytes | None | Exception] = queue.Queue()
        self.q.put(greeting)

    def recv(self, timeout: float | None = None) -> bytes | None:
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            return b""
        if isinstance(item, Exception):
            raise item
        return item

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        if b"bye" in data:
            self.q.put(None)
        else:
            self.q.put(data.upper())

    def close(self) -> None:
        self.closed = True


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, 4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_console_pipes_until_stdin_ends_and_guest_is_quiet() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"root\n")
    os.close(in_w)
    stream = FakeStream()
    reason = pipe_console(stream, in_r, out_w, raw=False, quiet_after=0.2)
    os.close(out_w)
    assert reason == "eof"
    assert _read_all(out_r) == b"login: ROOT\n"
    assert stream.sent == [b"root\n"] and stream.closed
    os.close(in_r)
    os.close(out_r)


def test_console_ends_with_the_stream() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"bye\n")  # stdin stays open: the guest side ends the session
    stream = FakeStream()
    assert pipe_console(stream, in_r, out_w, raw=False) == "closed"
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)


def test_console_escape_character_in_raw_mode() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"ls" + ESCAPE + b"never sent")
    stream = FakeStream()
    assert pipe_console(stream, in_r, out_w, raw=True) == "escape"
    assert stream.sent == [b"ls"]
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)


def test_console_stream_error_is_raised() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    stream = FakeStream()
    stream.q.put(ConnectionLost("connection lost"))
    with pytest.raises(ConnectionLost):
        pipe_console(stream, in_r, out_w, raw=False)
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)
