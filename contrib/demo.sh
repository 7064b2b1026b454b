#!/usr/bin/env bash
# The README's first command: start a session qemud and boot the demo guest in it.
# Leaves both running and says how to talk to them and how to stop them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export PATH="$here/.venv/bin:$PATH"
guest_dir=${QEMUD_GUEST_DIR:-$HOME/.cache/qemud/test-guest}
runtime=${XDG_RUNTIME_DIR:-/tmp/qemud-$(id -u)}
state_dir=${XDG_STATE_HOME:-$HOME/.local/state}/qemud
uri="qemud:///session"
mkdir -p "$state_dir"

if ! qemush -c "$uri" uri >/dev/null 2>&1; then
  echo "demo: starting a session daemon (log: $state_dir/log/qemud.log)"
  mkdir -p "$state_dir/log"
  nohup qemud --session --log-file "$state_dir/log/qemud.log" >/dev/null 2>&1 &
  for _ in $(seq 100); do
    qemush -c "$uri" uri >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
qemush -c "$uri" uri >/dev/null || { echo "demo: the daemon did not start; see $state_dir/log/qemud.log" >&2; exit 1; }

xml="$state_dir/demo.xml"
sed -e "s|@GUEST_DIR@|$guest_dir|g" -e "s|@STATE_DIR@|$state_dir|g" contrib/demo-guest.xml.in > "$xml"
if qemush -c "$uri" domstate demo >/dev/null 2>&1; then
  # a demo from an earlier run: redefine that domain (same uuid; a definition without
  # one would be a new domain with a clashing name, refused as libvirt refuses it)
  qemush -c "$uri" destroy demo >/dev/null 2>&1 || true
  uuid=$(qemush -c "$uri" domuuid demo)
  sed -i "s|<name>demo</name>|<name>demo</name>\n  <uuid>$uuid</uuid>|" "$xml"
fi
qemush -c "$uri" define "$xml"
: > "$state_dir/demo-serial.log"
qemush -c "$uri" start demo
echo "demo: waiting for the guest's ready marker on its serial port..."
for _ in $(seq 600); do
  grep -q QEMUD-GUEST-READY "$state_dir/demo-serial.log" 2>/dev/null && break
  sleep 0.1
done
grep QEMUD-GUEST-READY "$state_dir/demo-serial.log" || { echo "demo: guest did not boot" >&2; exit 1; }
qemush -c "$uri" list --all
qemush -c "$uri" dominfo demo
cat <<EOT

The demo guest is running under a session qemud ($uri, socket $runtime/qemud/qemud-sock).
  qemush -c $uri                    # interactive shell (try: list --all, dominfo demo, help)
  qemush -c $uri event --loop --all # watch lifecycle events
  qemush -c $uri shutdown demo      # ACPI power button: the guest powers off
  tail -f $state_dir/demo-serial.log
Stop the daemon with: pkill -f 'qemud --session'   (the guest keeps running; destroy it first)
EOT
