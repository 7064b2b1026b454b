"""kill -9 of the daemon in the middle of config changes, then a restart.

A daemon with ~20 defined domains and 3 running test guests (TCG) is hammered by two
clients (define, redefine with new memory, undefine, autostart on/off; each client owns
its own names, so the expected outcome of every acknowledged call is known) and killed
with SIGKILL at a random moment; then restarted, checked, hammered and killed again, for
a few rounds. After every restart:

* the persistent domains listed are exactly the ``domains/*.xml`` files, each one's XML
  (live and inactive) parses and names it, and the temp files a killed write leaves
  behind (plus ones planted by the test) are never taken for domains;
* every acknowledged change survived: a name is defined or not, with the memory and
  autostart flag it was last given; only the one call in flight at the kill may have
  gone either way;
* the three guests are reconnected: listed running, with their ids, and controllable
  (the final round suspends, resumes and destroys them, and checks no QEMU is left).

The random seed is printed (and can be forced with QEMUD_FAULT_SEED) to replay a failure.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import client
from protocol.constants import DomainState, ShutoffReason
from tests.helpers.daemon import DaemonProcess, wait_for
from tests.helpers.procs import wait_pidfd
from tests.integration.domains import guest_xml

from .conftest import (
    NO_GUEST_EMULATOR,
    assert_log_clean,
    bare_domain_xml,
    guest_name,
    qemu_pids,
)

ROUNDS = 5
NAMES_PER_CLIENT = 14
DEFINED_AT_START = 10  # per client: 20 in all
GUESTS = 3
EMULATOR = NO_GUEST_EMULATOR  # autostart after a restart launches no guest

#: (defined, memory MiB, autostart) of one name
State = tuple[bool, int, bool]
UNDEFINED: State = (False, 0, False)


@dataclass
class Owner:
    """One hammering client: its names and what the daemon acknowledged for each."""

    label: str
    names: list[str]
    expected: dict[str, set[State]] = field(default_factory=dict)
    calls: int = 0
    failure: BaseException | None = None

    def certain(self, name: str) -> State:
        (state,) = self.expected[name]
        return state


def _xml(name: str, memory: int) -> str:
    return bare_domain_xml(name, memory_mib=memory, emulator=EMULATOR)


def _hammer(d: DaemonProcess, owner: Owner, rng: random.Random, stop: threading.Event
            ) -> None:
    """Random changes until the daemon dies under us (or ``stop``)."""
    try:
        conn = d.connect()
    except client.QemudClientError:
        return
    try:
        while not stop.is_set():
            name = rng.choice(owner.names)
            before = owner.certain(name)
            defined, memory, autostart = before
            dom = conn.lookup_by_name(name) if defined else None
            kind = rng.choice(["undefine", "redefine", "autostart", "autostart"]) \
                if defined else "define"
            after: State = {
                "define": (True, rng.randrange(32, 256), False),
                "undefine": UNDEFINED,
                "redefine": (True, rng.randrange(32, 256), autostart),
                "autostart": (True, memory, not autostart),
            }[kind]
            owner.expected[name] = {before, after}  # in flight: either outcome
            if kind == "define":
                conn.define_xml(_xml(name, after[1]))
                owner.expected[name] = {after}
                owner.calls += 1
                continue
            assert dom is not None
            if kind == "undefine":
                dom.undefine()
            elif kind == "redefine":
                conn.define_xml(_xml(name, after[1]).replace(
                    "<domain type='qemu'>", f"<domain type='qemu'><uuid>{dom.uuid}</uuid>"))
            else:
                dom.set_autostart(after[2])
            owner.expected[name] = {after}
            owner.calls += 1
    except (client.ConnectionLost, client.ConnectFailed, OSError):
        pass  # the kill: the call in flight stays undecided
    except BaseException as exc:  # noqa: BLE001 - a wrong answer; reported by the test
        owner.failure = exc
    finally:
        try:
            conn.close()
        except Exception:
            pass


def _plant_debris(domains: Path, ghost: str, victim: str) -> None:
    """Temp files as a write killed before its rename leaves them (atomic_write's names)."""
    (domains / f".{ghost}.xml.k1ll3d.tmp").write_text(_xml(ghost, 64))
    (domains / f".{victim}.xml.t0rn00.tmp").write_text(_xml(victim, 99)[:57])
    (domains / f"{ghost}.xml.tmp").write_text(_xml(ghost, 64))


def _check_after_restart(d: DaemonProcess, owners: list[Owner], guests: dict[str, int],
                         ghost: str) -> None:
    domains = d.config_dir / "domains"
    with d.connect() as conn:
        listed = {dom.name: dom for dom in conn.list_domains()}
        on_disk = {p.stem for p in domains.glob("*.xml")}
        persistent = {n for n, dom in listed.items()}
        assert persistent == on_disk, (persistent ^ on_disk)
        assert ghost not in listed
        for name, dom in listed.items():
            for flags in (0, client.XML_INACTIVE):
                root = ET.fromstring(dom.xml(flags))
                assert root.findtext("name") == name
        for owner in owners:
            for name in owner.names:
                allowed = owner.expected[name]
                if name not in listed:
                    seen: State = UNDEFINED
                else:
                    root = ET.fromstring(listed[name].xml(client.XML_INACTIVE))
                    memory = int(root.findtext("memory") or 0) // 1024
                    seen = (True, memory, listed[name].autostart())
                assert seen in allowed, f"{name}: after restart {seen}, expected one of " \
                                        f"{allowed} (seed in the test output)"
                owner.expected[name] = {seen}
        # an autostarted domain is active while its start (of EMULATOR, which fails at
        # once) is in flight: the daemon reports ready before the emulator has exited
        def active() -> dict[str, client.Domain]:
            return {dom.name: dom for dom in conn.list_domains(client.ListFlags.ACTIVE)}
        try:
            wait_for(lambda: set(active()) == set(guests), timeout=10,
                     message="only the guests running after the restart")
        except TimeoutError:
            pass  # (the assertion below names what runs)
        running = active()
        assert set(running) == set(guests), f"running after restart: {set(running)}"
        for name, dom in running.items():
            assert dom.id == guests[name], f"{name} changed id over the restart"
            wait_for(lambda dom=dom: dom.state()[0] == DomainState.RUNNING, timeout=10,
                     message=f"{name} running after the restart")
    assert "skipping domain definition" not in d.log_text()


@pytest.mark.integration
def test_kill_during_config_changes_loses_nothing(short_tmp: Path, test_guest,
                                                  qemu_cleanup) -> None:
    tmp_path = short_tmp
    seed = int(os.environ.get("QEMUD_FAULT_SEED", time.time_ns() % 2**32))
    print(f"crash-consistency seed: QEMUD_FAULT_SEED={seed}")
    rng = random.Random(seed)
    d = DaemonProcess(tmp_path / "qemud", {"qemu": {"destroy_grace": 1.0}})
    owners = [Owner(label, [guest_name(f"cc{label}", i) for i in range(NAMES_PER_CLIENT)])
              for label in "ab"]
    ghost = guest_name("ghost")
    guests: dict[str, int] = {}
    d.start()
    try:
        with d.connect() as conn:
            for owner in owners:
                for i, name in enumerate(owner.names):
                    if i < DEFINED_AT_START:
                        conn.define_xml(_xml(name, 64))
                        owner.expected[name] = {(True, 64, False)}
                    else:
                        owner.expected[name] = {UNDEFINED}
            for i in range(GUESTS):
                name = guest_name("ccguest", i)
                dom = conn.define_xml(guest_xml(name, test_guest, tmp_path / f"g{i}.sock",
                                                memory_mib=128))
                dom.create()
                guests[name] = dom.refresh().id
        for round_no in range(ROUNDS):
            stop = threading.Event()
            workers = [threading.Thread(target=_hammer, daemon=True,
                                        args=(d, owner, random.Random(rng.random()), stop))
                       for owner in owners]
            for w in workers:
                w.start()
            time.sleep(rng.uniform(0.2, 1.2))
            d.kill()  # SIGKILL, at whatever the daemon was doing
            stop.set()
            for w in workers:
                w.join(15)
                assert not w.is_alive(), "a hammering client hung after the kill"
            for owner in owners:
                assert owner.failure is None, f"client {owner.label}: {owner.failure!r}"
            assert all(qemu_pids(name) for name in guests), "a guest died with the daemon"
            in_flight = [n for o in owners for n, states in o.expected.items()
                         if len(states) > 1]
            debris = [p.name for p in (d.config_dir / "domains").glob(".*.tmp")]
            print(f"round {round_no}: {sum(o.calls for o in owners)} calls so far; in flight "
                  f"at the kill: {in_flight}; temp files left: {debris}")
            if round_no == 0:
                _plant_debris(d.config_dir / "domains", ghost, owners[0].names[0])
            d.start()
            _check_after_restart(d, owners, guests, ghost)
            domains = d.config_dir / "domains"
            assert not list(domains.glob(".*.tmp")), "start-up leaves no dead temp files"
            if round_no == 0:
                assert (domains / f"{ghost}.xml.tmp").exists(), "not ours: must stay"
                assert "left by an interrupted write" in d.log_text()
        assert sum(o.calls for o in owners) > 50, "the clients hardly did anything"
        # the guests are controllable, and nothing is left running once destroyed
        with d.connect() as conn:
            for name in guests:
                dom = conn.lookup_by_name(name)
                dom.suspend()
                assert dom.state()[0] == DomainState.PAUSED
                dom.resume()
                assert dom.state()[0] == DomainState.RUNNING
                dom.destroy()
                assert dom.state()[0] == DomainState.SHUTOFF
                assert qemu_pids(name) == []
        assert_log_clean(d)
    finally:
        d.kill()


# -- what a kill between two file operations leaves -----------------------------------------

def test_undefine_removes_the_autostart_flag_before_the_definition(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Killed between the two unlinks, an undefine must leave a definition without a flag
    (the domain is still there, not autostarted), never a flag without a definition."""
    from qemud.driver.store import DomainStore
    dirs = [tmp_path / n for n in ("domains", "autostart", "status")]
    for x in dirs:
        x.mkdir()
    store = DomainStore(*dirs)
    store.save_definition("a", "<domain/>")
    store.set_autostart("a", True)
    order: list[str] = []
    real_unlink = Path.unlink

    def recording_unlink(self: Path, missing_ok: bool = False) -> None:
        order.append(self.parent.name)
        real_unlink(self, missing_ok)
    monkeypatch.setattr(Path, "unlink", recording_unlink)
    store.delete_definition("a")
    assert order == ["autostart", "domains"]


def test_stale_autostart_flag_is_not_inherited_by_a_new_domain(daemon_factory) -> None:
    """A flag whose definition is gone (an undefine cut short by a crash, a hand edit) must
    not make a newly defined domain of that name autostart on the next daemon start."""
    name = guest_name("stale")
    d = daemon_factory()
    d.stop()
    (d.config_dir / "autostart" / name).touch()  # flag, no definition
    d.start()
    with d.connect() as conn:
        dom = conn.define_xml(bare_domain_xml(name, emulator=EMULATOR))
        assert dom.autostart() is False
    assert not (d.config_dir / "autostart" / name).exists()
    assert f"removing stale autostart flag of '{name}'" in d.log_text()
    d.stop()
    d.start()
    with d.connect() as conn:
        assert conn.lookup_by_name(name).autostart() is False
    assert f"autostarting {name}" not in d.log_text()
    assert_log_clean(d)


@pytest.mark.integration
def test_kill_during_guest_start_leaves_no_orphan_qemu(short_tmp: Path, qemu_cleanup) -> None:
    """Killed after launching QEMU but before the start completed, the daemon must find that
    QEMU on restart (its status is recorded at launch) and stop it as a failed start, not
    leave it running unknown (a second start would then run two QEMUs on one guest)."""
    name = guest_name("halfstart")
    wrapper = short_tmp / "slow-qemu"  # QEMU, after a pause the kill lands in
    wrapper.write_text("#!/bin/sh\nsleep 3\nexec qemu-system-x86_64 \"$@\"\n")
    wrapper.chmod(0o755)
    d = DaemonProcess(short_tmp / "qemud", {"qemu": {"destroy_grace": 1.0}})
    d.start()
    try:
        with d.connect() as conn:
            conn.define_xml(bare_domain_xml(name, emulator=str(wrapper)))
        starter = d.connect()
        outcome: list[BaseException] = []

        def start() -> None:
            try:
                starter.lookup_by_name(name).create(flags=1)  # paused: no firmware boot
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)
        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        status = d.run_dir / "qemu" / f"{name}.status.json"
        # (one process: while the wrapper forks its ``sleep`` the child briefly has the
        # wrapper's command line too)
        def launched() -> int | None:
            pids = qemu_pids(name)
            return pids[0] if len(pids) == 1 and status.exists() else None
        pid = wait_for(launched, timeout=10, message="QEMU launched and its status recorded")
        # followed by pidfd, not by command line: the wrapper becomes QEMU by an exec,
        # during which its command line reads empty
        pidfd = os.pidfd_open(pid)
        d.kill()
        thread.join(10)
        assert outcome and isinstance(outcome[0], client.ConnectionLost), outcome
        assert not select.select([pidfd], [], [], 0)[0], "QEMU must outlive the daemon"
        d.start()
        wait_pidfd(pidfd, 10, "the half-started QEMU, which the restarted daemon must kill")
        assert qemu_pids(name) == []
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            wait_for(lambda: dom.state()[0] == DomainState.SHUTOFF, timeout=5,
                     message="shut off")
            assert not status.exists()
            dom.create(flags=1)  # a fresh start works, with exactly one QEMU
            assert dom.state()[0] == DomainState.PAUSED and len(qemu_pids(name)) == 1
            dom.destroy()
            assert qemu_pids(name) == []
        assert "was still starting when the last daemon stopped" in d.log_text()
        assert_log_clean(d)
    finally:
        d.kill()


@pytest.mark.integration
def test_kill_right_after_the_launch_leaves_no_orphan_qemu(short_tmp: Path,
                                                           qemu_cleanup) -> None:
    """Killed between launching QEMU and its first status write (a test hook makes the
    daemon SIGKILL itself exactly there): no status file names that QEMU, so the
    restarted daemon finds it by its command line, under its own run directory, and
    kills it. Before, it ran on paused, holding the guest's disks, and the next start
    ran a second QEMU next to it."""
    from qemud.driver.lifecycle import DIE_AFTER_LAUNCH_ENV
    name = guest_name("unrecorded")
    d = DaemonProcess(short_tmp / "qemud", env={DIE_AFTER_LAUNCH_ENV: "1"})
    d.start()
    try:
        with d.connect() as conn:
            dom = conn.define_xml(bare_domain_xml(name))
            with pytest.raises(client.ConnectionLost):
                dom.create(flags=1)  # paused: no firmware boot
        [pid] = qemu_pids(name)
        pidfd = os.pidfd_open(pid)
        assert not (d.run_dir / "qemu" / f"{name}.status.json").exists()
        d.env.pop(DIE_AFTER_LAUNCH_ENV)
        d.start()
        wait_pidfd(pidfd, 10, "the unrecorded QEMU, which the restarted daemon must kill")
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            assert dom.state()[0] == DomainState.SHUTOFF
            dom.create(flags=1)  # a fresh start works, with exactly one QEMU
            assert dom.state()[0] == DomainState.PAUSED
            assert len(qemu_pids(name)) == 1
            dom.destroy()
        assert "was being started when the last daemon stopped, before it was recorded: " \
            "killing it" in d.log_text()
        assert_log_clean(d)
    finally:
        d.kill()


@pytest.mark.integration
def test_a_guest_whose_name_has_a_comma_is_re_attached(short_tmp: Path,
                                                       qemu_cleanup) -> None:
    """QEMU's command line doubles the commas of a name (``guest=web,,prod,...``): the
    restarted daemon still recognises its QEMU, re-attaches it and leaves it running
    (before, it took it for gone, marked the guest crashed, and the start-up sweep of
    unrecorded QEMUs then killed it)."""
    name = guest_name("web,prod")
    d = DaemonProcess(short_tmp / "qemud")
    d.start()
    try:
        with d.connect() as conn:
            conn.define_xml(bare_domain_xml(name)).create(flags=1)  # paused
        [pid] = qemu_pids(name.replace(",", ",,"))
        d.stop()
        d.start()
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            assert dom.state()[0] == DomainState.PAUSED
            assert qemu_pids(name.replace(",", ",,")) == [pid]
            dom.destroy()
        assert "re-attached to domain" in d.log_text()
        assert_log_clean(d)
    finally:
        d.kill()


def test_a_process_of_another_user_that_looks_like_a_qemu_is_left_alone(
        short_tmp: Path, qemu_cleanup) -> None:
    """Any user can start a process whose command line looks like one of the daemon's
    QEMUs (its run directory is no secret): the start-up sweep of unrecorded QEMUs
    leaves other users' processes alone (a session daemon could not signal them and
    stopped with EPERM; a root one killed them)."""
    d = DaemonProcess(short_tmp / "qemud")
    fake = [f"socket,id=mon,path={d.run_dir}/qemu/x/monitor.sock,server=on,wait=off",
            "guest=x,debug-threads=on"]

    def nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)
    planted = subprocess.Popen(["sh", "-c", "sleep 600; :", *fake], preexec_fn=nobody)
    try:
        wait_for(lambda: fake[1] in Path(f"/proc/{planted.pid}/cmdline").read_text(),
                 message="the planted process running")
        d.start()
        with d.connect() as conn:
            assert conn.list_all() == []
        assert planted.poll() is None, "the daemon killed another user's process"
        assert "was being started when the last daemon stopped" not in d.log_text()
    finally:
        planted.kill()
        planted.wait()
        d.kill()


def test_a_status_record_with_keys_this_version_does_not_know_is_re_attached(
        short_tmp: Path, qemu_cleanup) -> None:
    """A status file a newer daemon wrote (keys this version does not know, as after a
    downgrade): the QEMU is re-attached all the same, not left running unaccounted for
    while the guest reads as shut off (a start would then run a second QEMU)."""
    name = guest_name("newerstatus")
    d = DaemonProcess(short_tmp / "qemud")
    d.start()
    try:
        with d.connect() as conn:
            conn.define_xml(bare_domain_xml(name)).create(flags=1)  # paused
        [pid] = qemu_pids(name)
        d.kill()
        status = d.run_dir / "qemu" / f"{name}.status.json"
        record = json.loads(status.read_text())
        record["a_future_key"] = {"anything": 1}
        status.write_text(json.dumps(record))
        d.start()
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            assert dom.is_active() and dom.state()[0] == DomainState.PAUSED
            with pytest.raises(client.OperationInvalid, match="already running"):
                dom.create(flags=1)
            assert qemu_pids(name) == [pid]
            dom.destroy()
        assert "ignoring keys this version does not know: a_future_key" in d.log_text()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def test_a_qemu_whose_monitor_is_gone_is_stopped_at_re_attach(
        short_tmp: Path, qemu_cleanup) -> None:
    """QEMU runs, but its monitor socket is gone when the next daemon re-attaches: no
    daemon can manage it (pause, shutdown, a power-off), so it is stopped and the guest
    is shut off (crashed), as libvirt does, instead of reading as running for ever."""
    name = guest_name("nomonitor")
    d = DaemonProcess(short_tmp / "qemud", env={"QEMUD_MONITOR_TIMEOUT": "2"})
    d.start()
    try:
        with d.connect() as conn:
            conn.define_xml(bare_domain_xml(name)).create(flags=1)
        [pid] = qemu_pids(name)
        d.kill()
        [socket_path] = (d.run_dir / "qemu").rglob("monitor.sock")
        socket_path.unlink()
        d.start()
        with d.connect() as conn:
            dom = conn.lookup_by_name(name)
            wait_for(lambda: dom.state() == (DomainState.SHUTOFF, ShutoffReason.CRASHED),
                     timeout=30, message="shut off (crashed)")
            assert qemu_pids(name) == []
            dom.create(flags=1)  # a start works again, with one QEMU
            assert len(qemu_pids(name)) == 1 and qemu_pids(name) != [pid]
            dom.destroy()
        assert "cannot re-attach QMP" in d.log_text()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
