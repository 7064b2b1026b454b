#!/usr/bin/env python3
"""Benchmark qemud against libvirtd on this machine and check the performance goals.

    .venv/bin/python bench/run.py [--only WORKLOAD[,WORKLOAD]] [--quick] [--json FILE]
                                  [--markdown FILE] [--guests N] [--idle-clients N]

Starts a private qemud (tests.helpers.daemon.DaemonProcess: its own temp dir and TOML
config) and a private libvirtd + virtlogd (own libvirtd.conf and qemu.conf, sockets in the
temp dir, /etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/log/libvirt and
/var/cache/libvirt replaced by temp dirs in a private mount namespace; libvirt-python as
the client), runs each workload against both, prints

    workload | qemud | libvirtd | ratio | goal | met?

and stops everything it started (also on Ctrl-C or an error). Every loop is bounded in
count and time; all traffic stays on this machine (unix sockets, TLS on 127.0.0.1).
When libvirtd cannot run (not root, not installed, fails to start) the qemud column is
still filled in and the libvirtd column says why. bench/setup-libvirtd.sh installs
libvirtd (run automatically when it is missing and we are root, unless --no-install).

Workloads (``--only`` names): memory, rpc, list, define, lifecycle, idle, guests, events.
See docs/PERFORMANCE.md for the method and the latest results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORKLOADS = ["memory", "rpc", "list", "define", "lifecycle", "idle", "guests", "events"]
SIDES = ("qemud", "libvirtd")
LIFECYCLE_SUSPENDED = 3  # VIR_DOMAIN_EVENT_SUSPENDED (qemud uses libvirt's numbers)
LIFECYCLE_RESUMED = 4
START_PAUSED = 1  # VIR_DOMAIN_START_PAUSED
CLIENT_CN, CLIENT_ORG = "bench", "qemud-bench"


# -- sizes ------------------------------------------------------------------------------

@dataclass
class Sizes:
    # Rates are the best of several short rounds (the rounds of the RPC workload alternate
    # between the daemons): on a shared machine the best round is the one least disturbed
    # by other processes. Every round is kept in the JSON output.
    rpc_seconds: float = 1.0  # per round
    rpc_rounds: int = 5
    rate_rounds: int = 5  # list, define+undefine (rounds alternate between the daemons)
    idle_cycles: int = 3  # (none, N idle clients) cycles
    list_counts: tuple[int, int] = (50, 1000)
    list_seconds: float = 1.0
    define_seconds: float = 1.5
    lifecycle_runs: int = 10
    idle_clients: int = 1000
    running_guests: int = 20
    guest_mib: int = 64
    guests_running: bool = False  # False: started paused
    event_runs: int = 20
    tls_connects: int = 20  # TLS connect + first call, timed one by one
    max_calls: int = 2_000_000  # hard cap on any rate loop

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rpc_seconds=0.5, rpc_rounds=1, rate_rounds=1, idle_cycles=1,
                   list_counts=(50, 200),
                   list_seconds=0.5, define_seconds=1.0, lifecycle_runs=3, idle_clients=200,
                   running_guests=4, event_runs=5, tls_connects=5)


# -- results ----------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table. ``check`` says how ``met?`` is decided:

    ``min_ratio``: qemud/libvirtd >= target; ``max_ratio``: qemud/libvirtd <= target;
    ``max_qemud``: qemud's own value <= target; "" = informational.
    """

    workload: str
    unit: str
    check: str = ""
    target: float = 0.0
    goal: str = ""
    values: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SIDES))
    notes: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SIDES, ""))
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self) -> float | None:
        q, lv = self.values["qemud"], self.values["libvirtd"]
        if q is None or lv is None or lv == 0 or self.check == "max_qemud":
            return None
        return q / lv

    def met(self) -> bool | None:
        if self.check == "max_qemud":
            q = self.values["qemud"]
            return None if q is None else q <= self.target
        r = self.ratio()
        if r is None or not self.check:
            return None
        return r >= self.target if self.check == "min_ratio" else r <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "unit": self.unit, "qemud": self.values["qemud"],
                "libvirtd": self.values["libvirtd"], "ratio": self.ratio(), "goal": self.goal,
                "met": self.met(), "notes": {k: v for k, v in self.notes.items() if v},
                **({"extra": self.extra} if self.extra else {})}


def fmt_value(value: float | None, unit: str, note: str) -> str:
    if value is None:
        return note or "n/a"
    if unit in ("calls/s", "pairs/s"):
        text = f"{value:,.0f}/s" if value >= 100 else f"{value:,.1f}/s"
    elif unit == "ms":
        text = f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    elif unit == "MiB":
        text = f"{value:,.1f} MiB"
    elif unit == "%":
        text = f"{value:.1f} %"
    elif unit == "KiB":
        text = f"{value:,.1f} KiB"
    elif unit == "us":
        text = f"{value:,.0f} µs"
    else:
        text = f"{value:,.0f}"
    return text


def table_cells(rows: list[Row]) -> list[list[str]]:
    out = [["workload", "qemud", "libvirtd", "ratio", "goal", "met?"]]
    for row in rows:
        r = row.ratio()
        met = row.met()
        out.append([row.workload,
                    fmt_value(row.values["qemud"], row.unit, row.notes["qemud"]),
                    fmt_value(row.values["libvirtd"], row.unit, row.notes["libvirtd"]),
                    "-" if r is None else f"{r:.2f}x",
                    row.goal or "-",
                    "-" if met is None else ("yes" if met else "NO")])
    return out


def render_text(rows: list[Row]) -> str:
    cells = table_cells(rows)
    width = [min(60, max(len(c[i]) for c in cells)) for i in range(6)]

    def line(c: list[str]) -> str:
        return " | ".join((s if len(s) <= 60 else s[:57] + "...").ljust(width[i])
                          for i, s in enumerate(c)).rstrip()
    sep = "-+-".join("-" * w for w in width)
    return "\n".join([line(cells[0]), sep] + [line(c) for c in cells[1:]])


def render_markdown(rows: list[Row]) -> str:
    cells = table_cells(rows)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    lines = ["| " + " | ".join(cells[0]) + " |",
             "|" + "|".join(["---", "---:", "---:", "---:", "---", "---"]) + "|"]
    lines += ["| " + " | ".join(esc(s) for s in c) + " |" for c in cells[1:]]
    return "\n".join(lines)


