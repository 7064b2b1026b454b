"""The shell's state: the connection (opened lazily), output streams, domain lookup and
error wording shared by every command."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from protocol.errors import LocalProtocolError, ProtocolError

from ..connection import Connection, connect
from ..domain import Domain
from ..errors import ConnectionLost, QemudClientError
from ..format import to_json
from .registry import Args, CommandError

__all__ = ["Shell"]

#: how long completion may reuse the list of domain names
NAME_CACHE_SECONDS = 5.0


class Shell:
    """One qemush session: options, the connection and where output goes."""

    def __init__(self, uri: str | None = None, readonly: bool = False, json: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None,
                 interactive: bool = False) -> None:
        self.uri = uri
        self.readonly = readonly
        self.json = json
        self.out: TextIO = out or sys.stdout
        self.err: TextIO = err or sys.stderr
        self.interactive = interactive
        self._conn: Connection | None = None
        self._names: tuple[float, list[str]] | None = None

    # -- the connection ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_alive

    def conn(self) -> Connection:
        """The connection, opened on first use (and re-opened after it was lost)."""
        if self._conn is not None and not self._conn.is_alive:
            self.disconnect()
        if self._conn is None:
            try:
                self._conn = connect(self.uri, readonly=self.readonly, client_name="qemush")
            except QemudClientError as exc:
                raise CommandError("failed to connect to the hypervisor", exc.message) from None
        return self._conn

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self._names = None
        if conn is not None:
            try:
                conn.close()
            except QemudClientError:
                pass

    def reconnect(self, uri: str | None, readonly: bool) -> Connection:
        self.disconnect()
        self.uri = uri
        self.readonly = readonly
        return self.conn()

    # -- output --------------------------------------------------------------------------

    def print(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)

    def write(self, text: str) -> None:
        self.out.write(text)

    def want_json(self, args: Args) -> bool:
        return self.json or args.flag("json")

    def print_json(self, value: Any) -> None:
        self.out.write(to_json(value))

    def error(self, *lines: str) -> None:
        for line in lines:
            self.err.write(f"error: {line}\n")
        self.err.flush()

    # -- errors --------------------------------------------------------------------------

    @contextmanager
    def failing(self, context: str) -> Iterator[None]:
        """Turn a library error into ``error: <context>`` + ``error: <daemon's message>``.

        Protocol-level errors are wrapped too (the library converts them, but a command
        must never end an interactive session with a traceback).
        """
        try:
            yield
        except QemudClientError as exc:
            if isinstance(exc, ConnectionLost):
                self._conn_lost()
            raise CommandError(context, exc.message) from None
        except ProtocolError as exc:
            if not isinstance(exc, LocalProtocolError):
                self.disconnect()
            raise CommandError(context, f"protocol error: {exc.message}") from None

    def _conn_lost(self) -> None:
        if self._conn is not None and not self._conn.is_alive:
            self.disconnect()

    # -- domains -------------------------------------------------------------------------

    def domain(self, key: str) -> Domain:
        """The domain a ``<domain>`` argument names, in virsh's order: id (a non-negative
        integer), then UUID, then name (see :meth:`Connection.lookup`).

        Failure reads ``error: failed to get domain 'KEY'`` + the daemon's message.
        """
        conn = self.conn()
        with self.failing(f"failed to get domain '{key}'"):
            return conn.lookup(key)

    def domain_names(self) -> list[str]:
        """Names of all domains for completion, cached for a few seconds; never raises."""
        now = time.monotonic()
        if self._names is not None and now - self._names[0] < NAME_CACHE_SECONDS:
            return self._names[1]
        try:
            names = sorted(d.name for d in self.conn().list_domains(0))
        except (QemudClientError, CommandError):
            names = []
        self._names = (now, names)
        return names

    def snapshot_names(self, key: str) -> list[str]:
        try:
            return [s.name for s in self.domain(key).snapshots()]
        except (QemudClientError, CommandError):
            return []

    def forget_names(self) -> None:
        self._names = None
