"""Helpers for the client and qemush tests: run ``qemush`` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

Qemush = Callable[..., subprocess.CompletedProcess[str]]

READONLY_REFUSAL = "error: operation forbidden: read-only connection"


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout of a successful run (with a useful message when it was not)."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr == "", proc.stderr
    return proc.stdout


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """An environment that cannot reach the user's daemon or config by accident."""
    env = dict(os.environ)
    env.pop("QEMUD_DEFAULT_URI", None)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def qemush(shell_env: dict[str, str]) -> Qemush:
    """``qemush(*args, input=None, timeout=60)``: run ``python -m client.shell ARGS``."""

    def run(*args: str, input: str | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "client.shell", *args], input=input,
                              capture_output=True, text=True, timeout=timeout,
                              env=shell_env, cwd=REPO_ROOT,
                              stdin=None if input is not None else subprocess.DEVNULL)

    return run
