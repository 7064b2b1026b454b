"""The same scenario against libvirtd (libvirt-python) and qemud (our client), compared.

One domain XML -- the test guest, type='qemu', a pty serial port and console, the same
name and uuid -- is defined, started, suspended, resumed, destroyed and undefined on a
private libvirtd and on a qemud; in between, the same mistakes are made on purpose. Every
observable answer (state/reason pairs, info, flags, XML essentials, list filters, the
lifecycle events of each step in order, error codes) is recorded per daemon under a key,
then the two records are compared key by key.

Where the two differ on purpose, KNOWN_DIFFERENCES holds both answers and
docs/CONFORMANCE.md says why. Any other difference fails, and so does a known one that
changed or went away (then update the dict and the document together).
"""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import client
from protocol import constants as C
from tests.helpers.daemon import DaemonProcess
from tests.helpers.libvirtd import PrivateLibvirtd, ensure_event_loop
from tests.integration.domains import READY
from tests.integration.serial import SerialPort

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "CONFORMANCE.md"

NAME = "conformance-a"
UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5c"
TRANSIENT = "conformance-t"
TRANSIENT_UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5d"
EVENT_TIMEOUT = 60.0  # for the events a step expects (only a failing step waits it out)
EVENT_QUIET = 0.4  # after the last step: for stragglers nothing should send
START_PAUSED = 1  # VIR_DOMAIN_START_PAUSED (the client has no name for it)
BOOT_TIMEOUT = 120.0  # the test guest under TCG on a busy 2-core machine

Value = Any

#: key -> (libvirtd's answer, qemud's answer); each is explained in docs/CONFORMANCE.md
#: under a heading that names the key.
KNOWN_DIFFERENCES: dict[str, tuple[Value, Value]] = {
    # libvirt starts QEMU with -S and 'cont's it: the RESUME from QEMU becomes an event
    "events.start": (["RESUMED:UNPAUSED", "STARTED:BOOTED"], ["STARTED:BOOTED"]),
    # libvirt's destroy is SIGTERM: QEMU's SHUTDOWN (host signal) becomes an event
    "events.destroy": (["SHUTDOWN:HOST", "STOPPED:DESTROYED"], ["STOPPED:DESTROYED"]),
    # qemud answers every rejected definition with one code
    "error.define_malformed_xml": ("XML_DETAIL", "XML_ERROR"),
    "error.define_unknown_type": ("CONFIG_UNSUPPORTED", "XML_ERROR"),
    "error.define_xen_type": ("CONFIG_UNSUPPORTED", "XML_ERROR"),
    # qemud has a distinct code (client.DomainExistsError) for a name/uuid clash
    "error.define_same_name_other_uuid": ("OPERATION_FAILED", "DOM_EXIST"),
    "error.define_other_name_same_uuid": ("OPERATION_FAILED", "DOM_EXIST"),
    "error.create_same_name_other_uuid": ("OPERATION_FAILED", "DOM_EXIST"),
}

#: libvirt's reboot/shutdown modes (VIR_DOMAIN_REBOOT_* = VIR_DOMAIN_SHUTDOWN_*) and a bit
#: that is none of them
POWER_MODES = {"agent": int(C.RebootFlags.GUEST_AGENT), "initctl": int(C.RebootFlags.INITCTL),
               "signal": int(C.RebootFlags.SIGNAL), "paravirt": int(C.RebootFlags.PARAVIRT),
               "unknown_flag": 1 << 6}


