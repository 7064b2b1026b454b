"""client/shell/xmlfile.py: XML files decoded as they declare, and refused with a message
naming the file when they are not XML text or too large for the protocol."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from client.shell.xmlfile import XMLFileError, check_size, decode_xml, read_xml_file
from protocol.constants import MAX_STRING

DOC = "<domain><name>l\xe4t \u20ac</name></domain>"


def test_utf8_without_declaration() -> None:
    assert decode_xml(DOC.encode(), "f.xml") == DOC


def test_latin1_with_its_declaration() -> None:
    text = '<?xml version="1.0" encoding="ISO-8859-1"?><domain><name>l\xe4t</name></domain>'
    assert decode_xml(text.encode("latin-1"), "f.xml") == text


def test_declared_encoding_of_malformed_xml_is_still_used() -> None:
    """The daemon reports the syntax error (with its line); the decoding is ours."""
    text = "<?xml version='1.0' encoding='latin1'?>\n<domain><name>l\xe4t</name>"
    assert decode_xml(text.encode("latin-1"), "f.xml") == text


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_bom(codec: str) -> None:
    assert decode_xml(DOC.encode(codec), "f.xml") == DOC


def test_utf8_bom_is_dropped() -> None:
    assert decode_xml(codecs.BOM_UTF8 + DOC.encode(), "f.xml") == DOC


def test_binary_is_refused_naming_the_file() -> None:
    with pytest.raises(XMLFileError) as info:
        decode_xml(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00", "/tmp/bin.xml")
    assert str(info.value).startswith("/tmp/bin.xml is not an XML document: byte 0xff at "
                                      "offset 8 is not valid utf-8")


def test_latin1_without_declaration_is_refused() -> None:
    with pytest.raises(XMLFileError, match="byte 0xe4 at offset 15 is not valid utf-8"):
        decode_xml("<domain><name>l\xe4t</name></domain>".encode("latin-1"), "f.xml")


def test_nul_characters_are_refused() -> None:
    with pytest.raises(XMLFileError, match="f.xml is not an XML document: it contains NUL"):
        decode_xml(b"<domain>\0</domain>", "f.xml")


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(XMLFileError, match="f.xml declares an unknown encoding 'x-nope'"):
        decode_xml(b"<?xml version='1.0' encoding='x-nope'?><domain/>", "f.xml")


def test_size_limit_counts_utf8_bytes() -> None:
    check_size("a" * MAX_STRING, "f.xml")
    with pytest.raises(XMLFileError) as info:
        check_size("\xe4" * (MAX_STRING // 2 + 1), "f.xml")  # 2 bytes each in UTF-8
    assert str(info.value) == (f"f.xml is too large: {MAX_STRING + 2} bytes, the "
                               "protocol's limit is 4 MiB")


def test_read_xml_file(tmp_path: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_bytes(DOC.encode("utf-16"))
    assert read_xml_file(str(path)) == DOC
    with pytest.raises(OSError):
        read_xml_file(str(tmp_path / "missing.xml"))
