"""Deterministic ids and node names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemud.qemu import naming


@pytest.mark.parametrize(
    ("dev", "expected"),
    [("vda", 0), ("hdc", 2), ("sdz", 25), ("sdaa", 26), ("sdab", 27), ("sdba", 52),
     ("xvdb", 1), ("vd1", None), ("nvme0n1", None), ("", None), ("vda1", None)],
)  # fmt: skip
def test_disk_index(dev: str, expected: int | None) -> None:
    assert naming.disk_index(dev) == expected


@settings(deadline=None)  # shared 2-core CI box: wall time is noisy
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=3))
def test_disk_index_is_a_bijection_over_letters(letters: str) -> None:
    index = naming.disk_index("sd" + letters)
    assert index is not None
    # invert: bijective base 26
    out = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("a") + rem) + out
    assert out == letters


def test_disk_names() -> None:
    assert naming.disk_node_names("vda") == ("drive-vda-storage", "drive-vda-format")
    assert naming.disk_device_id("sdb") == "disk-sdb"
    with pytest.raises(ValueError):
        naming.disk_node_names("a,b")
    with pytest.raises(ValueError):
        naming.disk_node_names("sd" + "a" * 30)  # QEMU node names are < 32 bytes


def test_nic_ids_follow_the_mac() -> None:
    assert naming.nic_ids("52:54:00:AB:cd:01") == ("net-525400abcd01", "hostnet-525400abcd01")
    with pytest.raises(ValueError):
        naming.nic_ids("52:54:00:ab:cd")


def test_chardev_ids_and_validity() -> None:
    assert naming.chardev_ids("serial", 2) == ("charserial2", "serial2")
    assert naming.is_valid_id("disk-vda") and naming.is_valid_id("channel0")
    assert not naming.is_valid_id("0abc") and not naming.is_valid_id("a b")


def test_guest_dir_name_keeps_a_name_that_fits() -> None:
    assert naming.guest_dir_name("/run/qemud/qemu", "web-1") == "web-1"
    assert naming.guest_dir_name("/run/qemud/qemu", "a" * 60) == "a" * 60


def test_guest_dir_name_shortens_what_does_not_fit_and_keeps_its_start() -> None:
    short = naming.guest_dir_name("/run/qemud/qemu", "a" * 90)
    assert short.startswith("a" * 10) and "~" in short
    assert len("/run/qemud/qemu/" + short + "/charchannel12.sock") <= naming.UNIX_PATH_MAX
    assert naming.guest_dir_name("/run/qemud/qemu", "a" * 89 + "b") != short


def test_guest_dir_name_of_dot_names_is_not_a_directory_alias() -> None:
    for name in (".", ".."):
        assert naming.guest_dir_name("/run", name) not in (".", "..")


def test_guest_dir_name_under_a_deep_run_root_is_the_digest() -> None:
    root = "/" + "r" * 80
    short = naming.guest_dir_name(root, "x" * 30)
    assert len(short) == 8 and set(short) <= set("0123456789abcdef")
    assert len(f"{root}/{short}/monitor.sock") <= naming.UNIX_PATH_MAX
