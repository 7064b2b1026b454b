"""Shared pieces of the fault-injection suite (see docs/HARDENING.md).

Every test here runs real daemons from :mod:`tests.helpers.daemon` over unix sockets in
temporary directories. Guest names carry a per-run token so ``pgrep -f guest=NAME,``
never matches another test run's QEMU on the same host, and every QEMU a test may have
started is SIGKILLed in teardown whatever happened.
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import Procedure, Reply
from tests.helpers.daemon import DaemonProcess
from tests.qemud.wire import RawClient

#: unique per test run: part of every guest name this suite creates
RUN_TOKEN = secrets.token_hex(3)

#: what a daemon log must never contain, whatever clients did to it
BAD_LOG_PATTERNS = (
    "Traceback",  # logging.exception anywhere
    "unhandled error",  # the event loop's guard caught an exception
    " crashed\n",  # a handler raised something that is not a QemudError
    "internal error in ",
)


def guest_name(kind: str, index: int | str = "") -> str:
    return f"flt{RUN_TOKEN}-{kind}{index}"


def qemu_pids(name: str) -> list[int]:
    """PIDs of QEMUs started for guest ``name`` (the -name guest=NAME,... argument)."""
    out = subprocess.run(["pgrep", "-f", f"guest={name},"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def kill_qemus(prefix: str = f"flt{RUN_TOKEN}-") -> None:
    """SIGKILL every QEMU whose guest name starts with ``prefix`` (teardown)."""
    out = subprocess.run(["pgrep", "-f", f"guest={prefix}"], capture_output=True, text=True)
    for pid in (int(p) for p in out.stdout.split()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_short_dir() -> Path:
    """A fresh directory with a short path: QEMU's unix sockets (QMP, serial) live under
    the daemon's run dir, and a unix socket path must fit in 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="qf-", dir="/tmp"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = make_short_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qemu_cleanup() -> Iterator[None]:
    """Whatever the test did, no QEMU of this run survives it."""
    yield
    kill_qemus()


def bad_log_lines(daemon: DaemonProcess) -> list[str]:
    """Log lines showing an unexpected exception (with a little context)."""
    text = daemon.log_text() + daemon.stderr_text()
    found = []
    for pattern in BAD_LOG_PATTERNS:
        for m in re.finditer(re.escape(pattern), text):
            start = text.rfind("\n", 0, max(0, m.start() - 1)) + 1
            found.append(text[start:m.end() + 400])
    return found


def assert_log_clean(daemon: DaemonProcess) -> None:
    bad = bad_log_lines(daemon)
    assert not bad, "daemon log shows unexpected exceptions:\n" + "\n----\n".join(bad[:5])


def assert_prompt(good: RawClient, calls: int = 100, each: float = 0.5) -> float:
    """``calls`` NODE_INFO calls on ``good``, each answered within ``each`` seconds.

    Returns the slowest call's latency.
    """
    worst = 0.0
    for i in range(calls):
        worst = max(worst, prompt_call(good, each, i))
    return worst


def prompt_call(good: RawClient, each: float = 0.5, index: int = 0) -> float:
    """One NODE_INFO call answered correctly within ``each`` seconds; its latency."""
    started = time.monotonic()
    reply = good.call(Procedure.NODE_INFO, timeout=5)
    took = time.monotonic() - started
    assert isinstance(reply, Reply) and reply.result.cpus >= 1, reply
    assert took < each, f"call {index} took {took:.3f} s (limit {each} s)"
    return took


@pytest.fixture
def nofile() -> Iterator[int]:
    """Raise this process's RLIMIT_NOFILE (daemons started after inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    have = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if have < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} too low for the hostile-client tests")
    yield have
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: an ``<emulator>`` that define accepts (it is an executable file: define refuses a missing
#: one, as libvirt's does) but that launches no guest: a start of it fails at once
NO_GUEST_EMULATOR = "/bin/false"


def bare_domain_xml(name: str, *, memory_mib: int = 64, emulator: str | None = None,
                    devices: str = "", machine: str | None = None) -> str:
    """A diskless, kernel-less guest; with ``emulator`` a (fake or missing) binary."""
    machine_attr = f" machine='{machine}'" if machine else ""
    emu = f"<emulator>{emulator}</emulator>" if emulator else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'{machine_attr}>hvm</type></os>
  <devices>{emu}{devices}</devices>
</domain>
"""


# the integration suite's session fixture that builds (or reuses) the bootable test guest
from tests.integration.conftest import test_guest  # noqa: E402,F401
