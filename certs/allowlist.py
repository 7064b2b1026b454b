"""Access control by certificate subject, like libvirt's ``tls_allowed_dn_list``.

A TLS handshake only proves the client holds *some* certificate from our CA; the
allow-list decides what that client may do.  Each entry is a glob pattern matched
against the whole DN string produced by :func:`certs.dn.peer_dn` (format documented
in :mod:`certs.dn`, e.g. ``O=Example,CN=admin1``) plus the :class:`Role` it grants.
The first matching entry wins; no match means the connection is refused.

Pattern syntax is :func:`fnmatch.fnmatchcase` (case-sensitive, the whole DN must
match): ``*`` any run of characters, ``?`` one character, ``[seq]``/``[!seq]`` a
character set; write a literal ``*``, ``?`` or ``[`` as ``[*]``, ``[?]``, ``[[]``.
Things to know when writing patterns:

* Order matters: RDNs appear in certificate order, so ``CN=admin*,O=Example``
  never matches ``O=Example,CN=admin1``.  Check with ``qemud-certs show FILE``.
* ``*`` also matches ``,``: ``O=Example,CN=admin*`` matches
  ``O=Example,CN=admin1,OU=x`` too.  Anchor with the full DN where that matters;
  only the CA's owner can put such names in certificates.
* Escaped characters appear escaped in the DN: a CN of ``a,b`` is ``CN=a\\,b``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from certs.errors import AllowListError

__all__ = ["AllowEntry", "AllowList", "Role"]


class Role(enum.Enum):
    """What an authenticated client may do."""

    FULL = "full"  #: every operation
    READONLY = "readonly"  #: only operations that change nothing

    @classmethod
    def parse(cls, text: str) -> Role:
        """Role from its name, case-insensitively; raises ``ValueError`` if unknown."""
        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(repr(r.value) for r in cls)
            raise ValueError(f"unknown role {text!r} (expected one of {names})") from None


@dataclass(frozen=True)
class AllowEntry:
    """One ``(pattern, role)`` rule, with its pattern compiled once."""

    pattern: str
    role: Role
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    def matches(self, dn: str) -> bool:
        """True if ``dn`` matches the whole pattern."""
        return self._regex.match(dn) is not None


def _entry(index: int, item: object) -> AllowEntry:
    where = f"allow-list entry {index}"
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise AllowListError(f"{where} ({item!r}): expected a (pattern, role) pair")
    pattern, role = item
    if not isinstance(pattern, str) or not pattern:
        raise AllowListError(f"{where} ({item!r}): the pattern must be a non-empty string")
    where = f"{where} ({pattern!r})"
    if isinstance(role, Role):
        parsed = role
    elif isinstance(role, str):
        try:
            parsed = Role.parse(role)
        except ValueError as e:
            raise AllowListError(f"{where}: {e}") from None
    else:
        raise AllowListError(f"{where}: the role must be a string or Role, not {role!r}")
    return AllowEntry(pattern, parsed, re.compile(fnmatch.translate(pattern)))


class AllowList:
    """An ordered list of ``(pattern, role)`` rules; see the module docstring.

    An empty list refuses everyone; whether to consult an allow-list at all (libvirt
    allows every CA-verified client when ``tls_allowed_dn_list`` is unset) is the
    daemon's policy, not this class's.
    """

    def __init__(self, entries: Iterable[tuple[str, Role | str]] = ()) -> None:
        """Validate and compile ``entries``; raises :class:`AllowListError` naming the
        (1-based) entry and its pattern on an unknown role or a malformed entry."""
        self._entries = tuple(_entry(i, item) for i, item in enumerate(entries, start=1))

    @property
    def entries(self) -> tuple[AllowEntry, ...]:
        """The rules, in matching order."""
        return self._entries

    def role_for(self, dn: str) -> Role | None:
        """The role of the first entry matching ``dn``, or ``None`` (refuse)."""
        for entry in self._entries:
            if entry.matches(dn):
                return entry.role
        return None

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        pairs = ", ".join(f"({e.pattern!r}, {e.role.value!r})" for e in self._entries)
        return f"AllowList([{pairs}])"