# -- process helpers --------------------------------------------------------------------

def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS KiB, thread count) of a process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def raise_nofile(want: int = 20000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_pid_if(pid: int, must_contain: str, sig: int = signal.SIGKILL) -> bool:
    """Signal ``pid`` only if its command line still contains ``must_contain``."""
    if pid > 1 and must_contain in cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
    return False


def kill_qemu_from_pidfiles(pidfiles: list[Path], marker: str) -> int:
    """SIGKILL QEMUs a daemon left behind: pid from its pidfile, and only if the command
    line still contains ``marker`` (our temp dir, or a bench guest's name)."""
    n = 0
    for pidfile in pidfiles:
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if "qemu-system" in cmdline(pid) and kill_pid_if(pid, marker):
            n += 1
    return n


def pin_process(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of ``pid`` (threads made later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"error: {text[:150]}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_quiet(limit: float, max_wait: float, log: Callable[[str], None]) -> None:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is below ``limit``."""
    deadline = time.monotonic() + max_wait
    while float(loadavg().split()[0]) >= limit and time.monotonic() < deadline:
        log(f"waiting for a quieter machine: load average {loadavg()} (want < {limit})")
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def best_rate(fn: Callable[[], Any], seconds: float, rounds: int, pid: int | None,
              max_calls: int) -> tuple[float, list[float], float | None]:
    """(best calls/s, every round's, lowest daemon CPU µs per call) over ``rounds``.

    The lowest CPU per call, like the best rate, is the round least disturbed by others
    (cache and CPU contention inflate a process's CPU time too).
    """
    rates: list[float] = []
    cpus: list[float] = []
    for _ in range(max(1, rounds)):
        rate, cpu = measure_rate(fn, seconds, pid, max_calls)
        rates.append(rate)
        if cpu is not None:
            cpus.append(cpu)
    return max(rates), rates, (min(cpus) if cpus else None)


def measure_rate(fn: Callable[[], Any], seconds: float, pid: int | None,
                 max_calls: int, client_cpu: list[float] | None = None
                 ) -> tuple[float, float | None]:
    """Calls/s of ``fn`` back to back for ``seconds``; also the daemon's CPU µs per call.

    With ``client_cpu``, this process's CPU µs per call (all its threads: the client
    library's too) is appended to it.
    """
    warm_until = time.perf_counter() + min(0.2, seconds / 5)
    while time.perf_counter() < warm_until:
        fn()
    cpu0 = proc_cpu(pid) if pid else None
    own0 = time.process_time()
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < max_calls:
        fn()
        n += 1
        if not n & 7 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    if client_cpu is not None:
        client_cpu.append((time.process_time() - own0) / n * 1e6)
    cpu_us = None
    if pid and cpu0 is not None:
        cpu_us = (proc_cpu(pid) - cpu0) / n * 1e6
    return n / elapsed, cpu_us


# -- guest XML --------------------------------------------------------------------------

#: how long after the last define the settled RSS is read: past qemud's
#: SCHEMA_IDLE_SECONDS (10 s), when it has dropped libvirt's schema and trimmed its heap
_SETTLE_SECONDS = 13.0


def bare_xml(name: str, mib: int) -> str:
    """A diskless x86_64 TCG guest without a kernel: boots to firmware (or stays paused)."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
</domain>
"""


def test_guest_xml(name: str, guest_dir: Path, serial_sock: Path) -> str:
    """tests/integration/domains.guest_xml, the same text for both daemons."""
    from tests.integration.domains import guest_xml

    class _Guest:
        kernel = guest_dir / "vmlinuz"
        initrd = guest_dir / "initramfs.img"
    return guest_xml(name, _Guest(), serial_sock)


def find_test_guest() -> tuple[Path | None, str]:
    """Build (or reuse) the test guest with contrib/build-test-guest; (dir, why not)."""
    script = REPO / "contrib" / "build-test-guest"
    try:
        proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=900,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"build-test-guest failed: {exc}"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"build-test-guest failed ({proc.returncode}): {tail}"
    d = Path(lines[-1])
    if not (d / "vmlinuz").is_file() or not (d / "initramfs.img").is_file():
        return None, f"test guest incomplete in {d}"
    return d, ""


# -- PKI --------------------------------------------------------------------------------

@dataclass
class PKI:
    server_dir: Path  # cacert.pem servercert.pem serverkey.pem
    client_dir: Path  # cacert.pem clientcert.pem clientkey.pem (qemud's pkipath)
    libvirt_client_dir: Path  # the same with libvirt's client key usage (see below)

    @classmethod
    def create(cls, root: Path) -> PKI:
        from certs.issue import (
            make_ca,
            make_client_cert,
            make_server_cert,
            write_cert,
            write_key,
        )
        ca_key, ca_cert = make_ca("qemud-bench CA")
        s_key, s_cert = make_server_cert(ca_key, ca_cert, ["localhost"], ["127.0.0.1"])
        c_key, c_cert = make_client_cert(ca_key, ca_cert, CLIENT_CN, CLIENT_ORG)
        p = cls(root / "server", root / "client", root / "client-libvirt")
        write_cert(p.server_dir / "cacert.pem", ca_cert)
        write_cert(p.server_dir / "servercert.pem", s_cert)
        write_key(p.server_dir / "serverkey.pem", s_key)
        write_cert(p.client_dir / "cacert.pem", ca_cert)
        write_cert(p.client_dir / "clientcert.pem", c_cert)
        write_key(p.client_dir / "clientkey.pem", c_key)
        # the same client certificate for libvirt's client: qemud-certs gives client
        # certificates libvirt's key usage (digitalSignature + keyEncipherment)
        write_cert(p.libvirt_client_dir / "cacert.pem", ca_cert)
        write_cert(p.libvirt_client_dir / "clientcert.pem", c_cert)
        write_key(p.libvirt_client_dir / "clientkey.pem", c_key)
        return p


# -- the two daemons --------------------------------------------------------------------

class Unavailable(Exception):
    """The daemon cannot run here; the message says why."""


class Side:
    """One daemon and its client library, behind the same small interface."""

    name = ""

    def __init__(self, root: Path, pki: PKI) -> None:
        self.root = root
        self.pki = pki
        self.why_not = ""  # set when the daemon is unavailable

    @property
    def ok(self) -> bool:
        return not self.why_not

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: raise NotImplementedError
    def connect(self, kind: str = "rw") -> Any: raise NotImplementedError
    def close(self, conn: Any) -> None: raise NotImplementedError
    def node_info(self, conn: Any) -> Any: raise NotImplementedError
    def list_all(self, conn: Any) -> list[Any]: raise NotImplementedError
    def define(self, conn: Any, xml: str) -> Any: raise NotImplementedError
    def create(self, dom: Any, paused: bool = False) -> None: raise NotImplementedError

    # the same method names on a qemud client.Domain and a libvirt.virDomain
    def undefine(self, dom: Any) -> None:
        dom.undefine()

    def destroy(self, dom: Any) -> None:
        dom.destroy()

    def suspend(self, dom: Any) -> None:
        dom.suspend()

    def resume(self, dom: Any) -> None:
        dom.resume()

    def is_active(self, dom: Any) -> bool: raise NotImplementedError
    def domain_name(self, dom: Any) -> str: raise NotImplementedError
    def watch_lifecycle(self, conn: Any, callback: Callable[[int], None]) -> Any:
        raise NotImplementedError
    def unwatch(self, conn: Any, handle: Any) -> None: raise NotImplementedError
    def holder_args(self) -> list[str]: raise NotImplementedError

    def rss_threads(self) -> tuple[float, int]:
        rss, threads = proc_status(self.pid())
        return rss / 1024, threads

    def cleanup_domains(self, prefix: str = "bench-") -> None:
        """Destroy and undefine every bench guest (best effort, bounded)."""
        conn = self.connect()
        try:
            for dom in self.list_all(conn):
                if not self.domain_name(dom).startswith(prefix):
                    continue
                with contextlib.suppress(Exception):
                    if self.is_active(dom):
                        self.destroy(dom)
                with contextlib.suppress(Exception):
                    self.undefine(dom)
        finally:
            self.close(conn)


class QemudSide(Side):
    name = "qemud"

    def start(self) -> None:
        from tests.helpers.daemon import DaemonProcess, wait_for
        self.tls_port = free_port()
        sd = self.pki.server_dir
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # qemud wants it private
        self.daemon = DaemonProcess(self.root, {
            # 0 = no pings: the idle-client workload holds raw connections that never pong
            "limits": {"keepalive_interval": 0, "max_clients": 5000},
            "listen": {"tls": True, "tls_address": "127.0.0.1", "tls_port": self.tls_port},
            "tls": {"ca_file": str(sd / "cacert.pem"), "cert_file": str(sd / "servercert.pem"),
                    "key_file": str(sd / "serverkey.pem"),
                    "allowed_dn": [{"pattern": f"O={CLIENT_ORG},CN={CLIENT_CN}*",
                                    "role": "full"}]},
            "log": {"level": "info"},  # the shipped default; the helper's debug costs time
        })
        self.daemon.start()
        wait_for(lambda: f"listening for TLS on 127.0.0.1:{self.tls_port}"
                 in self.daemon.log_text(), timeout=30, message="qemud TLS listener")

    def stop(self) -> None:
        d = getattr(self, "daemon", None)
        if d is None or d.proc is None:
            return
        if d.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.cleanup_domains()
            try:
                d.stop(timeout=20)
            except Exception:
                d.kill()
        kill_qemu_from_pidfiles(list((d.run_dir / "qemu").glob("*/qemu.pid")), str(self.root))

    def pid(self) -> int:
        return self.daemon.pid()

    def connect(self, kind: str = "rw") -> Any:
        import client
        if kind == "tls":
            return client.connect(f"qemud+tls://localhost:{self.tls_port}/session?pkipath="
                                  f"{self.pki.client_dir}")
        return self.daemon.connect(readonly=kind == "ro")

    def close(self, conn: Any) -> None:
        conn.close()

    def node_info(self, conn: Any) -> Any:
        return conn.node_info()

    def list_all(self, conn: Any) -> list[Any]:
        return conn.list_domains(0)

    def define(self, conn: Any, xml: str) -> Any:
        return conn.define_xml(xml)

    def create(self, dom: Any, paused: bool = False) -> None:
        dom.create(START_PAUSED if paused else 0)

    def is_active(self, dom: Any) -> bool:
        return bool(dom.is_active())

    def domain_name(self, dom: Any) -> str:
        return str(dom.name)

    def watch_lifecycle(self, conn: Any, callback: Callable[[int], None]) -> Any:
        from protocol.constants import EventId
        return conn.register_event(EventId.LIFECYCLE, lambda rec: callback(int(rec.event)))

    def unwatch(self, conn: Any, handle: Any) -> None:
        conn.deregister_event(handle)

    def holder_args(self) -> list[str]:
        return ["qemud", str(self.daemon.rw_socket)]


class LibvirtSide(Side):
    """libvirtd + virtlogd as root, on a private configuration in a private mount namespace.

    Started and stopped by tests.helpers.libvirtd.PrivateLibvirtd (shared with the
    conformance tests), listening on TLS with the bench's server certificate; this class
    adds only the benchmark's client calls.
    """

    name = "libvirtd"

    def __init__(self, root: Path, pki: PKI, install: bool = True) -> None:
        super().__init__(root, pki)
        from tests.helpers.libvirtd import PrivateLibvirtd
        self.install = install
        self.lv = PrivateLibvirtd(root, tls_dir=pki.server_dir)

    def _install_if_missing(self) -> None:
        if self.install and (not shutil.which("libvirtd") or not shutil.which("virtlogd")):
            script = REPO / "bench" / "setup-libvirtd.sh"
            proc = subprocess.run([str(script)], capture_output=True, text=True,
                                  timeout=900, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                raise Unavailable(f"not run: setup-libvirtd.sh failed: {tail}")

    def start(self) -> None:
        from tests.helpers.libvirtd import LibvirtdUnavailable
        if os.geteuid() == 0:
            self._install_if_missing()
        try:
            self.lv.start()
        except LibvirtdUnavailable as exc:
            raise Unavailable(f"not run: {exc}") from None
        except RuntimeError as exc:
            raise Unavailable(f"not run: {exc}") from None

    def stop(self) -> None:
        self.lv.stop()

    @property
    def uri(self) -> str:
        return self.lv.uri

    @property
    def tls_uri(self) -> str:
        return self.lv.tls_uri(self.pki.libvirt_client_dir)

    def pid(self) -> int:
        assert self.lv.libvirtd_pid is not None
        return self.lv.libvirtd_pid

    def virtlogd_pid(self) -> int | None:
        return self.lv.virtlogd_pid

    def connect(self, kind: str = "rw") -> Any:
        import libvirt
        if kind == "ro":
            return libvirt.openReadOnly(self.lv.ro_uri)
        return libvirt.open(self.tls_uri if kind == "tls" else self.uri)

    def close(self, conn: Any) -> None:
        conn.close()

    def node_info(self, conn: Any) -> Any:
        return conn.getInfo()

    def list_all(self, conn: Any) -> list[Any]:
        return list(conn.listAllDomains(0))

    def define(self, conn: Any, xml: str) -> Any:
        return conn.defineXML(xml)

    def create(self, dom: Any, paused: bool = False) -> None:
        dom.createWithFlags(START_PAUSED if paused else 0)

    def is_active(self, dom: Any) -> bool:
        return bool(dom.isActive())

    def domain_name(self, dom: Any) -> str:
        return str(dom.name())

    def ensure_event_loop(self) -> None:
        """libvirt's default event loop on a thread (needed before opening the connection)."""
        from tests.helpers.libvirtd import ensure_event_loop
        ensure_event_loop()

    def watch_lifecycle(self, conn: Any, callback: Callable[[int], None]) -> Any:
        import libvirt
        return conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda _c, _d, event, _detail, _o: callback(int(event)), None)

    def unwatch(self, conn: Any, handle: Any) -> None:
        conn.domainEventDeregisterAny(handle)

    def holder_args(self) -> list[str]:
        return ["libvirt", self.uri]


# -- idle-connection holder (a child process) -------------------------------------------

def hold_main(kind: str, target: str, count: int) -> int:
    """Open ``count`` connections, print "ready N", keep them until stdin closes."""
    raise_nofile(count + 1000)
    conns: list[Any] = []
    if kind == "qemud":
        import protocol as P
        from protocol import payloads as pl
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(target)
            proto = P.Connection(P.Role.CLIENT)
            s.sendall(proto.send(P.Call(P.Procedure.HELLO, 1, pl.HelloArgs(
                list(P.SUPPORTED_VERSIONS), "bench-idle"))))
            while True:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("qemud closed an idle connection during HELLO")
                proto.receive_data(data)
                msg = proto.next_message()
                if isinstance(msg, P.ErrorReply):
                    raise ConnectionError(f"HELLO refused: {msg.error}")
                if msg is not P.NEED_DATA:
                    break
            conns.append(s)
    else:
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        for _ in range(count):
            conns.append(libvirt.open(target))
    print(f"ready {len(conns)}", flush=True)
    sys.stdin.read()
    return 0


@contextlib.contextmanager
def idle_clients(side: Side, count: int, bench: Bench) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_hold",
                             *side.holder_args(), str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    bench.children.append(proc)
    try:
        assert proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()),
                                  daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(180)
        if not ready or not ready[0].startswith("ready"):
            proc.kill()
            err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
            raise RuntimeError(f"idle clients not connected: {(err or ['timeout'])[-1]}")
        time.sleep(1.0)  # let the daemon settle (accept backlog, HELLOs, allocations)
        yield
    finally:
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        bench.children.remove(proc)


# -- the benchmark ----------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes.quick() if args.quick else Sizes()
        if args.guests is not None:
            self.sizes.running_guests = args.guests
        if args.idle_clients is not None:
            self.sizes.idle_clients = args.idle_clients
        if args.guests_running:
            self.sizes.guests_running = True
        self.rows: list[Row] = []
        self.children: list[subprocess.Popen[str]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="qemud-bench-"))
        self.sides: list[Side] = []
        self.guest_dir: Path | None = None
        self.guest_why = ""
        self.notes: list[str] = []

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def row(self, workload: str, unit: str, check: str = "", target: float = 0.0,
            goal: str = "") -> Row:
        r = Row(workload, unit, check, target, goal)
        for side in self.sides:
            if not side.ok:
                r.notes[side.name] = side.why_not
        self.rows.append(r)
        return r

    def live(self) -> list[Side]:
        return [s for s in self.sides if s.ok]

    # -- set-up / tear-down -----------------------------------------------------------

    def start(self) -> None:
        self.log(f"temp dir {self.tmp}")
        raise_nofile()
        pki = PKI.create(self.tmp / "pki")
        q = QemudSide(self.tmp / "qemud", pki)
        lv = LibvirtSide(self.tmp / "libvirt", pki, install=not self.args.no_install)
        self.sides = [q, lv]
        for side in self.sides:
            if side.name == "libvirtd" and self.args.no_libvirtd:
                side.why_not = "not run: --no-libvirtd"
                continue
            self.log(f"starting {side.name}")
            try:
                side.start()
            except Unavailable as exc:
                side.why_not = str(exc)
            except Exception as exc:
                side.why_not = f"not run: start failed: {short_error(exc)[7:]}"
            if side.why_not:
                self.log(f"{side.name}: {side.why_not}")
            if not q.ok:
                raise SystemExit(f"qemud could not start: {q.why_not}")
        pin = self.args.pin
        if pin != "none":
            ncpu = len(os.sched_getaffinity(0))
            if ncpu < 2 and pin == "split":
                raise SystemExit("--pin split needs 2 CPUs")
            cpus = sorted(os.sched_getaffinity(0))
            daemon_cpu, bench_cpu = cpus[0], cpus[0] if pin == "same" else cpus[1]
            for side in self.live():
                pin_process(side.pid(), {daemon_cpu})
            pin_process(os.getpid(), {bench_cpu})
            self.log(f"pinned: daemons on CPU {daemon_cpu}, this process on CPU {bench_cpu}")

    def stop(self) -> None:
        for proc in list(self.children):
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(10)
        for side in reversed(self.sides):
            self.log(f"stopping {side.name}")
            try:
                side.stop()
            except Exception as exc:
                self.log(f"stopping {side.name}: {short_error(exc)}")
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.log(f"kept {self.tmp}")

    def test_guest(self) -> Path | None:
        if self.guest_dir is None and not self.guest_why:
            self.guest_dir, self.guest_why = find_test_guest()
        return self.guest_dir

    # -- workloads ----------------------------------------------------------------------

    def run_for_sides(self, rows: list[Row], fn: Callable[[Side], None]) -> None:
        """Run ``fn`` per live daemon; an exception marks that daemon's cells."""
        for side in self.live():
            try:
                fn(side)
            except Exception as exc:
                self.log(f"{side.name}: {short_error(exc)}")
                for r in rows:
                    if r.values[side.name] is None and not r.notes[side.name]:
                        r.notes[side.name] = short_error(exc)

    def wl_memory(self) -> None:
        rss = self.row("daemon RSS, idle", "MiB", "max_ratio", 1.0, "<= 1x")
        total = self.row("  idle RSS, libvirtd + virtlogd (the QEMU driver needs both)", "MiB")
        thr = self.row("daemon threads, idle", "threads")

        def run(side: Side) -> None:
            conn = side.connect()
            side.node_info(conn)
            side.close(conn)
            time.sleep(0.5)
            rss.values[side.name], thr.values[side.name] = side.rss_threads()
            total.values[side.name] = rss.values[side.name]
            if isinstance(side, LibvirtSide):
                vpid = side.virtlogd_pid()
                if vpid and "virtlogd" in cmdline(vpid):
                    total.values[side.name] = rss.values[side.name] + proc_status(vpid)[0] / 1024
                else:
                    total.values[side.name] = None
                    total.notes[side.name] = "virtlogd not found"
        self.run_for_sides([rss, total, thr], run)

    def wl_rpc(self) -> None:
        sz = self.sizes
        rows = {k: self.row(f"node info calls/s, {label}", "calls/s", "min_ratio", 2.0,
                            ">= 2x")
                for k, label in (("rw", "unix rw"), ("ro", "unix ro"), ("tls", "TLS"))}
        cpu_rows = {k: self.row(f"  daemon CPU per node-info call, {label}", "us")
                    for k, label in (("rw", "unix rw"), ("ro", "unix ro"), ("tls", "TLS"))}
        client_row = self.row("  client-side CPU per node-info call, unix rw", "us")
        client_cpus: dict[str, list[float]] = {}
        conns: dict[tuple[str, str], Any] = {}
        for side in self.live():
            for kind in rows:
                try:
                    conns[side.name, kind] = side.connect(kind)
                except Exception as exc:
                    rows[kind].notes[side.name] = short_error(exc)
        samples: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        try:
            for _ in range(sz.rpc_rounds):
                for kind in rows:
                    for side in self.live():
                        conn = conns.get((side.name, kind))
                        if conn is None:
                            continue
                        try:
                            rate, cpu_us = measure_rate(
                                lambda s=side, c=conn: s.node_info(c), sz.rpc_seconds,
                                side.pid(), sz.max_calls,
                                client_cpus.setdefault(side.name, []) if kind == "rw" else None)
                        except Exception as exc:
                            rows[kind].notes[side.name] = short_error(exc)
                            conns.pop((side.name, kind), None)
                            continue
                        samples.setdefault((side.name, kind), []).append(rate)
                        if cpu_us is not None:
                            cpus.setdefault((side.name, kind), []).append(cpu_us)
                self.log("rpc round done: " + ", ".join(
                    f"{s}/{k} {v[-1]:,.0f}/s" for (s, k), v in samples.items()))
        finally:
            for conn in conns.values():
                with contextlib.suppress(Exception):
                    conn.close()
        for (side_name, kind), xs in samples.items():
            rows[kind].values[side_name] = max(xs)
            rows[kind].extra[side_name] = [round(x, 1) for x in xs]
        for (side_name, kind), xs in cpus.items():
            cpu_rows[kind].values[side_name] = min(xs)
        for side_name, xs in client_cpus.items():
            client_row.values[side_name] = min(xs)
        self._tls_connect_latency()

    def _tls_connect_latency(self) -> None:
        """A remote admin's first answer: TCP + TLS handshake + hello + one call."""
        row = self.row("TLS connect + first call (node info), median", "ms")
        for side in self.live():
            times: list[float] = []
            try:
                for _ in range(self.sizes.tls_connects):
                    started = time.perf_counter()
                    conn = side.connect("tls")
                    side.node_info(conn)
                    times.append((time.perf_counter() - started) * 1000)
                    side.close(conn)
            except Exception as exc:
                row.notes[side.name] = short_error(exc)
                continue
            row.values[side.name] = median(times)
            row.extra[side.name] = [round(x, 2) for x in times]

    def interleaved_rates(self, rows: list[Row], fns: dict[str, Callable[[], Any]],
                          seconds: float, rounds: int, max_calls: int
                          ) -> dict[str, tuple[float, list[float], float | None]]:
        """Like :func:`best_rate` for each daemon, their rounds alternating (qemud,
        libvirtd, qemud, ...) as the node-info rounds do: a drift in the machine's load
        then affects both sides alike instead of whichever happened to run second."""
        rates: dict[str, list[float]] = {name: [] for name in fns}
        cpus: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(max(1, rounds)):
            for side in self.live():
                fn = fns.get(side.name)
                if fn is None:
                    continue
                try:
                    rate, cpu = measure_rate(fn, seconds, side.pid(), max_calls)
                except Exception as exc:
                    self.log(f"{side.name}: {short_error(exc)}")
                    for r in rows:
                        r.notes[side.name] = r.notes[side.name] or short_error(exc)
                    del fns[side.name]
                    continue
                rates[side.name].append(rate)
                if cpu is not None:
                    cpus[side.name].append(cpu)
        return {name: (max(xs), xs, min(cpus[name]) if cpus[name] else None)
                for name, xs in rates.items() if xs and name in fns}

    def wl_list(self) -> None:
        sz = self.sizes
        small, big = sz.list_counts
        r_small = self.row(f"list all domains, {small} defined", "calls/s", "min_ratio", 2.0,
                           ">= 2x")
        r_big = self.row(f"list all domains, {big:,} defined", "calls/s", "min_ratio", 2.0,
                         ">= 2x")
        r_rss = self.row(f"daemon RSS, {big:,} defined guests", "MiB", "max_ratio", 1.0,
                         "<= 1x")
        r_growth = self.row(f"RSS growth per defined guest (10 -> {big:,})", "KiB")
        rows = [r_small, r_big, r_rss, r_growth]
        conns: dict[str, Any] = {}
        doms: dict[str, list[Any]] = {}
        rss10: dict[str, float] = {}

        def define_up_to(n: int) -> None:
            def run(side: Side) -> None:
                if side.name not in conns:
                    conns[side.name] = side.connect()
                mine = doms.setdefault(side.name, [])
                t0 = time.perf_counter()
                while len(mine) < n:
                    mine.append(side.define(conns[side.name], bare_xml(
                        f"bench-list-{len(mine):04d}", sz.guest_mib)))
                got = len(side.list_all(conns[side.name]))
                if got < n:
                    raise RuntimeError(f"listed {got} domains, expected >= {n}")
                if n == 10:
                    time.sleep(0.5)
                    rss10[side.name] = side.rss_threads()[0]
                else:
                    row = r_small if n == small else r_big
                    row.extra[f"{side.name}_define_s"] = round(time.perf_counter() - t0, 2)
            self.run_for_sides(rows, run)

        def rates(n: int, row: Row) -> None:
            fns: dict[str, Callable[[], Any]] = {
                side.name: functools.partial(side.list_all, conns[side.name])
                for side in self.live() if side.name in conns}
            for name, (best, xs, cpu_us) in self.interleaved_rates(
                    rows, fns, sz.list_seconds, sz.rate_rounds, sz.max_calls).items():
                row.values[name] = best
                row.extra[name] = [round(x, 1) for x in xs]
                row.extra[f"{name}_daemon_cpu_us_per_call"] = round(cpu_us or 0)
                self.log(f"{name}: list {n}: {best:,.1f}/s")

        try:
            define_up_to(10)
            define_up_to(small)
            rates(small, r_small)
            define_up_to(big)
            rates(big, r_big)
            time.sleep(0.5)
            for side in self.live():
                if side.name in rss10 and r_big.values[side.name] is not None:
                    r_rss.values[side.name] = rss_big = side.rss_threads()[0]
                    r_growth.values[side.name] = (rss_big - rss10[side.name]) * 1024 / (big - 10)
        finally:
            for side in self.sides:
                deadline = time.monotonic() + 300
                for dom in doms.get(side.name, []):
                    if time.monotonic() > deadline:
                        break
                    with contextlib.suppress(Exception):
                        side.undefine(dom)
                if side.name in conns:
                    side.close(conns[side.name])

    def wl_define(self) -> None:
        sz = self.sizes
        row = self.row("define + undefine pairs/s", "pairs/s", "min_ratio", 2.0, ">= 2x")
        conns: dict[str, Any] = {}
        counter = [0]

        def pair(side: Side) -> None:
            dom = side.define(conns[side.name], bare_xml(f"bench-def-{counter[0]:06d}",
                                                         sz.guest_mib))
            counter[0] += 1
            side.undefine(dom)

        def connect(side: Side) -> None:
            conns[side.name] = side.connect()
        self.run_for_sides([row], connect)
        try:
            fns: dict[str, Callable[[], Any]] = {
                side.name: functools.partial(pair, side) for side in self.live()
                if side.name in conns}
            for name, (best, xs, cpu_us) in self.interleaved_rates(
                    [row], fns, sz.define_seconds, sz.rate_rounds, 100_000).items():
                row.values[name] = best
                row.extra[name] = [round(x, 1) for x in xs]
                row.extra[f"{name}_daemon_cpu_us_per_pair"] = round(cpu_us or 0)
                self.log(f"{name}: define+undefine {best:,.1f}/s")
        finally:
            for side in self.sides:
                if side.name in conns:
                    with contextlib.suppress(Exception):
                        side.close(conns[side.name])

    def wl_lifecycle(self) -> None:
        sz = self.sizes
        r_start = self.row("start latency (test guest, TCG), median", "ms", "max_ratio", 0.5,
                           "<= 0.5x")
        r_destroy = self.row("destroy latency, median", "ms", "max_ratio", 0.05, "<= 0.05x")
        rows = [r_start, r_destroy]
        guest_dir = self.test_guest()
        if guest_dir is None:
            for r in rows:
                for s in SIDES:
                    r.notes[s] = r.notes[s] or f"not run: {self.guest_why}"
            return

        def run(side: Side) -> None:
            conn = side.connect()
            sock = self.tmp / f"{side.name}-serial.sock"
            dom = side.define(conn, test_guest_xml("bench-life", guest_dir, sock))
            starts: list[float] = []
            destroys: list[float] = []
            try:
                for i in range(sz.lifecycle_runs + 1):  # the first is a warm-up (caps probe)
                    t0 = time.perf_counter()
                    side.create(dom)
                    t1 = time.perf_counter()
                    time.sleep(0.3)
                    t2 = time.perf_counter()
                    side.destroy(dom)
                    t3 = time.perf_counter()
                    if i:
                        starts.append((t1 - t0) * 1000)
                        destroys.append((t3 - t2) * 1000)
                    time.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    if side.is_active(dom):
                        side.destroy(dom)
                with contextlib.suppress(Exception):
                    side.undefine(dom)
                side.close(conn)
            r_start.values[side.name] = median(starts)
            r_destroy.values[side.name] = median(destroys)
            r_start.extra[side.name] = [round(x, 1) for x in starts]
            r_destroy.extra[side.name] = [round(x, 1) for x in destroys]
            self.log(f"{side.name}: start {median(starts):.0f} ms, destroy "
                     f"{median(destroys):.0f} ms")
        self.run_for_sides(rows, run)

    def wl_idle(self) -> None:
        sz = self.sizes
        n = sz.idle_clients
        r_base = self.row("node info calls/s, no idle clients", "calls/s")
        r_load = self.row(f"node info calls/s, {n:,} idle clients", "calls/s", "min_ratio",
                          2.0, ">= 2x")
        r_loss = self.row(f"throughput loss with {n:,} idle clients", "%", "max_qemud", 10.0,
                          "qemud <= 10 %")
        r_cpu0 = self.row("  daemon CPU per node-info call, no idle clients", "us")
        r_cpu1 = self.row(f"  daemon CPU per node-info call, {n:,} idle clients", "us")
        # the daemon's capacity (calls/s it could serve) goes as 1 / CPU per call; unlike
        # the measured rate, this barely moves when other processes compete for the CPUs
        r_cap = self.row(f"capacity loss with {n:,} idle clients (from CPU per call)", "%",
                         "max_qemud", 10.0, "qemud <= 10 %")
        r_rss = self.row(f"daemon RSS, {n:,} idle clients", "MiB", "max_ratio", 1.0, "<= 1x")
        r_thr = self.row(f"daemon threads, {n:,} idle clients", "threads")
        rows = [r_base, r_load, r_loss, r_cpu0, r_cpu1, r_cap, r_rss, r_thr]

        def run(side: Side) -> None:
            conn = side.connect()
            base: list[float] = []
            loaded: list[float] = []
            cpu_base: list[float] = []
            cpu_loaded: list[float] = []

            def measure(rates: list[float], cpus: list[float]) -> None:
                rate, cpu = measure_rate(lambda: side.node_info(conn), sz.rpc_seconds,
                                         side.pid(), sz.max_calls)
                rates.append(rate)
                if cpu is not None:
                    cpus.append(cpu)
            try:
                # cycles of (no idle clients, N idle clients), then none once more: on a
                # shared machine, measurements taken close together are compared, and the
                # best round of each kind is the least disturbed one
                for i in range(sz.idle_cycles):
                    measure(base, cpu_base)
                    with idle_clients(side, n, self):
                        if i == 0:
                            r_rss.values[side.name], r_thr.values[side.name] = \
                                side.rss_threads()
                        measure(loaded, cpu_loaded)
                    self.log(f"{side.name}: idle clients cycle {i + 1}: {base[-1]:,.0f}/s, "
                             f"with {n} idle {loaded[-1]:,.0f}/s")
                measure(base, cpu_base)
            finally:
                side.close(conn)
            r_base.values[side.name] = max(base)
            r_base.extra[side.name] = [round(x) for x in base]
            r_load.values[side.name] = max(loaded)
            r_load.extra[side.name] = [round(x) for x in loaded]
            # each loaded round is bracketed by a baseline round before and after it; the
            # loss is the median over those brackets
            losses = [(1 - x / ((base[i] + base[i + 1]) / 2)) * 100
                      for i, x in enumerate(loaded)]
            r_loss.values[side.name] = max(0.0, median(losses))
            r_loss.extra[side.name] = [round(x, 1) for x in losses]
            if len(cpu_base) == len(base) and len(cpu_loaded) == len(loaded):
                r_cpu0.values[side.name] = min(cpu_base)
                r_cpu1.values[side.name] = min(cpu_loaded)
                r_cpu0.extra[side.name] = [round(x, 1) for x in cpu_base]
                r_cpu1.extra[side.name] = [round(x, 1) for x in cpu_loaded]
                caps = [(1 - (cpu_base[i] + cpu_base[i + 1]) / 2 / x) * 100
                        for i, x in enumerate(cpu_loaded)]
                r_cap.values[side.name] = max(0.0, median(caps))
                r_cap.extra[side.name] = [round(x, 1) for x in caps]
        self.run_for_sides(rows, run)

    def wl_guests(self) -> None:
        sz = self.sizes
        n = sz.running_guests
        how = "running (firmware)" if sz.guests_running else "paused"
        r_rss = self.row(f"daemon RSS, {n} active guests ({how})", "MiB", "max_ratio", 1.0,
                         "<= 1x")
        # informational: the same guests once qemud has dropped libvirt's RelaxNG schema,
        # which it loads to validate every define (the defines above) and keeps for
        # SCHEMA_IDLE_SECONDS; libvirtd validates only when asked (--validate)
        r_settled = self.row(f"  daemon RSS, {n} active guests, {_SETTLE_SECONDS:.0f} s later "
                             "(qemud's schema released)", "MiB")
        r_thr = self.row(f"daemon threads, {n} active guests", "threads")
        r_time = self.row(f"time to start {n} guests ({how}), total", "ms")
        rows = [r_rss, r_settled, r_thr, r_time]

        def run(side: Side) -> None:
            conn = side.connect()
            doms: list[Any] = []
            try:
                for i in range(n):
                    doms.append(side.define(conn, bare_xml(f"bench-run-{i:03d}", sz.guest_mib)))
                t0 = time.perf_counter()
                for dom in doms:
                    side.create(dom, paused=not sz.guests_running)
                r_time.values[side.name] = (time.perf_counter() - t0) * 1000
                time.sleep(2.0)
                r_rss.values[side.name], r_thr.values[side.name] = side.rss_threads()
                self.log(f"{side.name}: {n} guests: {r_rss.values[side.name]:.1f} MiB, "
                         f"{r_thr.values[side.name]} threads")
                time.sleep(_SETTLE_SECONDS - 2.0)
                r_settled.values[side.name] = side.rss_threads()[0]
            finally:
                for dom in doms:
                    with contextlib.suppress(Exception):
                        if side.is_active(dom):
                            side.destroy(dom)
                    with contextlib.suppress(Exception):
                        side.undefine(dom)
                side.close(conn)
        self.run_for_sides(rows, run)

    def wl_events(self) -> None:
        sz = self.sizes
        row = self.row("event latency: suspend/resume call -> lifecycle callback, median",
                       "ms")

        def run(side: Side) -> None:
            if isinstance(side, LibvirtSide):
                side.ensure_event_loop()
            conn = side.connect()
            got: list[tuple[float, int]] = []
            cond = threading.Condition()

            def on_event(event: int) -> None:
                with cond:
                    got.append((time.perf_counter(), event))
                    cond.notify_all()
            handle = side.watch_lifecycle(conn, on_event)
            dom = side.define(conn, bare_xml("bench-events", sz.guest_mib))
            lat: list[float] = []
            try:
                side.create(dom)
                time.sleep(1.0)

                def timed(call: Callable[[], None], want: int) -> float:
                    with cond:
                        got.clear()
                    t0 = time.perf_counter()
                    call()
                    with cond:
                        ok = cond.wait_for(lambda: any(e == want for _, e in got), timeout=10)
                        if not ok:
                            raise TimeoutError(f"no lifecycle event {want} within 10 s")
                        t1 = next(t for t, e in got if e == want)
                    return (t1 - t0) * 1000
                for _ in range(sz.event_runs):
                    lat.append(timed(lambda: side.suspend(dom), LIFECYCLE_SUSPENDED))
                    time.sleep(0.05)
                    lat.append(timed(lambda: side.resume(dom), LIFECYCLE_RESUMED))
                    time.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    side.unwatch(conn, handle)
                with contextlib.suppress(Exception):
                    if side.is_active(dom):
                        side.destroy(dom)
                with contextlib.suppress(Exception):
                    side.undefine(dom)
                side.close(conn)
            row.values[side.name] = median(lat)
            row.extra[side.name] = {"p90": sorted(lat)[int(len(lat) * 0.9) - 1],
                                    "min": min(lat), "n": len(lat)}
            self.log(f"{side.name}: event latency median {median(lat):.2f} ms")
        self.run_for_sides([row], run)

    def run(self, only: list[str]) -> None:
        for name in WORKLOADS:
            if name not in only:
                continue
            self.log(f"workload {name} (load average {loadavg()})")
            first = len(self.rows)
            getattr(self, f"wl_{name}")()
            for row in self.rows[first:]:
                row.extra.setdefault("loadavg_before", loadavg())


# -- reporting --------------------------------------------------------------------------

def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.TimeoutExpired):
        return ""


