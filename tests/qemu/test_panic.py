"""``<panic>`` in the QEMU layer: per-arch models and defaults, validation, argv, no PCI slot.

The real guest panicking, and ``<on_crash>`` acting on it: tests/integration/test_panic.py.
"""

from __future__ import annotations

import pytest

from qemud.qemu import domain, pci
from qemud.qemu.arch import get_strategy
from qemud.qemu.command import GuestPaths, build_argv
from qemud.qemu.errors import GuestConfigError
from tests.qemu.fakes import FakeDomain, FakeInterface, FakeOS, FakePanic, fake_caps

conf = pytest.importorskip("qemud.conf")

PATHS = GuestPaths.under("/run/qemud", "/var/log/qemud", "guest")


def argv(dom: FakeDomain, arch: str = "x86_64") -> list[str]:
    return build_argv(dom, get_strategy(arch), fake_caps(), PATHS)


def panic_args(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args)
            if arg == "-device" and args[i + 1].startswith("pvpanic")]


@pytest.mark.parametrize(("panic", "device"), [
    (FakePanic("isa"), "pvpanic"),
    (FakePanic(None), "pvpanic"),  # x86_64's default model is isa
    # libvirt's address of QEMU's own port: nothing to say
    (FakePanic("isa", address_type="isa", iobase=0x505), "pvpanic"),
    (FakePanic("isa", address_type="isa", iobase=0x506), "pvpanic,ioport=1286"),
    (FakePanic("isa", address_type="isa"), "pvpanic"),  # an ISA address without iobase
])
def test_isa_panic_is_pvpanic(panic: FakePanic, device: str) -> None:
    assert panic_args(argv(FakeDomain(panics=[panic]))) == [device]


def test_no_panic_no_pvpanic() -> None:
    assert panic_args(argv(FakeDomain())) == []


def test_pvpanic_comes_after_the_balloon_and_before_pass_through() -> None:
    dom = FakeDomain(panics=[FakePanic("isa")], qemu_args=["-no-reboot"])
    dom.set_default_memballoon()
    args = argv(dom)
    assert args[-5:] == ["-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x3",
                         "-device", "pvpanic", "-no-reboot"]


@pytest.mark.parametrize("model", ["pseries", None])
def test_pseries_panic_is_the_machine_s_own(model: str | None) -> None:
    plain = argv(FakeDomain(), "ppc64")
    assert argv(FakeDomain(panics=[FakePanic(model)]), "ppc64") == plain


def test_panic_takes_no_pci_slot() -> None:
    """The pvpanic is ISA: the NIC keeps the first free slot, and the plan lists no panic."""
    dom = FakeDomain(interfaces=[FakeInterface()], panics=[FakePanic("isa")])
    strategy = get_strategy("x86_64")
    assert [key for key, _ in pci.pci_devices(dom, strategy)] == [
        ("interface", "52:54:00:00:00:01")]
    args = argv(dom)
    assert "pvpanic" in args
    assert any(a.endswith("bus=pci.0,addr=0x3") and a.startswith("virtio-net-pci")
               for a in args)


@pytest.mark.parametrize(("arch", "machine", "panic", "message"), [
    ("x86_64", None, FakePanic("hyperv"),
     r"^devices/panic\[1\]: panic model 'hyperv' is not supported on x86_64 \(supported: "
     r"isa\): it is Hyper-V's crash notification"),
    ("x86_64", None, FakePanic("s390"), r"'s390' is not supported on x86_64 .*no s390"),
    ("x86_64", None, FakePanic("pvpanic"),
     r"'pvpanic' is not supported on x86_64 \(supported: isa\): QEMU's pvpanic-pci would "
     r"need a PCI slot"),
    ("aarch64", None, FakePanic(None),
     r"'pvpanic' is not supported on aarch64 \(supported: none\): QEMU's pvpanic-pci "
     r"would need a PCI slot, and qemud gives panic devices none"),
    ("aarch64", None, FakePanic("isa"), r"'isa' is not supported on aarch64 .*x86 only"),
    ("ppc64", None, FakePanic("isa"),
     r"'isa' is not supported on ppc64 \(supported: pseries\)"),
    ("ppc64", "powernv", FakePanic("pseries"),
     r"'pseries' is not supported on ppc64 machine 'powernv' \(supported: none\): only "
     r"pSeries guests support panic device of model 'pseries'"),
    ("x86_64", None, FakePanic("isa", address_type="pci"),
     r"^devices/panic\[1\]: panic is supported only with ISA address type$"),
    ("ppc64", None, FakePanic("pseries", address_type="spapr-vio"),
     r"setting the panic device address is not supported for model 'pseries'$"),
])
def test_refused_panics_name_the_cause(arch: str, machine: str | None, panic: FakePanic,
                                       message: str) -> None:
    dom = FakeDomain(os=FakeOS(machine=machine), panics=[panic])
    with pytest.raises(GuestConfigError, match=message):
        get_strategy(arch).validate(dom)


@pytest.mark.parametrize("panics", [
    [FakePanic("isa"), FakePanic("isa")],
    [FakePanic(None), FakePanic("isa")],  # the default is isa too
])
def test_one_panic_device_per_model(panics: list[FakePanic]) -> None:
    with pytest.raises(GuestConfigError,
                       match=r"^devices/panic\[2\]: Multiple panic devices with model 'isa'$"):
        get_strategy("x86_64").validate(FakeDomain(panics=panics))


@pytest.mark.parametrize(("arch", "default"), [
    ("x86_64", "isa"), ("ppc64", "pseries"), ("aarch64", "pvpanic")])
def test_fill_defaults_writes_libvirt_s_default_model(arch: str, default: str) -> None:
    dom = FakeDomain(panics=[FakePanic(None)])
    get_strategy(arch).fill_defaults(dom)
    assert dom.panics[0].model == default


def test_fill_defaults_keeps_the_model_written() -> None:
    dom = FakeDomain(panics=[FakePanic("hyperv")])
    get_strategy("x86_64").fill_defaults(dom)
    assert dom.panics[0].model == "hyperv"


XML = """<domain type='qemu'>
  <name>p</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <panic><address type='isa' iobase='0x506'/></panic>
  </devices>
</domain>"""


def test_the_real_model_is_a_panic_view_and_the_default_lands_in_the_xml() -> None:
    dom = conf.parse_domain_xml(XML)
    (panic,) = dom.panics
    view: domain.PanicView = panic  # mypy: the real Panic is a PanicView
    assert (view.model, view.address_type, view.iobase) == (None, "isa", 0x506)
    assert view.describe() == "panic"
    dom.assign_missing_ids()
    get_strategy("x86_64").fill_defaults(dom)
    assert "<panic model='isa'>" in dom.to_xml()
    reparsed = conf.parse_domain_xml(dom.to_xml())
    assert reparsed.panics[0].model == "isa"
    assert reparsed.panics[0].pci_address is None  # no slot assigned
    args = build_argv(reparsed, get_strategy("x86_64"), fake_caps(), PATHS)
    assert panic_args(args) == ["pvpanic,ioport=1286"]
