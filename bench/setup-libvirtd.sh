#!/bin/bash
# setup-libvirtd.sh - install what bench/run.py needs to benchmark libvirtd next to qemud.
#
# Usage: bench/setup-libvirtd.sh [--check]
#
# Installs (apt-get, idempotent: nothing is done when everything is present):
#   libvirt-daemon              libvirtd, virtlogd and the connection drivers
#   libvirt-daemon-driver-qemu  the QEMU driver module libvirtd loads
#   libvirt-clients             virsh (handy for looking at the benchmark's libvirtd)
# and the Python binding (libvirt-python, already a project dependency) into the venv
# if it is missing.
#
# Deliberately NOT libvirt-daemon-system: that one adds init scripts/systemd units,
# the libvirt-qemu user, /etc/libvirt/*.conf and starts a system libvirtd on install.
# bench/run.py starts its own libvirtd + virtlogd on a private configuration (its own
# libvirtd.conf, qemu.conf with user=root, sockets in a temporary directory, and
# /etc/libvirt, /var/lib/libvirt, /run/libvirt, /var/log/libvirt, /var/cache/libvirt
# replaced by temporary directories in a private mount namespace) and stops them at
# the end, so no service is left running and nothing outside the temp dir is written.
#
# With --check: only report what is missing (exit 1 if anything is).
set -euo pipefail

prog=${0##*/}
log() { printf '%s: %s\n' "$prog" "$*" >&2; }

packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
[ -x "$py" ] || py=python3
need_binding=0
"$py" -c 'import libvirt' 2>/dev/null || need_binding=1

if [ "${1:-}" = "--check" ]; then
    [ ${#missing[@]} -eq 0 ] || log "missing packages: ${missing[*]}"
    [ $need_binding -eq 0 ] || log "missing: libvirt-python in $py"
    [ ${#missing[@]} -eq 0 ] && [ $need_binding -eq 0 ]
    exit
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "error: need root to install ${missing[*]}"
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # never let a package's postinst start a service here
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [ -e "$policy" ] && had_policy=1
    if [ $had_policy -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        log "apt-get install failed; refreshing the package lists and retrying"
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
fi

if [ $need_binding -eq 1 ]; then
    if "$py" -m pip --version >/dev/null 2>&1; then
        log "installing libvirt-python into $py"
        if ! "$py" -m pip install -q libvirt-python >&2; then
            log "pip could not build libvirt-python (needs libvirt-dev, pkg-config, gcc)"
            exit 1
        fi
    else
        log "error: libvirt-python missing and no pip for $py"
        exit 1
    fi
fi

for b in libvirtd virtlogd; do
    command -v "$b" >/dev/null || { log "error: $b not found after install"; exit 1; }
done
log "ok: $(libvirtd --version)"
