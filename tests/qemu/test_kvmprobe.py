"""The KVM probe: verdicts, deadlines and reasons (simulated children + the real one)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from qemud.qemu.kvmprobe import DEFAULT_TIMEOUT, KvmProbe, KvmStatus, probe_kvm
from tests.helpers.daemon import wait_for
from tests.helpers.procs import wait_exited

PY = sys.executable


def child(code: str) -> list[str]:
    return [PY, "-c", code]


def test_hanging_child_is_killed_at_the_deadline() -> None:
    started = time.monotonic()
    status = probe_kvm(
        command=child("print('stage run', flush=True); import time; time.sleep(60)"),
        timeout=0.5,
    )
    elapsed = time.monotonic() - started
    assert status.usable is False
    assert "did not finish within 0.5 s" in status.reason
    assert "the first KVM_RUN never returned" in status.reason
    # killed at its deadline, not waited for (the child sleeps 60 s); the upper bound is
    # that generous so a loaded machine starting Python slowly cannot fail it
    assert 0.4 < elapsed < 10.0


def test_slow_loop_stage_is_named_in_the_reason() -> None:
    status = probe_kvm(
        command=child("print('stage loop', flush=True); import time; time.sleep(60)"),
        timeout=0.3,
    )
    assert not status.usable and "runs far too slowly" in status.reason


def test_unknown_stage_hang() -> None:
    status = probe_kvm(command=child("import time; time.sleep(60)"), timeout=0.3)
    assert "hung in stage 'start'" in status.reason


@pytest.mark.parametrize(
    ("output", "usable", "reason"),
    [
        ("stage run\nok all good", True, "all good"),
        ("stage run\nfail exit reason 8", False, "exit reason 8"),
    ],
)
def test_child_verdict_is_reported(output: str, usable: bool, reason: str) -> None:
    status = probe_kvm(command=child(f"print({output!r})"))
    assert status == KvmStatus(usable, reason, status.elapsed)


def test_crashing_child() -> None:
    status = probe_kvm(
        command=child("import sys; print('stage memory'); sys.exit('boom: no memory')")
    )
    assert not status.usable
    assert status.reason == "KVM probe failed in stage 'memory': boom: no memory"


def test_unstartable_child() -> None:
    status = probe_kvm(command=["/nonexistent/python"])
    assert not status.usable and status.reason.startswith("cannot start the KVM probe")


def test_missing_device_and_foreign_host_need_no_child() -> None:
    assert probe_kvm(device="/nonexistent/kvm", host_arch="x86_64") == KvmStatus(
        False, "/nonexistent/kvm does not exist"
    )
    assert probe_kvm(host_arch="s390x") == KvmStatus(False, "no KVM run probe for s390x hosts")


def test_real_probe_script_against_a_non_kvm_device() -> None:
    """The shipped script runs and reports the failing ioctl, not a crash."""
    status = probe_kvm(device="/dev/null", host_arch="x86_64")
    assert not status.usable
    assert "Inappropriate ioctl" in status.reason or "OSError" in status.reason


def test_probe_overlaps_with_other_work(tmp_path: Path) -> None:
    """The probe runs from its construction on: it finishes while the caller does other
    probing, before anyone asks for the result. (The child says when it is done rather
    than the test guessing how long starting a Python takes: under load that is more
    than any fixed sleep.)"""
    done = tmp_path / "pid"
    probe = KvmProbe(command=child(
        f"import os; print('ok fine', flush=True); "
        f"open({str(done)!r} + '.tmp', 'w').write(str(os.getpid())); "
        f"os.rename({str(done)!r} + '.tmp', {str(done)!r})"))
    pid = int(wait_for(lambda: done.exists() and done.read_text(), timeout=60,
                       message="the probe to run with no result() asked"))
    wait_exited([pid], timeout=60)  # "other probing" went on meanwhile
    started = time.monotonic()
    assert probe.result().usable
    assert time.monotonic() - started < 0.25  # the verdict is only collected, not waited for


@pytest.mark.integration
def test_real_kvm_probe_gives_a_verdict_within_the_deadline() -> None:
    started = time.monotonic()
    status = probe_kvm()
    assert time.monotonic() - started < DEFAULT_TIMEOUT + 1.5
    assert isinstance(status.usable, bool)
    assert status.reason
    print(f"KVM probe on this host: usable={status.usable}: {status.reason}")
