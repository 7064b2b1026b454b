"""DOMAIN_SCREENSHOT (``virsh screenshot``): what the guest's screen shows, as an image.

QEMU's ``screendump`` writes the image (PPM, as libvirt asks for it) into the guest's
private run directory before it answers; the daemon opens the file, unlinks it at once
(nothing is left behind, whatever happens next) and sends it to the client as STREAM
frames after the reply, which carries the MIME type, as libvirt's call returns it.

The file is read a chunk per loop turn while the client keeps up (a regular file cannot
be polled; it is in the page cache, QEMU has just written it), paced by
:class:`qemud.server.StreamPacing`, so a large screen never holds the loop, and a client
that does not read stops the reading instead of growing its queue without bound.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import Procedure, StreamAbort, StreamData, StreamEnd
from protocol import payloads as pl
from qemud.dispatch import Deferred, Handler, error_payload
from qemud.errors import InvalidArg, OperationFailed, OperationInvalid
from qemud.fileopen import WrongFileKind, open_for_reading
from qemud.server import StreamHandler, StreamPacing

from .flags import check_flags

if TYPE_CHECKING:
    from qemud.loop import Timer
    from qemud.server import Client

    from .driver import QemuDriver

__all__ = ["Screenshots", "PPM_MIME", "open_screendump", "remove_screendumps"]

log = logging.getLogger(__name__)

#: what QEMU's screendump writes by default, and libvirt's name for it
PPM_MIME = "image/x-portable-pixmap"
#: how long QEMU has to write the image
QMP_TIMEOUT = 30.0

_names = count(1)
#: the files QEMU's screendump writes for the daemon, in a guest's run directory
SCREENDUMP_GLOB = "screendump-*.ppm"


def remove_screendumps(run_dir: Path, keep: Collection[Path] = ()) -> None:
    """Remove the screendump files in ``run_dir`` but ``keep`` (those of calls QEMU has
    not answered yet): a call that timed out leaves the file QEMU writes after it (MBs,
    in ``/run``); the next screenshot of the guest, or its stop, removes it."""
    for path in run_dir.glob(SCREENDUMP_GLOB):
        if path not in keep:
            try:
                path.unlink()
            except OSError:
                pass


def open_screendump(path: str | os.PathLike[str]) -> int:
    """The image QEMU wrote, opened read-only without blocking the loop (whatever sits
    at the path, a FIFO put there by someone who can write the run directory, say: see
    :mod:`qemud.fileopen`), and refused unless it is a regular file. Raises
    :class:`OperationFailed` naming the cause."""
    try:
        return open_for_reading(path)[0]
    except WrongFileKind:
        raise OperationFailed(f"cannot open the screenshot QEMU wrote: '{path}' is not a "
                              "regular file") from None
    except OSError as exc:
        raise OperationFailed(f"cannot open the screenshot QEMU wrote: "
                              f"{exc.strerror or exc}") from None


class FileStream(StreamHandler):
    """Sends an open file to one client as STREAM frames, then STREAM_END; closes it."""

    def __init__(self, driver: QemuDriver, client: Client, serial: int, fd: int) -> None:
        self.loop = driver.loop
        self.server = driver.daemon.server
        self.client = client
        self.serial = serial
        self.fd = fd
        self.pacing = StreamPacing(driver.config)
        self.timer: Timer | None = None
        self.done = False
        client.streams[serial] = self

    def start(self) -> None:
        """From the next loop turn on (the call's reply goes out first)."""
        self.timer = self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.client.closed:
            self._close("client gone")
            return
        if self.pacing.paused(self.client):
            self.timer = self.loop.call_later(StreamPacing.RETRY, self._pump)
            return
        try:
            data = os.read(self.fd, self.pacing.chunk)
        except OSError as exc:
            self._close(f"read failed: {exc.strerror or exc}")
            self.server.send_stream(self.client, StreamAbort(
                Procedure.DOMAIN_SCREENSHOT, self.serial, error_payload(OperationFailed(
                    f"cannot read the screenshot: {exc.strerror or exc}"))))
            return
        if not data:
            self._close()
            self.server.send_stream(self.client, StreamEnd(Procedure.DOMAIN_SCREENSHOT,
                                                           self.serial))
            return
        self.server.send_stream(self.client, StreamData(Procedure.DOMAIN_SCREENSHOT,
                                                        self.serial, data))
        self.timer = self.loop.call_soon(self._pump)

    def _close(self, why: str = "") -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        os.close(self.fd)
        self.client.streams.pop(self.serial, None)
        if why:
            log.info("screenshot for client %s abandoned: %s", self.client.id, why)

    # -- StreamHandler: the client's side --------------------------------------------------

    def on_data(self, data: bytes) -> None:
        pass  # one way only

    def on_end(self) -> None:
        self._close("client ended the stream")


class Screenshots:
    """The handler of DOMAIN_SCREENSHOT."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        #: the screendump files of calls QEMU has not answered (nor timed out) yet
        self._pending: set[Path] = set()

    def handlers(self) -> dict[Procedure, Handler]:
        return {Procedure.DOMAIN_SCREENSHOT: self.screenshot}

    def screenshot(self, ctx: Any, args: pl.ScreenshotArgs) -> Deferred:
        """libvirt's qemuDomainScreenshot: the domain running, with a screen."""
        check_flags(args.flags, 0, "qemuDomainScreenshot")
        dom = self.driver._dom(args)
        self.driver.lifecycle.require_active(dom)
        assert dom.live is not None and dom.monitor is not None
        if not dom.live.graphics:
            raise OperationInvalid("no screens to take screenshot from")
        if args.screen != 0:
            raise InvalidArg(f"Screen ID {args.screen} too big (the guest has one screen)")
        client, serial = ctx, ctx.current_serial
        run_dir = self.driver.lifecycle.guest_paths(dom.name).run_dir
        remove_screendumps(run_dir, self._pending)
        path = run_dir / f"screendump-{next(_names)}.ppm"
        self._pending.add(path)
        out = Deferred()

        def written(d: Deferred) -> None:
            self._pending.discard(path)
            error, fd = d.error, -1
            if error is None:
                try:
                    fd = open_screendump(path)
                except OperationFailed as exc:
                    error = exc
            try:
                os.unlink(path)  # (the open fd keeps it readable)
            except OSError:
                pass
            if error is not None:
                out.fail(error)
                return
            stream = FileStream(self.driver, client, serial, fd)
            out.resolve(pl.StringReply(PPM_MIME))
            stream.start()

        dom.monitor.execute("screendump", {"filename": str(path)},
                            timeout=QMP_TIMEOUT).add_done_callback(written)
        return out
