"""Domain XML whose effect shows only once QEMU runs (TCG): what the real QEMU gets.

* ``<vcpu current='1'>2</vcpu>``: QEMU starts one vCPU of two possible (``-smp
  1,maxcpus=2``) and the domain's info counts one, libvirt's ``nrVirtCpu``;
* ``<qemu:commandline>``: its arguments reach QEMU's command line and its variables
  QEMU's environment (``/proc/PID/cmdline``, ``/proc/PID/environ``);
* names: any name define accepts starts, also one far too long for a unix socket path
  under the run directory, and the guest is found again by a daemon killed and started
  again; longer names, ``.`` and ``..`` are refused at define, with the limit named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState
from qemud.driver.registry import MAX_NAME_BYTES
from tests.helpers.daemon import DaemonProcess
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def qemu_pid(daemon: DaemonProcess, name: str) -> int:
    """The pid of the running QEMU of ``name``, from its status file."""
    status = daemon.run_dir / "qemu" / f"{name}.status.json"
    return int(json.loads(status.read_text())["pid"])


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_vcpu_current_starts_that_many_vcpus(daemon: DaemonProcess) -> None:
    xml = bare_xml("vc").replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>")
    with daemon.connect() as conn:
        dom = conn.define_xml(xml)
        assert dom.info().vcpus == 1  # libvirt's nrVirtCpu is the current count
        dom.create()
        args = cmdline(qemu_pid(daemon, "vc"))
        assert args[args.index("-smp") + 1] == "1,maxcpus=2,sockets=2,cores=1,threads=1"
        assert dom.info().vcpus == 1
        assert "<vcpu current='1'>2</vcpu>" in dom.xml()
        dom.destroy()

        with pytest.raises(client.XMLError,
                           match=r"maxvcpus must not be less than current vcpus \(1 < 2\)"):
            conn.define_xml(bare_xml("vc2").replace("<vcpu>1</vcpu>",
                                                    "<vcpu current='2'>1</vcpu>"))


def test_qemu_commandline_reaches_qemu(daemon: DaemonProcess) -> None:
    passthrough = f"""<qemu:commandline xmlns:qemu='{QEMU_NS}'>
    <qemu:arg value='-smbios'/>
    <qemu:arg value='type=1,serial=qemud-passthrough'/>
    <qemu:env name='QEMUD_PASSTHROUGH' value='yes it is'/>
  </qemu:commandline>
</domain>"""
    xml = bare_xml("pt").replace("</domain>", passthrough)
    with daemon.connect() as conn:
        dom = conn.define_xml(xml)
        assert "qemud-passthrough" in dom.xml()
        dom.create()
        pid = qemu_pid(daemon, "pt")
        args = cmdline(pid)
        assert os.path.basename(args[0]).startswith("qemu-system-")  # env(1) exec'd it
        assert args[-2:] == ["-smbios", "type=1,serial=qemud-passthrough"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"QEMUD_PASSTHROUGH=yes it is" in environ
        log = (daemon.log_dir / "qemu" / "pt.log").read_text()
        assert "QEMUD_PASSTHROUGH=yes it is" in log and "serial=qemud-passthrough" in log
        assert f"Domain id={dom.refresh().id} name='pt' uuid={dom.uuid} is tainted: " \
               "custom-argv" in daemon.log_text()
        dom.destroy()


def test_a_long_name_starts_and_is_found_after_a_restart(daemon: DaemonProcess) -> None:
    name = "n" * MAX_NAME_BYTES
    assert len(f"{daemon.run_dir}/qemu/{name}/monitor.sock") > 107
    with daemon.connect() as conn:
        dom = conn.define_xml(bare_xml(name))
        dom.create()
        assert dom.state()[0] == DomainState.RUNNING
        pid = qemu_pid(daemon, name)
        assert f"guest={name}," in " ".join(cmdline(pid))
    daemon.kill()
    daemon.start()
    with daemon.connect() as conn:
        dom = conn.lookup_by_name(name)
        assert dom.state()[0] == DomainState.RUNNING  # re-attached over the short QMP path
        assert qemu_pid(daemon, name) == pid
        dom.destroy()
        assert dom.state()[0] == DomainState.SHUTOFF
        dom.undefine()


@pytest.mark.parametrize(("name", "message"), [
    ("n" * (MAX_NAME_BYTES + 1), rf"name: too long \({MAX_NAME_BYTES + 1} bytes in UTF-8;"
                                 rf" at most {MAX_NAME_BYTES}"),
    ("é" * 122, rf"name: too long \(244 bytes in UTF-8; at most {MAX_NAME_BYTES}"),
    (".", r"name: '\.' cannot be a domain name"),
    ("..", r"name: '\.\.' cannot be a domain name"),
])
def test_names_the_file_layout_cannot_hold_are_refused_at_define(
        daemon: DaemonProcess, name: str, message: str) -> None:
    with daemon.connect() as conn:
        with pytest.raises(client.XMLError, match=message):
            conn.define_xml(bare_xml(name))
        with pytest.raises(client.XMLError, match=message):
            conn.create_xml(bare_xml(name))
        assert conn.list_domains() == []
