"""A VNC password protects the console and stays a secret: QEMU asks every VNC client
for it (a real RFB handshake, DES challenge and all), and the domain XML shows it only
when asked for secure information on a read-write connection, as in libvirt."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from lxml import etree

import client
from tests.helpers.daemon import DaemonProcess, serving
from tests.integration.domains import bare_xml

pytestmark = pytest.mark.integration

PASSWORD = "s3cret"
VNC_AUTH, AUTH_OK = 2, 0


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with serving(DaemonProcess(tmp_path_factory.mktemp("qemud-vnc"))) as daemon:
        yield daemon


def vnc_xml(name: str, password: str | None, valid_to: str | None = None) -> str:
    attrs = f" passwd='{password}'" if password is not None else ""
    attrs += f" passwdValidTo='{valid_to}'" if valid_to is not None else ""
    graphics = f"<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'{attrs}/>"
    return bare_xml(name).replace("</os>", f"</os><devices>{graphics}</devices>")


def graphics_attrs(xml: str) -> dict[str, str]:
    node = etree.fromstring(xml.encode()).find("devices/graphics")
    assert node is not None
    return dict(node.attrib)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "VNC server closed the connection"
        data += chunk
    return data


def vnc_login(port: int, password: str | None) -> tuple[list[int], int | None]:
    """RFB 3.8 handshake: the security types the server offers and, when it offers VNC
    authentication and ``password`` is given, the SecurityResult of answering its DES
    challenge with that password (0 = accepted)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert recv_exactly(sock, 12).startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        count = recv_exactly(sock, 1)[0]
        types = list(recv_exactly(sock, count))
        if password is None or VNC_AUTH not in types:
            return types, None
        sock.sendall(bytes([VNC_AUTH]))
        challenge = recv_exactly(sock, 16)
        # VNC's DES key: the password in 8 bytes, each byte's bits reversed
        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
        des = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K1=K2=K3: DES
        sock.sendall(des.update(challenge) + des.finalize())
        (result,) = struct.unpack(">I", recv_exactly(sock, 4))
        return types, result


def vnc_port(dom: client.Domain) -> int:
    return int(graphics_attrs(dom.xml())["port"])


def test_vnc_password_is_required_and_kept_secret(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(vnc_xml("vnc-passwd", PASSWORD))
        try:
            dom.create(flags=client.START_PAUSED)
            port = vnc_port(dom)
            assert vnc_login(port, None)[0] == [VNC_AUTH]  # no way in without it
            assert vnc_login(port, "wrong")[1] != AUTH_OK
            assert vnc_login(port, PASSWORD) == ([VNC_AUTH], AUTH_OK)
            # the XML: without the secure flag, no password, live or inactive
            for flags in (0, client.XML_INACTIVE):
                assert "passwd" not in graphics_attrs(dom.xml(flags))
                assert graphics_attrs(dom.xml(flags | client.XML_SECURE))["passwd"] == PASSWORD
            with qemud.connect(readonly=True) as ro:
                ro_dom = ro.lookup_by_name("vnc-passwd")
                assert "passwd" not in graphics_attrs(ro_dom.xml())
                with pytest.raises(client.RemoteError, match="operation forbidden: "
                                   "virDomainGetXMLDesc with secure flag"):
                    ro_dom.xml(client.XML_SECURE)
            # what the admin saw without the flag must not have changed the definition
            dom.destroy()
            dom.create(flags=client.START_PAUSED)
            assert vnc_login(vnc_port(dom), PASSWORD) == ([VNC_AUTH], AUTH_OK)
            # nor is it in the daemon's log, at debug level (the define's arguments, QMP
            # set_password): the log file outlives the call
            text = qemud.log_text()
            assert "--> DOMAIN_DEFINE_XML" in text and "--> set_password" in text
            assert PASSWORD not in text
        finally:
            if dom.is_active():
                dom.destroy()
            dom.undefine()


def test_no_password_means_no_vnc_authentication(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(vnc_xml("vnc-open", None))
        try:
            dom.create(flags=client.START_PAUSED)
            assert vnc_login(vnc_port(dom), None)[0] == [1]  # security type None
        finally:
            dom.destroy()
            dom.undefine()


def test_expired_password_lets_nobody_in(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn:
        dom = conn.define_xml(vnc_xml("vnc-expired", PASSWORD, "2000-01-01T00:00:00"))
        try:
            dom.create(flags=client.START_PAUSED)
            assert graphics_attrs(dom.xml())["passwdValidTo"] == "2000-01-01T00:00:00"
            assert vnc_login(vnc_port(dom), PASSWORD)[1] != AUTH_OK
        finally:
            dom.destroy()
            dom.undefine()


def test_bad_password_expiry_is_refused_at_define(qemud: DaemonProcess) -> None:
    with qemud.connect() as conn, pytest.raises(
            client.QemudClientError,
            match="passwdValidTo must be a UTC time YYYY-MM-DDTHH:MM:SS, got 'tomorrow'"):
        conn.define_xml(vnc_xml("vnc-bad-expiry", PASSWORD, "tomorrow"))
