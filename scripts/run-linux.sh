#!/usr/bin/env bash
# Boots a Linux microVM with a shell on the serial console: our microvm kernel
# (kernels/build-kernel.sh) and the ext4 root file system (kernels/build-rootfs.sh) on virtio-blk,
# tartarus-init as PID 1 with `tartarus.shell`. Exit the shell (or Ctrl-D) to power the VM off.
# Builds and caches whatever is missing. The VM writes to a copy of the image, kept in
# build/linux/ (delete it to start from a clean image).
#
#   scripts/run-linux.sh [--variant base|python] [--mem-mib N] [--vcpus N] [--tap NAME]
#                        [--vsock-uds PATH] [-- extra kernel args]
# On this workplace's nested PVM KVM, expect ~20 s until the prompt (see kernels/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VARIANT=base MEM=256 VCPUS=1 TAP="" UDS="" EXTRA=""
while (($#)); do
    case "$1" in
        --variant) VARIANT=$2; shift ;;
        --mem-mib) MEM=$2; shift ;;
        --vcpus) VCPUS=$2; shift ;;
        --tap) TAP=$2; shift ;;
        --vsock-uds) UDS=$2; shift ;;
        --) shift; EXTRA="$*"; break ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "run-linux: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
cd "$ROOT"
VMLINUX=$(kernels/build-kernel.sh | sed -n 's/^vmlinux=//p')
IMAGE=$(kernels/build-rootfs.sh --variant "$VARIANT" | sed -n 's/^rootfs=//p')
cargo build --release -q -p vmm
mkdir -p build/linux
DISK="build/linux/rootfs-$VARIANT.ext4"
[[ -f "$DISK" ]] || cp --sparse=always "$IMAGE" "$DISK"
CFG=$(mktemp --suffix=.json)
trap 'rm -f "$CFG"' EXIT
python3 - "$CFG" "$VMLINUX" "$DISK" "$MEM" "$VCPUS" "$TAP" "$UDS" "$EXTRA" <<'PY'
import json, sys
cfg, kernel, disk, mem, vcpus, tap, uds, extra = sys.argv[1:]
args = "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 clocksource=kvm-clock tartarus.shell"
c = {
    "boot-source": {"kernel_image_path": kernel, "boot_args": (args + " " + extra).strip()},
    "drives": [{"drive_id": "rootfs", "path_on_host": disk, "is_root_device": True, "is_read_only": False}],
    "machine-config": {"vcpu_count": int(vcpus), "mem_size_mib": int(mem)},
}
if tap:
    c["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": tap}]
    c["boot-source"]["boot_args"] += " ip=172.16.0.2::172.16.0.1:255.255.255.0:tartarus:eth0:off"
if uds:
    c["vsock"] = {"guest_cid": 3, "uds_path": uds}
json.dump(c, open(cfg, "w"))
PY
exec target/release/tartarus-vmm --no-api --config-file "$CFG"
