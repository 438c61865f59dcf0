#!/usr/bin/env bash
# The main job, from a fresh machine: set everything up (packages, the binaries, our microvm
# kernel, the busybox root fs), start the sandbox daemon `tartarusd` (if it is not running yet),
# build the `base` template (one Linux boot, then cached), and run a command in a real Linux
# sandbox with the `tartarus` CLI:   tartarus run base -- uname -a
#
# The daemon keeps running afterwards (state in $TARTARUS_STATE, default /var/lib/tartarus;
# socket /run/tartarus/tartarusd.sock), so you can go on with `target/release/tartarus ...`.
# The VMM-level demo (one microVM driven with curl) is scripts/demo-vmm.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --release

STATIC=$(scripts/build-static.sh)
VMM=$(echo "$STATIC" | sed -n 1p)
JAILER=$(echo "$STATIC" | sed -n 2p)
KERNEL=$(kernels/build-kernel.sh | sed -n 's/^vmlinux=//p')
ROOTFS=$(kernels/build-rootfs.sh --variant base | sed -n 's/^rootfs=//p')
BIN="$PWD/target/release"
STATE=${TARTARUS_STATE:-/var/lib/tartarus}
SOCK=/run/tartarus/tartarusd.sock
export TARTARUS_HOST="unix://$SOCK"

if ! "$BIN/tartarus" health >/dev/null 2>&1; then
  mkdir -p "$STATE" /run/tartarus
  echo "demo: starting tartarusd (state $STATE, log $STATE/tartarusd.log)"
  setsid "$BIN/tartarusd" --socket "$SOCK" --state-dir "$STATE" --vmm "$VMM" --jailer "$JAILER" \
    </dev/null >>"$STATE/tartarusd.log" 2>&1 &
  for _ in $(seq 100); do "$BIN/tartarus" health >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN/tartarus" health >/dev/null || { echo "demo: tartarusd did not start:" >&2; tail "$STATE/tartarusd.log" >&2; exit 1; }
fi

if ! "$BIN/tartarus" template inspect base >/dev/null 2>&1; then
  echo "demo: building the base template (boots Linux once: 20-45 s on a nested PVM host)"
  "$BIN/tartarus" template build --name base --kernel "$KERNEL" --rootfs "$ROOTFS" \
    --memory 128 --disk 256
fi

echo "demo: \$ tartarus run base -- uname -a"
"$BIN/tartarus" run base -- uname -a
echo "demo: \$ tartarus run base -- sh -c 'echo cpus: \$(grep -c processor /proc/cpuinfo); free -m; id'"
"$BIN/tartarus" run base -- sh -c 'echo cpus: $(grep -c processor /proc/cpuinfo); free -m; id'
echo
echo "demo: tartarusd keeps running; try: $BIN/tartarus sandbox create base"
echo "      stop it with: pkill -x tartarusd   (sandboxes keep running and are adopted again on restart)"
