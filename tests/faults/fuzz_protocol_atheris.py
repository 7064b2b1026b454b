#!/usr/bin/env python3
"""Coverage-guided fuzzing of the protocol layer with atheris (run by hand, not in CI).

    .venv/bin/pip install atheris
    .venv/bin/python tests/faults/fuzz_protocol_atheris.py -max_total_time=300
    .venv/bin/python tests/faults/fuzz_protocol_atheris.py --write-seeds corpus_dir/
    .venv/bin/python tests/faults/fuzz_protocol_atheris.py -max_total_time=300 corpus_dir/

Start from the seeds (one valid CALL frame per procedure, with and without a HELLO in
front): without them libFuzzer spends minutes finding the program magic.

What it drives, in-process (the sans-IO layer the daemon feeds every byte it reads to):
the first input byte chooses whether the server-side :class:`protocol.Connection` has
already negotiated a version (as after HELLO) and how the rest is split into reads; the
rest is fed to it and drained with ``next_message()`` until it wants more data, sees the
end, or raises. The property checked: only :class:`protocol.ProtocolError` may come out
(anything else is a crash the server would log as a bug), a refused frame never leaves
the connection usable when the error says fatal, and every decoded call re-encodes to
bytes that decode to the same call. The daemon-level fuzz test (test_fuzz_protocol.py)
covers the server and dispatcher around it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # noqa: E402

with atheris.instrument_imports():
    # Malformed payloads go to the construct codec, which protocol imports only on first
    # need (after this block, uninstrumented): import it here so that it is instrumented.
    import construct  # noqa: E402,F401

    import protocol.reference  # noqa: E402,F401
    from protocol import (  # noqa: E402
        CLOSED,
        CURRENT_VERSION,
        NEED_DATA,
        Call,
        Connection,
        ProtocolError,
        Role,
    )
    from protocol.errors import LocalProtocolError  # noqa: E402


def _reencode(call: Call) -> None:
    client = Connection(Role.CLIENT)
    client.version = CURRENT_VERSION
    try:
        data = client.send(call)
    except LocalProtocolError:
        return  # e.g. decoded values outside what the encoder accepts: not a crash
    server = Connection(Role.SERVER)
    server.version = CURRENT_VERSION
    server.receive_data(data)
    again = server.next_message()
    assert again == call, (call, again)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    control, body = data[0], data[1:]
    conn = Connection(Role.SERVER, max_frame=64 * 1024)
    if control & 1:
        conn.version = CURRENT_VERSION
    chunk = (control >> 1) or len(body) or 1  # read sizes, as a socket would split them
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] + [b""]
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            try:
                msg = conn.next_message()
            except ProtocolError as exc:
                if exc.fatal:
                    try:
                        conn.next_message()
                    except ProtocolError:
                        return
                    raise AssertionError("connection usable after a fatal error") from None
                continue
            if msg is NEED_DATA or msg is CLOSED:
                break
            if isinstance(msg, Call) and conn.version is not None:
                _reencode(msg)


def write_seeds(directory: Path) -> None:
    from tests.faults.fuzz_seeds import seed_frames
    from tests.qemud.wire import hello_frame
    directory.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(seed_frames()):
        (directory / f"seed-negotiated-{i}").write_bytes(b"\x01" + frame)
        (directory / f"seed-hello-{i}").write_bytes(b"\x00" + hello_frame() + frame)
    print(f"wrote {2 * len(seed_frames())} seeds to {directory}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
