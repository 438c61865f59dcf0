#!/usr/bin/env bash
# Builds statically linked release binaries of tartarus-vmm and tartarus-jailer (glibc with
# `-C target-feature=+crt-static`; these machines have no musl target), checks that they are
# static, and prints their paths, one a line (the VMM first).
#
#   scripts/build-static.sh            build both, print both paths
#   scripts/build-static.sh --check    also run `tartarus-vmm --version` in an empty chroot (root)
#
# The explicit --target keeps RUSTFLAGS off build scripts and proc macros (they stay dynamic host
# binaries); the output lands in <target-dir>/x86_64-unknown-linux-gnu/release/.
# Progress and warnings go to stderr; stdout carries only the paths.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
CHECK=0
for a in "$@"; do
  case "$a" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-static: unknown argument $a" >&2; exit 2 ;;
  esac
done

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
OUT="$TARGET_DIR/$TARGET/release"

# One package at a time, so a broken VMM build does not keep the jailer from being rebuilt.
status=0
for pkg in jailer vmm; do
  echo "build-static: cargo build --release -p $pkg --target $TARGET (crt-static)" >&2
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release -p "$pkg" --target "$TARGET" --bins >&2 || status=$?
done
[ "$status" = 0 ] || { echo "build-static: cargo build failed" >&2; exit "$status"; }

for bin in tartarus-vmm tartarus-jailer; do
  p="$OUT/$bin"
  [ -x "$p" ] || { echo "build-static: $p was not produced" >&2; exit 1; }
  # `file` says "statically linked" (or "static-pie linked"); ldd says "not a dynamic executable".
  desc=$(file -b "$p")
  case "$desc" in
    *static*) ;;
    *) echo "build-static: $p is not static: $desc" >&2; exit 1 ;;
  esac
  # ldd prints "statically linked" (static-pie, exit 0) or "not a dynamic executable" (exit 1);
  # anything with "=>" or a loader path is a shared-library dependency.
  deps=$(ldd "$p" 2>&1 || true)
  if printf '%s\n' "$deps" | grep -Eq '=>|ld-linux'; then
    echo "build-static: $p needs shared libraries:" >&2
    printf '%s\n' "$deps" >&2
    exit 1
  fi
done

if [ "$CHECK" = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "build-static: --check needs root (chroot)" >&2; exit 1; }
  jail=$(mktemp -d /tmp/tartarus-static-check.XXXXXX)
  trap 'rm -rf "$jail"' EXIT
  cp "$OUT/tartarus-vmm" "$jail/tartarus-vmm"
  v=$(env -i /usr/sbin/chroot "$jail" /tartarus-vmm --version)
  echo "build-static: runs in an empty chroot: $v" >&2
fi

echo "$OUT/tartarus-vmm"
echo "$OUT/tartarus-jailer"
