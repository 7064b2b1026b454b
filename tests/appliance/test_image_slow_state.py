"""A deploy on a disk that takes its time: the VM's appliance state waits for its fsyncs
off the daemon's loop.

The daemon's state directory (image store, VM directories and their
``appliance-state.json``) is on a real FUSE file system whose fsyncs the test holds
(:mod:`tests.helpers.slowfs`). While a state write waits, other clients are answered and
the deploy's caller waits; the domain is defined only once the first state write (the
one with the ``deploying`` mark) is on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import client
from client import appliance_images as images
from tests.conftest import DaemonFactory
from tests.faults.slow_disk import held_until
from tests.helpers.daemon import wait_for
from tests.helpers.slowfs import SlowFS
from tests.helpers.threads import Background
from tests.integration.conftest import TestGuest

from .appliances import build_appliance, descriptor
from .appliances import work as work  # the module's directory for tarballs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tarball(work: Path, test_guest: TestGuest) -> Path:
    return build_appliance(work, test_guest, descriptor("1.0"))


#: a domain of no appliance, to rename
PLAIN_XML = ("<domain type='qemu'><name>plain-a</name><memory unit='MiB'>64</memory>"
             "<os><type arch='x86_64'>hvm</type></os></domain>")


def held_state_write(slowfs: SlowFS, vm: str) -> None:
    """Wait until the fsync of ``vm``'s state temp file is held; the others that come
    first (qemu-img's flush of a new overlay) are let go."""
    prefix = f"/state/vms/{vm}/.appliance-state.json."
    while True:
        held = slowfs.wait_held()
        if any(p.startswith(prefix) and p.endswith(".tmp") for p in held):
            return
        for path in held:
            slowfs.let(path)


def test_a_deploy_waits_for_its_state_writes_off_the_loop(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarball: Path) -> None:
    d = daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state"),
                                         "config_dir": str(slowfs.mount / "config")}})
    vm = "slow-state"
    state = slowfs.backing / "state" / "vms" / vm / "appliance-state.json"
    with d.connect() as other:
        assert images.import_appliance(other, str(tarball)) == "demo:1.0"
        plain = other.define_xml(PLAIN_XML)
        slowfs.hold()
        deploy = Background(d, lambda c: images.deploy(c, "demo", vm, "1.0"))
        try:
            held_state_write(slowfs, vm)  # the first one, marked "deploying"
            assert other.node_info().cpus >= 1  # the loop serves others meanwhile
            assert vm not in {dom.name for dom in other.list_domains()}  # not defined yet
            assert not state.exists()
            slowfs.let()
            # the define's own fsync: the name is still the deploy's
            held_until(slowfs, lambda path: path.startswith(f"/config/domains/.{vm}.xml."))
            assert vm not in {dom.name for dom in other.list_domains()}
            with pytest.raises(client.OperationInvalid,
                               match=f"domain with name '{vm}' already exists: an "
                                     "appliance is being deployed under it"):
                plain.rename(vm)
            with pytest.raises(client.DomainExistsError, match="being deployed under it"):
                other.define_xml(PLAIN_XML.replace("plain-a", vm))
            held_state_write(slowfs, vm)  # defined; the mark is being dropped
            assert other.node_info().cpus >= 1
            assert vm in {dom.name for dom in other.list_domains()}
            assert json.loads(state.read_text())["deploying"] is True
            # what the deploy still writes to (and undoes, should that write fail) stays
            deployed = other.lookup_by_name(vm)
            for call in (lambda: deployed.rename("moved"), deployed.undefine):
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain '{vm}' is busy: deploy in progress"):
                    call()
            assert not deploy.answered
        finally:
            slowfs.release()
        assert deploy.wait().name == vm
        assert "deploying" not in json.loads(state.read_text())


def test_a_deploy_under_a_name_a_rename_is_taking_is_refused(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarball: Path) -> None:
    """While a rename's files wait for the disk, the new name is taken for a deploy too:
    its directory would otherwise be where the rename moves the VM's."""
    d = daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state"),
                                         "config_dir": str(slowfs.mount / "config")}})
    with d.connect() as other:
        assert images.import_appliance(other, str(tarball)) == "demo:1.0"
        other.define_xml(PLAIN_XML)
        slowfs.hold()
        rename = Background(d, lambda c: c.lookup_by_name("plain-a").rename("plain-b"))
        try:
            [journal] = slowfs.wait_held()
            assert "/config/domains/..rename-" in journal
            with pytest.raises(client.DomainExistsError,
                               match="domain 'plain-b' already exists: domain 'plain-a' is "
                                     "being renamed to it"):
                images.deploy(other, "demo", "plain-b", "1.0")
            assert not (slowfs.backing / "state" / "vms" / "plain-b").exists()
        finally:
            slowfs.release()
        rename.wait()
        assert {dom.name for dom in other.list_domains()} == {"plain-b"}


def test_a_switch_left_by_a_failed_write_is_settled_off_the_loop(
        slowfs: SlowFS, daemon_factory: DaemonFactory, tarball: Path) -> None:
    """A state record still carrying the ``switch`` of an update whose last write failed
    is settled at the VM's next image call; its rewrite waits for the disk off the
    loop: the call is answered (here: refused, the VM being on that version already)
    while the settled record's fsync is held, and the next read sees the settled
    record before it lands."""
    d = daemon_factory(config={"paths": {"state_dir": str(slowfs.mount / "state")}})
    vm = "slow-settle"
    state = slowfs.backing / "state" / "vms" / vm / "appliance-state.json"
    with d.connect() as conn:
        assert images.import_appliance(conn, str(tarball)) == "demo:1.0"
        dom = images.deploy(conn, "demo", vm, "1.0")
        record = json.loads(state.read_text())
        # an update to 9.9 whose define never happened: its system disks are not the
        # definition's, so settling drops the switch and keeps 1.0
        switch = dict(record, version="9.9", disks={
            t: dict(disk, path=disk["path"] + ".never") for t, disk in
            record["disks"].items()})
        state.write_text(json.dumps(dict(record, switch=switch)))
        slowfs.hold()
        try:
            for _ in range(2):  # the second read sees the settled record in flight
                with pytest.raises(client.OperationInvalid,
                                   match=f"domain '{vm}' already runs demo 1.0"):
                    images.update(conn, dom, "1.0")
            held_state_write(slowfs, vm)
            assert "switch" in json.loads(state.read_text())  # until the write lands
        finally:
            slowfs.release()
        wait_for(lambda: "switch" not in json.loads(state.read_text()))
        assert json.loads(state.read_text())["version"] == "1.0"
    assert d.log_text().count(f"domain {vm}: an appliance image change to demo 9.9 was "
                              "cut short") == 1
