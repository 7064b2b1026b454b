"""qemush on a pseudo-terminal: the prompt, readline completion and history."""

from __future__ import annotations

from pathlib import Path

from tests.client.pty_shell import PtyShell
from tests.helpers.daemon import DaemonProcess


def test_prompt_completion_and_history(daemon: DaemonProcess, shell_env: dict[str, str]
                                       ) -> None:
    with daemon.connect() as conn:
        hostname = conn.hostname()
    sh = PtyShell(["-c", daemon.uri], shell_env)
    try:
        sh.read_until(b"Welcome to qemush")
        sh.read_until(b"qemush # ")
        # readline completes "hostn" to "hostname" with Tab
        sh.send("hostn\t\n")
        sh.read_until(hostname.encode() + b"\r\n")
        sh.send("frobnicate\n")
        sh.read_until(b"error: unknown command: 'frobnicate'")
        sh.send("quit\n")
        assert sh.close() == 0
    except BaseException:
        sh.proc.kill()
        raise
    history = Path(shell_env["HOME"]) / ".qemush_history"
    assert history.read_text().splitlines()[-3:] == ["hostname", "frobnicate", "quit"]


def test_read_only_prompt_and_eof(daemon: DaemonProcess, shell_env: dict[str, str]) -> None:
    sh = PtyShell(["-r", "-c", daemon.uri], shell_env)
    try:
        sh.read_until(b"qemush > ")
        sh.send("\x04")  # Ctrl+D
        assert sh.close() == 0
    except BaseException:
        sh.proc.kill()
        raise
