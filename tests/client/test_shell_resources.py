"""qemush setmem, setmaxmem, dommemstat, setvcpus and vcpuinfo: virsh's size syntax,
option checks, errors and output (formats checked against virsh 9.0's test driver)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from client.shell.commands.resources import _affinity, _uint, scaled_kib
from client.shell.registry import UsageError
from tests.client.conftest import READONLY_REFUSAL, Qemush, ok
from tests.helpers.daemon import DaemonProcess

# <memballoon model='none'>: the shell's output without a balloon (an x86_64 guest gets
# libvirt's default virtio balloon otherwise; tests/integration/test_driver_resources.py)
GUEST = ("<domain type='qemu'><name>res</name><memory unit='MiB'>128</memory>"
         "<vcpu current='1'>2</vcpu><os><type arch='x86_64'>hvm</type></os>"
         "<devices><memballoon model='none'/></devices></domain>\n")


@pytest.mark.parametrize(("text", "kib"), [
    ("1024", 1024), ("1", 1), (" +5", 5), ("1b", 1), ("1025bytes", 2), ("1byte", 1),
    ("1k", 1), ("1KiB", 1), ("1Kib", 1), ("1kB", 1), ("2KB", 2), ("1M", 1024),
    ("1MiB", 1024), ("1MB", 977), ("1G", 1048576), ("1gib", 1048576), ("1GB", 976563),
    ("1T", 1024**3), ("15E", 15 * 2**50), ("0", 0),
])
def test_scaled_sizes_read_as_virsh_reads_them(text: str, kib: int) -> None:
    assert scaled_kib(text) == kib


@pytest.mark.parametrize(("text", "lines"), [
    ("12x", ["Scaled numeric value '12x' for <size> option is malformed or out of range",
             "invalid argument: unknown suffix 'x'"]),
    ("1.5G", ["Scaled numeric value '1.5G' for <size> option is malformed or out of range",
              "invalid argument: unknown suffix '.5G'"]),
    ("20000000T", ["Scaled numeric value '20000000T' for <size> option is malformed or out "
                   "of range", "numerical overflow: value too large: 20000000T"]),
    ("99999999999999999999", ["Scaled numeric value '99999999999999999999' for <size> "
                              "option is malformed or out of range"]),
    ("-1", ["Scaled numeric value '-1' for <size> option is malformed or out of range"]),
    ("", ["Scaled numeric value '' for <size> option is malformed or out of range"]),
])
def test_bad_sizes_are_virshs_errors(text: str, lines: list[str]) -> None:
    with pytest.raises(UsageError) as exc:
        scaled_kib(text)
    assert exc.value.lines == lines


def test_counts() -> None:
    assert _uint("2", "count") == 2 and _uint(" +3", "count") == 3
    for bad in ("-1", "abc", "5000000000", "1.0"):
        with pytest.raises(UsageError, match=rf"^Numeric value '{re.escape(bad)}' for "
                                              r"<count> option is malformed or out of range$"):
            _uint(bad, "count")


def test_affinity() -> None:
    assert _affinity(b"\x0b", 4, False) == "yy-y"
    assert _affinity(b"\x0b", 4, True) == "0-1,3 (out of 4)"
    assert _affinity(b"\xff\x01", 9, True) == "0-8 (out of 9)"
    assert _affinity(b"\x04", 8, True) == "2 (out of 8)"
    assert _affinity(b"", 2, False) == "--"


def test_option_checks_come_before_the_daemon(daemon: DaemonProcess, qemush: Qemush) -> None:
    """virsh's own refusals, made before the domain is looked up."""
    cases = [
        (["setmem", "d", "1G", "--current", "--live"],
         "error: Options --current and --live are mutually exclusive"),
        (["setmaxmem", "d", "1G", "--current", "--config"],
         "error: Options --current and --config are mutually exclusive"),
        (["setvcpus", "d", "2", "--maximum"],
         "error: Option --config is required by option --maximum"),
        (["setvcpus", "d", "2", "--guest", "--config"],
         "error: Options --guest and --config are mutually exclusive"),
        (["setvcpus", "d", "-1"],
         "error: Numeric value '-1' for <count> option is malformed or out of range"),
    ]
    for argv, message in cases:
        proc = qemush("-c", daemon.uri, *argv)
        assert proc.returncode == 1, argv
        assert proc.stderr.splitlines()[0] == message, (argv, proc.stderr)


def _xml(qemush: Qemush, daemon: DaemonProcess, *flags: str) -> ET.Element:
    return ET.fromstring(ok(qemush("-c", daemon.uri, "dumpxml", "res", *flags)))


