"""qemud-exporter: a Prometheus exporter for qemud, with libvirt-exporter's metric names.

It connects to the daemon READ-ONLY (the ``qemud-sock-ro`` socket for local URIs without
``socket=``, else the read-only HELLO flag), so it can observe but never change anything, and serves
``/metrics`` over HTTP with ``prometheus_client``. Each scrape asks the daemon for
DOMAIN_STATS (every domain) and NODE_STATS, unless ``--interval`` allows reusing a recent
answer. When the daemon cannot be reached ``libvirt_up`` is 0 and no other qemud metric
is exported; the next scrape connects again (so a restarted daemon is picked up).

No scrape waits for the daemon longer than ``--scrape-timeout``: the query runs in a
worker thread, and a daemon that does not answer in time (stopped, hung) is reported as
``libvirt_up 0``. Concurrent scrapes share the query in flight instead of queueing one
behind the other.

See docs/MONITORING.md for the metric list.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qemud import __version__

from . import connect, default_uri
from .connection import Connection
from .errors import InvalidURI, QemudClientError, RemoteError
from .uri import parse_uri

__all__ = ["QemudCollector", "Snapshot", "main", "parse_listen"]

log = logging.getLogger("qemud.exporter")

DEFAULT_LISTEN = "127.0.0.1:9177"
#: under Prometheus's default scrape_timeout (10 s), so it sees our libvirt_up 0
DEFAULT_SCRAPE_TIMEOUT = 8.0
NS = 1e-9
KIB = 1024

Stats = dict[str, int | float | str]


@dataclass
class Snapshot:
    """One answer of the daemon (or the lack of one)."""

    up: bool
    taken: float  # time.monotonic()
    domains: list[tuple[str, str, Stats]] = field(default_factory=list)  # name, uuid, stats
    node: Stats = field(default_factory=dict)
    duration: float = 0.0
    error: str = ""


class _Query:
    """One query of the daemon in flight; the scrapes waiting for it share its answer."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: Snapshot | None = None


