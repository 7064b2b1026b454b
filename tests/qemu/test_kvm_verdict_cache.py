"""The KVM run probe's verdict is cached for the boot, keyed by the device node."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qemud.qemu.capabilities import KVM_CACHE_FILE, probe_capabilities


def test_verdict_is_reused_until_the_device_node_changes(tmp_path: Path) -> None:
    device = tmp_path / "kvm"  # not a KVM device: the probe fails fast, but for real
    device.write_text("")
    cache = tmp_path / "cache"
    first = probe_capabilities(cache, archs=[], kvm_device=str(device))
    assert not first.kvm_usable
    assert "earlier in this boot" not in first.kvm_reason
    assert (cache / KVM_CACHE_FILE).exists()

    second = probe_capabilities(cache, archs=[], kvm_device=str(device))
    assert second.kvm_usable == first.kvm_usable
    assert second.kvm_reason.startswith(first.kvm_reason)
    assert second.kvm_reason.endswith("(probed earlier in this boot)")

    time.sleep(0.01)
    os.chmod(device, 0o600)  # ctime changes: e.g. the module was reloaded
    third = probe_capabilities(cache, archs=[], kvm_device=str(device))
    assert "earlier in this boot" not in third.kvm_reason


def test_no_cache_dir_means_no_cache(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    probe_capabilities(None, archs=[], kvm_device=str(device))
    again = probe_capabilities(None, archs=[], kvm_device=str(device))
    assert "earlier in this boot" not in again.kvm_reason