@pytest.mark.integration
def test_memory_and_vcpu_commands(daemon: DaemonProcess, qemush: Qemush,
                                  tmp_path: Path) -> None:
    u = daemon.uri
    path = tmp_path / "res.xml"
    path.write_text(GUEST)
    ok(qemush("-c", u, "define", str(path)))

    # shut off: the persistent definition, silently, as virsh
    assert ok(qemush("-c", u, "setmem", "res", "64M", "--config")) == ""
    assert _xml(qemush, daemon).findtext("currentMemory") == "65536"
    assert ok(qemush("-c", u, "setmaxmem", "res", "96MiB")) == ""
    assert _xml(qemush, daemon).findtext("memory") == "98304"
    proc = qemush("-c", u, "setmem", "res", "64M")  # virsh's default: the running domain
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("error: Requested operation is not valid: domain 'res' is not "
                           "running\n"), proc.stderr
    proc = qemush("-c", u, "setmem", "res", "1G", "--config")
    assert proc.stderr == "error: invalid argument: cannot set memory higher than max memory\n"
    assert ok(qemush("-c", u, "setvcpus", "res", "2", "--config")) == ""
    vcpu = _xml(qemush, daemon).find("vcpu")
    assert vcpu is not None and vcpu.attrib == {} and vcpu.text == "2"
    assert ok(qemush("-c", u, "setvcpus", "res", "3", "--config", "--maximum")) == ""
    vcpu = _xml(qemush, daemon).find("vcpu")
    assert vcpu is not None and (vcpu.get("current"), vcpu.text) == ("2", "3")

    # vcpuinfo of a shut-off domain: virsh's fallback
    text = ok(qemush("-c", u, "vcpuinfo", "res"))
    blocks = text.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == "", text
    assert re.fullmatch(r"VCPU:           0\nCPU:            N/A\nState:          N/A\n"
                        r"CPU time        N/A\nCPU Affinity:   y+", blocks[0]), blocks[0]
    proc = qemush("-c", u, "dommemstat", "res")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "error: Failed to get memory statistics for " \
                                          "domain res"

    ok(qemush("-c", u, "start", "res"))
    try:
        text = ok(qemush("-c", u, "dommemstat", "res"))
        assert re.fullmatch(r"rss [1-9]\d*\n", text), text
        text = ok(qemush("-c", u, "vcpuinfo", "res"))
        for n, block in enumerate(text.split("\n\n")[:-1]):
            assert re.fullmatch(rf"VCPU:           {n}\nCPU:            \d+\n"
                                r"State:          running\n(CPU time:       \d+\.\ds\n)?"
                                r"CPU Affinity:   [y-]+", block), block
        assert text.count("VCPU:") == 2 and text.endswith("\n\n")
        pretty = ok(qemush("-c", u, "vcpuinfo", "res", "--pretty"))
        assert re.search(r"^CPU Affinity:   [\d,-]+ \(out of \d+\)$", pretty, re.M), pretty

        proc = qemush("-c", u, "setmem", "res", "32M")
        assert proc.stderr == ("error: Requested operation is not valid: Unable to change "
                               "memory of active domain without the balloon device and "
                               "guest OS balloon driver\n")
        proc = qemush("-c", u, "setmaxmem", "res", "64M")
        assert proc.stderr == ("error: Unable to change MaxMemorySize\n"
                               "error: Requested operation is not valid: cannot resize the "
                               "maximum memory on an active domain\n")
        assert ok(qemush("-c", u, "setmaxmem", "res", "64M", "--config")) == ""
        proc = qemush("-c", u, "setvcpus", "res", "1")
        # vCPU 1 was there when QEMU started: not hot-pluggable (libvirt's refusal)
        assert proc.returncode == 1 and ("failed to find appropriate hotpluggable vcpus to "
                                         "reach the desired target vcpu count: vCPU 1 was "
                                         "not hot-plugged") in proc.stderr, proc.stderr
        assert ok(qemush("-c", u, "setvcpus", "res", "1", "--config")) == ""

        for argv in (["setmem", "res", "32M", "--config"], ["setmaxmem", "res", "64M"],
                     ["setvcpus", "res", "1", "--config"]):
            proc = qemush("-r", "-c", u, *argv)
            assert proc.returncode == 1 and READONLY_REFUSAL in proc.stderr.splitlines(), argv
        assert ok(qemush("-r", "-c", u, "dommemstat", "res")).startswith("rss ")
        assert "VCPU:" in ok(qemush("-r", "-c", u, "vcpuinfo", "res"))
    finally:
        qemush("-c", u, "destroy", "res")
    inactive = _xml(qemush, daemon)
    assert (inactive.findtext("memory"), inactive.findtext("currentMemory")) == \
        ("65536", "65536")
