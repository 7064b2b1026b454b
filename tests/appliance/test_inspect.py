"""Host inspection over fake /proc + /sys trees (tests/appliance/data/hosts) and the real host."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qemud.appliance.inspect import inspect_host, read_cpus, read_dmi, read_nics

from .conftest import HOSTS


def test_hyperthreaded_server_with_dmi() -> None:
    host = inspect_host(HOSTS / "server-ht")
    assert host.memory_kib == 32768000 and host.memory_bytes == 32768000 * 1024
    # 8 online threads on 4 cores; cpu8 is offline; cpufreq/cpuidle are not CPUs
    assert (host.logical_cpus, host.cores, host.sockets, host.cpu_source) == (8, 4, 1, "sysfs")
    # lo, the bridge and the tap have no device link; natural order; MACs lower-cased
    assert [(n.name, n.mac, n.driver, n.speed) for n in host.nics] == [
        ("eth0", "00:1e:67:aa:bb:01", "igb", 1000),
        ("eth1", "00:1e:67:aa:bb:02", "igb", None),  # link down: speed -1
        ("eth10", "00:1e:67:aa:bb:0a", "ixgbe", 10000)]
    assert host.dmi is not None
    assert host.dmi["sys_vendor"] == "Acme Appliances Inc."
    assert host.dmi["product_uuid"] == "4c4c4544-0042-3510-8051-b7c04f4e3232"
    assert "board_serial" not in host.dmi  # empty file: left out
    data = json.loads(host.to_json())
    assert data["cores"] == 4 and data["nics"][0]["name"] == "eth0"
    assert data["memory_bytes"] == host.memory_bytes


def test_no_dmi_and_cpuinfo_fallback_with_hyperthreads() -> None:
    host = inspect_host(HOSTS / "nodmi-cpuinfo")
    assert host.dmi is None
    assert (host.logical_cpus, host.cores, host.cpu_source) == (4, 2, "cpuinfo")
    assert [(n.name, n.mac) for n in host.nics] == [("end0", "52:54:00:ab:cd:ef")]


def test_cpuinfo_without_core_ids_counts_processors() -> None:
    host = inspect_host(HOSTS / "minimal")
    assert (host.logical_cpus, host.cores, host.cpu_source) == (3, 3, "cpuinfo-processors")
    assert host.nics == [] and host.dmi is None and host.memory_kib == 1000000


def test_two_sockets(tmp_path: Path) -> None:
    for i in range(8):  # 2 packages x 2 cores x 2 threads; core ids repeat per package
        topo = tmp_path / f"sys/devices/system/cpu/cpu{i}/topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{i // 4}\n")
        (topo / "core_id").write_text(f"{i % 2}\n")
    assert read_cpus(tmp_path) == (8, 4, 2, "sysfs")


def test_nothing_readable_is_not_an_error(tmp_path: Path) -> None:
    host = inspect_host(tmp_path)
    assert host.memory_kib == 0 and host.nics == [] and host.dmi is None
    assert host.cores == host.logical_cpus == (os.cpu_count() or 1)


def test_dmi_unreadable_fields_are_left_out(tmp_path: Path) -> None:
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("Vendor\n")
    (dmi / "product_serial").mkdir()  # stands for a root-only file: reading fails
    assert read_dmi(tmp_path) == {"sys_vendor": "Vendor"}
    (dmi / "sys_vendor").unlink()
    assert read_dmi(tmp_path) == {}  # DMI present, nothing readable: {} (not None)


def test_nic_device_link_as_symlink(tmp_path: Path) -> None:
    net = tmp_path / "sys/class/net"
    (tmp_path / "sys/devices/pci0000:00/0000:00:19.0").mkdir(parents=True)
    (net / "eno1").mkdir(parents=True)
    (net / "eno1/address").write_text("AA:BB:CC:DD:EE:FF\n")
    (net / "eno1/device").symlink_to(tmp_path / "sys/devices/pci0000:00/0000:00:19.0")
    (net / "veth0").mkdir()
    (net / "veth0/address").write_text("aa:aa:aa:aa:aa:aa\n")
    (net / "dangling").mkdir()
    (net / "dangling/device").symlink_to(tmp_path / "nowhere")  # gone: not physical
    assert [(n.name, n.mac) for n in read_nics(tmp_path)] == [("eno1", "aa:bb:cc:dd:ee:ff")]


def test_real_host() -> None:
    host = inspect_host("/")
    assert host.memory_kib > 0
    assert host.cores >= 1 and host.logical_cpus >= host.cores
    for nic in host.nics:
        assert nic.name != "lo"
        assert os.path.exists(f"/sys/class/net/{nic.name}/device")
