"""QMPProtocol against a real QEMU (TCG, paused, no devices)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemud.qemu.qmp import QMPProtocol, RunState
from tests.qemu.qmpclient import QMPTestClient, stop_process, wait_for_socket

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
    ),
]


def state(proto: QMPProtocol) -> RunState:
    return proto.state


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-S",
            "-nodefaults",
            "-display", "none",
            "-qmp", f"unix:{sock},server=on,wait=off",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        stop_process(proc)


def test_conversation_with_real_qemu(qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = qemu
    client = QMPTestClient(sock)
    try:
        assert client.greeting.version.major >= 6
        assert state(client.proto) is RunState.NEGOTIATING
        assert client.execute("qmp_capabilities") == {}
        assert state(client.proto) is RunState.READY

        status = client.execute("query-status")
        assert status["status"] == "prelaunch"
        assert status["running"] is False

        assert client.execute("cont") == {}
        resume = client.wait_event("RESUME")
        assert resume.timestamp > 0
        assert client.execute("query-status")["running"] is True

        assert client.execute("stop") == {}
        client.wait_event("STOP")
        status = client.execute("query-status")
        assert (status["status"], status["running"]) == ("paused", False)

        # QEMU may close the socket right after answering quit.
        try:
            client.execute("quit")
        except ConnectionError:
            pass
        client.read_to_eof()
        assert state(client.proto) is RunState.CLOSED
        shutdown = [e for e in client.events if e.name == "SHUTDOWN"]
        assert shutdown and shutdown[0].data["reason"] == "host-qmp-quit"
    finally:
        client.close()
    assert proc.wait(timeout=10) == 0
