"""The error hierarchy: shape and carried fields."""

from __future__ import annotations

import pytest

from qemud.qemu import errors


def test_everything_is_a_qemu_error() -> None:
    leaves = [
        errors.QMPBufferOverflow(10),
        errors.StateError("stop", "CONNECTING", "why"),
        errors.QMPCommandFailed("stop", "GenericError", "no"),
        errors.CapabilitiesError("/bin/q", "broken"),
        errors.ArchTableError("bad"),
        errors.UnknownArchError("mips", ["x86_64"]),
        errors.UnsupportedForArch("devices/disk[1]/target", "bus", "ide", "ppc64", ["virtio"]),
        errors.AccelUnavailable("kvm", "hangs"),
    ]
    for error in leaves:
        assert isinstance(error, errors.QemuError)


def test_tree_matches_the_docstring() -> None:
    assert issubclass(errors.QMPBufferOverflow, errors.QMPProtocolError)
    assert issubclass(errors.QMPProtocolError, errors.QMPError)
    assert issubclass(errors.StateError, errors.QMPError)
    assert issubclass(errors.QMPCommandFailed, errors.QMPError)
    assert issubclass(errors.UnsupportedForArch, errors.GuestConfigError)
    assert issubclass(errors.AccelUnavailable, errors.GuestConfigError)
    doc = errors.__doc__ or ""
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.QemuError):
            assert name in doc, f"{name} missing from the tree in the module docstring"


def test_fields() -> None:
    err = errors.UnsupportedForArch("devices/disk[1]/target", "bus", "ide", "ppc64",
                                    ["virtio", "scsi"])  # fmt: skip
    assert (err.path, err.what, err.value, err.arch) == ("devices/disk[1]/target", "bus", "ide",
                                                         "ppc64")  # fmt: skip
    assert err.supported == ("scsi", "virtio")
    assert str(err) == (
        "devices/disk[1]/target: bus 'ide' is not supported on ppc64 (supported: scsi, virtio)"
    )
    assert str(errors.UnsupportedForArch("x", "watchdog model", "a", "aarch64", [])).endswith(
        "(supported: none)"
    )
    state = errors.StateError("stop", "NEGOTIATING", "qmp_capabilities first")
    assert (state.command, state.state, state.detail) == (
        "stop",
        "NEGOTIATING",
        "qmp_capabilities first",
    )
    failed = errors.QMPCommandFailed("device_del", "DeviceNotFound", "no such device")
    assert str(failed) == "device_del: DeviceNotFound: no such device"
    assert errors.CapabilitiesError("/bin/q", "broken").binary == "/bin/q"
    assert errors.AccelUnavailable("kvm", "hangs").path == "type"


def test_raise_and_catch_by_family() -> None:
    with pytest.raises(errors.QMPError):
        raise errors.QMPBufferOverflow(1)
    with pytest.raises(errors.GuestConfigError):
        raise errors.AccelUnavailable("kvm", "no")
