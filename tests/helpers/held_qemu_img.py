"""A ``qemu-img`` that a test can hold: put first on a daemon's PATH, it waits while a
*hold* file exists (touching a *held* file to say it is waiting), then runs the real one.

That keeps a snapshot or backup job of the daemon in progress for as long as the test
needs (a live snapshot runs ``qemu-img create`` for its overlays), with no timing games.
Any other command the daemon or its QEMU runs by name works the same way (``install(root,
"qemu-system-x86_64")``: a start held before QEMU runs), and a *fail* file makes the
wrapper fail instead of running the real command, once released.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HeldQemuImg"]

_WRAPPER = """#!/bin/sh
# qemu-img for the daemon under test: waits while {hold} exists (at most 120 s)
if [ -e "{hold}" ]; then
    touch "{held}"
    n=0
    while [ -e "{hold}" ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
fi
if [ -e "{fail}" ]; then
    echo "{command} (held wrapper): failing as the test asked" >&2
    exit 1
fi
exec "{real}" "$@"
"""


@dataclass(frozen=True)
class HeldQemuImg:
    """The wrapper in ``bin_dir``; ``hold`` holds every call, ``held`` says one waits,
    ``fail`` makes every call fail."""

    bin_dir: Path
    hold: Path
    held: Path
    fail: Path

    @classmethod
    def install(cls, root: Path, command: str = "qemu-img") -> HeldQemuImg:
        real = shutil.which(command)
        assert real is not None, f"{command} is needed"
        bin_dir = root / "bin"
        bin_dir.mkdir(exist_ok=True)
        made = cls(bin_dir, root / "hold", root / "held", root / "fail")
        wrapper = bin_dir / command
        wrapper.write_text(_WRAPPER.format(hold=made.hold, held=made.held, fail=made.fail,
                                           command=command, real=real))
        wrapper.chmod(0o755)
        return made

    def path_env(self) -> str:
        """PATH for the daemon: the wrapper first."""
        return f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"

    def start_holding(self) -> None:
        self.held.unlink(missing_ok=True)
        self.hold.touch()

    def release(self) -> None:
        self.hold.unlink(missing_ok=True)