class QemudCollector(Collector):
    """Collects from one daemon on demand; thread-safe.

    One worker thread at a time queries the daemon (it alone uses the connection); a
    scrape waits at most ``scrape_timeout`` seconds for its answer, so a stuck daemon
    costs each scrape a bounded wait and a ``libvirt_up 0``, never a hang.
    """

    def __init__(self, uri: str | None, interval: float = 0.0, connect_timeout: float = 5.0,
                 connector: Callable[..., Connection] = connect,
                 scrape_timeout: float = DEFAULT_SCRAPE_TIMEOUT) -> None:
        self.uri = uri
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.scrape_timeout = scrape_timeout
        self._connector = connector
        self._conn: Connection | None = None  # used by the query thread only
        self._lock = threading.Lock()  # guards what follows
        self._cached: Snapshot | None = None
        self._was_up: bool | None = None
        self._query: _Query | None = None

    # -- talking to the daemon -----------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.is_alive:
            self._drop()
        if self._conn is None:
            self._conn = self._connector(self.uri, readonly=True, client_name="qemud-exporter",
                                         timeout=self.connect_timeout)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a dead connection
                pass

    def _fetch(self) -> Snapshot:
        started = time.monotonic()
        error = ""
        for _ in range(2):  # a connection that died since the last scrape: one new try
            # (fresh: this try makes the connection, also when it replaces one found
            # dead: a failed connect is not retried, so a stopped daemon costs one
            # connect_timeout, not two)
            fresh = self._conn is None or not self._conn.is_alive
            try:
                conn = self._connection()
                records = conn.domain_stats()
                node = conn.node_stats()
            except RemoteError as exc:  # the daemon answered, with an error
                error = str(exc)
                break
            except (QemudClientError, OSError) as exc:
                error = str(exc)
                self._drop()
                if fresh:
                    break
                continue
            now = time.monotonic()
            return Snapshot(True, now, [(d.name, d.uuid, s) for d, s in records], node,
                            now - started)
        now = time.monotonic()
        return Snapshot(False, now, duration=now - started, error=error)

    def _run_query(self, query: _Query) -> None:
        """The query thread: fetch, publish the answer, wake the scrapes waiting for it."""
        try:
            snap = self._fetch()
        except Exception as exc:  # a bug: report it as a failed scrape, never hang them
            log.exception("querying qemud failed")
            now = time.monotonic()
            snap = Snapshot(False, now, duration=now - query.started,
                            error=f"internal error: {exc!r}")
        with self._lock:
            self._cached = snap
            self._query = None
            self._note(snap)
        query.result = snap
        query.done.set()

    def _note(self, snap: Snapshot) -> None:
        """Log a change between up and down (the caller holds the lock)."""
        if snap.up != self._was_up:
            if snap.up:
                log.info("connected to %s (read-only)", self.uri or default_uri())
            else:
                log.warning("qemud unreachable: %s", snap.error)
            self._was_up = snap.up

    def snapshot(self) -> Snapshot:
        """A fresh enough answer of the daemon, or a down one after ``scrape_timeout``."""
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached.taken < self.interval:
                return cached
            query = self._query
            if query is None:  # else join the query in flight rather than queue behind it
                query = self._query = _Query()
                threading.Thread(target=self._run_query, args=(query,), daemon=True,
                                 name="qemud-exporter-query").start()
        if query.done.wait(self.scrape_timeout):
            assert query.result is not None
            return query.result
        now = time.monotonic()
        snap = Snapshot(False, now, duration=now - query.started,
                        error=f"qemud did not answer within {self.scrape_timeout:g} s "
                              "(--scrape-timeout); is it stopped or hung?")
        with self._lock:
            self._note(snap)
        return snap

    def close(self) -> None:
        """Close the connection, unless a query still uses it (a stuck daemon: the
        process exit ends that thread; closing would wait for it)."""
        with self._lock:
            if self._query is None:
                self._drop()

    # -- prometheus ----------------------------------------------------------------------

    def describe(self) -> Iterable[Any]:
        return []  # no collection at registration time

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        up = GaugeMetricFamily("libvirt_up", "Whether the qemud daemon could be queried "
                               "(1) or not (0).")
        up.add_metric([], 1 if snap.up else 0)
        yield up
        took = GaugeMetricFamily("qemud_exporter_scrape_duration_seconds",
                                 "Time the last query of the daemon took.")
        took.add_metric([], snap.duration)
        yield took
        if snap.up:
            yield from domain_metrics(snap.domains)
            yield from node_metrics(snap.node)


def _num(stats: Stats, key: str) -> float | None:
    value = stats.get(key)
    return float(value) if isinstance(value, int | float) else None


