"""Listings are decoded straight into handles (client.domain.ListedDomain): the same
bytes as the protocol's ListDomainsReply, the same values, one object per domain."""

from __future__ import annotations

import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import protocol as P
from client.domain import START_PAUSED, Domain, DomainListing, ListedDomain
from protocol import payloads as pl
from protocol.constants import ListFlags
from protocol.fields import codec_for
from tests.helpers.daemon import DaemonProcess, stop_destroying_guests

summaries = st.builds(
    pl.DomainSummary,
    st.builds(pl.DomainRef, st.text(max_size=40), st.binary(min_size=16, max_size=16),
              st.integers(-1, 2**31 - 1)),
    st.integers(0, 255), st.integers(0, 255), st.booleans(), st.booleans())


@given(st.lists(summaries, max_size=30))
def test_same_bytes_and_values_as_the_protocols_reply(items: list[pl.DomainSummary]) -> None:
    data = codec_for(pl.ListDomainsReply).encode(pl.ListDomainsReply(items))
    listing = codec_for(DomainListing).decode(data)
    assert [type(d) for d in listing.domains] == [ListedDomain] * len(items)
    assert [d.summary for d in listing.domains] == items
    assert [d.ref for d in listing.domains] == [s.dom for s in items]
    # and back: a listing encodes to the protocol's bytes (the layouts are the same)
    assert codec_for(DomainListing).encode(listing) == data
    # construct, the reference codec, reads the same (the fallback for odd input)
    reference = codec_for(DomainListing).reference.decode(data)
    assert [d.summary for d in reference.domains] == items


def test_protocol_connection_decodes_a_reply_into_the_clients_type() -> None:
    server = P.Connection(P.Role.SERVER)
    client = P.Connection(P.Role.CLIENT, reply_types={P.Procedure.DOMAIN_LIST: DomainListing})
    plain = P.Connection(P.Role.CLIENT)
    ref = pl.DomainRef("vm", uuid.UUID(int=7).bytes, 3)
    reply = server.send(P.Reply(P.Procedure.DOMAIN_LIST, 9, pl.ListDomainsReply(
        [pl.DomainSummary(ref, 1, 1, True, False)])))
    for conn in (client, plain):
        conn.receive_data(reply)
    got, expected = client.next_message(), plain.next_message()
    assert isinstance(got, P.Reply) and isinstance(expected, P.Reply)
    assert isinstance(got.result, DomainListing)
    assert isinstance(expected.result, pl.ListDomainsReply)
    assert [d.summary for d in got.result.domains] == expected.result.domains


def test_listed_handles_work_like_looked_up_ones(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        with daemon.connect() as conn:
            defined = conn.define_xml(
                "<domain type='qemu'><name>listed</name><memory unit='MiB'>64</memory>"
                "<os><type arch='x86_64'>hvm</type></os></domain>")
            (listed,) = conn.list_domains()
            assert isinstance(listed, ListedDomain) and isinstance(defined, Domain)
            assert listed == defined and hash(listed) == hash(defined)
            assert (listed.name, listed.uuid, listed.id) == ("listed", defined.uuid, -1)
            assert listed.summary.persistent and not listed.summary.autostart
            assert defined.summary is None
            # a listed handle makes calls on its connection
            assert "<name>listed</name>" in listed.xml()
            listed.set_autostart(True)
            (again,) = conn.list_domains()
            assert again.summary is not None and again.summary.autostart
            listed.undefine()
            assert conn.list_domains() == []
    finally:
        stop_destroying_guests(daemon)


def _bare(name: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>")


def test_a_listing_follows_every_change(tmp_path: Path) -> None:
    """The daemon keeps its last listing while nothing listed changes (QemuDriver._list):
    each change a listing shows must show in the next one, compared with the per-domain
    calls that never use it."""
    daemon = DaemonProcess(tmp_path).start()
    try:
        with daemon.connect() as conn:

            def listed() -> list[tuple[str, int, int, bool, bool]]:
                rows = []
                for d in conn.list_domains():
                    s = d.summary
                    assert s is not None
                    state, reason = d.state()
                    assert (s.state, s.reason) == (int(state), reason), d.name
                    rows.append((d.name, d.id, s.state, s.persistent, s.autostart))
                return rows

            a = conn.define_xml(_bare("a"))
            assert listed() == [("a", -1, 5, True, False)]
            assert listed() == listed()  # unchanged: the kept listing
            conn.define_xml(_bare("b"))
            assert [r[0] for r in listed()] == ["a", "b"]
            a.create(START_PAUSED)
            assert listed()[0] == ("a", a.id, 3, True, False) and a.id > 0
            a.resume()
            assert listed()[0][2] == 1
            conn.lookup_by_name("b").set_autostart(True)
            assert listed()[1] == ("b", -1, 5, True, True)
            assert [d.name for d in conn.list_domains(ListFlags.ACTIVE)] == ["a"]
            a.destroy()
            assert listed()[0] == ("a", -1, 5, True, False)
            t = conn.create_xml(_bare("t"), START_PAUSED)
            assert ("t", t.id, 3, False, False) in listed()
            t.destroy()
            a.undefine()
            assert [r[0] for r in listed()] == ["b"]
    finally:
        stop_destroying_guests(daemon)