#: the lifecycle events each step brings on both daemons (libvirt's documented ones);
#: where they differ on purpose, KNOWN_DIFFERENCES has each side's under "events.STEP"
STEP_EVENTS: dict[str, list[str]] = {
    "define": ["DEFINED:ADDED"], "start": ["STARTED:BOOTED"],
    "suspend": ["SUSPENDED:PAUSED"], "resume": ["RESUMED:UNPAUSED"],
    "destroy": ["STOPPED:DESTROYED"], "undefine": ["UNDEFINED:REMOVED"],
    "define_transient": ["DEFINED:ADDED"], "redefine_running": ["DEFINED:UPDATED"],
    "undefine_running": ["UNDEFINED:REMOVED"], "redefine": ["DEFINED:UPDATED"],
    "start_paused": ["STARTED:BOOTED", "SUSPENDED:PAUSED"],
    "undefine_again": ["UNDEFINED:REMOVED"],
    "reboot_destroy": ["SHUTDOWN:GUEST", "STOPPED:SHUTDOWN"],
    "undefine_rebooted": ["UNDEFINED:REMOVED"],
}


def expected_events(side: str, step: str) -> list[str]:
    """The events ``side`` ("libvirtd" or "qemud") is expected to send for ``step``."""
    known = KNOWN_DIFFERENCES.get(f"events.{step}")
    if known is not None:
        return list(known[0 if side == "libvirtd" else 1])
    return list(STEP_EVENTS[step])


# -- rendering libvirt's numbers readably (the same function for both sides) -------------

_REASONS: dict[int, type] = {
    C.DomainState.RUNNING: C.RunningReason, C.DomainState.PAUSED: C.PausedReason,
    C.DomainState.SHUTDOWN: C.ShutdownReason, C.DomainState.SHUTOFF: C.ShutoffReason,
    C.DomainState.CRASHED: C.CrashedReason}
_DETAILS: dict[int, type] = {
    C.LifecycleEvent.DEFINED: C.DefinedDetail, C.LifecycleEvent.UNDEFINED: C.UndefinedDetail,
    C.LifecycleEvent.STARTED: C.StartedDetail, C.LifecycleEvent.SUSPENDED: C.SuspendedDetail,
    C.LifecycleEvent.RESUMED: C.ResumedDetail, C.LifecycleEvent.STOPPED: C.StoppedDetail,
    C.LifecycleEvent.SHUTDOWN: C.ShutdownDetail, C.LifecycleEvent.CRASHED: C.CrashedDetail}


def _name(enum_cls: type | None, value: int) -> str:
    try:
        return enum_cls(value).name if enum_cls is not None else str(value)
    except ValueError:
        return str(value)


def state_name(state: int, reason: int) -> str:
    return f"{_name(C.DomainState, state)}:{_name(_REASONS.get(state), reason)}"


def event_name(event: int, detail: int) -> str:
    return f"{_name(C.LifecycleEvent, event)}:{_name(_DETAILS.get(event), detail)}"


def error_name(code: int) -> str:
    return _name(C.ErrorCode, code)


# -- events ------------------------------------------------------------------------------

class EventLog:
    """Lifecycle events of one domain (by name), as they arrive (any thread)."""

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._events: list[str] = []

    def push(self, name: str, event: int, detail: int) -> None:
        if name != self.name:
            return
        with self._cond:
            self._events.append(event_name(event, detail))
            self._cond.notify_all()

    def drain(self) -> list[str]:
        with self._cond:
            out, self._events = self._events, []
        return out

    def take(self, expected: list[str]) -> list[str]:
        """The events so far, once all of ``expected`` are among them (in any order), or
        after EVENT_TIMEOUT. Waiting for what a step should bring, not for a quiet spell,
        keeps a slow event in its step however loaded the machine; a missing one, an
        extra one that came with them, or one that came later (the next step's "before"
        list) still shows in the comparison."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        with self._cond:
            while Counter(expected) - Counter(self._events):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.drain()


# -- the two sides behind one small interface --------------------------------------------

class Side:
    """One daemon + its client library. ``err(fn)`` is fn's error name or "ok"."""

    name = ""
    events: EventLog

    def close(self) -> None: ...
    def define(self, xml: str) -> Any: raise NotImplementedError
    def create_xml(self, xml: str) -> Any: raise NotImplementedError
    def lookup(self, name: str) -> Any: raise NotImplementedError
    def state(self, dom: Any) -> str: raise NotImplementedError
    def info(self, dom: Any) -> tuple[str, int, int, int]: raise NotImplementedError
    def dom_id(self, dom: Any) -> int: raise NotImplementedError
    def persistent(self, dom: Any) -> bool: raise NotImplementedError
    def autostart(self, dom: Any) -> bool: raise NotImplementedError
    def set_autostart(self, dom: Any, on: bool) -> None: raise NotImplementedError
    def xml(self, dom: Any, inactive: bool) -> str: raise NotImplementedError
    def start(self, dom: Any, paused: bool = False) -> None: raise NotImplementedError
    def reboot(self, dom: Any, flags: int = 0) -> None: raise NotImplementedError
    def shutdown(self, dom: Any, flags: int) -> None: raise NotImplementedError
    def suspend(self, dom: Any) -> None: raise NotImplementedError
    def resume(self, dom: Any) -> None: raise NotImplementedError
    def destroy(self, dom: Any) -> None: raise NotImplementedError
    def undefine(self, dom: Any) -> None: raise NotImplementedError
    def list_names(self, flags: int) -> list[str]: raise NotImplementedError
    def readonly_define(self, xml: str) -> None: raise NotImplementedError
    def err(self, fn: Callable[[], Any]) -> str: raise NotImplementedError


