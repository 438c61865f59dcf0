#!/usr/bin/env bash
# Sets everything up, then boots a microVM through the API exactly as an orchestrator would:
# start tartarus-vmm on a Unix socket, configure it with curl, start it, show what the guest
# prints on its serial port, then end it with SendCtrlAltDel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --release

VMM="$PWD/target/release/tartarus-vmm"
KERNEL="$PWD/build/guests/hello.elf"
WORK="$(mktemp -d /tmp/tartarus-demo.XXXXXX)"
SOCK="$WORK/api.sock"
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

api() { # method path [json]
  echo "> $1 $2 ${3:-}"
  curl --silent --show-error --unix-socket "$SOCK" -X "$1" "http://localhost$2" \
    ${3:+-H 'Content-Type: application/json' -d "$3"} -w '  <- HTTP %{http_code}\n'
}

"$VMM" --api-sock "$SOCK" --id demo --serial-out "$WORK/serial.log" --log-level Info \
  2>"$WORK/vmm.log" &
PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.02; done

api GET /
api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
api PUT /boot-source "{\"kernel_image_path\": \"$KERNEL\", \"boot_args\": \"console=ttyS0 demo=1 wait_cad\"}"
api PUT /actions '{"action_type": "InstanceStart"}'
for _ in $(seq 500); do grep -q "waiting for ctrl-alt-del" "$WORK/serial.log" 2>/dev/null && break; sleep 0.02; done
api GET /
echo "--- guest serial output ---"
cat "$WORK/serial.log"
echo "---------------------------"
api PUT /actions '{"action_type": "SendCtrlAltDel"}'
set +e
wait "$PID"
code=$?
set -e
echo "--- guest serial output after SendCtrlAltDel ---"
tail -n 2 "$WORK/serial.log"
echo "tartarus-vmm exited with code $code"
[ "$code" = 0 ]
