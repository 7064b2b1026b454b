"""The client's own flag constants equal libvirt-python's (no daemons).

The protocol enums (states, reasons, event kinds and details, list flags, error codes)
are checked against libvirt in tests/protocol/test_constants.py; this covers what the
client library defines on its own, and that it re-exports the protocol's enums unchanged.
"""

from __future__ import annotations

import pytest

import client
from protocol import constants as C

libvirt = pytest.importorskip("libvirt")


@pytest.mark.parametrize(("ours", "theirs"), [
    ("XML_INACTIVE", "VIR_DOMAIN_XML_INACTIVE"),
    ("AFFECT_LIVE", "VIR_DOMAIN_AFFECT_LIVE"),
    ("AFFECT_CONFIG", "VIR_DOMAIN_AFFECT_CONFIG"),
])
def test_client_flags_equal_libvirt(ours: str, theirs: str) -> None:
    assert getattr(client, ours) == getattr(libvirt, theirs)


def test_client_reexports_the_protocol_enums() -> None:
    assert client.DomainState is C.DomainState
    assert client.LifecycleEvent is C.LifecycleEvent
    assert client.EventId is C.EventId
    assert client.ListFlags is C.ListFlags
    assert client.RebootFlags is C.RebootFlags
    assert client.ShutdownFlags is C.ShutdownFlags
