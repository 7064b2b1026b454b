"""Definitions are written with libvirt's quoting: ``attr='value'`` everywhere but inside
``<metadata>``, where libvirt's own output keeps libxml2's double quotes.

Scripts written against ``virsh dumpxml`` grep for ``type='qemu'``; the quoting must never
change what the document says.
"""

from __future__ import annotations

from lxml import etree

from qemud.conf import parse_domain_xml
from qemud.conf.xmlmodel import single_quoted

DOMAIN = """<domain type="qemu">
  <name>q</name>
  <title>Bob's "lab" guest</title>
  <description>key="value" stays as typed</description>
  <!-- a comment with attr="x" in it -->
  <metadata>
    <app:settings xmlns:app="http://example.org/app/1" mode="fast"/>
  </metadata>
  <memory unit="MiB">64</memory>
  <os><type arch="x86_64">hvm</type><cmdline>console=ttyS0 quote="it's"</cmdline></os>
  <devices>
    <disk type="file" device="disk">
      <source file="/images/it's &quot;here&quot;.img"/>
      <target dev="vda" bus="virtio"/>
    </disk>
  </devices>
</domain>
"""


def test_attributes_are_single_quoted_outside_metadata() -> None:
    text = parse_domain_xml(DOMAIN).to_xml()
    assert text.startswith("<domain type='qemu'>\n")
    assert "<memory unit='KiB'>65536</memory>" in text
    assert "<target dev='vda' bus='virtio'/>" in text
    # libvirt's dumpxml has the metadata subtree in libxml2's double quotes
    assert '<app:settings xmlns:app="http://example.org/app/1" mode="fast"/>' in text
    outside = text.replace(text[text.index("<metadata>"):text.index("</metadata>")], "")
    tags = [line for line in outside.splitlines() if line.lstrip().startswith("<")
            and not line.lstrip().startswith("<!--")]
    assert tags and not [t for t in tags if '="' in t.split(">")[0]]


def test_quotes_inside_values_are_escaped_and_mean_the_same() -> None:
    text = parse_domain_xml(DOMAIN).to_xml()
    assert "<source file='/images/it&apos;s &quot;here&quot;.img'/>" in text
    again = parse_domain_xml(text)
    assert again.disks[0].source == "/images/it's \"here\".img"
    assert again.to_xml() == text


def test_text_and_comments_are_left_as_written() -> None:
    text = parse_domain_xml(DOMAIN).to_xml()
    assert "<title>Bob's \"lab\" guest</title>" in text
    assert '<description>key="value" stays as typed</description>' in text
    assert '<!-- a comment with attr="x" in it -->' in text
    assert "<cmdline>console=ttyS0 quote=\"it's\"</cmdline>" in text


def test_single_quoted_keeps_the_infoset() -> None:
    samples = ['<a b="1" c="x&gt;y" d="it\'s"><b e="&quot;"/>t="u"</a>',
               '<a><metadata><m x="1"><metadata y="2"/></m></metadata><z w="3"/></a>',
               "<a b='already'/>", "<a/>"]
    for sample in samples:
        quoted = single_quoted(sample)
        assert etree.tostring(etree.fromstring(quoted), method="c14n") == \
            etree.tostring(etree.fromstring(sample), method="c14n")
    assert single_quoted(samples[1]) == \
        '<a><metadata><m x="1"><metadata y="2"/></m></metadata><z w=\'3\'/></a>'
