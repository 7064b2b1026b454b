"""The tool runner with a real event loop: outcomes, wording, nothing left open."""

from __future__ import annotations

import os
import time

import pytest

from qemud.dispatch import Deferred
from qemud.driver.tools import ToolFailed, ToolRunner, find_tool
from qemud.errors import OperationFailed
from qemud.loop import EventLoop


def wording(argv: list[str], code: int, stderr: str) -> str:
    return f"{argv[0]} said {stderr!r} and exited {code}"


def finish(loop: EventLoop, d: Deferred) -> Deferred:
    deadline = time.monotonic() + 10
    while not d.done and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert d.done
    return d


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stdout_kept_only_when_asked(loop: EventLoop) -> None:
    runner = ToolRunner(loop, wording)
    before = open_fds()
    script = ["/bin/sh", "-c", "echo out; echo err >&2"]
    assert finish(loop, runner.run(script, stdout=True)).result == "out\n"
    assert finish(loop, runner.run(script)).result is None
    assert open_fds() == before  # both temporary files closed


def test_failure_is_worded_by_the_caller(loop: EventLoop) -> None:
    runner = ToolRunner(loop, wording)
    d = finish(loop, runner.run(["/bin/sh", "-c", "echo oops >&2; exit 3"], "step one"))
    assert isinstance(d.error, ToolFailed) and isinstance(d.error, OperationFailed)
    assert d.error.detail == "step one: /bin/sh said 'oops' and exited 3"
    assert (d.error.exit_code, d.error.stderr) == (3, "oops")
    assert d.error.argv[0] == "/bin/sh"


def test_stdin_and_stdout_can_be_the_callers_descriptors(loop: EventLoop,
                                                         tmp_path) -> None:
    """A file the caller opened (and checked) is what the child reads and writes; the
    descriptors stay the caller's, open."""
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"abc")
    with open(source, "rb") as src, open(target, "wb") as dst:
        d = finish(loop, ToolRunner(loop, wording).run(["/bin/sh", "-c", "tr a-z A-Z"],
                                                       stdin=src.fileno(),
                                                       into=dst.fileno()))
        assert d.error is None and d.result is None
        os.fstat(src.fileno()), os.fstat(dst.fileno())  # (still open)
    assert target.read_bytes() == b"ABC"
    with pytest.raises(ValueError, match="stdout is either kept or written into"):
        ToolRunner(loop, wording).run(["/bin/true"], stdout=True, into=1)


def test_a_tool_that_cannot_start(loop: EventLoop) -> None:
    d = ToolRunner(loop, wording).run(["/nonexistent/tool", "x"], "unpacking")
    assert d.done and isinstance(d.error, ToolFailed)  # at once: nothing to reap
    assert d.error.detail.startswith("unpacking: cannot run /nonexistent/tool: ")
    assert d.error.exit_code is None


def test_find_tool() -> None:
    assert find_tool("sh", "for tests").endswith("/sh")
    with pytest.raises(OperationFailed, match="no-such-tool-x not found in PATH: it is "
                                              "needed for tests"):
        find_tool("no-such-tool-x", "for tests")
