"""Boot the contrib/build-test-guest guest under raw QEMU (TCG) and check the
behaviour qemud's integration tests rely on: ready marker, ACPI power-off,
virtio-serial heartbeat, block-device reporting (hotplug and CD-ROM media),
serial commands, reboot and panic.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
BOOT_TIMEOUT = 40.0  # TCG boot is ~5 s; leave room for a loaded CI box
STEP_TIMEOUT = 15.0

READY_RE = re.compile(r"QEMUD-GUEST-READY uptime=(\d+(?:\.\d+)?)")
BLOCK_RE = re.compile(r"QEMUD-BLOCK:(?: (.*))?")
HEARTBEAT_RE = re.compile(r"HEARTBEAT (\d+) uptime=(\d+(?:\.\d+)?)")


class SerialLog:
    """Collects the guest's serial output (QEMU stdout) line by line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """Position to pass as ``start`` to only see lines printed from now on."""
        with self._cond:
            return len(self._lines)

    def wait_for(
        self, regex: re.Pattern[str] | str, timeout: float, start: int = 0
    ) -> tuple[int, re.Match[str]]:
        """First line at index >= start that fully matches; (index, match)."""
        pattern = re.compile(regex) if isinstance(regex, str) else regex
        deadline = time.monotonic() + timeout
        pos = start
        with self._cond:
            while True:
                while pos < len(self._lines):
                    m = pattern.fullmatch(self._lines[pos])
                    if m:
                        return pos, m
                    pos += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    tail = "\n".join(self._lines[-40:])
                    why = "QEMU exited" if self._eof else f"not within {timeout} s"
                    raise AssertionError(
                        f"serial line matching {pattern.pattern!r} {why}; last lines:\n{tail}"
                    )
                self._cond.wait(remaining)


