"""A save-image path the client names must not block the loop or fill the daemon's memory.

DOMAIN_RESTORE reads the header of the file the client names, on the loop
(``qemud/driver/saving.py`` ``read_image``); so does a start of a domain with a managed
save image. A FIFO there used to block the whole daemon in ``open``; ``/dev/zero`` or a
big file without a newline was read whole into memory. Now anything but a regular file
is refused without being opened, and every header read is bounded:

* a FIFO is INVALID_ARG "... (not a regular file)" at once and is never opened (a writer
  the test holds on it never gets through its ``open``); another connection is served;
* ``/dev/zero``, a directory, a unix socket likewise;
* a 64 MiB file of zeros (no newline), or one whose header has a huge or garbage line or
  XML length, is INVALID_ARG naming the file, and the daemon's peak RSS (VmHWM) does not
  grow by anything like the file's size;
* a FIFO as a domain's managed save image fails its start with the managed-save error;
* a valid header with no memory state after it fails the restore with QEMU's words
  (QEMU reads the image through the daemon's descriptor), where ``exec:tail`` hung.

A valid save still restores: tests/integration/test_driver_lifecycle.py
(``test_save_and_restore``), test_driver_managed_save.py and test_save_image_pci.py.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.errors import InvalidArgError, OperationFailed
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess

from .conftest import NO_GUEST_EMULATOR, assert_log_clean, bare_domain_xml, guest_name, qemu_pids

#: a file this big without a newline was read whole by the old header reader
BIG = 64 * 1024 * 1024
#: what the daemon's peak RSS may grow by while refusing it (a bounded read: ~nothing)
HWM_SLACK_KIB = 16 * 1024
#: headroom over the daemon's address space: a regression that reads /dev/zero without
#: bound gets a MemoryError in the daemon, not the machine's memory
AS_HEADROOM = 1024 * 1024 * 1024


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture
def qemud(daemon_factory) -> Iterator[DaemonProcess]:
    d = daemon_factory()
    pid = d.pid()
    limit = _status(pid, "VmSize") * 1024 + AS_HEADROOM
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    yield d
    assert_log_clean(d)


@pytest.fixture
def conns(qemud: DaemonProcess) -> Iterator[tuple[client.Connection, client.Connection]]:
    """The connection that restores, and another one that must stay served."""
    with qemud.connect() as conn, qemud.connect() as other:
        yield conn, other


def _refused(conn: client.Connection, path: Path, error: type[Exception] = InvalidArgError
             ) -> str:
    with pytest.raises(error) as info:
        conn.restore(str(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


class _FifoWriter:
    """A thread blocked opening ``path`` for writing until someone opens it to read. If
    the daemon ever does, the writer gets through and closes at once (the daemon then
    reads EOF: a regression fails the test instead of hanging it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        self.opened.set()
        os.close(fd)

    def release(self) -> None:
        """Unblock the writer: open the FIFO for reading ourselves (without blocking)."""
        if not self.opened.is_set():
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(timeout=10)
            os.close(fd)
        assert not self.thread.is_alive()


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, _FifoWriter]]:
    path = tmp_path / "state.fifo"
    os.mkfifo(path)
    writer = _FifoWriter(path)
    yield path, writer
    writer.release()


def test_restore_from_a_fifo_is_refused_without_opening_it(
        conns: tuple[client.Connection, client.Connection],
        fifo: tuple[Path, _FifoWriter]) -> None:
    conn, other = conns
    path, writer = fifo
    assert other.node_info().cpus >= 1
    message = _refused(conn, path)
    assert f"{path} is not a qemud save file (not a regular file)" in message
    assert not writer.opened.is_set(), "the daemon opened the FIFO"
    assert other.node_info().cpus >= 1
    # and again on the same connection: nothing is left half-done
    _refused(conn, path)
    assert other.node_info().cpus >= 1
    assert conn.node_info().cpus >= 1
    assert not writer.opened.is_set()


def test_restore_from_dev_zero_a_directory_or_a_socket_is_refused(
        conns: tuple[client.Connection, client.Connection], tmp_path: Path) -> None:
    conn, other = conns
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        for path in (Path("/dev/zero"), tmp_path, sock_path):
            message = _refused(conn, path)
            assert f"{path} is not a qemud save file (not a regular file)" in message
            assert other.node_info().cpus >= 1


