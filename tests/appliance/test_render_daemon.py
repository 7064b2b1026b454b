"""HOST_INSPECT and APPLIANCE_RENDER through a real daemon reading a fake host tree."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import client
from client import appliance
from tests.helpers.daemon import DaemonProcess
from tests.helpers.daemon import qemush as _qemush

from .conftest import TEMPLATES

DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def fake_host_daemon(daemon_factory: DaemonFactory, host_tree: Callable[[str], Path]
                     ) -> DaemonProcess:
    return daemon_factory(config={"appliance": {
        "inspect_root": str(host_tree("server-ht")), "host_reserve_mib": 1024}})


def test_host_inspect_reads_the_configured_tree(fake_host_daemon: DaemonProcess) -> None:
    with fake_host_daemon.connect() as conn:
        host = appliance.host_inspect(conn)
    assert host["memory_kib"] == 32768000
    assert (host["cores"], host["logical_cpus"], host["sockets"]) == (4, 8, 1)
    assert [n["name"] for n in host["nics"]] == ["eth0", "eth1", "eth10"]
    assert host["nics"][0]["mac"] == "00:1e:67:aa:bb:01"
    assert host["dmi"]["sys_vendor"] == "Acme Appliances Inc."


def test_host_inspect_allowed_read_only(fake_host_daemon: DaemonProcess) -> None:
    """A read-only client (any local user, on the 0666 socket) gets the inventory and
    renders, without the DMI fields the kernel lets only root read (the host's serial
    numbers and UUID), which the daemon, as root, can read."""
    with fake_host_daemon.connect(readonly=True) as conn:
        host = appliance.host_inspect(conn)
        assert host["cores"] == 4
        xml = appliance.render(conn, (TEMPLATES / "router.xml").read_text())
    assert "<vcpu>4</vcpu>" in xml
    assert host["dmi"]["sys_vendor"] == "Acme Appliances Inc."
    assert not {"product_serial", "product_uuid", "board_serial"} & set(host["dmi"])
    assert "SN12345" not in xml
    with fake_host_daemon.connect() as conn:  # (the admin's connection has them)
        assert appliance.host_inspect(conn)["dmi"]["product_serial"] == "SN12345"
        assert "SN12345" in appliance.render(conn, (TEMPLATES / "router.xml").read_text())


def test_render_then_define(fake_host_daemon: DaemonProcess) -> None:
    template = (TEMPLATES / "router.xml").read_text()
    with fake_host_daemon.connect() as conn:
        xml = appliance.render(conn, template)
        # host.reserve is 1024 MiB here: 32000 MiB - 1024 MiB
        assert "<memory unit='MiB'>30976</memory>" in xml
        assert "<entry name='serial'>SN12345</entry>" in xml
        assert "{{" not in xml and "qemud:formulas" not in xml
        dom = conn.define_xml(xml)
        defined = dom.xml(client.XML_INACTIVE)
    assert "<vcpu>4</vcpu>" in defined
    assert "00:1e:67:aa:bb:01" in defined  # the first NIC's physical MAC
    assert defined.count("<interface type='bridge'>") == 3
    assert "<smbios mode='sysinfo'/>" in defined and "<sysinfo type='smbios'>" in defined
    assert "guest-shutdown=\"shutdown-host\"" in defined  # the appliance metadata stays


def test_template_arithmetic_is_loaded_by_the_first_render(
        fake_host_daemon: DaemonProcess) -> None:
    """Exact template arithmetic (fractions, hence the _decimal extension, ~1 MiB) is not
    part of an idle daemon; the first render brings it in."""
    def decimal_mapped() -> bool:
        return "_decimal" in Path(f"/proc/{fake_host_daemon.pid()}/maps").read_text()

    with fake_host_daemon.connect() as conn:
        appliance.host_inspect(conn)
        assert not decimal_mapped()
        xml = appliance.render(conn, (TEMPLATES / "router.xml").read_text())
        assert "<memory unit='MiB'>30976</memory>" in xml
    assert decimal_mapped()


def test_render_errors_name_formula_and_position(fake_host_daemon: DaemonProcess) -> None:
    template = (TEMPLATES / "router.xml").read_text().replace(
        'value="min(host.cores, 8)"', 'value="min(host.cores, 8) * hots.cores"')
    with fake_host_daemon.connect() as conn:
        with pytest.raises(client.QemudClientError) as info:
            appliance.render(conn, template)
        message = str(info.value)
        assert "formula 'vcpus'" in message and "position 22" in message
        assert "unknown name 'hots.cores'" in message and "host.cores" in message
        # a rendered result that is not a valid domain is refused, saying so
        fractional = template.replace(" * hots.cores", "").replace(
            "<vcpu>{{vcpus}}</vcpu>", "<vcpu>{{vcpus / 3}}</vcpu>")
        with pytest.raises(client.QemudClientError, match="rendered template is not a valid"):
            appliance.render(conn, fractional)


def test_render_without_dmi(daemon_factory: DaemonFactory,
                            host_tree: Callable[[str], Path]) -> None:
    daemon = daemon_factory(config={"appliance": {"inspect_root": str(
        host_tree("nodmi-cpuinfo"))}})
    with daemon.connect() as conn:
        assert appliance.host_inspect(conn)["dmi"] is None
        xml = appliance.render(conn, (TEMPLATES / "router.xml").read_text())
        assert "sysinfo" not in xml and "smbios" not in xml
        conn.define_xml(xml)


def test_real_host_inspection(daemon: DaemonProcess) -> None:
    with daemon.connect() as conn:
        host = appliance.host_inspect(conn)
    assert host["memory_kib"] > 0 and host["cores"] >= 1
    assert host["logical_cpus"] >= host["cores"]


def test_bad_appliance_metadata_refused_at_define(daemon: DaemonProcess) -> None:
    xml = ("<domain type='qemu'><name>bad</name><memory unit='MiB'>64</memory>"
           "<metadata><qemud:appliance xmlns:qemud='http://qemud.org/xmlns/appliance/1'>"
           "<qemud:power guest-shutdown='explode'/></qemud:appliance></metadata>"
           "<os><type arch='x86_64'>hvm</type></os></domain>")
    with daemon.connect() as conn:
        with pytest.raises(client.QemudClientError, match="guest-shutdown: 'explode'"):
            conn.define_xml(xml)
        with pytest.raises(client.QemudClientError, match="needs a hook="):
            conn.define_xml(xml.replace("explode", "hook"))


def test_shell_appliance_generate_and_define(fake_host_daemon: DaemonProcess) -> None:
    template = str(TEMPLATES / "router.xml")
    shown = _qemush(fake_host_daemon, "appliance-generate", template)
    assert shown.returncode == 0, shown.stderr
    assert "<vcpu>4</vcpu>" in shown.stdout and "{{" not in shown.stdout
    with fake_host_daemon.connect() as conn:
        before = {d.name for d in conn.list_domains()}
    defined = _qemush(fake_host_daemon, "appliance-generate", template, "--define")
    assert defined.returncode == 0, defined.stderr
    assert "defined from appliance template" in defined.stdout
    with fake_host_daemon.connect() as conn:
        new = {d.name for d in conn.list_domains()} - before
    assert len(new) == 1
    missing = _qemush(fake_host_daemon, "appliance-generate", "/nonexistent/template.xml")
    assert missing.returncode == 1 and "cannot read '/nonexistent/template.xml'" in \
        missing.stderr


def test_shell_host_inspect(fake_host_daemon: DaemonProcess) -> None:
    out = _qemush(fake_host_daemon, "-r", "host-inspect")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert (facts["cores"], facts["memory_kib"]) == (4, 32768000)