class LibvirtSide(Side):
    name = "libvirtd"

    def __init__(self, lv: PrivateLibvirtd) -> None:
        import libvirt
        self.lib = libvirt
        self.lv = lv
        self.events = EventLog()
        ensure_event_loop()  # before the connection that registers for events
        self.conn = libvirt.open(lv.uri)
        self.handle = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda _c, dom, event, detail, _o: self.events.push(dom.name(), event, detail),
            None)

    def close(self) -> None:
        self.conn.domainEventDeregisterAny(self.handle)
        self.conn.close()

    def define(self, xml: str) -> Any:
        return self.conn.defineXML(xml)

    def create_xml(self, xml: str) -> Any:
        return self.conn.createXML(xml, 0)

    def lookup(self, name: str) -> Any:
        return self.conn.lookupByName(name)

    def state(self, dom: Any) -> str:
        return state_name(*dom.state())

    def info(self, dom: Any) -> tuple[str, int, int, int]:
        state, max_mem, mem, vcpus, _cpu = dom.info()
        return _name(C.DomainState, state), max_mem, mem, vcpus

    def dom_id(self, dom: Any) -> int:
        return int(dom.ID())

    def persistent(self, dom: Any) -> bool:
        return bool(dom.isPersistent())

    def autostart(self, dom: Any) -> bool:
        return bool(dom.autostart())

    def set_autostart(self, dom: Any, on: bool) -> None:
        dom.setAutostart(int(on))

    def xml(self, dom: Any, inactive: bool) -> str:
        return str(dom.XMLDesc(self.lib.VIR_DOMAIN_XML_INACTIVE if inactive else 0))

    def start(self, dom: Any, paused: bool = False) -> None:
        dom.createWithFlags(self.lib.VIR_DOMAIN_START_PAUSED if paused else 0)

    def reboot(self, dom: Any, flags: int = 0) -> None:
        dom.reboot(flags)

    def shutdown(self, dom: Any, flags: int) -> None:
        dom.shutdownFlags(flags)

    def suspend(self, dom: Any) -> None:
        dom.suspend()

    def resume(self, dom: Any) -> None:
        dom.resume()

    def destroy(self, dom: Any) -> None:
        dom.destroy()

    def undefine(self, dom: Any) -> None:
        dom.undefine()

    def list_names(self, flags: int) -> list[str]:
        return sorted(d.name() for d in self.conn.listAllDomains(flags))

    def readonly_define(self, xml: str) -> None:
        ro = self.lib.openReadOnly(self.lv.ro_uri)
        try:
            ro.defineXML(xml)
        finally:
            ro.close()

    def err(self, fn: Callable[[], Any]) -> str:
        try:
            fn()
        except self.lib.libvirtError as exc:
            return error_name(exc.get_error_code())
        return "ok"