class QMP:
    """Minimal synchronous QMP client; events are kept in ``self.events``."""

    def __init__(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._sock = sock
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        greeting = self._read(timeout)
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def _read(self, timeout: float) -> dict[str, Any]:
        """The next message; TimeoutError after ``timeout`` s leaves a partly received one
        buffered for the next call (a file from ``makefile()`` is unusable after a
        timeout, and would lose it)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("QMP connection closed")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, timeout: float = STEP_TIMEOUT, **args: Any) -> Any:
        req: dict[str, Any] = {"execute": command}
        if args:
            req["arguments"] = args
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline - time.monotonic())
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise RuntimeError(f"QMP {command} failed: {msg['error']}")
            elif "return" in msg:
                return msg["return"]

    def wait_event(self, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no QMP event {name} within {timeout} s: {self.events}")
            try:
                msg = self._read(remaining)
            except TimeoutError:
                continue
            if "event" in msg:
                self.events.append(msg)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class Guest:
    """One QEMU process running the test guest (TCG, serial on stdio pipes)."""

    def __init__(
        self,
        tg: Any,
        workdir: Path,
        machine: str = "pc",
        append: str = "",
        extra: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.qmp_path = workdir / "qmp.sock"
        self.stderr_path = workdir / "qemu.stderr"
        cmd = [
            QEMU,
            "-accel",
            "tcg",
            "-machine",
            machine,
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-chardev",
            "stdio,id=ser0,signal=off",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel",
            str(tg.kernel),
            "-initrd",
            str(tg.initrd),
            "-append",
            f"console=ttyS0 quiet {append}".strip(),
            *(extra or []),
        ]
        self.started = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        self.serial = SerialLog(self.proc.stdout)
        try:
            self.qmp = QMP(self.qmp_path, timeout=STEP_TIMEOUT)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, start: int = 0) -> float:
        """Wait for the ready marker; returns the guest uptime it reports."""
        _, m = self.serial.wait_for(READY_RE, BOOT_TIMEOUT, start)
        return float(m.group(1))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def command(self, line: str, expect: str, timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        start = self.serial.mark()
        self.send(line)
        return self.serial.wait_for(expect, timeout, start)[1]

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"QEMU still running {timeout} s later; serial tail:\n"
                + "\n".join(self.serial.lines[-20:])
            ) from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if hasattr(self, "qmp"):
            self.qmp.close()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f:
                    f.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes: keep them short.
    d = Path(tempfile.mkdtemp(prefix="qg-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def boot(test_guest: Any, workdir: Path) -> Iterator[Any]:
    """Factory: boot(**Guest kwargs) -> Guest; every QEMU is killed at teardown."""
    guests: list[Guest] = []

    def _boot(**kwargs: Any) -> Guest:
        g = Guest(test_guest, workdir, **kwargs)
        guests.append(g)
        return g

    try:
        yield _boot
    finally:
        for g in guests:
            g.kill()


def block_names(line_match: re.Match[str]) -> list[str]:
    return (line_match.group(1) or "").split()


def test_build_is_idempotent(test_guest: Any) -> None:
    script = Path(__file__).resolve().parents[2] / "contrib" / "build-test-guest"
    before = test_guest.initrd.stat().st_mtime_ns
    t0 = time.monotonic()
    out = subprocess.run(
        [str(script), "--out", str(test_guest.dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    elapsed = time.monotonic() - t0
    assert out.stdout.strip().splitlines()[-1] == str(test_guest.dir)
    assert test_guest.initrd.stat().st_mtime_ns == before, "up-to-date guest was rebuilt"
    assert (test_guest.dir / "VERSION").read_text().strip() == test_guest.version
    assert re.fullmatch(r"[0-9a-f]{64}", test_guest.version)
    assert elapsed < 20, f"no-op build took {elapsed:.1f} s"


def test_ready_marker_devices_and_commands(boot: Any, workdir: Path) -> None:
    disks = [workdir / "vd.raw", workdir / "sd.raw"]
    for disk in disks:
        disk.write_bytes(b"\0" * (1 << 20))
    g = boot(
        extra=[
            "-drive",
            f"if=none,id=d0,file={disks[0]},format=raw",
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-drive",
            f"if=none,id=d1,file={disks[1]},format=raw",
            "-device",
            "scsi-hd,drive=d1,bus=scsi0.0",
            "-drive",
            "if=none,id=cd0,media=cdrom",
            "-device",
            "ide-cd,drive=cd0,bus=ide.1",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-netdev",
            "user,id=n0",
            "-device",
            "pvpanic",
        ]
    )
    uptime = g.wait_ready()
    wall = time.monotonic() - g.started
    print(f"ready marker after {wall:.2f} s wall clock, guest uptime {uptime:.2f} s")
    assert 0 < uptime < BOOT_TIMEOUT
    ready_idx = g.serial.mark() - 1
    # The boot-time block line comes before the ready marker and lists the
    # virtio-blk, virtio-scsi and (empty) IDE CD-ROM devices, sorted.
    idx, m = g.serial.wait_for(BLOCK_RE, 0.1)
    assert idx < ready_idx
    assert block_names(m) == ["sda", "sr0:0", "vda"], g.serial.lines
    # every module loaded (init reports "qemud-init: insmod X failed")
    assert not [line for line in g.serial.lines if "qemud-init" in line], g.serial.lines

    assert g.command("ping", r"QEMUD-PONG uptime=[\d.]+")
    assert (
        g.command("frobnicate now", r"QEMUD-UNKNOWN .*").group(0) == "QEMUD-UNKNOWN frobnicate now"
    )
    assert g.command("read-disk nosuchdisk 4", r"QEMUD-ERROR .*")
    assert g.qmp.execute("query-status")["status"] == "running"

    # sysrq crash; the pvpanic device (pvpanic module) tells QEMU about it
    g.send("panic")
    g.qmp.wait_event("GUEST_PANICKED")


def _heartbeat_args(path: Path) -> list[str]:
    return [
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        f"socket,id=hb,path={path},server=on,wait=off",
        "-device",
        "virtserialport,bus=vser0.0,chardev=hb,name=org.qemud.heartbeat.0",
    ]


class LineReader:
    """Client of a QEMU unix-socket chardev, read line by line."""

    def __init__(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""

    def read_lines(self, duration: float) -> list[str]:
        """All complete lines received within ``duration`` seconds."""
        deadline = time.monotonic() + duration
        out: list[str] = []
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            if not data:
                break
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            out += [ln.decode().rstrip("\r") for ln in lines]
        return out

    def wait_lines(self, n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while len(out) < n and time.monotonic() < deadline:
            out += self.read_lines(min(0.5, deadline - time.monotonic()))
        assert len(out) >= n, f"got {out!r}, wanted {n} heartbeat lines within {timeout} s"
        return out

    def read_until_quiet(self, quiet: float, timeout: float) -> list[str]:
        """Lines until none arrived for ``quiet`` seconds (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while time.monotonic() < deadline:
            got = self.read_lines(quiet)
            if not got:
                return out
            out += got
        raise AssertionError(f"still receiving lines after {timeout} s: {out[-5:]!r}")

    def close(self) -> None:
        self.sock.close()


def _parse_heartbeats(lines: list[str]) -> list[tuple[int, float]]:
    beats = []
    for line in lines:
        m = HEARTBEAT_RE.fullmatch(line)
        assert m, f"unexpected heartbeat line {line!r}"
        beats.append((int(m.group(1)), float(m.group(2))))
    return beats


def test_heartbeat_and_stop_heartbeat_command(boot: Any, workdir: Path) -> None:
    hb_path = workdir / "hb.sock"
    g = boot(extra=_heartbeat_args(hb_path))
    hb = LineReader(hb_path, STEP_TIMEOUT)
    try:
        g.wait_ready()
        beats = _parse_heartbeats(hb.wait_lines(3, timeout=10))
        numbers = [n for n, _ in beats]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        gaps = [b[1] - a[1] for a, b in zip(beats, beats[1:], strict=False)]
        assert all(0.5 < gap < 3 for gap in gaps), beats

        g.command("stop-heartbeat", "QEMUD-HEARTBEAT-STOPPED")
        # the guest's uptime once the flag is there: beats are told apart by the uptime
        # they carry, not by when they reach us (the socket holds any sent meanwhile)
        stopped = float(g.command("ping", r"QEMUD-PONG uptime=([\d.]+)").group(1))
        # everything sent so far, then silence for over two beat periods (a heartbeat
        # that went on would keep this from ever returning)
        after = _parse_heartbeats(hb.read_until_quiet(2.5, timeout=STEP_TIMEOUT))
        # at most one beat was already past the check when the flag appeared
        late = [beat for beat in after if beat[1] > stopped]
        assert len(late) <= 1, (stopped, after)
        last = max([n for n, _ in after], default=numbers[-1])

        g.command("start-heartbeat", "QEMUD-HEARTBEAT-STARTED")
        assert _parse_heartbeats(hb.wait_lines(1, timeout=STEP_TIMEOUT))[0][0] > last
    finally:
        hb.close()


def test_heartbeat_stop_after_cmdline_then_acpi_powerdown(boot: Any, workdir: Path) -> None:
    hb_path = workdir / "hb.sock"
    # (3, not 2: the guest compares whole seconds of uptime, so with 2 a first beat late
    # in its second and a loop a little late stop after that one beat; with 3 at least
    # two always come)
    g = boot(append="qemud.heartbeat_stop_after=3", extra=_heartbeat_args(hb_path))
    hb = LineReader(hb_path, STEP_TIMEOUT)
    try:
        g.wait_ready()
        first = hb.wait_lines(1, timeout=STEP_TIMEOUT)
        beats = _parse_heartbeats(first + hb.read_until_quiet(2.5, timeout=STEP_TIMEOUT))
        # beats at t0, t0+1 and (unless the loop runs late) t0+2, then nothing
        assert 2 <= len(beats) <= 4, beats
    finally:
        hb.close()

    # ACPI power button (QMP system_powerdown) -> marker, clean power-off
    start = g.serial.mark()
    g.qmp.execute("system_powerdown")
    g.serial.wait_for("QEMUD-GUEST-POWEROFF", STEP_TIMEOUT, start)
    assert g.wait_exit(STEP_TIMEOUT) == 0, g.stderr()
    ev = g.qmp.wait_event("SHUTDOWN")  # (sent before QEMU exited: already here)
    assert ev["data"]["guest"] is True


def test_block_hotplug_disk_io_and_poweroff_command(boot: Any, workdir: Path) -> None:
    disk = workdir / "hot.raw"
    disk.write_bytes(b"HOSTDATA" + b"\0" * ((1 << 20) - 8))
    iso = workdir / "medium.iso"
    iso.write_bytes(b"\0" * (2 << 20))  # 2 MiB = 4096 sectors of 512 bytes
    hb_path = workdir / "hb.sock"
    g = boot(
        append="qemud.noheartbeat",
        extra=[
            "-drive",
            "if=none,id=cd0,media=cdrom",
            "-device",
            "ide-cd,drive=cd0,id=cd0dev,bus=ide.1",
            *_heartbeat_args(hb_path),
        ],
    )
    hb = LineReader(hb_path, STEP_TIMEOUT)
    try:
        g.wait_ready()
        _, m = g.serial.wait_for(BLOCK_RE, 0.1)
        assert block_names(m) == ["sr0:0"]

        # hot-add a virtio-blk disk
        start = g.serial.mark()
        g.qmp.execute(
            "blockdev-add",
            driver="raw",
            **{"node-name": "hot0"},
            file={"driver": "file", "filename": str(disk)},
        )
        g.qmp.execute("device_add", driver="virtio-blk-pci", drive="hot0", id="vdisk0")
        _, m = g.serial.wait_for(BLOCK_RE, STEP_TIMEOUT, start)
        assert block_names(m) == ["sr0:0", "vda"]

        # the guest reads what the host wrote, and the host sees the guest's write
        assert (
            g.command("read-disk vda 8", r"QEMUD-READ vda .*").group(0) == "QEMUD-READ vda HOSTDATA"
        )
        g.command("write-disk vda hello from  the guest", "QEMUD-WROTE vda")
        assert disk.read_bytes()[:25] == b"hello from  the guest\0\0\0\0"
        assert (
            g.command("read-disk vda 23", r"QEMUD-READ vda .*").group(0)
            == "QEMUD-READ vda hello from  the guest.."
        )

        # CD-ROM medium insert and eject are reported with the medium size
        start = g.serial.mark()
        g.qmp.execute("blockdev-change-medium", id="cd0dev", filename=str(iso), format="raw")
        _, m = g.serial.wait_for(BLOCK_RE, STEP_TIMEOUT, start)
        assert block_names(m) == ["sr0:4096", "vda"]
        start = g.serial.mark()
        g.qmp.execute("eject", id="cd0dev")
        _, m = g.serial.wait_for(BLOCK_RE, STEP_TIMEOUT, start)
        assert block_names(m) == ["sr0:0", "vda"]

        # hot-unplug (needs the guest to cooperate with the ACPI eject)
        start = g.serial.mark()
        g.qmp.execute("device_del", id="vdisk0")
        g.qmp.wait_event("DEVICE_DELETED")
        _, m = g.serial.wait_for(BLOCK_RE, STEP_TIMEOUT, start)
        assert block_names(m) == ["sr0:0"]

        # qemud.noheartbeat: the port exists but stayed silent all along
        assert hb.read_lines(0.1) == []
    finally:
        hb.close()

    g.command("poweroff", "QEMUD-GUEST-POWEROFF")
    assert g.wait_exit(STEP_TIMEOUT) == 0, g.stderr()


def test_reboot_command(boot: Any) -> None:
    g = boot()
    g.wait_ready()
    start = g.serial.mark()
    g.send("reboot")
    g.serial.wait_for("QEMUD-GUEST-REBOOT", STEP_TIMEOUT, start)
    g.qmp.wait_event("RESET")
    g.wait_ready(start)  # the guest comes back
    assert g.proc.poll() is None