#: qemud's own packages, byte-compiled before a run (see :func:`compile_packages`)
PACKAGES = ("protocol", "qemud", "client", "certs")


def compile_packages() -> str:
    """Byte-compile qemud's packages as an install does (pip and Debian's packaging
    write ``.pyc`` files), and say so for the report. This checkout is an editable
    install and the environment may set PYTHONDONTWRITEBYTECODE, so without it every
    daemon start would compile ~200 modules from source and the run would measure that
    (~0.6-0.9 MiB of RSS, ~40 ms of start). libvirtd is measured as Debian installed it."""
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *PACKAGES],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"not byte-compiled (compileall failed: {proc.stdout.strip()[-200:]})"
    return "byte-compiled (.pyc), as an install has them"


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    libvirt_py = ""
    with contextlib.suppress(Exception):
        import libvirt
        v = libvirt.getVersion()
        libvirt_py = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "memory": mem, "cpu": cpu, "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "libvirtd": _first_line(["libvirtd", "--version"]) if shutil.which("libvirtd") else "",
        "libvirt_library": libvirt_py,
        "kvm": os.path.exists("/dev/kvm"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git_head": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": [ln[3:] for ln in subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "protocol", "qemud",
             "client", "certs"], capture_output=True, text=True, check=False
        ).stdout.splitlines()],
    }


