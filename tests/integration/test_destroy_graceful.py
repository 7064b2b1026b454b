"""``destroy --graceful`` (libvirt's VIR_DOMAIN_DESTROY_GRACEFUL): SIGTERM only, never
SIGKILL (qemud/driver/process.py ``terminate_gently``, qemud/driver/lifecycle.py).

In-process tests drive QemuProcess on their own loop with a real process in QEMU's place:
one that exits on SIGTERM, one that ignores it, and one stopped (SIGSTOP) so the SIGTERM
stays pending, as a hung QEMU would leave it. Then the same through a daemon, qemush and
the client library with a real QEMU (TCG), stopped with SIGSTOP for the hung case.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.domain import DESTROY_GRACEFUL
from protocol.constants import DomainState, ErrorCode, RunningReason
from qemud.driver.process import GuestLog, QemuProcess
from qemud.loop import EventLoop
from tests.helpers.daemon import DaemonProcess, qemush, serving, wait_for
from tests.helpers.loop import run_for, run_until
from tests.helpers.procs import qemu_pids

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

GRACE = 0.3

#: a stand-in for a QEMU that ignores SIGTERM; prints READY once it does (a word its
#: command line, in the log before it, does not hold)
IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready'.upper(), flush=True); time.sleep(60)")


def launch(loop: EventLoop, tmp_path: Path, argv: list[str]) -> QemuProcess:
    return QemuProcess.launch(loop, argv, "g", GuestLog(tmp_path / "g.log"))


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP), from /proc/PID/stat's state field."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def test_a_process_that_exits_on_sigterm_is_gone_and_nothing_is_reported(
        tmp_path: Path, loop: EventLoop) -> None:
    proc = launch(loop, tmp_path, ["sleep", "60"])
    still: list[bool] = []
    proc.terminate_gently(GRACE, lambda: still.append(True))
    run_until(loop, lambda: proc.exited)
    assert proc.describe_exit() == "killed by SIGTERM"
    run_for(loop, 2 * GRACE)  # past the grace period: its timer went with the exit
    assert still == []


def test_a_process_that_ignores_sigterm_is_reported_and_left_running(
        tmp_path: Path, loop: EventLoop) -> None:
    proc = launch(loop, tmp_path, [sys.executable, "-c", IGNORES_TERM])
    try:
        run_until(loop, lambda: b"READY\n" in proc.log.path.read_bytes())
        still: list[bool] = []
        proc.terminate_gently(GRACE, lambda: still.append(proc.alive))
        run_until(loop, lambda: still)
        assert still == [True] and proc.alive and not proc.killing  # no SIGKILL coming
        os.kill(proc.pid, 0)  # (still there for the OS too)
    finally:
        proc.kill()
        run_until(loop, lambda: proc.exited)
    assert proc.describe_exit() == "killed by SIGKILL"  # only the test's own kill


def test_a_stopped_process_keeps_the_sigterm_pending_and_exits_by_it_when_continued(
        tmp_path: Path, loop: EventLoop) -> None:
    proc = launch(loop, tmp_path, ["sleep", "60"])
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        run_until(loop, lambda: stopped(proc.pid))
        still: list[bool] = []
        proc.terminate_gently(GRACE, lambda: still.append(proc.alive))
        run_until(loop, lambda: still)
        assert still == [True] and stopped(proc.pid)
        os.kill(proc.pid, signal.SIGCONT)  # the pending SIGTERM is delivered now
        run_until(loop, lambda: proc.exited)
        assert proc.describe_exit() == "killed by SIGTERM"  # SIGTERM was all it got
    finally:
        if not proc.exited:
            proc.kill()
            os.kill(proc.pid, signal.SIGCONT)
            run_until(loop, lambda: proc.exited)


# -- through a daemon, qemush and the client library, a real QEMU ----------------------
# (qemud/driver/driver.py's DOMAIN_DESTROY handler passes the GRACEFUL flag on)

GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><serial type='pty'/></devices>
</domain>
"""


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-graceful"),
                           {"qemu": {"destroy_grace": 1.0}})
    with serving(daemon):
        yield daemon


