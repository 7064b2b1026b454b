#!/usr/bin/env bash
# Install everything qemud and its tests need on a fresh Debian 12 machine (as root),
# create the virtualenv in .venv and install the project into it. Idempotent: a second
# run only checks.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# Debian packages: QEMU for the three architectures the driver supports, qemu-img,
# libvirt's headers for libvirt-python (and libvirt0's RelaxNG schemas), the test-guest
# builder's tools, a compiler for libvirt-python's C extension, and libvirtd itself (without
# libvirt-daemon-system, so no service starts) for the side-by-side conformance test and
# the benchmarks, which run a private libvirtd of their own. ovmf and qemu-efi-aarch64: the
# UEFI firmware (and its QEMU descriptors) that <os firmware='efi'> selects from.
# libfuse3-3: the library mfusepy loads for the tests' slow-disk file system
# (tests/helpers/slowfs.py; mounted as root, so fusermount3 is not needed).
packages=(qemu-system-x86 qemu-system-arm qemu-system-ppc qemu-utils libvirt-dev
          ovmf qemu-efi-aarch64 pkg-config gcc busybox-static cpio kmod zstd xz-utils
          libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libfuse3-3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.qemud-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing qemud and its test dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,dev]"
  touch "$stamp"
fi
# byte-compile qemud's own packages, as an install would (pip compiles the others): the
# editable install writes no .pyc, and with PYTHONDONTWRITEBYTECODE set every daemon the
# tests start would compile ~200 modules; compileall only redoes changed files
.venv/bin/python -m compileall -q -j0 protocol qemud client certs >/dev/null