class QemudSide(Side):
    name = "qemud"

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.events = EventLog()
        self.conn = daemon.connect()
        self.conn.register_event(
            client.EventId.LIFECYCLE,
            lambda r: self.events.push(r.domain.name, r.event, r.detail))

    def close(self) -> None:
        self.conn.close()

    def define(self, xml: str) -> Any:
        return self.conn.define_xml(xml)

    def create_xml(self, xml: str) -> Any:
        return self.conn.create_xml(xml)

    def lookup(self, name: str) -> Any:
        return self.conn.lookup_by_name(name)

    def state(self, dom: Any) -> str:
        return state_name(*dom.state())

    def info(self, dom: Any) -> tuple[str, int, int, int]:
        i = dom.info()
        return _name(C.DomainState, i.state), i.max_mem_kib, i.memory_kib, i.vcpus

    def dom_id(self, dom: Any) -> int:
        return int(dom.refresh().id)

    def persistent(self, dom: Any) -> bool:
        listed = [d for d in self.conn.list_all() if d.uuid == dom.uuid]
        assert len(listed) == 1 and listed[0].summary is not None
        return bool(listed[0].summary.persistent)

    def autostart(self, dom: Any) -> bool:
        return bool(dom.autostart())

    def set_autostart(self, dom: Any, on: bool) -> None:
        dom.set_autostart(on)

    def xml(self, dom: Any, inactive: bool) -> str:
        return str(dom.xml(client.XML_INACTIVE if inactive else 0))

    def start(self, dom: Any, paused: bool = False) -> None:
        dom.create(START_PAUSED if paused else 0)

    def reboot(self, dom: Any, flags: int = 0) -> None:
        dom.reboot(flags)

    def shutdown(self, dom: Any, flags: int) -> None:
        dom.shutdown(flags=flags)

    def suspend(self, dom: Any) -> None:
        dom.suspend()

    def resume(self, dom: Any) -> None:
        dom.resume()

    def destroy(self, dom: Any) -> None:
        dom.destroy()

    def undefine(self, dom: Any) -> None:
        dom.undefine()

    def list_names(self, flags: int) -> list[str]:
        return sorted(d.name for d in self.conn.list_domains(flags))

    def readonly_define(self, xml: str) -> None:
        with self.daemon.connect(readonly=True) as ro:
            ro.define_xml(xml)

    def err(self, fn: Callable[[], Any]) -> str:
        try:
            fn()
        except client.RemoteError as exc:
            return error_name(exc.code)
        return "ok"


# -- the domain XML and what of it must survive ------------------------------------------

def domain_xml(guest: Any, name: str = NAME, uuid: str = UUID, dtype: str = "qemu") -> str:
    """The test guest, minimal and valid for both daemons (no host paths but the kernel)."""
    return f"""<domain type='{dtype}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{guest.kernel}</kernel>
    <initrd>{guest.initrd}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
"""


_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
        "m": 1024, "mib": 1024, "mb": 1e6 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2}


def xml_essentials(text: str) -> dict[str, Value]:
    """What a round trip must preserve (both daemons add defaults of their own)."""
    root = ET.fromstring(text)

    def t(path: str) -> str | None:
        el = root.find(path)
        return None if el is None or el.text is None else el.text.strip()

    mem = root.find("memory")
    kib = None
    if mem is not None and mem.text:
        kib = int(int(mem.text) * _KIB[mem.get("unit", "KiB").lower()])
    ostype = root.find("os/type")
    return {
        "type": root.get("type"), "name": t("name"), "uuid": t("uuid"), "memory_kib": kib,
        "vcpu": t("vcpu"), "os.arch": None if ostype is None else ostype.get("arch"),
        "os.type": t("os/type"), "os.kernel": t("os/kernel"), "os.initrd": t("os/initrd"),
        "os.cmdline": t("os/cmdline"), "on_poweroff": t("on_poweroff"),
        "on_reboot": t("on_reboot"), "on_crash": t("on_crash"),
        "serial": [(s.get("type"), s.find("target").get("port"))  # type: ignore[union-attr]
                   for s in root.findall("devices/serial")],
        "console": [(c.get("type"), c.find("target").get("type"))  # type: ignore[union-attr]
                    for c in root.findall("devices/console")],
        "pty": pty_shape(root),
    }


