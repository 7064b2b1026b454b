"""Reading the XML files the shell sends to the daemon (define, create, templates).

virsh hands a file's bytes to libxml2, which decodes them as the document says: a BOM,
or the XML declaration's ``encoding`` (a Latin-1 file with ``encoding="ISO-8859-1"``
defines fine). The protocol carries text, so the shell does that decoding here with lxml
and sends the document as text; the daemon drops the declaration, whose ``encoding``
would no longer be true.

Two things must not reach the connection as a traceback: a file that is not XML text at
all (it cannot be decoded), and one the protocol cannot carry (over MAX_STRING bytes once
encoded as UTF-8). Both become an :class:`XMLFileError` naming the file.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from lxml import etree

from protocol.constants import MAX_STRING

__all__ = ["XMLFileError", "read_xml_file", "decode_xml", "check_size"]

#: the encoding pseudo-attribute of an XML declaration in an ASCII-compatible document
_DECLARED = re.compile(rb"""^\s*<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]*)["']""")


class XMLFileError(ValueError):
    """The file cannot be sent as an XML document; the message names the file."""


def _parser() -> etree.XMLParser:
    # Only the encoding is wanted from lxml: nothing is fetched or expanded.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False)


def _encoding(data: bytes) -> str:
    """The encoding the document declares: its BOM, else its XML declaration (as libxml2
    reads it), else UTF-8."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
                      (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return name
    try:
        declared = etree.fromstring(data, _parser()).getroottree().docinfo.encoding
    except etree.XMLSyntaxError:
        # malformed XML is the daemon's to report (with its line); the encoding is ours
        match = _DECLARED.match(data)
        declared = match.group(1).decode("ascii") if match else None
    return str(declared or "utf-8")


def decode_xml(data: bytes, path: str) -> str:
    """``data`` as text, decoded as the document declares; XMLFileError if it is not
    text in that encoding (random bytes, a Latin-1 file without its declaration)."""
    encoding = _encoding(data)
    try:
        text = data.decode(encoding)
    except LookupError:
        raise XMLFileError(f"{path} declares an unknown encoding '{encoding}'") from None
    except UnicodeDecodeError as exc:
        raise XMLFileError(
            f"{path} is not an XML document: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is not valid {encoding} (an XML file in another encoding must "
            "say so in its <?xml ... encoding=...?> declaration)") from None
    text = text.removeprefix("\ufeff")
    if "\0" in text:
        raise XMLFileError(f"{path} is not an XML document: it contains NUL characters")
    return text


def check_size(text: str, path: str) -> None:
    """XMLFileError if the protocol cannot carry ``text`` (MAX_STRING bytes as UTF-8)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_STRING:
        raise XMLFileError(f"{path} is too large: {size} bytes, the protocol's limit is "
                           f"{MAX_STRING // (1024 * 1024)} MiB")


def read_xml_file(path: str) -> str:
    """The XML document in ``path`` as text, ready to send.

    Raises OSError when the file cannot be read, XMLFileError when it is not XML text
    or too large for the protocol.
    """
    text = decode_xml(Path(path).read_bytes(), path)
    check_size(text, path)
    return text