def state(daemon: DaemonProcess, name: str) -> str:
    proc = qemush(daemon, "domstate", name, "--reason")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def running_guest(daemon: DaemonProcess, tmp_path: Path, name: str) -> int:
    """Define and start guest ``name``; its QEMU's pid."""
    xml = tmp_path / f"{name}.xml"
    xml.write_text(GUEST.format(name=name))
    for args in (("define", str(xml)), ("start", name)):
        proc = qemush(daemon, *args)
        assert proc.returncode == 0, proc.stderr
    [pid] = qemu_pids(name, daemon.run_dir)
    return pid


def test_graceful_destroy_of_a_running_guest(qemud: DaemonProcess, tmp_path: Path) -> None:
    running_guest(qemud, tmp_path, "grace-ok")
    proc = qemush(qemud, "destroy", "grace-ok", "--graceful")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "Domain 'grace-ok' destroyed\n", "")
    assert state(qemud, "grace-ok") == "shut off (destroyed)"
    assert qemu_pids("grace-ok", qemud.run_dir) == []
    [log] = qemud.root.rglob("grace-ok.log")
    assert f"terminating on signal 15 from pid {qemud.pid()}" in log.read_text()
    qemush(qemud, "undefine", "grace-ok")


def test_graceful_destroy_of_a_qemu_that_does_not_exit_fails_and_leaves_it_running(
        qemud: DaemonProcess, tmp_path: Path) -> None:
    pid = running_guest(qemud, tmp_path, "grace-hung")
    os.kill(pid, signal.SIGSTOP)  # hung: the SIGTERM stays pending
    try:
        # (a SIGSTOP takes effect when the process next runs: on a loaded machine the
        # SIGTERM could otherwise come first, and QEMU begin its shutdown)
        wait_for(lambda: stopped(pid), timeout=10, message=f"QEMU {pid} stopped")
        proc = qemush(qemud, "destroy", "grace-hung", "--graceful")
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr == (
            "error: Failed to destroy domain 'grace-hung'\n"
            f"error: Failed to terminate process {pid} with SIGTERM: Device or resource "
            "busy\n")
        assert state(qemud, "grace-hung") == "running (booted)"
        assert stopped(pid)  # no SIGKILL: still there, still stopped
        with qemud.connect() as conn:  # the library's view: libvirt's code, same words
            dom = conn.lookup("grace-hung")
            with pytest.raises(client.RemoteError) as info:
                dom.destroy(DESTROY_GRACEFUL)
            assert info.value.code == ErrorCode.SYSTEM_ERROR
            assert str(info.value) == (f"Failed to terminate process {pid} with SIGTERM: "
                                       "Device or resource busy")
            assert dom.state() == (DomainState.RUNNING, RunningReason.BOOTED)
        # a plain destroy does what the graceful one may not: SIGKILL after the grace
        proc = qemush(qemud, "destroy", "grace-hung")
        assert (proc.returncode, proc.stdout) == (0, "Domain 'grace-hung' destroyed\n")
        assert state(qemud, "grace-hung") == "shut off (destroyed)"
        assert qemu_pids("grace-hung", qemud.run_dir) == []
    finally:
        if qemu_pids("grace-hung", qemud.run_dir):
            os.kill(pid, signal.SIGKILL)
    qemush(qemud, "undefine", "grace-hung")


def test_unknown_destroy_flags_are_refused(qemud: DaemonProcess, tmp_path: Path) -> None:
    running_guest(qemud, tmp_path, "grace-flags")
    with qemud.connect() as conn:
        dom = conn.lookup("grace-flags")
        with pytest.raises(client.InvalidArgError, match=r"unsupported flags \(0x2\)"):
            dom.destroy(2)  # (libvirt's REMOVE_LOGS: not here)
        assert dom.state()[0] == DomainState.RUNNING
        dom.destroy()
        dom.undefine()
