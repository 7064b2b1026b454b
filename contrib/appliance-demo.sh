#!/usr/bin/env bash
# appliance-demo.sh - one demo appliance exercising every appliance duty of qemud
# (docs/APPLIANCE.md) through qemush, on a real (TCG) guest.
#
# Usage: contrib/appliance-demo.sh [--cleanup | --stop]
#
#   (no option)  run the demo and leave the daemon and the guest running to look around
#   --cleanup    run the demo, then destroy and undefine the guest, stop the daemon,
#                detach the loop device and remove the work directory
#   --stop       only clean up what a previous run left (no demo)
#
# Everything lives in one work directory, ${QEMUD_APPLIANCE_DEMO_DIR:-
# $HOME/.local/state/qemud-appliance-demo}: the demo's own session daemon (config
# WORK/qemud.toml, every path under WORK, log WORK/qemud.log), its hotplug rules, a power
# hook, harmless host power commands (they only append to WORK/host-power.log), the
# appliance tarballs and the guest's serial log. Re-running first stops and removes what
# the previous run left there. Run as root (the hotplug step binds a loop device).
#
# Steps: 1 host inspection + template, 2 appliance images (import, deploy),
# 3 power-cycle following (policy), 4 udev hotplug, 5 heartbeat watchdog,
# 6 snapshots and backup, 7 A/B update, 8 power following in action, 9 serviceability.

set -euo pipefail

prog=appliance-demo
here=$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
bin=$here/.venv/bin
py=$bin/python
work=${QEMUD_APPLIANCE_DEMO_DIR:-$HOME/.local/state/qemud-appliance-demo}
vm=app1
mode=demo
case ${1:-} in
    "") ;;
    --cleanup) mode=cleanup ;;
    --stop) mode=stop ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--cleanup | --stop]" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "usage: $0 [--cleanup | --stop]" >&2; exit 2; }
