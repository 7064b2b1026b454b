"""A client's destroy while another client's start is still in progress: the start
fails saying the domain was destroyed (not "QEMU exited during start", nor QEMU's words
about the signal), and the domain is shut off as destroyed, as its STOPPED event says.
A graceful destroy (SIGTERM only) that QEMU outlasts while the start fails on its own
does not keep the start from ending: it fails with its own error.

The daemon's QEMU is a wrapper that a test can hold before it runs the real one
(tests/helpers/held_qemu_img.py, installed as ``qemu-system-x86_64`` in the daemon's
``qemu.emulator_dirs``), so the destroy lands in the start with no timing games.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import client
from client.domain import DESTROY_GRACEFUL
from protocol.constants import (
    DomainState,
    LifecycleEvent,
    ShutoffReason,
    StoppedDetail,
    UndefineFlags,
)
from qemud.driver.lifecycle import MONITOR_TIMEOUT_ENV
from tests.helpers.daemon import DaemonProcess, remove_domain, serving, wait_for
from tests.helpers.held_qemu_img import HeldQemuImg
from tests.helpers.procs import qemu_pids
from tests.helpers.threads import Background
from tests.integration.conftest import TestGuest
from tests.integration.domains import guest_xml

pytestmark = pytest.mark.integration


def held_qemu(root: Path) -> HeldQemuImg:
    """A ``qemu-system-x86_64`` the test can hold, in ``root``/bin."""
    root.mkdir()
    return HeldQemuImg.install(root, "qemu-system-x86_64")


def destroyed_while_held(daemon: DaemonProcess, held: HeldQemuImg,
                         dom: client.Domain) -> Background:
    """``dom``'s start (DOMAIN_CREATE) on its own connection, destroyed while its QEMU
    is held before it runs."""
    held.start_holding()
    start = Background(daemon, lambda c: c.lookup_by_name(dom.name).create())
    try:
        wait_for(held.held.exists, timeout=60, message="the start's QEMU held")
        dom.destroy()
    finally:
        held.release()
    return start


def test_a_destroy_during_the_start_fails_the_start_saying_so(
        tmp_path: Path, test_guest: TestGuest) -> None:
    held = held_qemu(tmp_path / "held")
    daemon = DaemonProcess(tmp_path / "d",
                           {"qemu": {"emulator_dirs": [str(held.bin_dir)]}})
    with serving(daemon), daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("cut-short", test_guest, None))
        try:
            conn.register_event(client.EventId.LIFECYCLE)
            start = destroyed_while_held(daemon, held, dom)
            with pytest.raises(client.OperationFailed,
                               match="domain 'cut-short' was destroyed during its start"):
                start.wait(60)
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
            record = conn.next_event(10)
            assert record is not None and record.domain.name == "cut-short"
            assert (record.event, record.detail) == (LifecycleEvent.STOPPED,
                                                     StoppedDetail.DESTROYED)
            dom.create()  # nothing is left of the start that was cut short
            assert dom.state()[0] == DomainState.RUNNING
        finally:
            remove_domain(dom)


def test_a_destroy_during_a_restore_says_restore(tmp_path: Path,
                                                 test_guest: TestGuest) -> None:
    """The same for a restore (here a managed save's, which DOMAIN_CREATE runs): the
    error names what was cut short, and the image stays for the next start."""
    held = held_qemu(tmp_path / "held")
    daemon = DaemonProcess(tmp_path / "d",
                           {"qemu": {"emulator_dirs": [str(held.bin_dir)]}})
    with serving(daemon), daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("cut-restore", test_guest, None))
        try:
            dom.create(client.START_PAUSED)
            dom.managed_save()
            start = destroyed_while_held(daemon, held, dom)  # (the restore's QEMU)
            with pytest.raises(client.OperationFailed, match="domain 'cut-restore' was "
                               "destroyed during its restore"):
                start.wait(60)
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.DESTROYED)
            assert dom.has_managed_save()
        finally:
            remove_domain(dom, UndefineFlags.SNAPSHOTS_METADATA | UndefineFlags.MANAGED_SAVE)


#: a qemu-system-x86_64 whose guests never answer: a guest's process ignores SIGTERM
#: and never opens its QMP socket (the capabilities probe gets the real QEMU)
_DEAF_GUEST_QEMU = """#!/bin/sh
case "$*" in
    *"-name guest="*) trap '' TERM; while :; do sleep 1; done ;;
esac
exec {real} "$@"
"""


def test_a_graceful_destroy_that_qemu_outlasts_does_not_hang_a_failing_start(
        tmp_path: Path, test_guest: TestGuest) -> None:
    """The start's monitor connection times out (2 s) while a graceful destroy waits
    for a QEMU that ignores SIGTERM (6 s): once the grace is over the graceful destroy
    fails, and the start fails with its own error and QEMU is killed, as a start whose
    step fails always is. Before, the start waited for an exit that never came."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "qemu-system-x86_64"
    wrapper.write_text(_DEAF_GUEST_QEMU.format(real="/usr/bin/qemu-system-x86_64"))
    wrapper.chmod(0o755)
    daemon = DaemonProcess(tmp_path / "d", {"qemu": {"emulator_dirs": [str(bin_dir)],
                                                     "destroy_grace": 6}},
                           env={MONITOR_TIMEOUT_ENV: "2"})
    with serving(daemon), daemon.connect() as conn:
        dom = conn.define_xml(guest_xml("deaf-start", test_guest, None))
        try:
            start = Background(daemon, lambda c: c.lookup_by_name("deaf-start").create())
            wait_for(lambda: dom.state()[0] == DomainState.PAUSED, timeout=30,
                     message="the start under way")
            with pytest.raises(client.QemudClientError, match="SIGTERM"):
                dom.destroy(DESTROY_GRACEFUL)
            with pytest.raises(client.QemudClientError) as info:
                start.wait(30)  # (asserts that it was answered)
            assert "destroyed during its start" not in str(info.value), info.value
            assert dom.state() == (DomainState.SHUTOFF, ShutoffReason.FAILED)
            wait_for(lambda: qemu_pids("deaf-start", daemon.run_dir) == [], timeout=10,
                     message="the deaf QEMU killed")
        finally:
            remove_domain(dom)
