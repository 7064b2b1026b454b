"""Connection.lookup (and so qemush's <domain> arguments) tries id, UUID, name in
virsh's order (vshLookupDomainBy), without a daemon: the three by-key lookups are faked."""

from __future__ import annotations

import io

import pytest

from client.connection import Connection, domain_id, domain_uuid
from client.errors import NoDomainError
from client.shell.context import Shell
from client.shell.registry import CommandError

UUID = "6f2b1c3e-0d4a-4f5e-9a8b-7c6d5e4f3a2b"


class FakeConnection(Connection):
    """Only the by-key lookups, answering from three tables and recording the order."""

    def __init__(self, ids: dict[int, str], uuids: dict[str, str], names: set[str]) -> None:
        self.ids, self.uuids, self.names = ids, uuids, names
        self.tried: list[str] = []

    @property
    def is_alive(self) -> bool:
        return True

    def lookup_by_id(self, id: int) -> str:  # type: ignore[override]
        self.tried.append(f"id {id}")
        if id in self.ids:
            return self.ids[id]
        raise NoDomainError(f"Domain not found: no domain with matching id {id}", 42, 10)

    def lookup_by_uuid(self, uuid: str | bytes) -> str:  # type: ignore[override]
        key = str(uuid)
        self.tried.append(f"uuid {key}")
        if key in self.uuids:
            return self.uuids[key]
        raise NoDomainError(f"Domain not found: no domain with matching uuid '{key}'",
                            42, 10)

    def lookup_by_name(self, name: str) -> str:  # type: ignore[override]
        self.tried.append(f"name {name}")
        if name in self.names:
            return name
        raise NoDomainError(f"Domain not found: no domain with matching name '{name}'",
                            42, 10)


def test_id_wins_over_a_domain_named_like_it() -> None:
    conn = FakeConnection({8: "running-one"}, {}, {"8", "running-one"})
    assert conn.lookup("8") == "running-one"
    assert conn.tried == ["id 8"]


def test_uuid_wins_over_a_domain_named_like_it() -> None:
    conn = FakeConnection({}, {UUID: "by-uuid"}, {UUID, "by-uuid"})
    assert conn.lookup(UUID) == "by-uuid"
    assert conn.tried == [f"uuid {UUID}"]


def test_name_last() -> None:
    conn = FakeConnection({}, {}, {"8"})
    assert conn.lookup("8") == "8"  # no running domain with id 8: the name
    assert conn.tried == ["id 8", "name 8"]
    conn = FakeConnection({}, {}, {UUID})
    assert conn.lookup(UUID) == UUID
    assert conn.tried == [f"uuid {UUID}", f"name {UUID}"]
    conn = FakeConnection({}, {}, {"web"})
    assert conn.lookup("web") == "web"
    assert conn.tried == ["name web"]


def test_not_found_is_the_name_lookups_error() -> None:
    conn = FakeConnection({}, {}, set())
    with pytest.raises(NoDomainError) as info:
        conn.lookup("12")
    assert info.value.message == "Domain not found: no domain with matching name '12'"
    assert conn.tried == ["id 12", "name 12"]


@pytest.mark.parametrize(("key", "expected"), [
    ("0", 0), ("8", 8), ("+8", 8), (" 8", 8), ("2147483647", 2147483647),
    ("-1", None), ("2147483648", None), ("8 ", None), ("8a", None), ("", None),
    ("1_000", None), ("٣", None),  # Python's int() would take these; strtol does not
])
def test_what_is_an_id(key: str, expected: int | None) -> None:
    assert domain_id(key) == expected


@pytest.mark.parametrize(("key", "expected"), [
    (UUID, UUID), (UUID.upper(), UUID),
    (UUID.replace("-", ""), None),  # 32 characters: virsh takes it as a name
    ("{" + UUID.replace("-", "") + "}", None), ("urn:uuid:" + UUID, None),
    ("x" * 36, None),
])
def test_what_is_a_uuid(key: str, expected: str | None) -> None:
    assert domain_uuid(key) == expected


def test_shell_uses_the_same_order() -> None:
    sh = Shell(out=io.StringIO(), err=io.StringIO())
    conn = FakeConnection({3: "running-one"}, {}, {"3"})
    sh._conn = conn
    assert sh.domain("3") == "running-one"
    with pytest.raises(CommandError) as info:
        sh.domain("nope")
    assert info.value.lines == ["failed to get domain 'nope'",
                                "Domain not found: no domain with matching name 'nope'"]
