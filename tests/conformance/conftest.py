"""Fixtures for the libvirt conformance tests: a private libvirtd and a qemud, side by side.

Both are module-scoped by the tests that use them (a libvirtd starts in well under a
second, a qemud in one or two: its capabilities probe). The bootable test guest is the
integration suite's session fixture, re-exported here.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from tests.helpers.daemon import DaemonProcess
from tests.helpers.libvirtd import LibvirtdUnavailable, PrivateLibvirtd
from tests.integration.conftest import test_guest  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd; skipped only when libvirtd is not installed at all."""
    if shutil.which("libvirtd") is None:
        pytest.skip("libvirtd is not installed (contrib/setup.sh installs libvirt-daemon, "
                    "libvirt-daemon-driver-qemu and libvirt-clients)")
    lv = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    try:
        lv.start()
    except (LibvirtdUnavailable, RuntimeError, OSError) as exc:
        pytest.fail(f"libvirtd is installed but a private one could not start: {exc}",
                    pytrace=False)
    try:
        yield lv
    finally:
        lv.stop()
        assert lv.qemu_pids() == [], "libvirtd left QEMU processes behind"


@pytest.fixture(scope="module")
def qemud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("qemud"))
    d.start()
    try:
        yield d
    finally:
        with contextlib.suppress(Exception), d.connect() as conn:
            for dom in conn.list_all():
                with contextlib.suppress(Exception):
                    if dom.is_active():
                        dom.destroy()
                with contextlib.suppress(Exception):
                    dom.undefine()
        try:
            d.stop()
        except Exception:
            d.kill()
