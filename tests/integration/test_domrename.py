"""DOMAIN_RENAME (virsh domrename) against a real daemon: libvirt's rules and words, the
files that follow the name, the events a registered client sees, a daemon restart after
the rename, and the crash window (a rename cut short is finished or undone by the next
daemon, never leaving two definitions of one uuid)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
from client.appliance_images import factory_reset
from client.domain import SNAPSHOT_DELETE_METADATA_ONLY
from client.errors import InvalidArgError, NoDomainError, OperationFailed, OperationInvalid
from client.errors import XMLError as ClientXMLError
from protocol.constants import DefinedDetail, LifecycleEvent, UndefinedDetail
from qemud.appliance.images.store import VMState
from qemud.driver.rename import JOURNAL_PREFIX, RenamePlan
from qemud.driver.store import FAULT_ENV
from tests.helpers.daemon import DaemonProcess, qemush

pytestmark = pytest.mark.integration


def tiny(name: str, disk: Path | None = None) -> str:
    devices = "" if disk is None else (
        f"<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices>")
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>{devices}</domain>")


def make_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def shell(daemon: DaemonProcess, *args: str, ok: bool = True) -> str:
    done = qemush(daemon, *args)
    assert (done.returncode == 0) is ok, (args, done.stdout, done.stderr)
    return done.stdout if ok else done.stderr


def files(root: Path) -> list[str]:
    """Every file below ``root`` (relative), but the daemon's lock."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != ".qemud.lock")


def lifecycle_events(conn: client.Connection, count: int) -> list[tuple[str, str, int, int]]:
    out = []
    while len(out) < count:
        record = conn.next_event(10)
        assert record is not None, f"only {out} within 10 s"
        out.append((record.domain.name, record.domain.uuid, record.event, record.detail))
    return out


@pytest.fixture
def conn(daemon: DaemonProcess) -> Iterator[client.Connection]:
    with daemon.connect() as c:
        yield c


def restart(daemon: DaemonProcess, env: dict[str, str] | None = None) -> None:
    daemon.stop()
    daemon.env = dict(env or {})
    daemon.start()


# -- a plain domain ------------------------------------------------------------------------

def test_domrename_plain_domain_events_and_restart(daemon: DaemonProcess,
                                                   conn: client.Connection) -> None:
    dom = conn.define_xml(tiny("rn-old"))
    with daemon.connect() as watcher:
        watcher.register_event(client.EventId.LIFECYCLE)
        assert shell(daemon, "domrename", "rn-old", "rn-new") == "Domain successfully renamed\n"
        assert lifecycle_events(watcher, 2) == [
            ("rn-old", dom.uuid, LifecycleEvent.UNDEFINED, UndefinedDetail.RENAMED),
            ("rn-new", dom.uuid, LifecycleEvent.DEFINED, DefinedDetail.RENAMED)]

    renamed = conn.lookup_by_name("rn-new")
    assert renamed.uuid == dom.uuid
    assert "<name>rn-new</name>" in renamed.xml(client.XML_INACTIVE)
    with pytest.raises(NoDomainError):
        conn.lookup_by_name("rn-old")
    assert conn.lookup_by_uuid(dom.uuid).name == "rn-new"
    assert files(daemon.config_dir) == ["domains/rn-new.xml"]
    assert "rn-new" in shell(daemon, "list", "--all") and \
        "rn-old" not in shell(daemon, "list", "--all")

    restart(daemon)
    with daemon.connect() as again:
        assert [(d.name, d.uuid) for d in again.list_all()] == [("rn-new", dom.uuid)]
    # and back: the old name is free again
    assert shell(daemon, "domrename", dom.uuid, "rn-old") == "Domain successfully renamed\n"
    assert files(daemon.config_dir) == ["domains/rn-old.xml"]


