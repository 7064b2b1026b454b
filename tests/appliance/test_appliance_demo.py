"""contrib/appliance-demo.sh end to end: one appliance through every appliance duty.

Runs the demo with ``--cleanup`` in a work directory under tmp (its own session daemon,
one TCG guest, one loop device) and checks that the output shows each step's evidence
and that nothing of the demo is left afterwards: no process (daemon, QEMU, serial relay,
event watcher) naming the work directory, no loop device bound to a file in it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import TestGuest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "contrib" / "appliance-demo.sh"
#: three boots under TCG (start, A/B update, guest reboot) plus two appliance builds;
#: about 45 s alone on 2 cores, the rest is room for a loaded machine
DEMO_TIMEOUT = 420


def _processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _loops_backed_in(directory: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--output",
                          "NAME,BACK-FILE"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if str(directory) in line]


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo binds a loop device: needs root")
def test_appliance_demo_runs_every_duty(tmp_path: Path, test_guest: TestGuest) -> None:
    work = tmp_path / "demo"
    env = dict(os.environ, QEMUD_APPLIANCE_DEMO_DIR=str(work),
               QEMUD_GUEST_DIR=str(test_guest.dir))
    try:
        proc = subprocess.run([str(SCRIPT), "--cleanup"], cwd=tmp_path, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=DEMO_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        subprocess.run([str(SCRIPT), "--stop"], env=env, capture_output=True, timeout=60)
        pytest.fail(f"the demo did not finish within {DEMO_TIMEOUT} s; output:\n"
                    f"{exc.stdout!r}\n{exc.stderr!r}")
    out = proc.stdout
    report = f"--- stdout ---\n{out}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, report

    for n in range(1, 10):
        assert f"=== Step {n}/9:" in out, f"step {n} missing\n{report}"
    steps = re.split(r"^=== Step \d/9: .*$", out, flags=re.M)
    assert len(steps) == 10, report
    host, images, power, hotplug, heartbeat, snapshots, update, reboot, bundle = steps[1:]

    # 1 host inspection + template: the facts, and the template rendered with them
    assert '"memory_bytes"' in host and '"cores"' in host, host
    assert re.search(r"<memory unit='MiB'>(12[89]|1[3-9]\d|2[0-4]\d|25[0-6])</memory>",
                     host), host
    assert re.search(r"<vcpu>[12]</vcpu>", host), host
    assert "{{" not in host and "qemud:formulas" not in host, host
    # 2 appliance images: both versions imported and listed, app1 deployed from 1.0
    assert "Appliance demo:1.0 imported" in images, images
    assert "Appliance demo:2.0 imported" in images, images
    assert re.search(r"demo\s+2\.0\s+x86_64", images), images
    assert "Domain 'app1' deployed from appliance demo" in images, images
    # 3 the power policy defined, the guest started and booted
    assert 'guest-reboot="hook"' in power, power
    assert "Domain 'app1' started" in power, power
    assert "QEMUD-GUEST-READY" in power, power
    # 4 udev hotplug: the guest sees a new disk, the daemon lists it attached
    match = re.search(r"hotplug-attached: (/dev/loop\d+) as (vd[a-z])", hotplug)
    assert match, hotplug
    loop, target = match.groups()
    assert re.search(rf"QEMUD-BLOCK: .*\b{target}\b", hotplug), hotplug
    assert re.search(rf"{re.escape(loop)}\s+demo-usb-stick\s+app1\s+{target}\s+yes",
                     hotplug), hotplug
    # 5 heartbeat watchdog
    count = re.search(r"heartbeat\.count=(\d+)", heartbeat)
    assert count and int(count.group(1)) > 0, heartbeat
    # 6 snapshot and backup with progress
    assert "Domain snapshot before-update created" in snapshots, snapshots
    assert re.search(r"^\s*before-update\s+\d{4}-", snapshots, re.M), snapshots
    assert re.search(r"^backup: 0%$(.|\n)*^backup: 100%$", snapshots, re.M), snapshots
    assert "backed up to" in snapshots and "file format: qcow2" in snapshots, snapshots
    # 7 refused while the disks are snapshot overlays; deleting the snapshot merges them
    # back; then the A/B update, confirmed, and the guest reads the new system disk
    assert "Domain snapshot before-update deleted" in update, update
    assert "switched to version 2.0" in update, update
    assert "update-confirmed: demo 1.0 -> 2.0" in update, update
    assert "QEMUD-READ vda DEMO-SYSTEM-2.0" in update, update
    # 8 the guest's own reboot ran the hook, and an appliance event said so
    assert "QEMUD-GUEST-REBOOT" in reboot, reboot
    assert "power-action: hook after guest reboot" in reboot, reboot
    assert "QEMUD_EVENT=guest-reboot QEMUD_DOMAIN=app1" in reboot, reboot
    # 9 the support bundle and its members
    for member in ("MANIFEST.txt", "versions.txt", "config.toml", "domains/app1.xml",
                   "logs/qemud.log", "logs/appliance-hooks.log", "appliances.json"):
        assert re.search(rf"qemud-support-[^/\s]+/{re.escape(member)}$", bundle, re.M), \
            f"{member} not in the bundle\n{bundle}"
    assert "=== Cleanup ===" in out, report

    # nothing of the demo is left
    assert not work.exists(), sorted(str(p) for p in work.rglob("*"))[:20]
    assert _processes_naming(str(work)) == []
    assert _loops_backed_in(work) == []
    bound = Path(f"/sys/block/{loop.removeprefix('/dev/')}/loop/backing_file")
    if bound.exists():  # taken since by someone else: it must not be ours
        assert str(work) not in bound.read_text()