def domain_metrics(domains: list[tuple[str, str, Stats]]) -> Iterator[Any]:
    """libvirt-exporter's domain metrics (plus a few qemud_domain_* extras)."""
    info_labels = ["domain", "uuid"]

    def gauge(name: str, doc: str, labels: list[str] = info_labels) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    def counter(name: str, doc: str, labels: list[str] = info_labels) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    state = gauge("libvirt_domain_info_state", "Domain state (libvirt's virDomainState: "
                  "1 running, 3 paused, 5 shut off, ...).")
    max_mem = gauge("libvirt_domain_info_maximum_memory_bytes", "Maximum memory (<memory>).")
    mem = gauge("libvirt_domain_info_memory_usage_bytes",
                "Memory of the domain (<currentMemory>, the balloon size).")
    vcpus = gauge("libvirt_domain_info_virtual_cpus", "Number of virtual CPUs.")
    cpu = counter("libvirt_domain_info_cpu_time_seconds_total",
                  "Host CPU time used by the domain's QEMU process.")
    cpu_mode = counter("qemud_domain_cpu_seconds_total",
                       "Host CPU time of the QEMU process by mode (user, system).",
                       ["domain", "uuid", "mode"])
    rss = gauge("qemud_domain_memory_rss_bytes", "Resident memory of the QEMU process.")
    vcpu_time = counter("libvirt_domain_vcpu_time_seconds_total",
                        "Host CPU time used by each vCPU thread.", ["domain", "vcpu"])
    dev = ["domain", "target_device"]
    block = {
        "rd.bytes": counter("libvirt_domain_block_stats_read_bytes_total",
                            "Bytes read from the disk.", dev),
        "rd.reqs": counter("libvirt_domain_block_stats_read_requests_total",
                           "Read requests on the disk.", dev),
        "rd.times": counter("libvirt_domain_block_stats_read_time_seconds_total",
                            "Time spent on reads.", dev),
        "wr.bytes": counter("libvirt_domain_block_stats_write_bytes_total",
                            "Bytes written to the disk.", dev),
        "wr.reqs": counter("libvirt_domain_block_stats_write_requests_total",
                           "Write requests on the disk.", dev),
        "wr.times": counter("libvirt_domain_block_stats_write_time_seconds_total",
                            "Time spent on writes.", dev),
        "fl.reqs": counter("libvirt_domain_block_stats_flush_requests_total",
                           "Flush requests on the disk.", dev),
        "fl.times": counter("libvirt_domain_block_stats_flush_time_seconds_total",
                            "Time spent on flushes.", dev),
    }
    net = {
        "rx.bytes": counter("libvirt_domain_interface_stats_receive_bytes_total",
                            "Bytes received by the guest on the interface.", dev),
        "rx.pkts": counter("libvirt_domain_interface_stats_receive_packets_total",
                           "Packets received by the guest on the interface.", dev),
        "rx.errs": counter("libvirt_domain_interface_stats_receive_errors_total",
                           "Receive errors on the interface.", dev),
        "rx.drop": counter("libvirt_domain_interface_stats_receive_drops_total",
                           "Received packets dropped on the interface.", dev),
        "tx.bytes": counter("libvirt_domain_interface_stats_transmit_bytes_total",
                            "Bytes sent by the guest on the interface.", dev),
        "tx.pkts": counter("libvirt_domain_interface_stats_transmit_packets_total",
                           "Packets sent by the guest on the interface.", dev),
        "tx.errs": counter("libvirt_domain_interface_stats_transmit_errors_total",
                           "Transmit errors on the interface.", dev),
        "tx.drop": counter("libvirt_domain_interface_stats_transmit_drops_total",
                           "Transmitted packets dropped on the interface.", dev),
    }
    for name, uuid, stats in domains:
        labels = [name, uuid]
        state.add_metric(labels, _num(stats, "state.state") or 0)
        max_mem.add_metric(labels, (_num(stats, "balloon.maximum") or 0) * KIB)
        mem.add_metric(labels, (_num(stats, "balloon.current") or 0) * KIB)
        vcpus.add_metric(labels, _num(stats, "vcpu.current") or 0)
        cpu.add_metric(labels, (_num(stats, "cpu.time") or 0) * NS)
        for mode in ("user", "system"):
            value = _num(stats, f"cpu.{mode}")
            if value is not None:
                cpu_mode.add_metric([*labels, mode], value * NS)
        value = _num(stats, "balloon.rss")
        if value is not None:
            rss.add_metric(labels, value * KIB)
        for key, v in stats.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "vcpu" and parts[2] == "time" and \
                    isinstance(v, int | float):
                vcpu_time.add_metric([name, parts[1]], v * NS)
        for prefix, families in (("block", block), ("net", net)):
            for i in range(int(_num(stats, f"{prefix}.count") or 0)):
                target = stats.get(f"{prefix}.{i}.name")
                if not isinstance(target, str) or not target:
                    continue
                for wire, family in families.items():
                    value = _num(stats, f"{prefix}.{i}.{wire}")
                    if value is not None:
                        family.add_metric([name, target],
                                          value * NS if wire.endswith(".times") else value)
    yield from (state, max_mem, mem, vcpus, cpu, cpu_mode, rss, vcpu_time)
    yield from block.values()
    yield from net.values()


