"""Generator tasks: a multi-step operation written as one function that the loop drives.

An operation that waits for the disk, a tool or QEMU between its steps (an appliance
image update, a domain rename) yields the Deferred it waits for and is resumed, from a
fresh loop turn, with its result (an error is thrown in at the ``yield``). It reads as
the sequence it is, its ``try``/``finally`` still undo and release what it took, and
the loop serves everyone else in between.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from qemud.dispatch import Deferred
from qemud.errors import InternalError, OperationFailed, QemudError

if TYPE_CHECKING:
    from qemud.loop import EventLoop

__all__ = ["Task", "run_task"]

log = logging.getLogger(__name__)

#: a multi-step operation: yields the Deferreds it waits for (see :func:`run_task`)
Task = Generator[Deferred, Any, Any]


def run_task(loop: EventLoop, task: Task, what: str) -> Deferred:
    """Drive a generator that yields Deferreds; each result is sent back into it (an error
    is thrown in) from a fresh loop turn. The Deferred completes with its return value;
    an OSError the task lets out fails it as ``what`` with the cause and file named."""
    out = Deferred()

    def step(value: Any = None, error: QemudError | None = None) -> None:
        try:
            waiting = task.throw(error) if error is not None else task.send(value)
        except StopIteration as stop:
            out.resolve(stop.value)
            return
        except QemudError as exc:
            out.fail(exc)
            return
        except OSError as exc:
            log.warning("%s: %s", what, exc)
            out.fail(OperationFailed(f"{what}: {exc.strerror or exc}"
                                     + (f": {exc.filename}" if exc.filename else "")))
            return
        except Exception as exc:
            log.exception("%s crashed", what)
            out.fail(InternalError(f"internal error in {what}: {exc!r}"))
            return

        def resume(d: Deferred) -> None:
            loop.call_soon(lambda: step(d.result, d.error))
        waiting.add_done_callback(resume)

    step()
    return out