def test_restore_from_a_big_file_without_a_newline_reads_only_its_start(
        qemud: DaemonProcess, conns: tuple[client.Connection, client.Connection],
        tmp_path: Path) -> None:
    conn, other = conns
    zeros = tmp_path / "zeros.save"
    with zeros.open("wb") as f:
        f.truncate(BIG)  # sparse: zeros, no newline
    magic_then_zeros = tmp_path / "magic-then-zeros.save"
    with magic_then_zeros.open("wb") as f:
        f.write(b"QEMUD-SAVE-1\n")
        f.truncate(BIG)
    managed_then_zeros = tmp_path / "managed-then-zeros.save"
    with managed_then_zeros.open("wb") as f:
        f.write(b"QEMUD-SAVE-2\n")
        f.truncate(BIG)
    hwm = _status(qemud.pid(), "VmHWM")
    message = _refused(conn, zeros)
    assert message.endswith(f"{zeros} is not a qemud save file"), message
    for path in (magic_then_zeros, managed_then_zeros):
        message = _refused(conn, path)
        assert message.endswith(f"{path} is not a valid qemud save file"), message
    grown = _status(qemud.pid(), "VmHWM") - hwm
    assert grown < HWM_SLACK_KIB, f"peak RSS grew by {grown} KiB reading the headers"
    assert other.node_info().cpus >= 1


@pytest.mark.parametrize("header", [
    pytest.param(b"QEMUD-SAVE-1\n99999999999999999999\n<domain/>", id="huge-length"),
    pytest.param(b"QEMUD-SAVE-1\n%d\n<domain>" % (5 * 1024 * 1024), id="over-max-string"),
    pytest.param(b"QEMUD-SAVE-1\n100\n<domain>", id="past-the-end"),
    pytest.param(b"QEMUD-SAVE-1\npci\n-5\n<domain/>", id="negative-length"),
    pytest.param(b"QEMUD-SAVE-1\n 9\n<domain/>", id="spaced-length"),
    pytest.param(b"QEMUD-SAVE-1\n9", id="no-newline"),
    pytest.param(b"QEMUD-SAVE-2\nrunning" + b"x" * 100_000 + b"\n9\n<domain/>",
                 id="long-state-line"),
    pytest.param(b"QEMUD-SAVE-1\n9\n\xff\xfe<domain", id="not-utf8"),
])
def test_garbage_header_is_invalid_arg(
        conns: tuple[client.Connection, client.Connection], tmp_path: Path,
        header: bytes) -> None:
    conn, other = conns
    path = tmp_path / "garbage.save"
    path.write_bytes(header)
    message = _refused(conn, path)
    assert message.endswith(f"{path} is not a valid qemud save file"), message
    assert other.node_info().cpus >= 1


def test_missing_file_is_operation_failed(
        conns: tuple[client.Connection, client.Connection], tmp_path: Path) -> None:
    conn, _ = conns
    path = tmp_path / "missing.save"
    message = _refused(conn, path, OperationFailed)
    assert f"cannot read save file {path}: No such file or directory" in message


def test_fifo_as_a_managed_save_image_fails_the_start(
        qemud: DaemonProcess, conns: tuple[client.Connection, client.Connection]) -> None:
    conn, other = conns
    name = guest_name("fifosave")
    dom = conn.define_xml(bare_domain_xml(name, emulator=NO_GUEST_EMULATOR))
    image = qemud.state_dir / "save" / f"{name}.save"
    image.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(image)
    writer = _FifoWriter(image)
    try:
        with pytest.raises(OperationFailed) as info:
            dom.create()
        message = str(info.value)
        assert f"Unable to restore domain '{name}' from its managed save image {image}" \
            in message, message
        assert "not a regular file" in message, message
        assert not writer.opened.is_set(), "the daemon opened the FIFO"
        assert dom.state()[0] == DomainState.SHUTOFF
        assert other.node_info().cpus >= 1
    finally:
        writer.release()
    dom.undefine(client.domain.UNDEFINE_MANAGED_SAVE)
    assert not image.exists()


@pytest.mark.timeout(120)  # the old exec:tail restore of such an image never ended
def test_an_image_whose_memory_state_is_missing_fails_the_restore(
        daemon_factory, tmp_path: Path) -> None:
    """A valid header and nothing after it (a file cut short, or emptied after the
    header was read): QEMU reads the image through the daemon's descriptor, finds no
    migration stream and exits saying so; the restore fails with its words, no QEMU is
    left and the transient domain is gone. Through ``exec:tail`` QEMU waited for ever
    on the empty pipe. (The header's XML has no uuid, as a file qemud did not write
    may lack: it gets one, as a define's would.) A daemon of its own: the fixture's
    address-space limit would leave QEMU no room."""
    d = daemon_factory()
    name = guest_name("nostream")
    xml = bare_domain_xml(name).encode()
    path = tmp_path / "cut.save"
    path.write_bytes(b"QEMUD-SAVE-1\n%d\n" % len(xml) + xml)
    with d.connect() as conn, d.connect() as other:
        with pytest.raises(OperationFailed) as info:
            conn.restore(str(path))
        assert "Not a migration stream" in str(info.value), info.value
        assert qemu_pids(name) == []
        with pytest.raises(client.NoDomainError):
            conn.lookup_by_name(name)
        assert other.node_info().cpus >= 1
    assert_log_clean(d)
