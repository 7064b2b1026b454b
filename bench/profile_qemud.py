#!/usr/bin/env python3
"""Profile the qemud daemon (and optionally the client) under one call load.

    .venv/bin/python bench/profile_qemud.py [--load node-info|list|define] [--seconds S]
                                      [--domains N] [--top N] [--py-spy] [--client]

Runs a private qemud (tests.helpers.daemon.DaemonProcess) under ``python -m cProfile``
(or samples it with py-spy when --py-spy is given and py-spy is installed), drives it
with back-to-back calls from one client connection for ``--seconds``, stops it
(cProfile writes its data on the daemon's clean exit) and prints the top entries by own
time and by cumulative time, plus the call rate and the daemon's CPU per call. With
--client the client side of the same loop is profiled too (cProfile, in this process).

cProfile's overhead inflates per-call costs (roughly 2x for this kind of code); py-spy
does not perturb the target, but only sees where time goes, not call counts.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from run import bare_xml, proc_cpu  # noqa: E402

from tests.helpers.daemon import DaemonProcess  # noqa: E402


class ProfiledDaemon(DaemonProcess):
    def __init__(self, root: Path, profile_out: Path | None, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.profile_out = profile_out

    def command(self) -> list[str]:
        cmd = super().command()
        if self.profile_out is None:
            return cmd
        return [cmd[0], "-m", "cProfile", "-o", str(self.profile_out), *cmd[1:]]


def summarize_folded(path: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n_text = line.rsplit(" ", 1)
        n = int(n_text)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"py-spy: {total} samples", "  own time:"]
    out += [f"  {n / total * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["  inclusive:"]
    out += [f"  {n / total * 100:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", choices=["node-info", "list", "define"], default="node-info")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--domains", type=int, default=200, help="defined guests for --load list")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--py-spy", action="store_true", help="sample with py-spy instead")
    ap.add_argument("--client", action="store_true", help="also cProfile the client side")
    args = ap.parse_args()
    seconds = min(max(args.seconds, 0.5), 120.0)

    root = Path(tempfile.mkdtemp(prefix="qemud-profile-"))
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    use_spy = args.py_spy and Path(spy_bin).exists()
    if args.py_spy and not use_spy:
        print("py-spy not found; using cProfile", file=sys.stderr)
    prof_out = None if use_spy else root / "daemon.prof"
    d = ProfiledDaemon(root, prof_out, config={"limits": {"keepalive_interval": 0},
                                               "log": {"level": "info"}})
    d.start()
    spy: subprocess.Popen[bytes] | None = None
    client_prof = cProfile.Profile() if args.client else None
    try:
        conn = d.connect()
        if args.load == "list":
            for i in range(args.domains):
                conn.define_xml(bare_xml(f"prof-{i:05d}", 64))

            def fn() -> None:
                conn.list_domains(0)
        elif args.load == "define":
            counter = [0]

            def fn() -> None:
                dom = conn.define_xml(bare_xml(f"prof-d{counter[0]:06d}", 64))
                counter[0] += 1
                dom.undefine()
        else:
            def fn() -> None:
                conn.node_info()
        for _ in range(20):
            fn()
        if use_spy:
            spy = subprocess.Popen([spy_bin, "record", "-p", str(d.pid()), "-d",
                                    str(int(seconds + 1)), "-r", "250", "-f", "raw", "-o",
                                    str(root / "spy.txt")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu0 = proc_cpu(d.pid())
        n = 0
        t0 = time.perf_counter()
        if client_prof:
            client_prof.enable()
        while time.perf_counter() - t0 < seconds and n < 5_000_000:
            fn()
            n += 1
        if client_prof:
            client_prof.disable()
        elapsed = time.perf_counter() - t0
        cpu = proc_cpu(d.pid()) - cpu0
        print(f"load {args.load}: {n} calls in {elapsed:.1f} s = {n / elapsed:,.0f}/s; "
              f"daemon CPU {cpu / n * 1e6:,.0f} µs/call "
              f"({'py-spy attached' if use_spy else 'under cProfile'})")
        if args.load == "define":
            for dom in conn.list_domains(0):
                dom.undefine()
        conn.close()
        if spy is not None:
            spy.wait(seconds + 30)
    finally:
        d.stop(timeout=60)
    if use_spy:
        print(summarize_folded(root / "spy.txt", args.top))
    elif prof_out is not None and prof_out.exists():
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(str(prof_out), stream=buf).strip_dirs().sort_stats(key) \
                .print_stats(args.top)
            print(f"--- daemon, by {key} ---")
            print("\n".join(ln for ln in buf.getvalue().splitlines()[6:] if ln.strip()))
    else:
        print("no daemon profile written (did the daemon exit cleanly?)", file=sys.stderr)
    if client_prof:
        buf = io.StringIO()
        pstats.Stats(client_prof, stream=buf).strip_dirs().sort_stats("tottime") \
            .print_stats(args.top)
        print("--- client, by tottime ---")
        print("\n".join(ln for ln in buf.getvalue().splitlines()[6:] if ln.strip()))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
