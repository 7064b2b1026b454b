"""``domxml-to-native``: the QEMU command line of domain XML (virsh's, tools/virsh-domain.c
cmdDomXMLToNative), from a file or from a domain's current XML.

The daemon builds it as a start would, without starting or creating anything
(qemud/driver/native.py); the shell only picks the XML and prints the line.
"""

from __future__ import annotations

from ..context import Shell
from ..registry import DOMAIN, FILE, Arg, Args, CommandError, Opt, UsageError, command
from .domain import read_xml

__all__ = ["cmd_domxml_to_native"]


@command("domxml-to-native", "domain", "Convert domain XML to native guest configuration",
         description=(
             "Convert domain XML config to a native guest configuration format: with "
             "format 'qemu-argv' (the only one), the QEMU command line the daemon would "
             "run for it, on one line, each word shell-quoted where needed (with "
             "<qemu:env>, env and the assignments first). The XML is --xml FILE, or with "
             "--domain the domain's current XML (the live one of a running domain); "
             "exactly one of them. The XML is checked as define checks it; nothing is "
             "defined, started or created, and an autoport VNC display shows as :0, as "
             "in libvirt. Needs a read-write connection (docs/CONFORMANCE.md)."),
         args=(Arg("format", "target config data type format"),),
         opts=(Opt("domain", "domain name, id or uuid", "string", complete=DOMAIN),
               Opt("xml", "xml data file to export from", "string", complete=FILE)))
def cmd_domxml_to_native(sh: Shell, args: Args) -> None:
    fmt, key, path = args.req("format"), args.get("domain"), args.get("xml")
    if key is not None and path is not None:
        raise UsageError("Options --domain and --xml are mutually exclusive")
    if key is not None:
        dom = sh.domain(key)
        with sh.failing(""):
            xml = dom.xml()
    elif path is not None:
        xml = read_xml(path, "")
    else:
        raise CommandError("need either domain or domain XML")
    with sh.failing(""):
        line = sh.conn().domain_xml_to_native(fmt, xml)
    sh.print(line)