def test_rename_through_the_library_keeps_autostart_and_log(daemon: DaemonProcess,
                                                            conn: client.Connection) -> None:
    dom = conn.define_xml(tiny("auto-a"))
    dom.set_autostart(True)
    logs = daemon.log_dir / "qemu"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "auto-a.log").write_text("boot of auto-a\n")
    (logs / "auto-a.log.1").write_text("older boot of auto-a\n")

    dom.rename("auto-b")
    assert dom.name == "auto-b"  # the handle follows, as libvirt's virDomain does
    assert dom.autostart() is True
    assert conn.lookup_by_name("auto-b").autostart() is True
    assert files(daemon.config_dir) == ["autostart/auto-b", "domains/auto-b.xml"]
    assert (logs / "auto-b.log").read_text() == "boot of auto-a\n"
    assert (logs / "auto-b.log.1").read_text() == "older boot of auto-a\n"
    assert not (logs / "auto-a.log").exists() and not (logs / "auto-a.log.1").exists()
    assert "auto-b" in shell(daemon, "list", "--all", "--autostart")


def test_a_log_of_the_new_name_is_never_overwritten(daemon: DaemonProcess,
                                                    conn: client.Connection) -> None:
    conn.define_xml(tiny("log-a"))
    logs = daemon.log_dir / "qemu"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "log-a.log").write_text("a\n")
    (logs / "log-b.log").write_text("an earlier domain log-b\n")
    conn.lookup_by_name("log-a").rename("log-b")
    assert (logs / "log-b.log").read_text() == "an earlier domain log-b\n"
    assert (logs / "log-a.log").read_text() == "a\n"


# -- refusals (libvirt's words), nothing changed ---------------------------------------------