def pty_shape(root: ET.Element) -> list[tuple[str, str | None, str | None]]:
    """(element, source path, tty) of each serial and console, every pty path renamed
    ``pts#k`` in order of appearance: which device shows a pty, and which share one."""
    names: dict[str, str] = {}

    def name(path: str | None) -> str | None:
        if path is None or not re.fullmatch(r"/dev/pts/\d+", path):
            return path
        return names.setdefault(path, f"pts#{len(names)}")
    out = []
    for el in root.findall("devices/serial") + root.findall("devices/console"):
        source = el.find("source")
        out.append((el.tag, name(None if source is None else source.get("path")),
                    name(el.get("tty"))))
    return out


# -- the scenario --------------------------------------------------------------------------

LIST_FLAGS = list(C.ListFlags)


def run_scenario(side: Side, guest: Any) -> dict[str, Value]:
    """Everything observable, by key; the same calls in the same order on either side."""
    rec: dict[str, Value] = {}
    xml = domain_xml(guest)
    unexpected: list[str] = []

    def listing(step: str) -> None:
        for flag in LIST_FLAGS:
            rec[f"list.{step}.{flag.name}"] = [
                n for n in side.list_names(int(flag)) if n.startswith("conformance-")]

    def take(step: str) -> list[str]:
        return side.events.take(expected_events(side.name, step))

    def step_events(step: str, action: Callable[[], Any]) -> Any:
        unexpected.extend(f"before {step}: {e}" for e in side.events.drain())
        result = action()
        rec[f"events.{step}"] = take(step)
        return result

    # define
    rec["error.lookup_missing"] = side.err(lambda: side.lookup(NAME))
    dom = step_events("define", lambda: side.define(xml))
    rec["define.state"] = side.state(dom)
    rec["define.info"] = side.info(dom)
    rec["define.id"] = side.dom_id(dom)
    rec["define.persistent"] = side.persistent(dom)
    rec["define.autostart"] = side.autostart(dom)
    for k, v in xml_essentials(side.xml(dom, inactive=True)).items():
        rec[f"define.xml.{k}"] = v
    listing("defined")

    # autostart on a persistent domain
    side.set_autostart(dom, True)
    rec["autostart.after_set"] = side.autostart(dom)
    rec["autostart.listed"] = [n for n in side.list_names(int(C.ListFlags.AUTOSTART))
                               if n.startswith("conformance-")]
    side.set_autostart(dom, False)
    rec["autostart.after_clear"] = side.autostart(dom)

    # mistakes while it is defined and shut off
    rec["error.define_same_name_other_uuid"] = side.err(
        lambda: side.define(domain_xml(guest, uuid=OTHER_UUID)))
    rec["error.readonly_define"] = side.err(
        lambda: side.readonly_define(domain_xml(guest, name="conformance-ro",
                                                uuid=TRANSIENT_UUID)))
    rec["error.define_malformed_xml"] = side.err(lambda: side.define("<domain type='qemu'"))
    rec["error.define_unknown_type"] = side.err(
        lambda: side.define(domain_xml(guest, "conformance-x", OTHER_UUID, "bogus")))
    rec["error.define_xen_type"] = side.err(
        lambda: side.define(domain_xml(guest, "conformance-x", OTHER_UUID, "xen")))
    rec["error.suspend_shutoff"] = side.err(lambda: side.suspend(dom))
    rec["error.resume_shutoff"] = side.err(lambda: side.resume(dom))
    rec["error.destroy_shutoff"] = side.err(lambda: side.destroy(dom))
    for verb, call in (("reboot", side.reboot), ("shutdown", side.shutdown)):
        for mode in ("agent", "initctl"):
            rec[f"error.{verb}_{mode}_shutoff"] = side.err(partial(call, dom,
                                                                   POWER_MODES[mode]))
    rec["define.state_after_errors"] = side.state(dom)

    # start
    step_events("start", lambda: side.start(dom))
    rec["start.state"] = side.state(dom)
    dom_id = side.dom_id(dom)
    rec["start.id_positive"] = dom_id > 0
    rec["start.info"] = side.info(dom)
    live = side.xml(dom, inactive=False)
    live_root = ET.fromstring(live)
    rec["start.xml.id_matches"] = live_root.get("id") == str(dom_id)
    for k, v in xml_essentials(live).items():
        rec[f"start.xml.{k}"] = v
    rec["start.persistent"] = side.persistent(dom)
    listing("running")
    rec["error.start_running"] = side.err(lambda: side.start(dom))
    rec["error.resume_running"] = side.err(lambda: side.resume(dom))
    # reboot/shutdown modes: none of these may reach the guest
    for verb, call in (("reboot", side.reboot), ("shutdown", side.shutdown)):
        for mode, flag in POWER_MODES.items():
            rec[f"error.{verb}_{mode}"] = side.err(partial(call, dom, flag))
    rec["start.state_after_refused_modes"] = side.state(dom)

    # suspend / resume
    step_events("suspend", lambda: side.suspend(dom))
    rec["suspend.state"] = side.state(dom)
    rec["suspend.info_state"] = side.info(dom)[0]
    listing("paused")
    step_events("resume", lambda: side.resume(dom))
    rec["resume.state"] = side.state(dom)

    # destroy
    step_events("destroy", lambda: side.destroy(dom))
    rec["destroy.state"] = side.state(dom)
    rec["destroy.id"] = side.dom_id(dom)
    rec["destroy.info"] = side.info(dom)

    # a transient domain next to it
    tdom = side.create_xml(domain_xml(guest, TRANSIENT, TRANSIENT_UUID))
    rec["transient.state"] = side.state(tdom)
    rec["transient.persistent"] = side.persistent(tdom)
    listing("with_transient")
    rec["error.undefine_transient"] = side.err(lambda: side.undefine(tdom))
    rec["error.autostart_transient"] = side.err(lambda: side.set_autostart(tdom, True))
    side.destroy(tdom)
    rec["transient.lookup_after_destroy"] = side.err(lambda: side.lookup(TRANSIENT))

    # undefine
    step_events("undefine", lambda: side.undefine(dom))
    rec["undefine.lookup"] = side.err(lambda: side.lookup(NAME))
    rec["error.undefine_twice"] = side.err(lambda: side.undefine(dom))

    # a second round: definitions meeting running domains
    dom = side.create_xml(xml)  # transient, same name and uuid
    take("start")
    step_events("define_transient", lambda: side.define(xml))
    rec["define_transient.persistent"] = side.persistent(dom)
    rec["define_transient.state"] = side.state(dom)
    rec["error.create_same_name_other_uuid"] = side.err(
        lambda: side.create_xml(domain_xml(guest, uuid=OTHER_UUID)))
    rec["error.define_other_name_same_uuid"] = side.err(
        lambda: side.define(domain_xml(guest, name="conformance-z")))
    bigger = xml.replace("<memory unit='MiB'>256</memory>", "<memory unit='MiB'>300</memory>")
    step_events("redefine_running", lambda: side.define(bigger))
    rec["redefine_running.info"] = side.info(dom)
    rec["redefine_running.live_memory_kib"] = xml_essentials(side.xml(dom, False))["memory_kib"]
    rec["redefine_running.inactive_memory_kib"] = \
        xml_essentials(side.xml(dom, True))["memory_kib"]
    step_events("undefine_running", lambda: side.undefine(dom))
    rec["undefine_running.persistent"] = side.persistent(dom)
    rec["undefine_running.state"] = side.state(dom)
    side.destroy(dom)
    take("destroy")
    rec["undefine_running.lookup_after_destroy"] = side.err(lambda: side.lookup(NAME))

    # start paused, redefined while shut off
    dom = side.define(xml)
    take("define")
    step_events("redefine", lambda: side.define(bigger))
    rec["redefine.info"] = side.info(dom)
    step_events("start_paused", lambda: side.start(dom, paused=True))
    rec["start_paused.state"] = side.state(dom)
    rec["start_paused.info"] = side.info(dom)
    side.destroy(dom)
    take("destroy")
    step_events("undefine_again", lambda: side.undefine(dom))

    # an admin's reboot of a guest whose reboots stop it (ACPI on: libvirt has none
    # without <acpi/>, qemud always has it)
    reboot_xml = xml.replace("<on_reboot>restart", "<on_reboot>destroy").replace(
        "<on_poweroff>", "<features><acpi/></features>\n  <on_poweroff>")
    dom = side.define(reboot_xml)
    take("define")
    side.start(dom)
    take("start")
    pty = ET.fromstring(side.xml(dom, inactive=False)).find("devices/serial/source")
    assert pty is not None, "no pty in the live XML"
    console = SerialPort(Path(pty.get("path", "")), pty=True)
    try:
        console.wait_for(READY, timeout=BOOT_TIMEOUT)  # ACPI is heard from now on
        step_events("reboot_destroy", lambda: side.reboot(dom))
    finally:
        console.close()
    rec["reboot_destroy.state"] = side.state(dom)
    # looked up again: libvirt-python's object keeps the id it had at start
    rec["reboot_destroy.id"] = side.dom_id(side.lookup(NAME))
    step_events("undefine_rebooted", lambda: side.undefine(dom))

    time.sleep(EVENT_QUIET)
    unexpected.extend(f"after undefine: {e}" for e in side.events.drain())
    rec["events.unexpected"] = unexpected
    return rec


