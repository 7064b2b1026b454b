"""A blocking QMP client for tests: a plain socket driving QMPProtocol.

The daemon drives the protocol from its event loop; tests just need to talk
to one QEMU, so this wraps the same sans-IO state machine around a blocking
socket with a timeout.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from qemud.qemu.qmp import QMPErrorReply, QMPEvent, QMPGreeting, QMPProtocol, QMPReturn, RunState


class QMPTestClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(str(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                # QEMU binds the socket a moment before it listens on it.
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.proto = QMPProtocol()
        self.events: list[QMPEvent] = []
        self.greeting = self._greeting()

    def _pump(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""  # QEMU exited with unread input: same as EOF
        self.proto.receive_data(data)

    def _greeting(self) -> QMPGreeting:
        while True:
            msg = self.proto.next_event()
            if isinstance(msg, QMPGreeting):
                return msg
            self._pump()

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send a command; return its value or raise AssertionError on an error reply."""
        cmd_id, data = self.proto.command(name, arguments)
        self.sock.sendall(data)
        while True:
            msg = self.proto.next_event()
            if msg is None:
                if self.proto.state is RunState.CLOSED:
                    raise ConnectionError(f"connection closed waiting for {name}")
                self._pump()
            elif isinstance(msg, QMPEvent):
                self.events.append(msg)
            elif isinstance(msg, QMPReturn | QMPErrorReply) and msg.id == cmd_id:
                if isinstance(msg, QMPErrorReply):
                    raise AssertionError(f"{name}: {msg.error_class}: {msg.desc}")
                return msg.value

    def wait_event(self, name: str) -> QMPEvent:
        while True:
            for event in self.events:
                if event.name == name:
                    self.events.remove(event)
                    return event
            msg = self.proto.next_event()
            if msg is None:
                self._pump()
            elif isinstance(msg, QMPEvent):
                self.events.append(msg)

    def read_to_eof(self) -> None:
        while self.proto.state is not RunState.CLOSED:
            self._pump()
            while (msg := self.proto.next_event()) is not None:
                if isinstance(msg, QMPEvent):
                    self.events.append(msg)

    def close(self) -> None:
        self.sock.close()


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"QEMU exited with {proc.returncode}: {err.decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"QEMU did not create {path} within {timeout} s")
        time.sleep(0.01)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)
