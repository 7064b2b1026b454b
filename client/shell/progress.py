"""A spinner with elapsed time on stderr while a long call waits — only on a terminal."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

_FRAMES = "|/-\\"


class Progress:
    """``with Progress(sys.stderr, "Saving domain 'demo'"): dom.save(path)``.

    Draws ``Saving domain 'demo' ... 3.4 s |`` every ``interval`` seconds from a thread
    and erases it afterwards. Does nothing at all when ``stream`` is not a terminal, so
    piped or captured output never contains it.
    """

    def __init__(self, stream: TextIO, label: str, interval: float = 0.1,
                 force: bool | None = None) -> None:
        self.stream = stream
        self.label = label
        self.interval = interval
        if force is None:
            try:
                force = stream.isatty()
            except (AttributeError, ValueError):
                force = False
        self.enabled = force
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self.frames = 0

    def _draw(self, final: bool = False) -> None:
        if final:
            self.stream.write("\r\x1b[K")
        else:
            elapsed = time.monotonic() - self._start
            frame = _FRAMES[self.frames % len(_FRAMES)]
            self.stream.write(f"\r{self.label} ... {elapsed:.1f} s {frame}\x1b[K")
            self.frames += 1
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._start = time.monotonic()
            self._draw()
            self._thread = threading.Thread(target=self._run, name="qemush-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._draw(final=True)
