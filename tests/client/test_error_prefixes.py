"""Error messages read as libvirt's: each code's prefix (virErrorMsg in libvirt's
src/util/virerror.c) is put in one place, qemud/errors.py, so that the client's
``str(exc)`` and qemush's ``error:`` line are what virsh prints.

The prefixes below are copied from libvirt's table, not from qemud's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from protocol.constants import ErrorCode
from qemud import errors as E
from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

DETAIL = "domain 'web' is already running"


@pytest.mark.parametrize("cls, prefix", [
    (E.OperationInvalid, "Requested operation is not valid: "),
    (E.OperationFailed, "operation failed: "),
    (E.ConfigUnsupported, "unsupported configuration: "),
    (E.OperationDenied, "operation forbidden: "),
    (E.InternalError, "internal error: "),
    (E.OperationTimeout, "Timed out during operation: "),
    (E.NoDomain, "Domain not found: "),
    (E.XMLError, "XML error: "),
    (E.InvalidArg, "invalid argument: "),
    (E.OperationUnsupported, "Operation not supported: "),
    (E.NoSnapshot, "Domain snapshot not found: "),
    (E.ArgumentUnsupported, "argument unsupported: "),
])
def test_the_daemons_errors_carry_libvirts_prefix_for_their_code(
        cls: type[E.QemudError], prefix: str) -> None:
    exc = cls(DETAIL)
    assert exc.message == str(exc) == prefix + DETAIL
    assert exc.detail == DETAIL


def test_the_prefix_never_stands_twice() -> None:
    inner = E.OperationFailed("qemu-img said no")
    # an error of the same code passed on whole, or a detail that says the words itself
    assert E.OperationFailed(f"{inner.message}; the disks are as they were").message == \
        "operation failed: qemu-img said no; the disks are as they were"
    assert E.InternalError("internal error in DOMAIN_CREATE: KeyError('x')").message == \
        "internal error in DOMAIN_CREATE: KeyError('x')"
    assert E.NoDomain("domain not found: no domain with matching name 'x'").message == \
        "domain not found: no domain with matching name 'x'"


@pytest.mark.parametrize("exc", [
    E.DomainExists("operation failed: domain 'web' already exists with uuid 1234"),
    E.SystemCallFailed("Failed to terminate process 42 with SIGTERM: Device or resource "
                       "busy"),
    E.ConfigError("/etc/qemud.toml: unknown section [bogus]"),  # the daemon's own
    E.QemudError("cannot listen on /run/qemud.sock: Address in use"),  # start-up
    E.AlreadyRunning("another qemud (pid 42) is already running"),
])
def test_codes_whose_format_is_no_plain_prefix_keep_the_detail(exc: E.QemudError) -> None:
    assert exc.message == exc.detail


@pytest.mark.integration
def test_starting_a_running_domain_reads_as_virsh(daemon: DaemonProcess, qemush: Qemush,
                                                  tmp_path: Path) -> None:
    xml = tmp_path / "pfx.xml"
    xml.write_text("<domain type='qemu'><name>pfx</name><memory unit='MiB'>64</memory>"
                   "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n")
    u = daemon.uri
    ok(qemush("-c", u, "define", str(xml)))
    ok(qemush("-c", u, "start", "pfx"))
    try:
        proc = qemush("-c", u, "start", "pfx")
        assert (proc.returncode, proc.stdout) == (1, "")
        assert proc.stderr == ("error: Failed to start domain 'pfx'\n"
                               "error: Requested operation is not valid: domain 'pfx' is "
                               "already running\n")
        with daemon.connect() as conn:
            with pytest.raises(client.OperationInvalid) as info:
                conn.lookup("pfx").create()
        assert info.value.code == ErrorCode.OPERATION_INVALID
        assert str(info.value) == info.value.message == \
            "Requested operation is not valid: domain 'pfx' is already running"
    finally:
        ok(qemush("-c", u, "destroy", "pfx"))
        ok(qemush("-c", u, "undefine", "pfx"))