def markdown_report(info: dict[str, Any], rows: list[Row], sizes: Sizes,
                    command: str) -> str:
    lines = [f"Run on {info['date']}: `{command}`", "",
             f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
             f"kernel {info['kernel']}, {info['os']}",
             f"- {info['qemu']}; {info['libvirtd'] or 'libvirtd not installed'}; "
             f"Python {info['python']}",
             f"- sizes: node-info rates best of {sizes.rpc_rounds} x {sizes.rpc_seconds:g} s "
             f"(list and define best of {sizes.rate_rounds}, alternating; "
             f"{sizes.idle_cycles} idle-client cycles), "
             f"{sizes.lifecycle_runs} start/destroy runs, {sizes.idle_clients} idle clients, "
             f"{sizes.running_guests} x {sizes.guest_mib} MiB guests "
             f"({'running' if sizes.guests_running else 'paused'}), "
             f"{sizes.event_runs} suspend/resume pairs",
             f"- code: git {info['git_head']}"
             + (f" plus uncommitted changes to {', '.join(info['git_dirty'])}"
                if info["git_dirty"] else "")
             + (f"; qemud's modules {info['bytecode']}" if info.get("bytecode") else ""),
             f"- CPU pinning: {info.get('pin', 'none')}",
             f"- load average (1/5/15 min) at start: {' '.join(info['loadavg_at_start'])}"
             f", at end: {' '.join(info.get('loadavg_at_end', ['?']))}", "",
             render_markdown(rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_hold"]:
        return hold_main(argv[1], argv[2], int(argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[],
                    help=f"workload(s) to run, comma-separated or repeated: "
                         f"{', '.join(WORKLOADS)}")
    ap.add_argument("--quick", action="store_true", help="short runs, smaller counts")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the table (and machine) as Markdown")
    ap.add_argument("--guests", type=int, help="active guests for the RSS workload (20)")
    ap.add_argument("--guests-running", action="store_true",
                    help="boot those guests to firmware instead of starting them paused")
    ap.add_argument("--idle-clients", type=int, help="idle connections (1000)")
    ap.add_argument("--no-libvirtd", action="store_true", help="qemud only")
    ap.add_argument("--no-install", action="store_true",
                    help="do not run bench/setup-libvirtd.sh when libvirtd is missing")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not byte-compile qemud's packages first (the daemon then "
                         "compiles them at every start, as in an editable checkout)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for the 1-min load average to drop "
                         "below --quiet-load (a shared machine skews every number)")
    ap.add_argument("--quiet-load", type=float, default=1.0)
    ap.add_argument("--pin", choices=["none", "same", "split"], default="none",
                    help="CPU affinity: daemons and this process on one CPU (same), on two "
                         "(split), or left to the scheduler (none, the default)")
    args = ap.parse_args(argv)
    only = [w.strip() for item in args.only for w in item.split(",") if w.strip()] \
        or list(WORKLOADS)
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(sorted(unknown))}; known: "
                 f"{', '.join(WORKLOADS)}")

    bench = Bench(args)
    info = machine_info()
    info["pin"] = args.pin
    info["bytecode"] = ("compiled from source at each start (--no-compile)" if args.no_compile
                        else compile_packages())

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    interrupted = False
    try:
        if args.wait_quiet > 0:
            wait_quiet(args.quiet_load, min(args.wait_quiet, 3600.0), bench.log)
        info["loadavg_at_start"] = loadavg().split()
        bench.start()
        bench.run(only)
        info["loadavg_at_end"] = loadavg().split()
    except KeyboardInterrupt:
        interrupted = True
        bench.log("interrupted: stopping everything")
    finally:
        bench.stop()
    command = ".venv/bin/python bench/run.py " + " ".join(argv)
    print()
    print(render_text(bench.rows))
    for side in bench.sides:
        if side.why_not:
            print(f"\n{side.name}: {side.why_not}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "command": command.strip(), "sizes": bench.sizes.__dict__,
            "rows": [r.as_dict() for r in bench.rows],
            "unavailable": {s.name: s.why_not for s in bench.sides if s.why_not},
            "interrupted": interrupted}, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown_report(info, bench.rows, bench.sizes,
                                                 command.strip()))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
