"""Does KVM *really* work?  Run a tiny guest and see.

``/dev/kvm`` existing and answering ioctls proves little: on some hosts
(nested virtualisation, broken firmware, odd kernels) VMs can be created but
``KVM_RUN`` never comes back.  Starting a real guest there would hang it in
"running" forever, so the daemon must know before it offers ``<domain
type='kvm'>``.

The probe therefore does what a hypervisor does, at the smallest scale: map
one page of guest memory holding a real-mode program, create a vCPU, point
its registers at the program and ``KVM_RUN`` it.  The program reports in on
an I/O port (proof that guest instructions execute and exits work), spins a
one-million-instruction loop, reports again, then halts
(``KVM_EXIT_HLT``).  The loop is timed: a host that *emulates* guest code
instruction by instruction passes every functional check yet boots a Linux
kernel for minutes (that is exactly the "KVM guests hang" failure seen on
nested hosts: a kernel's first ``rep movsq`` crawls), so below
:data:`MIN_INSTRUCTIONS_PER_SECOND` KVM is reported unusable.

It runs in a child Python process (``-I -c``) with a hard deadline: a hung
``KVM_RUN`` ties up that child only; the parent kills it and reports why.
The child prints ``stage NAME`` lines as it goes, so the reason names the
step that hung.  The program is x86 machine code, so on other hosts the
probe reports KVM as unusable rather than guessing.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_TIMEOUT",
    "MIN_INSTRUCTIONS_PER_SECOND",
    "PROBE_HOST_ARCHS",
    "PROBE_LOOPS",
    "KvmProbe",
    "KvmStatus",
    "probe_kvm",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 2.0
#: Hosts whose CPUs execute the probe's guest program (x86 real mode).
PROBE_HOST_ARCHS: Final = frozenset({"x86_64", "i686", "i386", "amd64"})
#: Iterations of the guest's two-instruction busy loop.  Hardware KVM runs
#: them in about a millisecond; an emulating "KVM" takes seconds.
PROBE_LOOPS: Final = 500_000
#: Slowest acceptable guest execution rate (the loop may take 200 ms, ~100x
#: what hardware needs, so a busy host does not fail it).  TCG is far faster
#: than this, so a KVM below it would make guests slower than no KVM at all.
MIN_INSTRUCTIONS_PER_SECOND: Final = 5_000_000

# What a hang in each stage means, for the reason string.
_STAGE_HANGS: Final = {
    "run": "the first KVM_RUN never returned",
    "loop": "guest code runs far too slowly (a 1M-instruction loop did not finish)",
    "hlt": "KVM_RUN never returned to report HLT",
}

_PROBE_SCRIPT: Final = r"""
import ctypes, fcntl, mmap, os, struct, sys, time

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # _IOW(KVMIO, 0x46, 32-byte region)
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82                # _IOW(KVMIO, 0x82, struct kvm_regs)
KVM_GET_SREGS = 0x8138AE83               # _IOR(KVMIO, 0x83, struct kvm_sregs)
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_IO, KVM_EXIT_HLT = 2, 5
GUEST_ADDR, PORT, VALUE = 0x1000, 0xF1, 0x2A
LOOPS, MIN_RATE = %(loops)d, %(min_rate)d
PROGRAM = (
    bytes([0xB0, VALUE, 0xE6, PORT])                  # mov al, VALUE; out PORT, al
    + bytes([0x66, 0xB9]) + struct.pack("<I", LOOPS)  # mov ecx, LOOPS
    + bytes([0x66, 0x49, 0x75, 0xFC])                 # 1: dec ecx; jnz 1b
    + bytes([0xE6, PORT, 0xF4])                       # out PORT, al; hlt
)


def stage(name):
    print("stage", name, flush=True)


def finish(ok, message):
    print("ok" if ok else "fail", message, flush=True)
    sys.exit(0)


def run_until(vcpu, run, expected):
    fcntl.ioctl(vcpu, KVM_RUN)
    reason = struct.unpack_from("=I", run, 8)[0]
    if reason != expected:
        finish(False, "KVM_RUN exit reason %%d, expected %%d" %% (reason, expected))
    if reason == KVM_EXIT_IO:
        direction, size, port, count, offset = struct.unpack_from("=BBHIQ", run, 32)
        got = (direction, size, port, count, run[offset])
        if got != (1, 1, PORT, 1, VALUE):
            finish(False, "unexpected port I/O exit %%r" %% (got,))