@pytest.fixture(scope="module")
def observed(libvirtd: PrivateLibvirtd, qemud: DaemonProcess,
             test_guest: Any) -> dict[str, dict[str, Value]]:
    out: dict[str, dict[str, Value]] = {}
    for side in (LibvirtSide(libvirtd), QemudSide(qemud)):
        try:
            out[side.name] = run_scenario(side, test_guest)
        finally:
            side.close()
    return out


# -- comparing ---------------------------------------------------------------------------

def compare(observed: dict[str, dict[str, Value]], prefix: str) -> None:
    lv, qd = observed["libvirtd"], observed["qemud"]
    keys = sorted(k for k in set(lv) | set(qd) if k.startswith(prefix))
    assert keys, f"nothing recorded under {prefix!r}"
    problems = []
    for key in keys:
        a, b = lv.get(key, "<not recorded>"), qd.get(key, "<not recorded>")
        if key in KNOWN_DIFFERENCES:
            want = KNOWN_DIFFERENCES[key]
            if (a, b) != want:
                problems.append(f"{key}: documented difference changed: libvirtd {a!r}, "
                                f"qemud {b!r}; KNOWN_DIFFERENCES says {want!r}")
        elif a != b:
            problems.append(f"{key}: libvirtd {a!r} != qemud {b!r}")
    assert not problems, ("qemud differs from libvirtd (fix qemud, or document the "
                          "difference in docs/CONFORMANCE.md and KNOWN_DIFFERENCES):\n  "
                          + "\n  ".join(problems))


