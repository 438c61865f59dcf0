#!/usr/bin/env bash
# Builds the Tartarus microvm guest kernel from Debian's linux-source-6.1 package:
# tinyconfig + kernels/microvm.config, our patches from kernels/patches/, vmlinux and
# bzImage. Outputs are cached under a key of (source package version, config fragment,
# patches, this script), so a second run is instant. See kernels/README.md.
#
# Usage: kernels/build-kernel.sh [--force] [--config-only]
#   --force        rebuild even when the cache has this key
#   --config-only  stop after writing and checking .config (no compile, no cache)
# Environment:
#   TARTARUS_CACHE   cache root (default ~/.cache/tartarus); outputs go to $TARTARUS_CACHE/kernel/<key>/
#   TARTARUS_BUILD   build root (default <repo>/build); sources unpack to $TARTARUS_BUILD/kernel/<key>/
#   JOBS             parallel make jobs (default: nproc)
# Prints, on stdout, one `name=path` line per output: vmlinux, bzImage, config.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/kernels"
PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz
FRAGMENT="$HERE/microvm.config"
PATCH_DIR="$HERE/patches"
# Tools the kernel build needs, by Debian package (objtool needs libelf).
BUILD_DEPS=(build-essential flex bison bc libelf-dev libssl-dev xz-utils patch)

FORCE=0
CONFIG_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --config-only) CONFIG_ONLY=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build-kernel.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# --- packages ---------------------------------------------------------------
missing=()
for p in "$PKG" "${BUILD_DEPS[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        log "installing missing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
fi
[[ -f "$TARBALL" ]] || die "$TARBALL not found although $PKG is installed; reinstall it: apt-get install --reinstall $PKG"

# --- cache key --------------------------------------------------------------
VERSION=$(dpkg-query -W -f='${Version}' "$PKG")
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
KEY=$(
    {
        printf 'source %s %s\n' "$PKG" "$VERSION"
        printf 'fragment\n'; cat "$FRAGMENT"
        for p in "${PATCHES[@]}"; do printf 'patch %s\n' "$(basename "$p")"; cat "$p"; done
        printf 'script\n'; cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
CACHE_ROOT=${TARTARUS_CACHE:-$HOME/.cache/tartarus}
OUT="$CACHE_ROOT/kernel/$KEY"

print_outputs() {
    echo "vmlinux=$OUT/vmlinux"
    echo "bzImage=$OUT/bzImage"
    echo "config=$OUT/config"
}

if [[ $FORCE -eq 0 && $CONFIG_ONLY -eq 0 && -f "$OUT/vmlinux" && -f "$OUT/bzImage" ]]; then
    log "cached: $PKG $VERSION, key $KEY"
    print_outputs
    exit 0
fi

# --- unpack and patch -------------------------------------------------------
BUILD_ROOT=${TARTARUS_BUILD:-$ROOT/build}
WORK="$BUILD_ROOT/kernel/$KEY"
SRC="$WORK/linux-source-6.1"
log "unpacking $PKG $VERSION into $WORK"
rm -rf "$WORK"
mkdir -p "$WORK"
tar -xf "$TARBALL" -C "$WORK"
[[ -d "$SRC" ]] || die "the tarball did not unpack to $SRC"
for p in "${PATCHES[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$SRC" -p1 --forward --batch --quiet < "$p" || die "patch $(basename "$p") does not apply to $PKG $VERSION"
done

# --- configure --------------------------------------------------------------
MAKE=(make -C "$SRC" ARCH=x86_64)
LOG="$WORK/build.log"
log "configuring: tinyconfig + $(basename "$FRAGMENT") (log: $LOG)"
{
    "${MAKE[@]}" tinyconfig
    (cd "$SRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT")
    "${MAKE[@]}" olddefconfig
} >"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; die "configuration failed (see $LOG)"; }

# Every option of the fragment must survive olddefconfig: a dropped line means a missing
# dependency, and the kernel would silently lack a feature.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        got=$(grep -E "^$opt=" "$SRC/.config" | head -n1 | cut -d= -f2- || true)
        if [[ "$got" != "$want" ]]; then
            echo "build-kernel: config: $opt: wanted '$want', got '${got:-not set}'" >&2
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        opt=${BASH_REMATCH[1]}
        if grep -qE "^$opt=" "$SRC/.config"; then
            echo "build-kernel: config: $opt: wanted 'not set', got '$(grep -E "^$opt=" "$SRC/.config" | cut -d= -f2-)'" >&2
            bad=1
        fi
    fi
done < "$FRAGMENT"
((bad == 0)) || die "options of $FRAGMENT did not stick after olddefconfig (missing dependencies?)"
log "config checked: every option of the fragment stuck"
if [[ $CONFIG_ONLY -eq 1 ]]; then
    echo "config=$SRC/.config"
    exit 0
fi

# --- build ------------------------------------------------------------------
JOBS=${JOBS:-$(nproc)}
log "building vmlinux and bzImage with $JOBS jobs (several minutes; log: $LOG)"
start=$(date +%s)
"${MAKE[@]}" -j"$JOBS" vmlinux bzImage >>"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; die "kernel build failed (see $LOG)"; }
log "built in $(( $(date +%s) - start )) s"

# --- cache ------------------------------------------------------------------
mkdir -p "$CACHE_ROOT/kernel"
TMP=$(mktemp -d "$CACHE_ROOT/kernel/.tmp.XXXXXX")
cp "$SRC/vmlinux" "$TMP/vmlinux"
cp "$SRC/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$SRC/.config" "$TMP/config"
printf 'package=%s\nversion=%s\nkey=%s\npatches=%s\n' "$PKG" "$VERSION" "$KEY" \
    "$(for p in "${PATCHES[@]}"; do basename "$p"; done | paste -sd, -)" > "$TMP/info"
rm -rf "$OUT"
mv "$TMP" "$OUT"
log "cached under $OUT"
print_outputs
