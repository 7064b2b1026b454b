"""ADMIN_CLIENT_LIST and ADMIN_CLIENT_DISCONNECT."""

from __future__ import annotations

import os
import time

import pytest

import client
from protocol import Procedure
from tests.helpers.daemon import wait_for
from tests.qemud.wire import RawClient, error_of


def test_client_list_shows_identity_transport_readonly_calls(shared_daemon) -> None:
    me = f"pid={os.getpid()} uid={os.getuid()}"
    with shared_daemon.connect() as admin, shared_daemon.connect(readonly=True) as ro:
        for _ in range(3):
            ro.node_info()
        clients = {c.transport: c for c in admin.client_list()}
        assert set(clients) >= {"unix", "unix-ro"}
        rw_info, ro_info = clients["unix"], clients["unix-ro"]
        assert rw_info.identity == me and ro_info.identity == me
        assert rw_info.readonly is False and ro_info.readonly is True
        assert ro_info.calls == 4  # HELLO + 3 x NODE_INFO
        assert rw_info.calls == 2  # HELLO + this ADMIN_CLIENT_LIST
        assert abs(rw_info.connected_since - time.time()) < 60
        again = {c.id: c for c in admin.client_list()}
        assert again[rw_info.id].calls == 3


def test_disconnect_other_client(shared_daemon) -> None:
    with shared_daemon.connect() as admin:
        victim = shared_daemon.connect(readonly=True, client_name="victim")
        victim.node_info()
        target = [c for c in admin.client_list() if c.transport == "unix-ro"]
        assert len(target) == 1
        admin.client_disconnect(target[0].id)
        started = time.monotonic()
        with pytest.raises(client.ConnectionLost):
            while True:
                victim.next_event(timeout=0.05)
                assert time.monotonic() - started < 3
        with pytest.raises(client.ConnectionLost):
            victim.node_info()
        wait_for(lambda: all(c.id != target[0].id for c in admin.client_list()), timeout=5,
                 message="victim gone from the list")
        assert "disconnected by admin client" in shared_daemon.log_text()
        victim.close()


def test_disconnect_errors(shared_daemon) -> None:
    with shared_daemon.connect() as admin:
        with pytest.raises(client.InvalidArgError, match="no client with id 987654"):
            admin.client_disconnect(987654)
        me = [c for c in admin.client_list() if c.calls >= 2]
        mine = max(me, key=lambda c: c.id)
        with pytest.raises(client.InvalidArgError, match="itself"):
            admin.client_disconnect(mine.id)
        assert admin.node_info().cpus >= 1


def test_readonly_clients_cannot_use_admin(shared_daemon) -> None:
    with shared_daemon.connect(readonly=True) as ro, RawClient(shared_daemon.rw_socket) as rw:
        with pytest.raises(client.ReadOnlyError):
            ro.client_list()
        rw_id = max(c.id for c in rw.call(Procedure.ADMIN_CLIENT_LIST).result.clients)
        with pytest.raises(client.ReadOnlyError):
            ro.client_disconnect(rw_id)
        # the rw client was not touched
        assert rw.call(Procedure.NODE_INFO).result.cpus >= 1
        with pytest.raises(AssertionError):
            error_of(rw.call(Procedure.GET_URI))
