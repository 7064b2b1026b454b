"""A ``qemu-img`` that a test can hold: put first on a daemon's PATH, it waits while a
*hold* file exists (touching a *held* file to say it is waiting), then runs the real one.

That keeps a snapshot or backup job of the daemon in progress for as long as the test
needs (a live snapshot runs ``qemu-img create`` for its overlays), with no timing games.
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
exec "{real}" "$@"
"""


@dataclass(frozen=True)
class HeldQemuImg:
    """The wrapper in ``bin_dir``; ``hold`` holds every call, ``held`` says one waits."""

    bin_dir: Path
    hold: Path
    held: Path

    @classmethod
    def install(cls, root: Path) -> HeldQemuImg:
        real = shutil.which("qemu-img")
        assert real is not None, "qemu-img is needed"
        bin_dir = root / "bin"
        bin_dir.mkdir(exist_ok=True)
        made = cls(bin_dir, root / "hold", root / "held")
        wrapper = bin_dir / "qemu-img"
        wrapper.write_text(_WRAPPER.format(hold=made.hold, held=made.held, real=real))
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