def test_refusals_change_nothing(daemon: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(tiny("ref-a"))
    conn.define_xml(tiny("ref-b"))
    before = files(daemon.root)
    cases: list[tuple[str, type[Exception], str, int]] = [
        ("ref-b", OperationInvalid,
         "Requested operation is not valid: domain with name 'ref-b' already exists", 0),
        ("ref-a", OperationInvalid,
         "Requested operation is not valid: Can't rename domain to itself", 0),
        ("a/b", ClientXMLError, "XML error: name a/b cannot contain '/'", 0),
        ("", ClientXMLError, "XML error: name: must not be empty", 0),
        ("..", ClientXMLError, "cannot be a domain name", 0),
        ("x" * 250, ClientXMLError, "too long", 0),
        ("ref-c", InvalidArgError, "unsupported flags (0x1) in function qemuDomainRename", 1),
    ]
    for new, error, words, flags in cases:
        with pytest.raises(error) as info:
            dom.rename(new, flags)
        assert words in info.value.message, (new, info.value.message)
    # virsh prints the daemon's error alone
    assert shell(daemon, "domrename", "ref-a", "ref-b", ok=False) == \
        "error: Requested operation is not valid: domain with name 'ref-b' already exists\n"
    assert dom.name == "ref-a" and conn.lookup_by_name("ref-a").uuid == dom.uuid
    after = files(daemon.root)
    assert [f for f in after if not f.startswith("log/")] == \
        [f for f in before if not f.startswith("log/")]


def test_a_definition_file_that_did_not_load_is_never_replaced(
        daemon: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(tiny("keep-a"))
    stray = daemon.config_dir / "domains" / "keep-b.xml"
    stray.write_text("<domain>not loadable</domain>\n")
    with pytest.raises(OperationInvalid, match="'keep-b' already exists: its definition"):
        dom.rename("keep-b")
    assert stray.read_text() == "<domain>not loadable</domain>\n"


def test_running_domain_refused(daemon: DaemonProcess, conn: client.Connection) -> None:
    dom = conn.define_xml(tiny("run-a"))
    dom.create(client.domain.START_PAUSED)
    try:
        with pytest.raises(OperationInvalid) as info:
            dom.rename("run-b")
        assert info.value.message == \
            "Requested operation is not valid: cannot rename active domain"
        assert conn.lookup_by_name("run-a").is_active()
    finally:
        dom.destroy()


def test_managed_save_image_refused(daemon: DaemonProcess, conn: client.Connection) -> None:
    image = daemon.state_dir / "save" / "ms-a.save"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"a managed save image left under this name")
    dom = conn.define_xml(tiny("ms-a"))
    assert dom.has_managed_save()
    with pytest.raises(OperationInvalid) as info:
        dom.rename("ms-b")
    assert info.value.message == ("Requested operation is not valid: domain with a managed "
                                  "saved state can't be renamed")
    assert image.is_file() and conn.lookup_by_name("ms-a").uuid == dom.uuid


def test_snapshots_refused_then_allowed_once_deleted(daemon: DaemonProcess,
                                                     conn: client.Connection,
                                                     tmp_path: Path) -> None:
    dom = conn.define_xml(tiny("snap-a", make_image(tmp_path / "snap-a.qcow2")))
    dom.snapshot_create("s1")
    with pytest.raises(OperationInvalid) as info:
        dom.rename("snap-b")
    assert info.value.message == \
        "Requested operation is not valid: cannot rename domain with snapshots"
    assert shell(daemon, "domrename", "snap-a", "snap-b", ok=False) == \
        "error: Requested operation is not valid: cannot rename domain with snapshots\n"
    assert [s.name for s in dom.snapshots()] == ["s1"]

    dom.snapshot_delete("s1")  # merged back: the record lists nothing any more
    old_record = daemon.state_dir / "snapshots" / "snap-a" / "snapshots.json"
    new_record = daemon.state_dir / "snapshots" / "snap-b" / "snapshots.json"
    assert json.loads(old_record.read_text())["snapshots"] == []
    dom.rename("snap-b")
    assert dom.snapshots() == []
    # the empty record followed the name
    assert not old_record.exists()
    data = json.loads(new_record.read_text())
    assert (data["domain"], data["uuid"]) == ("snap-b", dom.uuid)
    # snapshots work under the new name
    dom.snapshot_create("s2")
    assert [s.name for s in dom.snapshots()] == ["s2"]
    assert json.loads(new_record.read_text())["domain"] == "snap-b"


# -- appliance state ---------------------------------------------------------------------------

def deployed(daemon: DaemonProcess, conn: client.Connection, name: str
             ) -> tuple[client.Domain, Path]:
    """A domain as APPLIANCE_DEPLOY leaves one: its disk and state in <state_dir>/vms/NAME."""
    vm_dir = daemon.state_dir / "vms" / name
    disk = make_image(vm_dir / "vda.a.qcow2")
    dom = conn.define_xml(tiny(name, disk))
    state = VMState(vm=name, uuid=dom.uuid, appliance="demo", version="1.0", slot="a",
                    disks={"vda": {"class": "system", "path": str(disk)}},
                    previous={"version": "0.9", "slot": "b",
                              "system": {"vda": str(vm_dir / "vda.b.qcow2")}})
    (vm_dir / "appliance-state.json").write_text(state.to_json())
    return dom, vm_dir


def test_appliance_state_follows_the_name(daemon: DaemonProcess,
                                          conn: client.Connection) -> None:
    dom, old_dir = deployed(daemon, conn, "app-a")
    dom.rename("app-b")
    new_dir = daemon.state_dir / "vms" / "app-b"
    assert not old_dir.exists()
    assert (new_dir / "vda.a.qcow2").is_file()
    state = VMState.from_json((new_dir / "appliance-state.json").read_text())
    assert (state.vm, state.uuid) == ("app-b", dom.uuid)
    assert state.disks["vda"]["path"] == str(new_dir / "vda.a.qcow2")
    assert state.previous is not None
    assert state.previous["system"]["vda"] == str(new_dir / "vda.b.qcow2")
    assert f"<source file='{new_dir / 'vda.a.qcow2'}'/>" in dom.xml(client.XML_INACTIVE)
    # the images duty finds its state under the new name: a factory reset gets as far as
    # the image store (which has no 'demo' here), not "was not deployed from an appliance"
    with pytest.raises(client.QemudClientError, match="no appliance 'demo' in the image"):
        factory_reset(conn, dom)


def test_appliance_directory_of_the_new_name_refuses(daemon: DaemonProcess,
                                                     conn: client.Connection) -> None:
    dom, old_dir = deployed(daemon, conn, "busy-a")
    (daemon.state_dir / "vms" / "busy-b").mkdir()
    with pytest.raises(OperationInvalid, match="busy-b exists"):
        dom.rename("busy-b")
    assert (old_dir / "appliance-state.json").is_file()
    assert conn.lookup_by_name("busy-a").uuid == dom.uuid


# -- failures and crashes ----------------------------------------------------------------------

def test_a_failed_commit_undoes_every_move(daemon: DaemonProcess) -> None:
    """The new definition cannot be written (the daemon's fault hook, as a full disk):
    the call fails, and the appliance directory and the log are back under the old name."""
    restart(daemon, {FAULT_ENV: "domains/fail-b.xml"})
    with daemon.connect() as conn:
        dom, old_dir = deployed(daemon, conn, "fail-a")
        logs = daemon.log_dir / "qemu"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "fail-a.log").write_text("a\n")
        before = files(daemon.root)
        with pytest.raises(OperationFailed, match="nothing was changed"):
            dom.rename("fail-b")
        assert conn.lookup_by_name("fail-a").uuid == dom.uuid
        assert f"<source file='{old_dir / 'vda.a.qcow2'}'/>" in dom.xml(client.XML_INACTIVE)
    after = files(daemon.root)
    assert [f for f in after if not f.startswith(("log/", "qemud"))] == \
        [f for f in before if not f.startswith(("log/", "qemud"))]
    assert (logs / "fail-a.log").read_text() == "a\n"
    state = json.loads((old_dir / "appliance-state.json").read_text())
    assert state["vm"] == "fail-a"


