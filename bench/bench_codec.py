"""Codec benchmark (not a test): call/reply round trips through protocol.Connection.

One round trip = client.send(call) -> server.receive_data/next_message ->
server.send(reply) -> client.receive_data/next_message, i.e. encode and decode of both
the call and the reply plus framing, with no I/O.

    python bench/bench_codec.py                 # timings (min and median of --repeat runs)
    python bench/bench_codec.py --profile       # cProfile of the same loops, top functions
    python bench/bench_codec.py --case DOMAIN_LIST/1000 --repeat 9

Timings on a shared machine are noisy: compare the min column.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import protocol
from protocol import payloads as p
from protocol.procedures import Procedure


@dataclass
class Case:
    name: str
    call: protocol.Call
    reply: protocol.Reply


def _ref(i: int) -> p.DomainRef:
    return p.DomainRef(f"guest-{i:04d}", uuid.UUID(int=i + 1).bytes, i + 1 if i % 3 else -1)


def _domain_list(n: int) -> Case:
    domains = [p.DomainSummary(_ref(i), 1 if i % 3 else 5, 1, True, bool(i % 2))
               for i in range(n)]
    return Case(f"DOMAIN_LIST/{n}", protocol.Call(Procedure.DOMAIN_LIST, 4, p.ListDomainsArgs(0)),
                protocol.Reply(Procedure.DOMAIN_LIST, 4, p.ListDomainsReply(domains)))


def cases() -> list[Case]:
    return [
        Case("NODE_INFO", protocol.Call(Procedure.NODE_INFO, 2, protocol.Empty()),
             protocol.Reply(Procedure.NODE_INFO, 2, p.NodeInfoReply(
                 "x86_64", 64 * 1024 * 1024, 16, 2400, 1, 1, 8, 2))),
        Case("DOMAIN_GET_INFO",
             protocol.Call(Procedure.DOMAIN_GET_INFO, 3, p.DomainArgs(_ref(7))),
             protocol.Reply(Procedure.DOMAIN_GET_INFO, 3, p.DomainInfoReply(
                 1, 4 * 1024 * 1024, 2 * 1024 * 1024, 4, 123_456_789_000))),
        _domain_list(50),
        _domain_list(1000),
    ]


def connected_pair() -> tuple[protocol.Connection, protocol.Connection]:
    client = protocol.Connection(protocol.Role.CLIENT)
    server = protocol.Connection(protocol.Role.SERVER)
    server.receive_data(client.send(protocol.Call(Procedure.HELLO, 1, p.HelloArgs([1]))))
    hello = server.next_message()
    assert isinstance(hello, protocol.Call) and isinstance(hello.args, p.HelloArgs)
    version = server.accept_hello(hello.args)
    client.receive_data(server.send(protocol.Reply(
        Procedure.HELLO, 1, p.HelloReply(version, "bench", False, 0))))
    client.next_message()
    return client, server


def round_trip_fn(case: Case) -> tuple[Callable[[], object], int]:
    """A function doing one round trip, checked once; and the bytes it moves."""
    client, server = connected_pair()
    call, reply = case.call, case.reply

    def round_trip() -> object:
        server.receive_data(client.send(call))
        server.next_message()
        client.receive_data(server.send(reply))
        return client.next_message()

    server.receive_data(client.send(call))
    assert server.next_message() == call
    wire = client.send(call) + server.send(reply)
    client.receive_data(server.send(reply))
    assert client.next_message() == reply
    return round_trip, len(wire)


def bench(selected: list[Case], repeat: int) -> None:
    print(f"python {sys.version.split()[0]}, {repeat} repeats; µs per call+reply round trip")
    print(f"{'case':<18} {'bytes':>7} {'loops':>7} {'min µs':>10} {'median µs':>10} "
          f"{'round trips/s':>14}")
    for case in selected:
        fn, size = round_trip_fn(case)
        timer = timeit.Timer(fn)
        loops, _ = timer.autorange()  # enough loops for >= 0.2 s per repeat
        times = [t / loops * 1e6 for t in timer.repeat(repeat=repeat, number=loops)]
        best, median = min(times), statistics.median(times)
        print(f"{case.name:<18} {size:>7} {loops:>7} {best:>10.1f} {median:>10.1f} "
              f"{1e6 / best:>14,.0f}")


def profile(selected: list[Case], top: int) -> None:
    for case in selected:
        fn, _ = round_trip_fn(case)
        loops, _ = timeit.Timer(fn).autorange()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(loops * 2):
            fn()
        profiler.disable()
        print(f"\n=== {case.name}: {loops * 2} round trips, top {top} by own time ===")
        pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats(
            pstats.SortKey.TIME).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="timing runs per case")
    parser.add_argument("--profile", action="store_true", help="cProfile instead of timing")
    parser.add_argument("--top", type=int, default=15, help="functions shown with --profile")
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if not args.case or c.name in args.case]
    if not selected:
        parser.error(f"no such case; choose from {[c.name for c in cases()]}")
    if args.profile:
        profile(selected, args.top)
    else:
        bench(selected, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