try:
    stage("open")
    kvm = os.open(sys.argv[1], os.O_RDWR | os.O_CLOEXEC)
    stage("api-version")
    version = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    if version != 12:
        finish(False, "KVM_GET_API_VERSION returned %%d, expected 12" %% version)
    stage("create-vm")
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    stage("memory")
    memory = mmap.mmap(-1, 0x1000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                       mmap.PROT_READ | mmap.PROT_WRITE)
    memory[:len(PROGRAM)] = PROGRAM
    host_addr = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION,
                struct.pack("=IIQQQ", 0, 0, GUEST_ADDR, 0x1000, host_addr))
    stage("create-vcpu")
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    stage("registers")
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs, True)
    struct.pack_into("=QIH", sregs, 0, 0, 0xFFFF, 0)  # cs: base 0, limit 64K, selector 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)  # rax..r15, rip (index 16), rflags (index 17)
    struct.pack_into("=QQ", regs, 16 * 8, GUEST_ADDR, 0x2)
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
    stage("run")
    run_until(vcpu, run, KVM_EXIT_IO)
    stage("loop")
    started = time.monotonic()
    run_until(vcpu, run, KVM_EXIT_IO)
    elapsed = time.monotonic() - started
    stage("hlt")
    run_until(vcpu, run, KVM_EXIT_HLT)
    rate = 2 * LOOPS / max(elapsed, 1e-9)
    if rate < MIN_RATE:
        finish(False, "guest code runs at %%.1f M instructions/s (need %%d M/s); "
                      "KVM_RUN works but guests would crawl" %% (rate / 1e6, MIN_RATE // 10**6))
    finish(True, "guest ran %%d instructions at %%.0f M/s and stopped with KVM_EXIT_HLT"
                 %% (2 * LOOPS, rate / 1e6))
except OSError as exc:
    finish(False, "%%s: %%s" %% (exc.__class__.__name__, exc))
"""


@dataclass(frozen=True)
class KvmStatus:
    """Outcome of the KVM probe; ``reason`` is for humans (logs, capabilities)."""

    usable: bool
    reason: str
    elapsed: float = 0.0


class KvmProbe:
    """A started probe; lets the caller overlap it with other probing."""

    def __init__(
        self,
        device: str = "/dev/kvm",
        timeout: float = DEFAULT_TIMEOUT,
        command: Sequence[str] | None = None,
        host_arch: str | None = None,
    ) -> None:
        self._device = device
        self._timeout = timeout
        self._started = time.monotonic()
        self._proc: subprocess.Popen[str] | None = None
        self._early: KvmStatus | None = None
        arch = host_arch if host_arch is not None else platform.machine()
        if command is None and arch not in PROBE_HOST_ARCHS:
            self._early = KvmStatus(False, f"no KVM run probe for {arch} hosts")
            return
        if command is None and not os.path.exists(device):
            self._early = KvmStatus(False, f"{device} does not exist")
            return
        argv = (
            list(command)
            if command is not None
            else [
                sys.executable,
                "-I",
                "-c",
                _PROBE_SCRIPT % {"loops": PROBE_LOOPS, "min_rate": MIN_INSTRUCTIONS_PER_SECOND},
                device,
            ]
        )
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                # Own session: a hung child must not receive the daemon's
                # terminal signals, and killing it must not touch anyone else.
                start_new_session=True,
            )
        except OSError as exc:
            self._early = KvmStatus(False, f"cannot start the KVM probe: {exc}")

    def result(self) -> KvmStatus:
        """Wait (at most until the deadline) and return the verdict."""
        if self._early is not None:
            return self._early
        proc = self._proc
        assert proc is not None
        remaining = max(0.0, self._timeout - (time.monotonic() - self._started))
        try:
            # A child that already exited is read even if the deadline passed
            # while the caller was busy with other probing.
            out, err = proc.communicate(timeout=None if proc.poll() is not None else remaining)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            try:
                out, err = proc.communicate(timeout=1.0)
            except subprocess.TimeoutExpired:
                # Stuck in the kernel beyond SIGKILL's reach; give up on it
                # rather than hang the daemon's start-up with it.
                _log.warning("KVM probe pid %d did not die after SIGKILL", proc.pid)
                out, err = "", ""
            stage = _last_stage(out)
            what = _STAGE_HANGS.get(stage, f"hung in stage {stage!r}")
            status = KvmStatus(
                False,
                f"KVM probe did not finish within {self._timeout:g} s: {what}",
                self._elapsed(),
            )
            _log.warning("%s", status.reason)
            return status
        lines = [line for line in out.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        verb, _, message = last.partition(" ")
        if proc.returncode == 0 and verb in ("ok", "fail"):
            return KvmStatus(verb == "ok", message, self._elapsed())
        detail = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        return KvmStatus(
            False, f"KVM probe failed in stage {_last_stage(out)!r}: {detail}", self._elapsed()
        )

    def _elapsed(self) -> float:
        return time.monotonic() - self._started


def _last_stage(out: str) -> str:
    stages = [line.partition(" ")[2] for line in out.splitlines() if line.startswith("stage ")]
    return stages[-1] if stages else "start"


def probe_kvm(
    device: str = "/dev/kvm",
    timeout: float = DEFAULT_TIMEOUT,
    command: Sequence[str] | None = None,
    host_arch: str | None = None,
) -> KvmStatus:
    """Run the KVM probe to completion (blocking, bounded by ``timeout``).

    ``command`` replaces the probe child (tests use it to simulate hangs);
    ``host_arch`` overrides :func:`platform.machine`.
    """
    return KvmProbe(device, timeout, command, host_arch).result()
