#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and integration tests that start real
# tartarus-vmm processes on /dev/kvm with the test guests. Installs and builds what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: cargo test"
cargo test --workspace -- --test-threads=2
