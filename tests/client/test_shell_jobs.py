"""domjobinfo / domcontrol text, as virsh prints it (cmdDomjobinfo's ``%-17s %-12s``
lines, vshPrettyCapacity's ``%.3lf %s``; cmdDomControl's three forms), and the commands'
place in the shell's table. The commands against a real daemon and guest are in
tests/integration/test_domain_jobs.py."""

from __future__ import annotations

from client.domain import ControlInfo, JobInfo
from client.shell.commands.jobs import control_line, job_lines
from client.shell.registry import REGISTRY
from protocol.payloads import ControlErrorReason, ControlState, JobOperation, JobType


def test_no_job_is_the_type_line_only() -> None:
    assert job_lines(JobInfo(JobType.NONE, 0, 0, 0, 0, 0, 0)) == \
        "Job type:         None        \n"


def test_job_without_progress() -> None:
    text = job_lines(JobInfo(JobType.UNBOUNDED, JobOperation.SNAPSHOT_DELETE, 1234, 0, 0, 0, 0))
    assert text.splitlines() == [
        "Job type:         Unbounded   ",
        "Operation:        Snapshot delete",
        "Time elapsed:     1234         ms",
    ]


def test_job_with_progress() -> None:
    mib = 1024 * 1024
    text = job_lines(JobInfo(JobType.UNBOUNDED, JobOperation.BACKUP, 20, 0,
                             16 * mib, mib, 15 * mib))
    assert text.splitlines()[1:] == [
        "Operation:        Backup      ",
        "Time elapsed:     20           ms",
        "Data processed:   1.000 MiB",
        "Data remaining:   15.000 MiB",
        "Data total:       16.000 MiB",
    ]


def test_bounded_job_has_its_remaining_time_and_unknown_numbers_have_words() -> None:
    lines = job_lines(JobInfo(JobType.BOUNDED, 99, 5, 7, 0, 0, 0)).splitlines()
    assert lines == ["Job type:         Bounded     ", "Operation:        Unknown     ",
                     "Time elapsed:     5            ms", "Time remaining:   7            ms"]
    assert job_lines(JobInfo(42, 0, 0, 0, 0, 0, 0)) == "Job type:         Unknown     \n"


def test_control_lines() -> None:
    assert control_line(ControlInfo(ControlState.OK, 0, 0)) == "ok"
    assert control_line(ControlInfo(ControlState.JOB, 0, 1500)) == "background job (1.500s)"
    assert control_line(ControlInfo(ControlState.OCCUPIED, 0, 2)) == "occupied (0.002s)"
    assert control_line(ControlInfo(ControlState.ERROR, ControlErrorReason.MONITOR, 0)) == \
        "error: monitor failure"
    assert control_line(ControlInfo(ControlState.ERROR, 0, 0)) == "error"


def test_commands_are_registered_in_virshs_groups() -> None:
    import client.shell.commands  # noqa: F401  (registers every command)
    groups = {name: REGISTRY[name].group for name in ("domjobinfo", "domjobabort",
                                                       "domcontrol")}
    assert groups == {"domjobinfo": "domain", "domjobabort": "domain",
                      "domcontrol": "monitor"}
    assert [a.name for a in REGISTRY["domjobabort"].args] == ["domain"]
