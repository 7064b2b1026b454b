"""Error mapping: daemon error payloads -> typed client exceptions -> qemush's messages."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from client import errors as E
from client.shell.context import Shell
from client.shell.main import execute
from client.shell.registry import REGISTRY, Args, Command, CommandError
from protocol.constants import ErrorCode, ErrorDomain, ErrorLevel
from protocol.errors import BadPayload, LocalProtocolError, ProtocolError
from protocol.payloads import ErrorPayload


@pytest.mark.parametrize("code, cls", [
    (ErrorCode.NO_DOMAIN, E.NoDomainError),
    (ErrorCode.DOM_EXIST, E.DomainExistsError),
    (ErrorCode.OPERATION_INVALID, E.OperationInvalid),
    (ErrorCode.OPERATION_DENIED, E.ReadOnlyError),
    (ErrorCode.INVALID_ARG, E.InvalidArgError),
    (ErrorCode.XML_ERROR, E.XMLError),
    (ErrorCode.XML_DETAIL, E.XMLError),
    (ErrorCode.OPERATION_FAILED, E.OperationFailed),
    (ErrorCode.OPERATION_TIMEOUT, E.OperationTimeout),
    (ErrorCode.NO_DOMAIN_SNAPSHOT, E.NoSnapshotError),
    (ErrorCode.NO_SUPPORT, E.NotSupportedError),
    (ErrorCode.OPERATION_UNSUPPORTED, E.NotSupportedError),
    (ErrorCode.AUTH_FAILED, E.AuthError),
    (ErrorCode.ACCESS_DENIED, E.AuthError),
    (ErrorCode.CONFIG_UNSUPPORTED, E.ConfigUnsupportedError),
    (ErrorCode.LIMIT_EXCEEDED, E.LimitExceeded),
    (ErrorCode.INTERNAL_ERROR, E.RemoteError),
    (ErrorCode.RESOURCE_BUSY, E.RemoteError),
    (9999, E.RemoteError),
])
def test_from_payload_maps_codes(code: int, cls: type[E.RemoteError]) -> None:
    exc = E.from_payload(ErrorPayload(int(code), int(ErrorDomain.QEMU),
                                      int(ErrorLevel.ERROR), "boom"))
    assert type(exc) is cls
    assert isinstance(exc, E.RemoteError)
    assert (exc.code, exc.domain, exc.level) == (code, ErrorDomain.QEMU, ErrorLevel.ERROR)
    assert exc.message == "boom" == str(exc)


def test_unsupported_version_is_a_protocol_error() -> None:
    exc = E.from_payload(ErrorPayload(int(ErrorCode.UNSUPPORTED_VERSION), 7, 2, "v9 only"))
    assert type(exc) is E.ProtocolVersionError
    assert not isinstance(exc, E.RemoteError)
    assert exc.message == "v9 only"


def test_codes_equal_libvirts() -> None:
    import libvirt  # a project dependency: the numbers are meant to be libvirt's

    assert ErrorCode.NO_DOMAIN == libvirt.VIR_ERR_NO_DOMAIN
    assert ErrorCode.OPERATION_DENIED == libvirt.VIR_ERR_OPERATION_DENIED
    assert ErrorCode.OPERATION_INVALID == libvirt.VIR_ERR_OPERATION_INVALID
    assert ErrorCode.NO_DOMAIN_SNAPSHOT == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT


def test_every_client_error_derives_from_the_root() -> None:
    for name in E.__dict__:
        obj = getattr(E, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == E.__name__:
            assert issubclass(obj, E.QemudClientError), name


# -- how qemush presents them ------------------------------------------------------------


class _Raising:
    """A throwaway command whose handler raises what the test says."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, sh: Shell, args: Args) -> None:
        raise self.exc


RunRaising = Callable[[BaseException], tuple[bool, str, str]]


@pytest.fixture
def run_raising(monkeypatch: pytest.MonkeyPatch) -> RunRaising:
    def run(exc: BaseException) -> tuple[bool, str, str]:
        cmd = Command("raise-it", "shell", "test", _Raising(exc), connect=False)
        monkeypatch.setitem(REGISTRY, "raise-it", cmd)
        out, err = io.StringIO(), io.StringIO()
        ok = execute(Shell(out=out, err=err), ["raise-it"])
        return ok, out.getvalue(), err.getvalue()

    return run


def test_command_error_lines_each_prefixed(run_raising: RunRaising) -> None:
    ok, out, err = run_raising(CommandError("failed to get domain 'x'", "domain not found"))
    assert not ok and out == ""
    assert err == "error: failed to get domain 'x'\nerror: domain not found\n"


@pytest.mark.parametrize("exc", [
    E.ReadOnlyError("operation forbidden: read-only connection", 29, 0),
    E.NoDomainError("domain not found: no domain with matching name 'x'", 42, 10),
    E.ConnectionLost("connection to qemud:///session lost: the daemon closed it"),
    E.NotSupportedError("procedure X is not supported by this daemon", 3, 0),
])
def test_library_errors_print_their_message(run_raising: RunRaising,
                                             exc: E.QemudClientError) -> None:
    ok, _, err = run_raising(exc)
    assert not ok
    assert err == f"error: {exc.message}\n"


def test_failing_context_wraps_daemon_message() -> None:
    sh = Shell(out=io.StringIO(), err=io.StringIO())
    with pytest.raises(CommandError) as info, sh.failing("Failed to start domain 'demo'"):
        raise E.OperationInvalid("domain is already running", 55, 10)
    assert info.value.lines == ["Failed to start domain 'demo'", "domain is already running"]


def test_connect_failure_is_virsh_worded(tmp_path: Path) -> None:
    sh = Shell(uri=f"qemud+unix:///session?socket={tmp_path}/nope",
               out=io.StringIO(), err=io.StringIO())
    with pytest.raises(CommandError) as info:
        sh.conn()
    assert info.value.lines[0] == "failed to connect to the hypervisor"
    assert "does not exist" in info.value.lines[1]


# -- protocol-level errors never end the session with a traceback (QA lifecycle A2) -------


@pytest.mark.parametrize("exc", [
    LocalProtocolError("cannot encode XMLFlagsArgs: object failed validation: 5000192"),
    BadPayload("malformed payload: too short"),
])
def test_protocol_errors_print_their_message(run_raising: RunRaising,
                                             exc: ProtocolError) -> None:
    ok, _, err = run_raising(exc)
    assert not ok
    assert err == f"error: protocol error: {exc.message}\n"


def test_failing_context_wraps_protocol_errors() -> None:
    sh = Shell(out=io.StringIO(), err=io.StringIO())
    with pytest.raises(CommandError) as info, sh.failing("Failed to define domain from x"):
        raise LocalProtocolError("message of 5000000 bytes exceeds the frame limit")
    assert info.value.lines == ["Failed to define domain from x", "protocol error: message "
                                "of 5000000 bytes exceeds the frame limit"]


def test_invalid_call_is_a_client_error(run_raising: RunRaising) -> None:
    ok, _, err = run_raising(E.InvalidCall("cannot send DOMAIN_DEFINE_XML: too big",
                                           "DOMAIN_DEFINE_XML"))
    assert not ok and err == "error: cannot send DOMAIN_DEFINE_XML: too big\n"
