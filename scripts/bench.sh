#!/usr/bin/env bash
# Runs the benchmarks on release builds and writes the JSON results to build/bench.json.
#   scripts/bench.sh [--suite boot|snapshot|block|vsock|net|linux|all] [--runs N] [--restores N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --release
cargo run --release --quiet -p tartarus-benches --bin tartarus-bench -- \
  --vmm "$PWD/target/release/tartarus-vmm" --guests "$PWD/build/guests" --out "$PWD/build/bench.json" "$@"
