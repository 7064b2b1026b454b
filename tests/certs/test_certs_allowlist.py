"""certs.allowlist: DN glob -> role, first match wins."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certs.allowlist import AllowList, Role
from certs.errors import AllowListError, CertParamError


def glob_escape(text: str) -> str:
    """A pattern matching exactly ``text``."""
    return re.sub(r"([*?\[])", r"[\1]", text)


ACL = AllowList([
    ("O=Example,CN=admin*", "full"),
    ("O=Example,CN=monitor?", Role.READONLY),
    ("O=Example,CN=*", "readonly"),
])


@pytest.mark.parametrize("dn,role", [
    ("O=Example,CN=admin1", Role.FULL),
    ("O=Example,CN=admin", Role.FULL),
    ("O=Example,CN=monitor7", Role.READONLY),
    ("O=Example,CN=monitor77", Role.READONLY),  # falls through to the catch-all entry
    ("O=Example,CN=guest", Role.READONLY),
    ("O=Other,CN=admin1", None),
    ("o=example,cn=admin1", None),  # case-sensitive
    ("C=GB,O=Example,CN=admin1", None),  # whole DN must match
    ("", None),
])
def test_role_for(dn: str, role: Role | None) -> None:
    assert ACL.role_for(dn) is role


def test_rdn_order_matters() -> None:
    # DNs are in certificate order (O before CN for qemud-issued client certificates),
    # so a pattern written in RFC 4514 order never matches.
    acl = AllowList([("CN=admin*,O=Example", "full")])
    assert acl.role_for("O=Example,CN=admin1") is None
    assert acl.role_for("CN=admin1,O=Example") is Role.FULL


def test_star_crosses_rdn_boundaries_as_in_libvirt() -> None:
    assert ACL.role_for("O=Example,CN=admin1,OU=extra") is Role.FULL


def test_first_match_wins() -> None:
    acl = AllowList([("*", "readonly"), ("O=Example,CN=admin1", "full")])
    assert acl.role_for("O=Example,CN=admin1") is Role.READONLY


def test_empty_list_refuses_everyone() -> None:
    assert AllowList().role_for("CN=x") is None and len(AllowList()) == 0


def test_roles_are_case_insensitive_and_listed() -> None:
    acl = AllowList([("a", "FULL"), ("b", "ReadOnly")])
    assert [e.role for e in acl.entries] == [Role.FULL, Role.READONLY]
    assert [e.pattern for e in acl.entries] == ["a", "b"]
    assert repr(acl) == "AllowList([('a', 'full'), ('b', 'readonly')])"


@pytest.mark.parametrize("entries,match", [
    ([("CN=a", "full"), ("CN=admin*", "admin")],
     r"allow-list entry 2 \('CN=admin\*'\): unknown role 'admin' \(expected one of 'full', "
     r"'readonly'\)"),
    ([("CN=a", "read-only")], "entry 1 .*'read-only'"),
    ([("", "full")], "entry 1 .*non-empty string"),
    ([("CN=a",)], "entry 1 .*pair"),
    ([("CN=a", 3)], "entry 1 .*role must be"),
])
def test_invalid_entries_are_named(entries: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(AllowListError, match=match):
        AllowList(entries)
    assert issubclass(AllowListError, CertParamError)


_dn = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(_dn, _dn)
def test_escaped_pattern_matches_exactly_its_dn(dn: str, other: str) -> None:
    acl = AllowList([(glob_escape(dn), "full")]) if dn else AllowList()
    if dn:
        assert acl.role_for(dn) is Role.FULL
    assert (acl.role_for(other) is Role.FULL) == (bool(dn) and other == dn)


@given(_dn, st.lists(st.tuples(_dn.filter(bool), st.sampled_from(list(Role))), max_size=5))
def test_first_matching_entry_decides(dn: str, entries: list[tuple[str, Role]]) -> None:
    acl = AllowList(entries)
    expected = next((AllowList([e]).role_for(dn) for e in entries
                     if AllowList([e]).role_for(dn) is not None), None)
    assert acl.role_for(dn) is expected
    # a catch-all appended at the end only decides DNs nothing else matched
    tail = AllowList([*entries, ("*", Role.READONLY)])
    assert tail.role_for(dn) is (expected or Role.READONLY)
