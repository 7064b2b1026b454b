"""``appliance-deploy --start`` whose start fails: the VM was deployed (its disks and
definition are whole), only its start failed. The VM is kept, defined and shut off, and
the error says so; a start alone can be tried again (after ``setmem``, say). Before, the
reply read as a failed deploy ("Failed to deploy appliance ... cannot set up guest
memory") while the VM existed, and the same deploy again met "already exists".

The appliance asks for 200 TiB of memory: the descriptor and the host check let it
through, QEMU cannot set up that much.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client import appliance_images as images
from client.errors import OperationFailed
from protocol.constants import DomainState
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.conftest import TestGuest

from .appliances import build_appliance, descriptor, origin
from .appliances import work as work  # the module's directory for tarballs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-deploy-start"))) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def huge(qemud: DaemonProcess, work: Path, test_guest: TestGuest) -> str:
    path = build_appliance(work, test_guest, descriptor("1.0", name="huge", memory="200T"))
    with qemud.connect() as c:
        assert images.import_appliance(c, str(path)) == "huge:1.0"
    return "huge"


def deployed_vm(conn: client.Connection, qemud: DaemonProcess, vm: str) -> None:
    """``vm`` is defined, shut off, made from huge:1.0, its disks in place."""
    dom = conn.lookup_by_name(vm)
    assert dom.state()[0] == DomainState.SHUTOFF
    assert origin(dom.xml(client.XML_INACTIVE)) == ("huge", "1.0")
    vmdir = qemud.state_dir / "vms" / vm
    assert sorted(p.name for p in vmdir.glob("*.qcow2")) == [
        "vda.a.qcow2", "vdb.qcow2", "vdc.scratch.qcow2"]
    assert json.loads((vmdir / "appliance-state.json").read_text())["vm"] == vm


def test_shell_deploy_whose_start_fails_keeps_the_vm(qemud: DaemonProcess,
                                                      huge: str) -> None:
    r = qemush(qemud, "appliance-deploy", huge, "--as", "huge-vm", "--start")
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "error: Failed to deploy and start appliance 'huge' as 'huge-vm'", \
        r.stderr
    assert lines[1].startswith("error: operation failed: appliance 'huge' was deployed as "
                               "'huge-vm', but it did not start: "), r.stderr
    assert "cannot set up guest memory" in r.stderr
    try:
        with qemud.connect() as conn:
            deployed_vm(conn, qemud, "huge-vm")
        r = qemush(qemud, "list", "--all", "--name")
        assert "huge-vm" in r.stdout.split(), r.stdout
        r = qemush(qemud, "appliance-list", "--json")
        assert [i["vms"] for i in json.loads(r.stdout) if i["name"] == "huge"] == [
            ["huge-vm"]]
        # the deploy happened: deploying again under the name is refused as for any VM
        r = qemush(qemud, "appliance-deploy", huge, "--as", "huge-vm")
        assert r.returncode == 1 and "domain 'huge-vm' already exists" in r.stderr
    finally:
        r = qemush(qemud, "undefine", "huge-vm")
        assert r.returncode == 0, r.stderr


def test_library_deploy_whose_start_fails_keeps_the_vm(conn: client.Connection,
                                                        qemud: DaemonProcess,
                                                        huge: str) -> None:
    with pytest.raises(OperationFailed, match=r"^operation failed: appliance 'huge' was "
                       r"deployed as 'huge-lib', but it did not start: .*cannot set up "
                       r"guest memory"):
        images.deploy(conn, huge, "huge-lib", start=True)
    try:
        deployed_vm(conn, qemud, "huge-lib")
    finally:
        conn.lookup_by_name("huge-lib").undefine()
