"""What an idle daemon does not import: the snapshot operations (qemud/appliance/snapshots)
come with the first call that needs them, which then works as it always did.

Watched from outside a real daemon, started as ``qemud`` is: with
``PYTHONPROFILEIMPORTTIME=1`` (``-X importtime``) Python writes one line to stderr for
every module it imports, when it imports it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import client
from protocol.constants import UndefineFlags
from tests.conftest import DaemonFactory
from tests.helpers.daemon import DaemonProcess

#: the modules of the snapshot operations; the duty (its wiring) is imported at start
SNAPSHOT_OPERATIONS = frozenset(
    f"qemud.appliance.snapshots.{name}"
    for name in ("operations", "records", "base", "create", "revert", "delete", "backup",
                 "snapshot_xml"))

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='{image}'/><target dev='vda' bus='virtio'/></disk></devices>
</domain>
"""

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="snapshots need qemu-img")


def operations_imported(daemon: DaemonProcess, since: int = 0) -> set[str]:
    return daemon.imported_modules(since) & SNAPSHOT_OPERATIONS


@pytest.fixture
def daemon(daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch) -> DaemonProcess:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the daemon inherits it
    return daemon_factory()


def define(conn: client.Connection, tmp_path: Path, name: str) -> client.Domain:
    image = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    return conn.define_xml(DOMAIN.format(name=name, image=image))


def test_the_first_snapshot_call_imports_the_operations(daemon: DaemonProcess,
                                                         tmp_path: Path) -> None:
    assert "qemud.appliance.snapshots.duty" in daemon.imported_modules()  # it reports
    with daemon.connect() as conn:
        dom = define(conn, tmp_path, "lazy")
        assert operations_imported(daemon) == set()
        assert dom.snapshots() == []
        assert operations_imported(daemon) == SNAPSHOT_OPERATIONS
        dom.snapshot_create("s1")
        # node-name tokens are os.urandom, not secrets: no OpenSSL (libcrypto, ~4 MiB)
        # in a daemon without a TLS listener
        assert "_hashlib" not in daemon.imported_modules()
        assert [s.name for s in dom.snapshots()] == ["s1"]
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)


def test_an_undefine_after_a_restart_still_keeps_the_snapshot_rule(daemon: DaemonProcess,
                                                                   tmp_path: Path) -> None:
    """The undefine check is the first use here: it loads the operations and refuses, as
    libvirt does, to drop an inactive domain's snapshots without the flag."""
    with daemon.connect() as conn:
        define(conn, tmp_path, "kept").snapshot_create("s1")
    daemon.stop()
    offset = len(daemon.stderr_text())
    daemon.start()
    assert operations_imported(daemon, offset) == set()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name("kept")
        with pytest.raises(client.OperationInvalid, match="with 1 snapshots"):
            dom.undefine()
        assert operations_imported(daemon, offset) == SNAPSHOT_OPERATIONS
        dom.undefine(UndefineFlags.SNAPSHOTS_METADATA)
    assert not (daemon.state_dir / "snapshots" / "kept" / "snapshots.json").exists()


#: the image operations' modules; the duty and its paths (``layout``) are imported at start
IMAGE_OPERATIONS = frozenset(
    f"qemud.appliance.images.{name}"
    for name in ("operations", "base", "descriptor", "store", "importer", "deploy", "update"))


def test_the_first_image_call_imports_the_image_operations(daemon: DaemonProcess,
                                                           tmp_path: Path) -> None:
    from client import appliance_images
    assert {"qemud.appliance.images.duty", "qemud.appliance.images.layout"} <= \
        daemon.imported_modules()
    with daemon.connect() as conn:
        define(conn, tmp_path, "plain").undefine()
        assert daemon.imported_modules() & IMAGE_OPERATIONS == set()
        assert appliance_images.list_appliances(conn) == []
        assert daemon.imported_modules() & IMAGE_OPERATIONS == IMAGE_OPERATIONS