case $work in /*) ;; *) work=$PWD/$work ;; esac

uri="qemud+unix:///session?socket=$work/run/qemud-sock"
step_no=0
step_title="setup"

say() { printf '%s: %s\n' "$prog" "$*"; }
qsh() { "$bin/qemush" -c "$uri" "$@"; }
# run CMD...: show the command, then run it; a failure ends the demo
run() {
    printf '$ %s\n' "$*"
    local rc=0
    "$@" || rc=$?
    [ "$rc" -eq 0 ] || fail "command failed (exit $rc): $*"
}
# qrun ARGS...: run and show a qemush command against the demo's daemon
qrun() {
    printf '$ qemush %s\n' "$*"
    local rc=0
    qsh "$@" || rc=$?
    [ "$rc" -eq 0 ] || fail "qemush $* failed (exit $rc)"
}
step() {
    step_no=$1
    step_title=$2
    printf '\n=== Step %s/9: %s ===\n' "$1" "$2"
}
failed=0
started=0  # 1 once this run made its work directory
fail() {
    failed=1
    {
        printf '\n%s: FAILED in step %s (%s)\n' "$prog" "$step_no" "$step_title"
        printf '%s: expected: %s\n' "$prog" "$*"
        if [ -f "$work/qemud.log" ]; then
            printf -- '--- last lines of %s ---\n' "$work/qemud.log"
            tail -n 40 "$work/qemud.log"
        fi
        if [ -s "$work/serial.log" ]; then
            printf -- '--- last lines of the guest serial log %s ---\n' "$work/serial.log"
            tail -n 15 "$work/serial.log"
        fi
        if [ -s "$work/events.log" ]; then
            printf -- '--- appliance events so far (%s) ---\n' "$work/events.log"
            tail -n 15 "$work/events.log"
        fi
    } >&2
    exit 1
}
# wait_until SECONDS WHAT CMD...: run CMD every 0.5 s until it succeeds, or fail saying WHAT
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited ${timeout} s)"
        sleep 0.5
    done
}

# The guest's serial port: a relay (the venv's Python, in the background) stays connected
# to <run_dir>/qemu/VM/charserial0.sock across guest restarts, appends what the guest prints
# to WORK/serial.log and writes the lines that arrive on the fifo WORK/serial.in to the
# guest. `serial wait REGEX SECONDS OFFSET LOG` waits for a line of LOG after byte OFFSET.
serial_py=$(cat <<'PY'
import os, re, selectors, socket, sys, time

def relay(sock_path, log_path, fifo_path):
    fifo = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK)  # never sees EOF
    log = open(log_path, "ab", buffering=0)
    pending = b""  # lines for the guest while no guest is connected
    sel = selectors.DefaultSelector()
    sel.register(fifo, selectors.EVENT_READ, "fifo")
    sock = None
    while True:
        if sock is None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock_path)
                sock = s
                sel.register(sock, selectors.EVENT_READ, "guest")
                log.write(b"[relay: connected to %s]\n" % sock_path.encode())
                if pending:
                    sock.sendall(pending)
                    pending = b""
            except OSError:
                s.close()
        for key, _ in sel.select(0.1 if sock is None else 1.0):
            if key.data == "fifo":
                try:
                    data = os.read(fifo, 4096)
                except BlockingIOError:
                    continue
                if sock is None:
                    pending += data
                else:
                    try:
                        sock.sendall(data)
                    except OSError:
                        pending += data
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    log.write(data.replace(b"\r", b""))
                else:  # QEMU went away (guest stopped); reconnect to the next one
                    sel.unregister(sock)
                    sock.close()
                    sock = None
                    log.write(b"[relay: guest disconnected]\n")
                    time.sleep(0.1)

def wait(pattern, timeout, offset, log_path):
    regex = re.compile(pattern, re.M)
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            with open(log_path, "rb") as f:
                f.seek(int(offset))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        m = regex.search(text)
        if m:
            line_start = text.rfind("\n", 0, m.start()) + 1
            line_end = text.find("\n", m.end())
            print("guest> " + text[line_start:line_end if line_end >= 0 else None])
            return 0
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.2)

cmd = sys.argv[1]
if cmd == "relay":
    relay(*sys.argv[2:5])
elif cmd == "wait":
    sys.exit(wait(*sys.argv[2:6]))
PY
)
serial() { "$py" -c "$serial_py" "$@"; }
serial_mark() { stat -c %s "$work/serial.log" 2>/dev/null || echo 0; }
# serial_wait REGEX SECONDS [OFFSET]: a guest line matching REGEX (printed), or fail
serial_wait() {
    serial wait "$1" "$2" "${3:-0}" "$work/serial.log" ||
        fail "a guest serial line matching /$1/ within $2 s (serial log: $work/serial.log)"
}
# serial_send LINE: type LINE on the guest's serial port
serial_send() {
    printf 'serial< %s\n' "$1"
    # shellcheck disable=SC2016  # $1 and $2 are the inner sh's arguments
    timeout 5 sh -c 'printf "%s\n" "$1" > "$2"' sh "$1" "$work/serial.in" ||
        fail "the serial relay to take the line '$1'"
}
# events_wait REGEX SECONDS: an appliance event line matching REGEX (printed), or fail
events_wait() {
    local deadline=$((SECONDS + $2))
    until grep -Eq -- "$1" "$work/events.log" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || fail "an appliance event matching /$1/ within $2 s"
        sleep 0.5
    done
    grep -E -m1 -- "$1" "$work/events.log"
}

# kill_pidfile FILE PATTERN: end the process whose pid FILE holds, if its command line
# contains PATTERN (so a recycled pid is never hit); SIGTERM, SIGKILL after 10 s
kill_pidfile() {
    local file=$1 pattern=$2 pid
    [ -f "$file" ] || return 0
    pid=$(tr -dc 0-9 < "$file")
    [ -n "$pid" ] || return 0
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$pattern"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f -- "$file"
}

# the loop device of this work directory (bound to WORK/usb-stick.img), if any
detach_loop() {
    local dev back
    [ -f "$work/loopdev" ] || return 0
    dev=$(cat "$work/loopdev")
    back=$(losetup -n -O BACK-FILE "$dev" 2>/dev/null | sed 's/ *$//') || true
    if [ -n "$back" ] && [ "$back" = "$work/usb-stick.img" ]; then
        losetup -d "$dev" 2>/dev/null || true
        # QEMU may still hold it (the kernel then only sets auto-clear): wait until free
        for _ in $(seq 100); do
            [ -e "/sys/block/${dev#/dev/}/loop" ] || break
            sleep 0.1
        done
        [ -e "/sys/block/${dev#/dev/}/loop" ] && say "warning: $dev is still bound" >&2
    fi
    rm -f -- "$work/loopdev"
}

# stop and remove whatever a run in $work left (the order matters: the guest before the
# daemon, which leaves guests running when it stops; the loop device once QEMU let go)
stop_all() {
    [ -d "$work" ] || return 0
    if [ ! -f "$work/.qemud-appliance-demo" ] && [ -n "$(ls -A -- "$work")" ]; then
        say "error: $work is not empty and not a demo work directory: not touching it" >&2
        return 1
    fi
    if [ -S "$work/run/qemud-sock" ]; then
        qsh destroy "$vm" >/dev/null 2>&1 || true
        qsh undefine "$vm" >/dev/null 2>&1 || true
    fi
    kill_pidfile "$work/run/qemu/$vm/qemu.pid" "$work"  # a guest of a daemon that died
    kill_pidfile "$work/events.pid" "event"
    kill_pidfile "$work/serial-relay.pid" "$work/serial.in"
    kill_pidfile "$work/run/qemud.pid" "$work/qemud.toml"
    kill_pidfile "$work/daemon.pid" "$work/qemud.toml"  # one still stopping, or not ready
    detach_loop
    rm -rf -- "$work"
}

on_exit() {
    local rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && [ "$started" -eq 1 ]; then
        printf '\n%s: FAILED in step %s (%s), exit status %s\n' "$prog" "$step_no" "$step_title" "$rc" >&2
        [ -f "$work/qemud.log" ] && { echo "--- last lines of $work/qemud.log ---"; tail -n 40 "$work/qemud.log"; } >&2
    fi
    if [ "$mode" = cleanup ] || [ "$mode" = stop ]; then
        if [ "$mode" = cleanup ]; then
            printf '\n=== Cleanup ===\n'
            echo "destroying and undefining $vm, stopping the daemon, detaching the loop device, removing $work"
        fi
        stop_all
    elif [ "$rc" -ne 0 ] && [ "$started" -eq 1 ]; then
        # keep the daemon and the guest to look at, but never a loop device
        [ -d "$work" ] && detach_loop
        kill_pidfile "$work/events.pid" "event"
        echo "$prog: the daemon and guest are left for inspection; remove all with: $0 --stop" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------------------

if [ "$mode" = stop ]; then
    say "stopping what a previous demo left in $work"
    exit 0  # on_exit does it
fi

[ "$(id -u)" -eq 0 ] || { say "error: run as root (the hotplug step binds a loop device)" >&2; exit 1; }
[ -x "$bin/qemush" ] || { say "error: no $bin/qemush (run contrib/setup.sh)" >&2; exit 1; }
for tool in losetup qemu-img qemu-system-x86_64 tar; do
    command -v "$tool" >/dev/null || { say "error: $tool not found (contrib/setup.sh installs it)" >&2; exit 1; }
done

if [ -d "$work" ]; then
    say "stopping and removing the previous demo in $work"
    stop_all || exit 1
fi
mkdir -p "$work"/{run,config,state,log}
touch "$work/.qemud-appliance-demo"  # what stop_all checks before removing anything
started=1
: > "$work/serial.log"
say "work directory: $work"
guest_dir=$("$here/contrib/build-test-guest" | tail -n 1)

# the loop device the hotplug rule will match: chosen now, bound in step 4
loopdev=$(losetup -f)
echo "$loopdev" > "$work/loopdev"
truncate -s 16M "$work/usb-stick.img"

cat > "$work/power-hook.sh" <<EOF
#!/bin/sh
# the demo's power hook: the daemon runs it when $vm reboots itself (<qemud:power>)
echo "\$(date '+%F %T') QEMUD_EVENT=\$QEMUD_EVENT QEMUD_DOMAIN=\$QEMUD_DOMAIN QEMUD_UUID=\$QEMUD_UUID" >> "$work/power-hook.log"
EOF
chmod +x "$work/power-hook.sh"

cat > "$work/hotplug.toml" <<EOF
# udev hotplug rules of the demo daemon (docs/HOTPLUG.md): the one loop device the demo
# binds, by its exact name, goes to $vm as a read-only virtio disk (read-only disks are
# left out of snapshots, which cover qcow2 images only)
[[rule]]
name = "demo-usb-stick"
match = { SUBSYSTEM = "block", DEVTYPE = "disk", DEVNAME = "$loopdev" }
domain = "$vm"
target = "virtio-disk"
readonly = true
EOF

cat > "$work/qemud.toml" <<EOF
# the appliance demo's session daemon (contrib/appliance-demo.sh): every path in $work
[paths]
run_dir = "$work/run"
config_dir = "$work/config"
state_dir = "$work/state"
log_dir = "$work/log"

[log]
file = "$work/qemud.log"
level = "info"

[appliance]
hotplug_rules = "$work/hotplug.toml"
# harmless: the demo's host is never powered off or rebooted
shutdown_host_command = ["sh", "-c", "echo \"\$(date '+%F %T') shutdown-host for \$QEMUD_DOMAIN\" >> '$work/host-power.log'"]
reboot_host_command = ["sh", "-c", "echo \"\$(date '+%F %T') reboot-host for \$QEMUD_DOMAIN\" >> '$work/host-power.log'"]
update_deadline = 120.0
EOF

say "starting the demo daemon: qemud --session --config $work/qemud.toml"
nohup "$bin/qemud" --session --config "$work/qemud.toml" >"$work/qemud.out" 2>&1 &
daemon_pid=$!
echo "$daemon_pid" > "$work/daemon.pid"
for _ in $(seq 150); do
    qsh uri >/dev/null 2>&1 && break
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/qemud.out" >&2; fail "the daemon to start"; }
    sleep 0.2
done
qsh uri >/dev/null 2>&1 || fail "the daemon to answer on $work/run/qemud-sock within 30 s"
say "daemon pid $daemon_pid, $uri"

# ----------------------------------------------------------------------------------------
step 1 "host inspection and an appliance template"
qrun host-inspect
sed "s|@GUEST_DIR@|$guest_dir|g" "$here/contrib/appliance-template.xml" > "$work/appliance-template.xml"
echo "(contrib/appliance-template.xml with @GUEST_DIR@ = $guest_dir)"
printf '$ qemush appliance-generate %s\n' "$work/appliance-template.xml"
qsh appliance-generate "$work/appliance-template.xml" > "$work/rendered.xml" ||
    fail "qemush appliance-generate to render the template"
cat "$work/rendered.xml"
grep -q "<memory" "$work/rendered.xml" || fail "rendered domain XML with <memory>"
echo "(rendered against this host, not defined: the demo runs one guest)"

# ----------------------------------------------------------------------------------------
step 2 "appliance images: build, import, list, deploy"
for version in 1.0 2.0; do
    printf '$ contrib/make-demo-appliance --version %s --out %s\n' "$version" "$work/demo-$version.tar.gz"
    "$here/contrib/make-demo-appliance" --version "$version" --out "$work/demo-$version.tar.gz" \
        >/dev/null 2>"$work/make-demo-appliance.log" ||
        { cat "$work/make-demo-appliance.log" >&2; fail "contrib/make-demo-appliance to build $version"; }
done
qrun appliance-import "$work/demo-1.0.tar.gz"
qrun appliance-import "$work/demo-2.0.tar.gz"
qrun appliance-list
qrun appliance-deploy demo --as "$vm" --version 1.0
# every appliance event of the guest from now on, in WORK/events.log
PYTHONUNBUFFERED=1 nohup "$bin/qemush" -c "$uri" event "$vm" --event appliance --loop \
    --timeout 3600 > "$work/events.log" 2>&1 &
echo $! > "$work/events.pid"
echo "(watching: qemush event $vm --event appliance --loop > $work/events.log)"

# ----------------------------------------------------------------------------------------
step 3 "power-cycle following: a policy in the domain metadata, then start"
printf '$ qemush dumpxml %s --inactive > %s\n' "$vm" "$work/$vm.xml"
qsh dumpxml "$vm" --inactive > "$work/$vm.xml" || fail "qemush dumpxml $vm --inactive"
sed "s|\(<qemud:appliance[^>]*[^/]>\)|\1<qemud:power guest-reboot=\"hook\" hook=\"$work/power-hook.sh\"/>|" \
    "$work/$vm.xml" > "$work/$vm-power.xml"
grep -o '<qemud:power[^>]*>' "$work/$vm-power.xml" || fail "the <qemud:power> element added to $vm's XML"
qrun define "$work/$vm-power.xml"
qsh dumpxml "$vm" --inactive | grep -q 'guest-reboot="hook"' || fail "the power policy in $vm's definition"
mkfifo "$work/serial.in"
[ -p "$work/serial.in" ] || fail "a fifo $work/serial.in"
"$py" -c "$serial_py" relay "$work/run/qemu/$vm/charserial0.sock" "$work/serial.log" \
    "$work/serial.in" </dev/null >/dev/null 2>&1 &
echo $! > "$work/serial-relay.pid"
mark=$(serial_mark)
qrun start "$vm"
echo "(the guest boots under TCG; its serial console: $work/run/qemu/$vm/charserial0.sock)"
serial_wait 'QEMUD-GUEST-READY' 120 "$mark"
serial_wait 'QEMUD-BLOCK: ' 10 "$mark"

# ----------------------------------------------------------------------------------------
step 4 "udev hotplug: a host block device appears, the guest gets it"
echo "rule (from $work/hotplug.toml):"
sed -n '/^\[\[rule\]\]/,$p' "$work/hotplug.toml"
mark=$(serial_mark)
run losetup "$loopdev" "$work/usb-stick.img"
serial_wait 'QEMUD-BLOCK: .*vdd' 60 "$mark"
events_wait "hotplug-attached: $loopdev" 30
wait_until 15 "hotplug-list to show $loopdev attached" \
    sh -c "'$bin/qemush' -c '$uri' hotplug-list | grep -F '$loopdev' | grep -q yes"
qrun hotplug-list

# ----------------------------------------------------------------------------------------
step 5 "heartbeat watchdog"
wait_until 60 "heartbeat.count > 0 in domstats $vm" \
    sh -c "'$bin/qemush' -c '$uri' domstats '$vm' | grep -Eq 'heartbeat\.count=[1-9]'"
printf '$ qemush domstats %s   (heartbeat lines)\n' "$vm"
qsh domstats "$vm" > "$work/domstats.txt" || fail "qemush domstats $vm"
grep -E 'heartbeat\.' "$work/domstats.txt" || true
grep -Eq 'heartbeat\.count=[1-9]' "$work/domstats.txt" || fail "heartbeat.count > 0"

# ----------------------------------------------------------------------------------------
step 6 "snapshots and backup, the guest running"
qrun snapshot-create-as "$vm" before-update --description "before the A/B update to 2.0"
qrun snapshot-list "$vm"
qrun backup "$vm" "$work/$vm-backup.qcow2" --disk vdb 2>&1  # progress: stderr
run qemu-img info "$work/$vm-backup.qcow2"

# ----------------------------------------------------------------------------------------
step 7 "A/B update to 2.0, confirmed by the heartbeat"
# The images duty updates only disks that are still the appliance's own overlays, and the
# external snapshot moved every disk onto a snapshot overlay: the update is refused until
# the snapshot is deleted, which merges its overlays back into the appliance disks
# (a live block-commit here: the guest is running; docs/SNAPSHOTS.md, "Delete").
printf '$ qemush appliance-update %s --to 2.0\n' "$vm"
if qsh appliance-update "$vm" --to 2.0 > "$work/update-refused.txt" 2>&1; then
    cat "$work/update-refused.txt"
    fail "appliance-update to be refused while $vm's disks are snapshot overlays"
fi
cat "$work/update-refused.txt"
grep -q "snapshots" "$work/update-refused.txt" || fail "a refusal naming the snapshots"
echo "(refused: the disks are the snapshot's overlays; deleting the snapshot merges them back)"
qrun snapshot-delete "$vm" before-update
mark=$(serial_mark)
qrun shutdown "$vm" --timeout 60
serial_wait 'QEMUD-GUEST-POWEROFF' 5 "$mark"
wait_until 30 "$vm to be shut off" sh -c "'$bin/qemush' -c '$uri' domstate '$vm' | grep -q 'shut off'"
mark=$(serial_mark)
qrun appliance-update "$vm" --to 2.0
qrun start "$vm"
events_wait "update-confirmed" 150
serial_wait 'QEMUD-GUEST-READY' 60 "$mark"
mark=$(serial_mark)
serial_send "read-disk vda 20"
serial_wait 'QEMUD-READ vda DEMO-SYSTEM-2\.0' 20 "$mark"
qrun appliance-list

# ----------------------------------------------------------------------------------------
step 8 "power following in action: the guest reboots itself"
mark=$(serial_mark)
serial_send "reboot"
serial_wait 'QEMUD-GUEST-REBOOT' 20 "$mark"
events_wait "power-action: hook after guest reboot" 30
wait_until 20 "the power hook to write $work/power-hook.log" grep -q 'QEMUD_EVENT=guest-reboot' "$work/power-hook.log"
run cat "$work/power-hook.log"
serial_wait 'QEMUD-GUEST-READY' 120 "$mark"
qrun domstate "$vm" --reason

# ----------------------------------------------------------------------------------------
step 9 "serviceability: a support bundle"
qrun support-bundle -o "$work/bundle.tar.gz"
echo "members:"
tar -tzf "$work/bundle.tar.gz" | sed 's/^/  /'

# ----------------------------------------------------------------------------------------
printf '\n=== Summary ===\n'
echo "appliance events of $vm:"
sed 's/^/  /' "$work/events.log"
cat <<EOF

Done: one appliance ($vm, deployed from demo 1.0, updated to 2.0) went through every duty:
  1 host inspection + template   2 appliance images   3 power policy   4 udev hotplug
  5 heartbeat   6 snapshot + backup   7 A/B update   8 guest reboot -> hook   9 bundle
EOF
if [ "$mode" = cleanup ]; then
    exit 0  # on_exit cleans up
fi
cat <<EOF

The daemon and $vm keep running. Look around:
  $bin/qemush -c '$uri'
      (try: list --all, dominfo $vm, domstats $vm, hotplug-list, snapshot-list $vm,
       appliance-list, event $vm --event appliance --loop)
  tail -f $work/serial.log          # the guest's serial console (relayed)
  printf 'ping\n' > $work/serial.in  # type a command on it (see contrib/build-test-guest)
  less $work/qemud.log $work/log/audit.log $work/power-hook.log
Clean up (guest, daemon, loop device $loopdev, $work):
  $0 --stop
EOF