@pytest.mark.parametrize("prefix", [
    "define.", "autostart.", "start.", "suspend.", "resume.", "destroy.", "transient.",
    "undefine.", "list.", "define_transient.", "redefine_running.", "undefine_running.",
    "redefine.", "start_paused.", "reboot_destroy."])
def test_states_info_and_xml(observed: dict[str, dict[str, Value]], prefix: str) -> None:
    compare(observed, prefix)


def test_lifecycle_events_in_order(observed: dict[str, dict[str, Value]]) -> None:
    compare(observed, "events.")


def test_error_codes(observed: dict[str, dict[str, Value]]) -> None:
    compare(observed, "error.")


def test_expected_answers(observed: dict[str, dict[str, Value]]) -> None:
    """Where both agree they must also agree with libvirt's documented behaviour."""
    q = observed["qemud"]
    assert q["define.state"] == "SHUTOFF:UNKNOWN"
    assert q["define.info"] == ("SHUTOFF", 262144, 262144, 1)
    assert (q["define.persistent"], q["define.autostart"]) == (True, False)
    assert q["start.state"] == "RUNNING:BOOTED" and q["start.id_positive"]
    assert q["start.xml.pty"] == [("serial", "pts#0", None), ("console", "pts#0", "pts#0")]
    assert q["define.xml.pty"] == [("serial", None, None), ("console", None, None)]
    assert q["suspend.state"] == "PAUSED:USER"
    assert q["resume.state"] == "RUNNING:UNPAUSED"
    assert q["destroy.state"] == "SHUTOFF:DESTROYED"
    assert q["undefine.lookup"] == "NO_DOMAIN"
    assert q["events.define"] == ["DEFINED:ADDED"]
    assert q["events.suspend"] == ["SUSPENDED:PAUSED"]
    assert q["events.resume"] == ["RESUMED:UNPAUSED"]
    assert q["events.undefine"] == ["UNDEFINED:REMOVED"]
    assert q["events.define_transient"] == ["DEFINED:ADDED"]
    assert q["events.redefine"] == q["events.redefine_running"] == ["DEFINED:UPDATED"]
    assert q["events.start_paused"] == ["STARTED:BOOTED", "SUSPENDED:PAUSED"]
    assert q["events.reboot_destroy"] == ["SHUTDOWN:GUEST", "STOPPED:SHUTDOWN"]
    assert q["reboot_destroy.state"] == "SHUTOFF:SHUTDOWN"
    assert q["events.unexpected"] == []
    assert q["error.readonly_define"] == "OPERATION_DENIED"
    for verb in ("reboot", "shutdown"):
        assert q[f"error.{verb}_agent_shutoff"] == "OPERATION_INVALID"
        for mode in ("initctl", "signal", "paravirt", "unknown_flag"):
            assert q[f"error.{verb}_{mode}"] == "INVALID_ARG"
        assert q[f"error.{verb}_initctl_shutoff"] == "INVALID_ARG"
    assert q["start.state_after_refused_modes"] == "RUNNING:BOOTED"


