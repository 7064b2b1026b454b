"""DOMAIN_SET_METADATA / DOMAIN_GET_METADATA and ``qemush desc``, against a real daemon:
a domain's title and description, in its persistent and its live definition, as
libvirt's virDomainSetMetadata and virsh's ``desc`` behave. The running domain is a
diskless guest started paused under TCG (QEMU runs; nothing boots)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import client
from client.domain import AFFECT_CONFIG, AFFECT_LIVE
from protocol.constants import ErrorCode, MetadataType
from tests.helpers.daemon import DaemonProcess, qemush, serving
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

DESCRIPTION, TITLE = MetadataType.DESCRIPTION, MetadataType.TITLE


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("qemud-metadata"))
    with serving(daemon):
        yield daemon


def stored(qemud: DaemonProcess, name: str) -> str:
    return (qemud.config_dir / "domains" / f"{name}.xml").read_text()


def test_config_title_and_description(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(bare_xml("meta-off"))
        try:
            with pytest.raises(client.NoMetadataError) as missing:
                dom.metadata(DESCRIPTION)
            assert missing.value.code == ErrorCode.NO_DOMAIN_METADATA
            assert str(missing.value) == \
                "metadata not found: Requested metadata element is not present"

            dom.set_metadata(TITLE, "web frontend")  # shut off: the persistent definition
            dom.set_metadata(DESCRIPTION, "serves\nthe shop", AFFECT_CONFIG)
            assert dom.metadata(TITLE) == "web frontend"
            assert dom.metadata(DESCRIPTION, AFFECT_CONFIG) == "serves\nthe shop"
            text = stored(qemud, "meta-off")  # written before the reply
            assert "<title>web frontend</title>" in text
            assert "<description>serves\nthe shop</description>" in text
            assert [d.name for d in conn.list_domains(0)] == ["meta-off"]

            # libvirt's refusals, nothing changed by them
            with pytest.raises(client.InvalidArgError,
                               match="^invalid argument: metadata title can't contain "
                                     "newlines$"):
                dom.set_metadata(TITLE, "two\nlines")
            with pytest.raises(client.OperationInvalid, match="is not running"):
                dom.set_metadata(TITLE, "x", AFFECT_LIVE)
            with pytest.raises(client.InvalidArgError, match="uri in virDomainSetMetadata "
                               "must not be NULL"):  # ELEMENT: tests/integration/
                dom.set_metadata(MetadataType.ELEMENT, "<x/>")  # test_metadata_element.py
            with pytest.raises(client.InvalidArgError,
                               match=r"unsupported flags \(0x8\) in function "
                                     "qemuDomainSetMetadata"):
                dom.set_metadata(TITLE, "x", 8)
            assert dom.metadata(TITLE) == "web frontend"

            dom.set_metadata(TITLE, "")  # an empty text removes it
            with pytest.raises(client.NoMetadataError):
                dom.metadata(TITLE)
            assert "<title>" not in stored(qemud, "meta-off")

            # kept across a daemon restart: it is in the definition
            conn.close()
            qemud.stop()
            qemud.start()
            with qemud.connect() as again:
                dom = again.lookup_by_name("meta-off")
                assert dom.metadata(DESCRIPTION) == "serves\nthe shop"
        finally:
            with qemud.connect() as conn2:
                conn2.lookup_by_name("meta-off").undefine()


def test_live_and_config_of_a_running_domain(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(bare_xml("meta-run"))
        dom.create(client.START_PAUSED)
        try:
            dom.set_metadata(DESCRIPTION, "live only")  # running: the live definition
            assert dom.metadata(DESCRIPTION) == "live only"
            assert "live only" in dom.xml()
            assert "<description>" not in dom.xml(client.XML_INACTIVE)
            with pytest.raises(client.NoMetadataError):
                dom.metadata(DESCRIPTION, AFFECT_CONFIG)

            dom.set_metadata(TITLE, "both", AFFECT_LIVE | AFFECT_CONFIG)
            assert dom.metadata(TITLE, AFFECT_LIVE) == "both"
            assert dom.metadata(TITLE, AFFECT_CONFIG) == "both"
            assert "<title>both</title>" in stored(qemud, "meta-run")
            with pytest.raises(client.InvalidArgError, match=(
                    "^invalid argument: Flags 'VIR_DOMAIN_AFFECT_LIVE' and "
                    "'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive$")):
                dom.metadata(TITLE, AFFECT_LIVE | AFFECT_CONFIG)

            # the live one is in the status file: a restarted daemon still has it
            conn.close()
            qemud.stop()
            qemud.start()
            with qemud.connect() as again:
                dom = again.lookup_by_name("meta-run")
                assert dom.is_active()
                assert dom.metadata(DESCRIPTION) == "live only"
                dom.destroy()
                # stopped: the persistent definition, which never had the description
                with pytest.raises(client.NoMetadataError):
                    dom.metadata(DESCRIPTION)
                assert dom.metadata(TITLE) == "both"
        finally:
            with qemud.connect() as conn2:
                d = conn2.lookup_by_name("meta-run")
                if d.is_active():
                    d.destroy()
                d.undefine()


def test_a_transient_domain_has_no_persistent_metadata(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.create_xml(bare_xml("meta-tr"), client.START_PAUSED)
        try:
            dom.set_metadata(TITLE, "live")
            assert dom.metadata(TITLE) == "live"
            for call in (lambda: dom.metadata(TITLE, AFFECT_CONFIG),
                         lambda: dom.set_metadata(TITLE, "x", AFFECT_CONFIG)):
                with pytest.raises(client.OperationInvalid,
                                   match="transient domains do not have any persistent "
                                         "config"):
                    call()
        finally:
            dom.destroy()


def test_readonly_connection_reads_but_cannot_set(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(bare_xml("meta-ro"))
        try:
            dom.set_metadata(TITLE, "t")
            with qemud.connect(readonly=True) as ro:
                rdom = ro.lookup_by_name("meta-ro")
                assert rdom.metadata(TITLE) == "t"
                with pytest.raises(client.ReadOnlyError):
                    rdom.set_metadata(TITLE, "u")
        finally:
            dom.undefine()


def test_qemush_desc(qemud: DaemonProcess) -> None:
    conn = qemud.connect()
    dom = conn.define_xml(bare_xml("meta-sh"))
    try:
        def run(*args: str) -> tuple[int, str, str]:
            proc = qemush(qemud, "desc", "meta-sh", *args)
            return proc.returncode, proc.stdout, proc.stderr

        assert run() == (0, "No description for domain: meta-sh\n", "")
        assert run("--title") == (0, "No title for domain: meta-sh\n", "")
        assert run("a", "web", "server") == (0, "Domain description updated successfully\n",
                                             "")
        assert run() == (0, "a web server\n", "")
        assert run("--title", "--new-desc", "Web") == (
            0, "Domain title updated successfully\n", "")
        assert run("--title", "--config") == (0, "Web\n", "")
        assert "Web" in qemush(qemud, "list", "--all", "--title").stdout
        code, out, err = run("--title", "two\nlines")
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            "error: Failed to set new domain title",
            "error: invalid argument: metadata title can't contain newlines"]
        code, _, err = run("--live", "x")
        assert code == 1 and "is not running" in err
        assert run("--current", "--live") == (
            1, "", "error: Options --current and --live are mutually exclusive\n")
        assert run("") == (0, "Domain description updated successfully\n", "")
        assert run() == (0, "No description for domain: meta-sh\n", "")
    finally:
        dom.undefine()
        conn.close()
