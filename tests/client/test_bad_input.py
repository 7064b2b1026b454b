"""Bad input through qemush and the client library: text the domain XML cannot hold,
change-media's checks, relative save and restore paths.

A control character in a description, title, new name or media path used to reach lxml
and come back as "internal error ... ValueError"; change-media took a relative path
(which a define refuses) into the persistent definition, replaced media on ``--insert``
and "ejected" an empty drive. virsh refuses the last two itself, with these words. A
relative save or restore path was taken against the daemon's working directory; the
client makes it absolute against its own, as libvirt's library does.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import client
import protocol as P
from client.domain import AFFECT_CONFIG, AFFECT_LIVE
from protocol import payloads as pl
from tests.client.conftest import Qemush, ok
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.integration

GUEST = """<domain type='qemu'>
  <name>media</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
  </devices>
</domain>
"""


def refused(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines of a run that failed."""
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    return proc.stderr.splitlines()


@pytest.fixture
def defined(daemon: DaemonProcess) -> Iterator[client.Domain]:
    with daemon.connect() as conn:
        yield conn.define_xml(GUEST)


def inactive_xml(daemon: DaemonProcess) -> str:
    with daemon.connect() as conn:
        return conn.lookup_by_name("media").xml(client.XML_INACTIVE)


def test_control_characters_are_refused_naming_the_character(
        daemon: DaemonProcess, qemush: Qemush, defined: client.Domain) -> None:
    u = daemon.uri
    before = inactive_xml(daemon)
    assert refused(qemush("-c", u, "desc", "media", "--config", "x\x01y")) == [
        "error: Failed to set new domain description",
        "error: invalid argument: the description cannot hold U+0001: XML has no such "
        "character"]
    assert refused(qemush("-c", u, "desc", "media", "--config", "--title", "x\x1by"))[1] \
        == "error: invalid argument: the title cannot hold U+001B: XML has no such character"
    lines = refused(qemush("-c", u, "domrename", "media", "a\x01b"))
    assert lines[-1] == ("error: XML error: name: text cannot hold U+0001: XML has no such "
                         "character")
    lines = refused(qemush("-c", u, "change-media", "media", "sda", "/tmp/a\x01b",
                           "--config"))
    assert lines[-1] == ("error: invalid argument: the media source cannot hold U+0001: "
                         "XML has no such character")
    assert inactive_xml(daemon) == before  # nothing changed
    assert "crashed" not in daemon.log_text()
    # tab and newline are text XML holds
    ok(qemush("-c", u, "desc", "media", "--config", "line 1\n\tline 2"))
    assert "line 1\n\tline 2" in ok(qemush("-c", u, "desc", "media", "--config"))


def test_change_media_checks(daemon: DaemonProcess, qemush: Qemush,
                             defined: client.Domain, tmp_path: Path) -> None:
    u = daemon.uri
    one, two = tmp_path / "one.iso", tmp_path / "two.iso"
    lines = refused(qemush("-c", u, "change-media", "media", "sda", "--eject", "--config"))
    assert lines == ["error: The disk device 'sda' doesn't have media"]
    lines = refused(qemush("-c", u, "change-media", "media", "sda", "relative.iso",
                           "--insert", "--config"))
    assert lines[-1] == ("error: invalid argument: the media source must be an absolute "
                         "path, got 'relative.iso'")
    assert "<source" not in inactive_xml(daemon)
    assert ok(qemush("-c", u, "change-media", "media", "sda", str(one), "--insert",
                     "--config")) == "Successfully inserted media.\n"
    lines = refused(qemush("-c", u, "change-media", "media", "sda", str(two), "--insert",
                           "--config"))
    assert lines == ["error: The disk device 'sda' already has media"]
    assert f"<source file='{one}'/>" in inactive_xml(daemon)
    assert ok(qemush("-c", u, "change-media", "media", "sda", str(two), "--update",
                     "--config")) == "Successfully updated media.\n"
    assert f"<source file='{two}'/>" in inactive_xml(daemon)
    # --update without a source takes the medium out, and says "updated" as virsh does
    assert ok(qemush("-c", u, "change-media", "media", "sda", "--update", "--config")) \
        == "Successfully updated media.\n"
    assert "<source" not in inactive_xml(daemon)


def test_device_calls_refuse_flags_they_do_not_act_on(
        daemon: DaemonProcess, defined: client.Domain, tmp_path: Path) -> None:
    """As libvirt's virCheckFlags in qemuDomainAttachDeviceFlags and
    qemuDomainDetachDeviceFlags (and the update-device path a media change is in
    libvirt): a bit beyond LIVE and CONFIG (and FORCE, for a medium) is refused, and
    nothing changes; before, it was ignored."""
    before = inactive_xml(daemon)
    disk = (f"<disk type='file' device='disk'><source file='{tmp_path}/d.img'/>"
            "<target dev='vdb' bus='virtio'/></disk>")
    for call, function in (
            (lambda: defined.attach_device(disk, AFFECT_CONFIG | 0x40),
             "qemuDomainAttachDeviceFlags"),
            (lambda: defined.detach_device(disk, AFFECT_CONFIG | 0x40),
             "qemuDomainDetachDeviceFlags"),
            (lambda: defined.change_media("sda", str(tmp_path / "m.iso"),
                                          AFFECT_CONFIG | 0x40),
             "qemuDomainUpdateDeviceFlags")):
        with pytest.raises(client.InvalidArgError,
                           match=rf"^invalid argument: unsupported flags \(0x40\) in "
                                 rf"function {function}$"):
            call()
    assert inactive_xml(daemon) == before
    defined.change_media("sda", str(tmp_path / "m.iso"), AFFECT_CONFIG | 4)  # FORCE
    assert f"<source file='{tmp_path}/m.iso'/>" in inactive_xml(daemon)


def test_a_medium_qemu_refuses_leaves_the_persistent_definition(
        daemon: DaemonProcess, defined: client.Domain, tmp_path: Path) -> None:
    """--live --config: the live drive first, as libvirt; QEMU cannot open the file, so
    neither definition changes."""
    defined.create()
    try:
        with pytest.raises(client.QemudClientError, match="missing.iso"):
            defined.change_media("sda", str(tmp_path / "missing.iso"),
                                 AFFECT_LIVE | AFFECT_CONFIG)
        assert "<source" not in inactive_xml(daemon)
        assert "<source" not in defined.xml()
        present = tmp_path / "present.iso"
        present.write_bytes(b"\0" * 65536)
        defined.change_media("sda", str(present), AFFECT_LIVE | AFFECT_CONFIG)
        assert f"<source file='{present}'" in inactive_xml(daemon)
        assert f"<source file='{present}'" in defined.xml()
    finally:
        defined.destroy()


def test_save_and_restore_paths_are_the_callers(daemon: DaemonProcess, defined: client.Domain,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    defined.create()
    monkeypatch.chdir(tmp_path)
    defined.save("rel.save")
    assert (tmp_path / "rel.save").stat().st_size > 0
    with daemon.connect() as conn:
        # the daemon refuses a relative path it is given (another client library's)
        with pytest.raises(client.InvalidArgError,
                           match="^invalid argument: restore path must be absolute, got "
                                 "'rel.save'$"):
            conn._call(P.Procedure.DOMAIN_RESTORE, pl.RestoreArgs("rel.save", 0),
                       pl.DomainReply)
        restored = conn.restore("rel.save")
        assert restored.is_active()
        restored.destroy()