def test_known_differences_are_documented() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"`((?:events|error|define|start|list)\.[a-z_.]+)`", text))
    missing = set(KNOWN_DIFFERENCES) - documented
    assert not missing, f"docs/CONFORMANCE.md does not explain {sorted(missing)}"


def test_qemud_define_over_transient_is_added(qemud: DaemonProcess, test_guest: Any) -> None:
    """Regression (found by this comparison; runs without libvirtd too): defining a running
    transient domain gives it its first persistent definition, which libvirt announces as
    DEFINED/ADDED -- qemud said UPDATED."""
    name, uuid = "conformance-r", "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5e"
    xml = domain_xml(test_guest, name, uuid)
    with qemud.connect() as conn:
        log = EventLog(name)
        conn.register_event(client.EventId.LIFECYCLE,
                            lambda r: log.push(r.domain.name, r.event, r.detail))
        dom = conn.create_xml(xml)
        try:
            assert log.take(["STARTED:BOOTED"]) == ["STARTED:BOOTED"]
            conn.define_xml(xml)
            assert log.take(["DEFINED:ADDED"]) == ["DEFINED:ADDED"]
            conn.define_xml(xml)
            assert log.take(["DEFINED:UPDATED"]) == ["DEFINED:UPDATED"]
        finally:
            dom.destroy()
            dom.undefine()
