"""``<os firmware>``, ``<loader>``, ``<nvram>`` and ``<firmware><feature>``: the model's
values and libvirt's rules, each refusal naming the element and the cause."""

from __future__ import annotations

import pytest

from qemud.conf import DefinitionError, DomainDef, parse_domain_xml


def domain(os_inner: str, os_attrs: str = "") -> str:
    return (f"<domain type='qemu'><name>fw</name><memory>65536</memory>"
            f"<os{os_attrs}><type arch='x86_64' machine='q35'>hvm</type>{os_inner}</os>"
            "</domain>")


LOADER = "<loader readonly='yes' type='pflash'>/fw/CODE.fd</loader>"


def test_values_are_read() -> None:
    dom = parse_domain_xml(domain(
        "<firmware><feature enabled='yes' name='secure-boot'/>"
        "<feature enabled='no' name='enrolled-keys'/></firmware>"
        "<loader readonly='yes' type='pflash' secure='yes'>/fw/CODE.fd</loader>"
        "<nvram template='/fw/VARS.fd'>/var/nv/fw_VARS.fd</nvram>", " firmware='efi'"))
    os_ = dom.os
    assert (os_.firmware, os_.loader, os_.loader_type, os_.loader_readonly,
            os_.loader_secure) == ("efi", "/fw/CODE.fd", "pflash", True, True)
    assert (os_.has_nvram, os_.nvram, os_.nvram_template) == (
        True, "/var/nv/fw_VARS.fd", "/fw/VARS.fd")
    assert os_.firmware_features == {"secure-boot": True, "enrolled-keys": False}


def test_empty_nvram_means_the_default_path() -> None:
    dom = parse_domain_xml(domain("<nvram/>", " firmware='efi'"))
    assert dom.os.has_nvram and dom.os.nvram is None and dom.os.loader is None


def test_set_firmware_features_writes_libvirt_order() -> None:
    dom = DomainDef.new("x", domain_type="qemu")
    dom.os.firmware = "efi"
    dom.os.set_firmware_features({"secure-boot": False, "enrolled-keys": False})
    dom.os.loader = "/fw/CODE.fd"
    dom.validate()
    text = dom.to_xml()
    assert ("<firmware>\n      <feature enabled='no' name='enrolled-keys'/>\n"
            "      <feature enabled='no' name='secure-boot'/>\n    </firmware>\n"
            "    <loader>/fw/CODE.fd</loader>") in text


@pytest.mark.parametrize(("os_inner", "os_attrs", "message"), [
    ("", " firmware='uefi'", r"^os: unsupported firmware 'uefi' \(expected 'bios' or 'efi'\)"),
    ("<loader type='flash'>/fw/CODE.fd</loader>", "",
     r"^os/loader: unsupported loader type 'flash' \(expected 'pflash' or 'rom'\)"),
    ("<loader readonly='true'>/fw/CODE.fd</loader>", "",
     r"^os/loader: expected 'yes' or 'no', got 'true'"),
    ("<loader type='pflash'/>", "", r"^os/loader: the firmware image path is missing"),
    ("<loader type='pflash'>fw/CODE.fd</loader>", "",
     r"^os/loader: the firmware path must be absolute, got 'fw/CODE.fd'"),
    ("<loader type='rom' secure='yes'>/fw/BIOS.fd</loader>", "",
     r"^os/loader: secure='yes' needs a loader of type 'pflash'"),
    ("<nvram>/nv/x.fd</nvram>", "", r"^os/nvram: <nvram> needs a <loader type='pflash'>"),
    ("<loader type='rom'>/fw/BIOS.fd</loader><nvram>/nv/x.fd</nvram>", "",
     r"^os/nvram: <nvram> needs a <loader type='pflash'>"),
    ("<nvram/>", " firmware='bios'", r"^os/nvram: <nvram> is for UEFI firmware"),
    ("<loader readonly='no' type='pflash'>/fw/OVMF.fd</loader><nvram>/nv/x.fd</nvram>", "",
     r"^os/nvram: <nvram> needs a read-only loader"),
    (LOADER + "<nvram template='VARS.fd'>/nv/x.fd</nvram>", "",
     r"^os/nvram: the NVRAM template must be absolute, got 'VARS.fd'"),
    ("<firmware><feature enabled='yes' name='secure-boot'/></firmware>" + LOADER, "",
     r"^os/firmware: firmware features need <os firmware='efi'>"),
    ("<firmware><feature enabled='yes' name='tpm'/></firmware>", " firmware='efi'",
     r"^os/firmware/feature: unsupported firmware feature 'tpm'"),
    ("<firmware><feature enabled='on' name='secure-boot'/></firmware>", " firmware='efi'",
     r"^os/firmware/feature: attribute enabled must be 'yes' or 'no', got 'on'"),
    ("<firmware><feature enabled='yes' name='enrolled-keys'/>"
     "<feature enabled='no' name='secure-boot'/></firmware>", " firmware='efi'",
     r"^os/firmware: firmware feature 'enrolled-keys' cannot be enabled when firmware "
     r"feature 'secure-boot' is disabled"),
    ("<firmware><feature enabled='no' name='secure-boot'/></firmware><loader secure='yes'/>",
     " firmware='efi'",
     r"^os/loader: loader secure='yes' contradicts firmware feature 'secure-boot' "
     r"enabled='no'"),
    ("<loader format='qcow2'>/fw/CODE.qcow2</loader>", " firmware='efi'",
     r"^os/loader: unsupported loader format 'qcow2'"),
])
def test_refusals_name_the_element_and_cause(os_inner: str, os_attrs: str,
                                             message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        parse_domain_xml(domain(os_inner, os_attrs), validate_schema=False)


def test_duplicate_feature_is_refused() -> None:
    xml = domain("<firmware><feature enabled='no' name='secure-boot'/>"
                 "<feature enabled='yes' name='secure-boot'/></firmware>", " firmware='efi'")
    with pytest.raises(DefinitionError, match=r"^os/firmware/feature\[2\]: duplicate "
                       "firmware feature 'secure-boot'"):
        parse_domain_xml(xml, validate_schema=False)