def test_a_crash_after_the_commit_is_finished_by_the_next_daemon(daemon: DaemonProcess
                                                                  ) -> None:
    """The daemon is killed with the rename committed and its clean-up not done (the
    autostart flag of the new name could not be written: the fault hook; the old
    definition went before it): the next daemon finishes the rename before it loads
    anything, so the domain is defined once, under its new name, autostarted."""
    restart(daemon, {FAULT_ENV: "autostart/crash-b"})
    with daemon.connect() as conn:
        dom = conn.define_xml(tiny("crash-a"))
        dom.set_autostart(True)
        dom.rename("crash-b")  # renamed; its flag and record are left for the next start
    domains = daemon.config_dir / "domains"
    assert sorted(p.name for p in domains.iterdir() if p.name != ".qemud.lock") == [
        f"{JOURNAL_PREFIX}{dom.uuid}.json", "crash-b.xml"]
    assert files(daemon.config_dir) == [f"domains/{JOURNAL_PREFIX}{dom.uuid}.json",
                                        "domains/crash-b.xml"]  # (no flag of either name)
    daemon.signal(signal.SIGKILL)
    assert daemon.proc is not None
    daemon.proc.wait(10)

    daemon.env = {}
    daemon.start()
    with daemon.connect() as conn:
        assert [(d.name, d.uuid) for d in conn.list_all()] == [("crash-b", dom.uuid)]
        assert conn.lookup_by_name("crash-b").autostart() is True
    assert files(daemon.config_dir) == ["autostart/crash-b", "domains/crash-b.xml"]
    assert "a rename to 'crash-b' was interrupted; finished" in daemon.log_text()


def test_a_crash_before_the_commit_is_undone_by_the_next_daemon(daemon: DaemonProcess,
                                                                 conn: client.Connection
                                                                 ) -> None:
    """What a daemon killed after its moves and before the new definition was written
    leaves (its intent record, the directory already moved): the next daemon moves it
    back, and the domain is defined under its old name."""
    dom, old_dir = deployed(daemon, conn, "half-a")
    conn.close()
    daemon.stop()
    new_dir = daemon.state_dir / "vms" / "half-b"
    plan = RenamePlan(uuid=dom.uuid, old="half-a", new="half-b",
                      xml=tiny("half-b"), autostart=False,
                      moves=[[str(old_dir), str(new_dir)]],
                      records=[[str(new_dir / "appliance-state.json"), "vm", str(old_dir),
                                str(new_dir)]])
    (daemon.config_dir / "domains" / f"{JOURNAL_PREFIX}{dom.uuid}.json").write_text(
        plan.to_json())
    old_dir.rename(new_dir)

    daemon.start()
    with daemon.connect() as again:
        assert [(d.name, d.uuid) for d in again.list_all()] == [("half-a", dom.uuid)]
    assert (old_dir / "vda.a.qcow2").is_file() and not new_dir.exists()
    assert json.loads((old_dir / "appliance-state.json").read_text())["vm"] == "half-a"
    assert files(daemon.config_dir) == ["domains/half-a.xml"]
    assert "a rename to 'half-b' was interrupted; undone" in daemon.log_text()


