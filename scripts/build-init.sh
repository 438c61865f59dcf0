#!/usr/bin/env bash
# Builds the static `tartarus-init` (release, glibc with `-C target-feature=+crt-static`; these
# machines have no musl target), checks that it is static, strips it, and prints its path on
# stdout (progress goes to stderr).
#
#   scripts/build-init.sh
#
# The explicit --target keeps RUSTFLAGS off build scripts and proc macros; the binary lands in
# <target-dir>/x86_64-unknown-linux-gnu/release/tartarus-init.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/$TARGET/release/tartarus-init"

# Tests call this script concurrently: one build + strip at a time (two strips of one file at
# once corrupt it), and the strip goes to a copy that replaces the binary in one rename.
mkdir -p "$TARGET_DIR"
exec 9>"$TARGET_DIR/.build-init.lock"
flock 9
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p guest-init --target "$TARGET" >&2
if file "$BIN" | grep -q "dynamically linked"; then
    echo "build-init: $BIN is not static" >&2
    exit 1
fi
strip -o "$BIN.strip.$$" "$BIN"
mv -f "$BIN.strip.$$" "$BIN"
echo "$BIN"
