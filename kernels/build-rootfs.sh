#!/usr/bin/env bash
# Builds an ext4 root file system image for Linux microVMs, without loop mounts (mkfs.ext4 -d):
#   base:   tartarus-init as /sbin/init, Debian's busybox-static as /bin/busybox with a symlink
#           per applet (sh, ls, cat, ip, ping, ...), /etc basics. ~8 MB of files.
#   python: a Debian bookworm minbase (debootstrap) with python3-minimal, plus the same
#           tartarus-init and busybox (busybox applets only where Debian has no program).
# The image is cached under $TARTARUS_CACHE/rootfs/<key>/ (default ~/.cache/tartarus), the key
# being a hash of the init binary, busybox, the variant, the size and this script; a second run
# with nothing changed is instant. Use a copy (`cp --sparse=always`) for a VM that writes to it.
# Prints `rootfs=<image>` on stdout; progress goes to stderr.
#
#   kernels/build-rootfs.sh [--variant base|python] [--size-mib N] [--init PATH] [--force]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

VARIANT=base
SIZE_MIB=""
INIT=""
FORCE=0
SUITE=bookworm
MIRROR=${TARTARUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
while (($#)); do
    case "$1" in
        --variant) VARIANT=$2; shift ;;
        --size-mib) SIZE_MIB=$2; shift ;;
        --init) INIT=$2; shift ;;
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-rootfs: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "build-rootfs: error: $*" >&2; exit 1; }
case "$VARIANT" in
    base) SIZE_MIB=${SIZE_MIB:-64} ;;
    python) SIZE_MIB=${SIZE_MIB:-512} ;;
    *) die "unknown variant '$VARIANT' (base or python)" ;;
esac
[[ "$SIZE_MIB" =~ ^[0-9]+$ ]] && ((SIZE_MIB >= 16)) || die "--size-mib must be a number >= 16"

need=(e2fsprogs busybox-static)
[[ "$VARIANT" == python ]] && need+=(debootstrap)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "build-rootfs: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
            || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
    else
        die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
fi
# Files in the image must belong to root: mkfs.ext4 -d copies owners from the staging tree.
[[ $(id -u) -eq 0 ]] || command -v fakeroot >/dev/null || die "run as root or install fakeroot"
[[ "$VARIANT" != python || $(id -u) -eq 0 ]] || die "the python variant needs root (debootstrap)"

[[ -n "$INIT" ]] || INIT=$("$ROOT/scripts/build-init.sh")
[[ -x "$INIT" ]] || die "no tartarus-init binary at '$INIT'"

KEY=$(
    {
        sha256sum < "$INIT"
        sha256sum < /bin/busybox
        echo "$VARIANT $SIZE_MIB $SUITE"
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
CACHE="${TARTARUS_CACHE:-$HOME/.cache/tartarus}"
OUT="$CACHE/rootfs/$KEY"
IMG="$OUT/rootfs-$VARIANT.ext4"
if [[ -f "$IMG" && $FORCE -eq 0 ]]; then
    echo "rootfs=$IMG"
    exit 0
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

if [[ "$VARIANT" == python ]]; then
    # debootstrap output depends only on the suite and package list: cache it separately, so
    # a new tartarus-init does not download Debian again.
    BASE_TAR="$CACHE/rootfs/debootstrap-$SUITE-python3-minimal.tar"
    if [[ ! -f "$BASE_TAR" ]]; then
        echo "build-rootfs: debootstrap $SUITE (minbase + python3-minimal) from $MIRROR" >&2
        mkdir -p "$STAGE/root-fs" "$(dirname "$BASE_TAR")"
        debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$STAGE/root-fs" "$MIRROR" >&2
        # Caches and documentation are dead weight in a VM image.
        rm -rf "$STAGE/root-fs"/var/cache/apt/* "$STAGE/root-fs"/var/lib/apt/lists/* \
            "$STAGE/root-fs"/usr/share/doc/* "$STAGE/root-fs"/usr/share/man/* \
            "$STAGE/root-fs"/usr/share/locale/* "$STAGE/root-fs"/usr/share/info/*
        tar -C "$STAGE/root-fs" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$STAGE/root-fs"
    fi
    mkdir -p "$STAGE/root-fs"
    tar -C "$STAGE/root-fs" -xf "$BASE_TAR"
else
    mkdir -p "$STAGE/root-fs"
fi
R="$STAGE/root-fs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt,var/tmp,workspace}
chmod 1777 "$R/tmp" "$R/var/tmp"
install -m 0755 "$INIT" "$R/sbin/tartarus-init"
ln -sfn tartarus-init "$R/sbin/init"
install -m 0755 /bin/busybox "$R/bin/busybox"
# One symlink per applet where nothing else is there (busybox's own init stays out: PID 1 is ours).
while read -r applet; do
    case "$applet" in sbin/init | linuxrc | "") continue ;; esac
    [[ -e "$R/$applet" || -L "$R/$applet" ]] && continue
    mkdir -p "$R/$(dirname "$applet")"
    ln -s /bin/busybox "$R/$applet"
done < <(/bin/busybox --list-full)
if [[ "$VARIANT" == base ]]; then
    echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
    echo "root:x:0:" > "$R/etc/group"
    printf 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PATH\nPS1="\\h:\\w# "\n' > "$R/etc/profile"
fi
echo tartarus > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n' > "$R/etc/hosts"
: > "$R/etc/fstab"
echo "tartarus rootfs ($VARIANT), built $(date -u +%F) by kernels/build-rootfs.sh" > "$R/etc/tartarus-release"

mkdir -p "$OUT"
rm -f "$IMG.tmp"
mkfs() {
    mkfs.ext4 -q -F -L tartarus-root -O ^has_journal -m 0 -d "$R" "$IMG.tmp" "${SIZE_MIB}M"
}
if [[ $(id -u) -eq 0 ]]; then
    mkfs >&2
else
    export -f mkfs
    R="$R" IMG="$IMG" SIZE_MIB="$SIZE_MIB" fakeroot bash -c 'chown -R 0:0 "$R" && mkfs' >&2
fi
# A journal costs emulated ring-0 time at every commit on PVM hosts; e2fsck checks the image.
e2fsck -fn "$IMG.tmp" >/dev/null 2>&1 || die "e2fsck found errors in the new image"
mv "$IMG.tmp" "$IMG"
echo "build-rootfs: $VARIANT image $IMG ($(du -h --apparent-size "$IMG" | cut -f1), $(du -h "$IMG" | cut -f1) allocated)" >&2
echo "rootfs=$IMG"