def test_an_undo_leaves_what_the_rename_never_moved_alone(daemon: DaemonProcess,
                                                          conn: client.Connection) -> None:
    """A rename whose move found its destination taken (another VM's directory under
    the new name) and whose undo was cut short: the next daemon undoes it without
    touching that directory or rewriting its VM's state as the renamed domain's."""
    dom, old_dir = deployed(daemon, conn, "taken-a")
    conn.close()
    daemon.stop()
    new_dir = daemon.state_dir / "vms" / "taken-b"
    new_dir.mkdir()
    theirs = VMState(vm="taken-b", uuid="6a0d2c3e-9999-4c5b-9c1d-0123456789ab",
                     appliance="demo", version="2.0", slot="a",
                     disks={"vda": {"class": "system", "path": str(new_dir / "vda.a.qcow2")}})
    (new_dir / "appliance-state.json").write_text(theirs.to_json())
    plan = RenamePlan(uuid=dom.uuid, old="taken-a", new="taken-b", xml=tiny("taken-b"),
                      autostart=False, moves=[[str(old_dir), str(new_dir)]],
                      records=[[str(new_dir / "appliance-state.json"), "vm", str(old_dir),
                                str(new_dir)]])
    (daemon.config_dir / "domains" / f"{JOURNAL_PREFIX}{dom.uuid}.json").write_text(
        plan.to_json())

    daemon.start()
    with daemon.connect() as again:
        assert [(d.name, d.uuid) for d in again.list_all()] == [("taken-a", dom.uuid)]
    assert VMState.from_json((new_dir / "appliance-state.json").read_text()) == theirs
    assert json.loads((old_dir / "appliance-state.json").read_text())["vm"] == "taken-a"
    assert files(daemon.config_dir) == ["domains/taken-a.xml"]
    assert f"{old_dir} and {new_dir} are both there, so {old_dir} was never moved to " \
        f"{new_dir}" in daemon.log_text()
    assert "a rename to 'taken-b' was interrupted; undone" in daemon.log_text()


def test_a_domain_defined_under_the_old_name_meanwhile_survives_the_recovery(
        daemon: DaemonProcess) -> None:
    """A rename whose clean-up failed (the record stays) and a new domain then defined
    under the old name: the next daemon finishes the rename without touching the new
    domain's definition."""
    restart(daemon, {FAULT_ENV: "autostart/again-b"})
    with daemon.connect() as conn:
        dom = conn.define_xml(tiny("again-a"))
        dom.set_autostart(True)
        dom.rename("again-b")
        other = conn.define_xml(tiny("again-a"))
        assert other.uuid != dom.uuid
    restart(daemon)
    with daemon.connect() as conn:
        assert sorted((d.name, d.uuid) for d in conn.list_all()) == [
            ("again-a", other.uuid), ("again-b", dom.uuid)]
        assert conn.lookup_by_name("again-b").autostart() is True
        assert conn.lookup_by_name("again-a").autostart() is False
    assert files(daemon.config_dir) == ["autostart/again-b", "domains/again-a.xml",
                                        "domains/again-b.xml"]


def test_images_of_former_snapshots_refuse(daemon: DaemonProcess, conn: client.Connection,
                                           tmp_path: Path) -> None:
    """A metadata-only delete leaves the snapshot's images to the user, recorded in the
    domain's snapshot directory: the directory cannot follow the name (the qcow2 backing
    chains name it), so the rename is refused, saying why."""
    dom = conn.define_xml(tiny("kept-a", make_image(tmp_path / "kept-a.qcow2")))
    dom.snapshot_create("s1")
    dom.snapshot_delete("s1", SNAPSHOT_DELETE_METADATA_ONLY)
    assert dom.snapshots() == []
    with pytest.raises(OperationInvalid, match="still records disk images of its former "
                                               "snapshots"):
        dom.rename("kept-b")
    assert conn.lookup_by_name("kept-a").uuid == dom.uuid
    assert not (daemon.state_dir / "snapshots" / "kept-b").exists()
