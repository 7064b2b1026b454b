"""client.format: virsh's table layout and words, without a daemon."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from client.format import (
    display_width,
    event_detail_name,
    event_name,
    format_time,
    key_values,
    lifecycle_text,
    parse_state_name,
    reason_name,
    snapshot_state_name,
    state_name,
    state_text,
    table,
    to_json,
    version_string,
    watchdog_action_name,
)
from protocol.constants import (
    DomainState,
    LifecycleEvent,
    PausedReason,
    RunningReason,
    ShutoffReason,
    StartedDetail,
    StoppedDetail,
)

# -- table -------------------------------------------------------------------------------


def test_virsh_list_layout() -> None:
    # byte for byte what virsh list --all prints for these domains
    text = table(["Id", "Name", "State"], [["1", "fedora", "running"],
                                           ["-", "win10", "shut off"]])
    assert text == (
        " Id   Name     State\n"
        "-------------------------\n"
        " 1    fedora   running\n"
        " -    win10    shut off\n"
    )


def test_empty_table_is_header_and_dashes() -> None:
    assert table(["Id", "Name", "State"], []) == (
        " Id   Name   State\n"
        "--------------------\n"
    )


def test_dash_line_is_sum_of_widths_plus_three() -> None:
    rows = [["12", "a-long-domain-name", "in shutdown"]]
    lines = table(["Id", "Name", "State"], rows).splitlines()
    assert lines[1] == "-" * ((2 + 3) + (18 + 3) + (11 + 3))
    # columns start where the header's do
    assert lines[2].index("a-long") == lines[0].index("Name")
    assert lines[2].index("in shutdown") == lines[0].index("State")


def test_last_column_is_not_padded() -> None:
    text = table(["A", "B"], [["x", "1"], ["y", "12345"]])
    for line in text.splitlines():
        assert line == line.rstrip()


def test_header_can_be_left_out() -> None:
    assert table(["Id", "Name"], [["1", "a"]], header=False) == " 1   a\n"


def test_control_characters_are_escaped_and_wide_ones_counted() -> None:
    text = table(["Name", "X"], [["a\tb", "1"], ["日本", "2"]])
    lines = text.splitlines()
    assert "a\\x09b" in lines[2]
    assert display_width("日本") == 4
    # the X column lines up although "日本" is 2 characters but 4 columns wide
    assert display_width(lines[2][:lines[2].index("1")]) == \
        display_width(lines[3][:lines[3].index("2")])


def test_row_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        table(["A", "B", "C"], [["1", "2"]])


def test_key_values_widths() -> None:
    assert key_values([("Id:", 1), ("Name:", "demo")]) == (
        "Id:             1\n"
        "Name:           demo\n"
    )
    assert key_values([("CPU model:", "x86_64")], width=20) == \
        "CPU model:           x86_64\n"


# -- states and reasons ------------------------------------------------------------------


@pytest.mark.parametrize("state, name", [
    (DomainState.NOSTATE, "no state"), (DomainState.RUNNING, "running"),
    (DomainState.BLOCKED, "idle"), (DomainState.PAUSED, "paused"),
    (DomainState.SHUTDOWN, "in shutdown"), (DomainState.SHUTOFF, "shut off"),
    (DomainState.CRASHED, "crashed"), (DomainState.PMSUSPENDED, "pmsuspended"),
])
def test_state_names(state: DomainState, name: str) -> None:
    assert state_name(state) == name
    assert parse_state_name(name) == state


def test_unknown_state() -> None:
    assert state_name(42) == "unknown"
    assert reason_name(42, 0) == "unknown"
    assert parse_state_name("sleeping") is None


@pytest.mark.parametrize("state, reason, text", [
    (DomainState.SHUTOFF, ShutoffReason.DESTROYED, "shut off (destroyed)"),
    (DomainState.SHUTOFF, ShutoffReason.SAVED, "shut off (saved)"),
    (DomainState.SHUTOFF, ShutoffReason.FROM_SNAPSHOT, "shut off (from snapshot)"),
    (DomainState.SHUTOFF, ShutoffReason.DAEMON, "shut off (daemon)"),
    (DomainState.RUNNING, RunningReason.BOOTED, "running (booted)"),
    (DomainState.RUNNING, RunningReason.RESTORED, "running (restored)"),
    (DomainState.RUNNING, RunningReason.UNPAUSED, "running (unpaused)"),
    (DomainState.RUNNING, RunningReason.WAKEUP, "running (event wakeup)"),
    (DomainState.PAUSED, PausedReason.USER, "paused (user)"),
    (DomainState.PAUSED, PausedReason.IOERROR, "paused (I/O error)"),
    (DomainState.PAUSED, PausedReason.SNAPSHOT, "paused (creating snapshot)"),
    (DomainState.PAUSED, PausedReason.STARTING_UP, "paused (starting up)"),
    (DomainState.SHUTDOWN, 1, "in shutdown (user)"),
    (DomainState.CRASHED, 1, "crashed (panicked)"),
    (DomainState.PMSUSPENDED, 0, "pmsuspended (unknown)"),
    (DomainState.RUNNING, 99, "running (unknown)"),
])
def test_state_with_reason(state: int, reason: int, text: str) -> None:
    assert state_text(state, reason) == text


def test_state_text_without_reason() -> None:
    assert state_text(DomainState.SHUTOFF) == "shut off"


def test_snapshot_state_words() -> None:
    assert snapshot_state_name(DomainState.SHUTOFF) == "shutoff"
    # virsh's words for a disk-only snapshot: of an active domain, of a shut-off one
    assert snapshot_state_name(DomainState.RUNNING) == "disk-snapshot"
    assert snapshot_state_name(DomainState.PAUSED) == "disk-snapshot"
    assert snapshot_state_name(8) == "disk-snapshot"  # VIR_DOMAIN_SNAPSHOT_DISK_SNAPSHOT
    assert snapshot_state_name(77) == "unknown"


# -- events ------------------------------------------------------------------------------


@pytest.mark.parametrize("event, detail, text", [
    (LifecycleEvent.STARTED, StartedDetail.BOOTED, "Started Booted"),
    (LifecycleEvent.STARTED, StartedDetail.RESTORED, "Started Restored"),
    (LifecycleEvent.STOPPED, StoppedDetail.DESTROYED, "Stopped Destroyed"),
    (LifecycleEvent.STOPPED, StoppedDetail.SAVED, "Stopped Saved"),
    (LifecycleEvent.SUSPENDED, 0, "Suspended Paused"),
    (LifecycleEvent.RESUMED, 0, "Resumed Unpaused"),
    (LifecycleEvent.DEFINED, 0, "Defined Added"),
    (LifecycleEvent.DEFINED, 1, "Defined Updated"),
    (LifecycleEvent.UNDEFINED, 0, "Undefined Removed"),
    (LifecycleEvent.SHUTDOWN, 1, "Shutdown Finished after guest request"),
    (LifecycleEvent.CRASHED, 0, "Crashed Panicked"),
])
def test_lifecycle_text(event: int, detail: int, text: str) -> None:
    assert lifecycle_text(event, detail) == text


def test_unknown_event_words() -> None:
    assert event_name(99) == "unknown"
    assert event_detail_name(99, 0) == "unknown"
    assert event_detail_name(LifecycleEvent.STARTED, 99) == "unknown"


def test_watchdog_actions() -> None:
    assert [watchdog_action_name(i) for i in range(7)] == [
        "none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"]
    assert watchdog_action_name(7) == "unknown"


# -- misc --------------------------------------------------------------------------------


def test_version_string() -> None:
    assert version_string(7_002_022) == "7.2.22"
    assert version_string(1_000) == "0.1.0"
    assert version_string(0) == "0.0.0"


def test_format_time() -> None:
    moment = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC).timestamp()
    assert format_time(moment, utc=True) == "2024-05-01 10:00:00 +0000"
    assert format_time(moment, utc=True, compact_zone=True) == "2024-05-01 10:00:00+0000"
    assert format_time(moment)[:4] == "2024"  # local time zone, whatever it is


def test_to_json_is_stable_and_parseable() -> None:
    text = to_json({"b": 1, "a": [1, 2], "raw": b"\x01\x02", "t": (1, "x")})
    assert text.endswith("\n")
    assert json.loads(text) == {"b": 1, "a": [1, 2], "raw": "0102", "t": [1, "x"]}
    assert list(json.loads(text)) == ["b", "a", "raw", "t"]
