#!/usr/bin/env bash
# Builds a tiny initramfs (newc cpio, plain and gzip) around the static tartarus-init:
#   /sbin/tartarus-init, /sbin/init -> tartarus-init, /init -> /sbin/tartarus-init,
#   /dev/console (c 5 1), empty /proc /sys /dev /tmp /run /root /etc,
#   and with --busybox Debian's busybox-static as /bin/busybox with /bin/sh.
# Unpacking is slow on PVM hosts, where ring 0 is emulated: the plain cpio (~1.4 MB) unpacks in
# ~4.5 s, the gzip one (~0.65 MB) in ~29 s, because inflating costs far more emulated
# instructions than copying. Prefer the plain one there; the .gz is for hardware KVM/disk space.
# The result is cached under $TARTARUS_CACHE/initramfs/<key>/ (default ~/.cache/tartarus), the
# key being a hash of the init binary, busybox (if any) and this script.
# Prints `initramfs=<plain cpio>` and `initramfs_gz=<cpio.gz>` on stdout.
#
#   kernels/build-initramfs.sh [--busybox] [--init PATH]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BUSYBOX=0
INIT=""
while (($#)); do
    case "$1" in
        --busybox) BUSYBOX=1 ;;
        --init) INIT=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build-initramfs: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "build-initramfs: error: $*" >&2; exit 1; }

need=(cpio gzip)
((BUSYBOX)) && need+=(busybox-static)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    else
        die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
fi
[[ $(id -u) -eq 0 ]] || command -v fakeroot >/dev/null || die "run as root or install fakeroot (for mknod /dev/console)"

[[ -n "$INIT" ]] || INIT=$("$ROOT/scripts/build-init.sh")
[[ -x "$INIT" ]] || die "no tartarus-init binary at '$INIT'"

KEY=$(
    {
        sha256sum < "$INIT"
        ((BUSYBOX)) && sha256sum < /bin/busybox
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
OUT="${TARTARUS_CACHE:-$HOME/.cache/tartarus}/initramfs/$KEY"
IMG="$OUT/initramfs.cpio"
if [[ -f "$IMG" && -f "$IMG.gz" ]]; then
    echo "initramfs=$IMG"
    echo "initramfs_gz=$IMG.gz"
    exit 0
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{sbin,bin,dev,proc,sys,tmp,run,root,etc}
chmod 1777 "$STAGE/tmp"
install -m 0755 "$INIT" "$STAGE/sbin/tartarus-init"
ln -s tartarus-init "$STAGE/sbin/init"
ln -s sbin/tartarus-init "$STAGE/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$STAGE/etc/passwd"
echo "root:x:0:" > "$STAGE/etc/group"
if ((BUSYBOX)); then
    install -m 0755 /bin/busybox "$STAGE/bin/busybox"
    ln -s busybox "$STAGE/bin/sh"
fi
pack() {
    mknod -m 0600 "$STAGE/dev/console" c 5 1
    (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0)
}
mkdir -p "$OUT"
if [[ $(id -u) -eq 0 ]]; then
    pack > "$IMG.tmp"
else
    export -f pack
    STAGE="$STAGE" fakeroot bash -c pack > "$IMG.tmp"
fi
gzip -9 -n -c "$IMG.tmp" > "$IMG.gz.tmp"
mv "$IMG.tmp" "$IMG"
mv "$IMG.gz.tmp" "$IMG.gz"
echo "build-initramfs: $(stat -c %s "$IMG") bytes, gzip $(stat -c %s "$IMG.gz") bytes" >&2
echo "initramfs=$IMG"
echo "initramfs_gz=$IMG.gz"