def node_metrics(node: Stats) -> Iterator[Any]:
    cpu = CounterMetricFamily("qemud_node_cpu_seconds_total",
                              "Host CPU time by mode, all CPUs summed (/proc/stat).",
                              labels=["mode"])
    for key, value in node.items():
        if key.startswith("cpu.") and key != "cpu.count" and isinstance(value, int | float):
            cpu.add_metric([key[4:]], value * NS)
    yield cpu
    count = _num(node, "cpu.count")
    if count is not None:
        g = GaugeMetricFamily("qemud_node_cpus", "Number of host CPUs.")
        g.add_metric([], count)
        yield g
    for name in ("total", "free", "available", "buffers", "cached"):
        kib = _num(node, f"memory.{name}")
        if kib is not None:
            g = GaugeMetricFamily(f"qemud_node_memory_{name}_bytes",
                                  f"Host memory: {name} (/proc/meminfo).")
            g.add_metric([], kib * KIB)
            yield g


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; a bare ``:PORT`` means 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r} "
                                         "(expected HOST:PORT, e.g. 127.0.0.1:9177)")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return host, int(port)


def _seconds(minimum: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qemud-exporter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve Prometheus metrics of a qemud daemon's guests and host at\n"
            "http://LISTEN/metrics, with libvirt-exporter's metric names (libvirt_up,\n"
            "libvirt_domain_info_*, libvirt_domain_block_stats_*,\n"
            "libvirt_domain_interface_stats_*) plus qemud_node_* host metrics.\n\n"
            "The exporter connects READ-ONLY: through the daemon's read-only socket\n"
            "(qemud-sock-ro) for local URIs without socket=, else with the read-only\n"
            "flag in its HELLO. It reconnects by itself; while the daemon is unreachable\n"
            "or does not answer within --scrape-timeout, libvirt_up is 0."),
        epilog=(
            "examples:\n"
            "  qemud-exporter\n"
            "  qemud-exporter --uri qemud:///session --listen 127.0.0.1:9177\n"
            "  qemud-exporter --uri 'qemud+tls://host/system?pkipath=/etc/qemud/pki' \\\n"
            "      --listen 0.0.0.0:9177 --interval 15\n\n"
            "See docs/MONITORING.md for every metric and label."))
    parser.add_argument(
        "--uri", metavar="URI", default=None,
        help="daemon to watch (default: $QEMUD_DEFAULT_URI, then uri_default from "
             "~/.config/qemud/client.toml, then qemud:///system as root or "
             "qemud:///session otherwise); a unix URI without socket= is opened on the "
             "daemon's read-only socket")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", type=parse_listen, default=parse_listen(DEFAULT_LISTEN),
        help=f"HTTP address to serve /metrics on (default: {DEFAULT_LISTEN}; use [::1]:PORT "
             "for IPv6, port 0 for any free port; the address is logged at start)")
    parser.add_argument(
        "--interval", metavar="SECONDS", type=_seconds(0, strict=False), default=0.0,
        help="reuse the daemon's answer for scrapes within SECONDS of it (default: 0 = "
             "query the daemon on every scrape); protects the daemon from many scrapers")
    parser.add_argument(
        "--connect-timeout", metavar="SECONDS", type=_seconds(0, strict=True), default=5.0,
        help="give up connecting to the daemon after SECONDS, its HELLO answer included "
             "(default: 5)")
    parser.add_argument(
        "--scrape-timeout", metavar="SECONDS", type=_seconds(0, strict=True),
        default=DEFAULT_SCRAPE_TIMEOUT,
        help="answer a scrape with libvirt_up 0 when the daemon has not answered within "
             f"SECONDS (default: {DEFAULT_SCRAPE_TIMEOUT:g}; keep it under Prometheus's "
             "scrape_timeout)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="messages on stderr at this level and above (default: info)")
    parser.add_argument("--version", action="version", version=f"%(prog)s (qemud) {__version__}",
                        help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="qemud-exporter: %(levelname)s: %(message)s")
    # A malformed URI never gets better: refuse it now (exit 2, as for a bad option). An
    # unreachable daemon is fine at start: it is libvirt_up 0 until it answers.
    try:
        uri = args.uri or default_uri()
        parse_uri(uri)
    except InvalidURI as exc:
        parser.error(exc.message)
    collector = QemudCollector(uri, args.interval, args.connect_timeout,
                               scrape_timeout=args.scrape_timeout)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    host, port = args.listen
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        print(f"qemud-exporter: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"qemud-exporter: serving http://{shown}:{bound_port}/metrics for {uri}",
          file=sys.stderr, flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(3600):
        pass
    server.shutdown()
    server.server_close()
    collector.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
